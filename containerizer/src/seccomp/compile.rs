//! Compiling seccomp profiles in Docker's JSON format to classic BPF.
//!
//! This file is shared: the library includes it as `crate::seccomp::compile`, and
//! `build.rs` includes it with `#[path]` (next to [`super::codegen`]) to compile
//! `profiles/default.json` at build time. It may therefore only use `std`, `serde`,
//! `serde_json`, `seccompiler` and `caps` (all of them are both dependencies and
//! build-dependencies), and no `crate::` paths.
//!
//! # Semantics
//!
//! A profile is evaluated the way libseccomp evaluates the filters Docker builds:
//!
//! * entries are filtered first: `includes.caps` must all be held (and `excludes.caps`
//!   none), `includes.arches` must name x86_64 (and `excludes.arches` must not),
//!   `includes.minKernel` must be at most the running kernel;
//! * for one syscall, rules with argument conditions are tried before the
//!   unconditional rule, in profile order, first match wins (conditions of one rule are
//!   ANDed; arguments are compared as unsigned 64-bit numbers);
//! * a syscall without a matching rule gets `defaultAction`.
//!
//! The profile is reduced to a [`Policy`] (per-syscall actions and rules) and compiled
//! by [`super::codegen`]: an architecture check (another ABI, e.g. i386 `int 0x80`,
//! kills the process), a `jeq` per syscall with argument conditions leading to its
//! rules, then a balanced binary search over the ranges of syscall numbers sharing an
//! action. Names that do not exist on x86_64 (`_llseek`, `chown32`, ...) are skipped,
//! as libseccomp does. x32 syscall numbers (bit 30 set) match no rule and get the
//! default action. seccompiler only provides [`SeccompAction`]'s `SECCOMP_RET_*`
//! values (and, in the tests, the linear program Cella generated before, as a
//! reference).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use seccompiler::SeccompAction;
use serde::Deserialize;

use super::codegen::{CmpOp, Cond, Policy, Rule};

/// Largest program the kernel accepts (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// errno used for `SCMP_ACT_ERRNO` without `errnoRet` (as Docker does): EPERM.
const DEFAULT_ERRNO: u32 = 1;

/// Largest errno a filter may return (`MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;

/// Docker's default capability set (14 capabilities).
pub const DOCKER_DEFAULT_CAPS: [caps::Capability; 14] = [
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_MKNOD,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETFCAP,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_SYS_CHROOT,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_AUDIT_WRITE,
];

/// [`DOCKER_DEFAULT_CAPS`] as a bit mask of `CAP_*` numbers.
pub fn docker_default_caps_mask() -> u64 {
    DOCKER_DEFAULT_CAPS.iter().fold(0, |m, c| m | c.bitmask())
}

/// Why a profile could not be compiled.
#[derive(Debug)]
pub enum ProfileError {
    /// Not valid JSON, or a value of the wrong type (serde's message has line/column).
    Json(serde_json::Error),
    /// A field holds a value Cella cannot use.
    Field {
        /// Where, e.g. `syscalls[3].action`.
        field: String,
        /// What is wrong and what is expected.
        why: String,
    },
    /// The program is too large for the kernel.
    Backend(String),
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::Json(e) => write!(
                f,
                "not a valid Docker seccomp profile: {e} (fix the JSON; a profile is an object with \
                 \"defaultAction\" and \"syscalls\")"
            ),
            ProfileError::Field { field, why } => write!(f, "field {field}: {why}"),
            ProfileError::Backend(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ProfileError {}

/// A compiled profile.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The instructions, packed as `code<<48 | jt<<40 | jf<<32 | k`.
    pub program: Vec<u64>,
    /// Syscall names that were skipped because x86_64 has no such syscall.
    pub skipped: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    default_errno_ret: Option<u32>,
    /// Accepted and ignored: the program is always built for x86_64.
    #[serde(default)]
    #[allow(dead_code)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    syscalls: Option<Vec<Entry>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    #[serde(default)]
    names: Option<Vec<String>>,
    /// The old single-name form.
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Arg>>,
    #[serde(default)]
    includes: Option<Condition>,
    #[serde(default)]
    excludes: Option<Condition>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

fn field_err(field: impl Into<String>, why: impl Into<String>) -> ProfileError {
    ProfileError::Field {
        field: field.into(),
        why: why.into(),
    }
}

/// Architecture names (Go, libseccomp and kernel spellings) meaning x86_64.
fn is_x86_64(arch: &str) -> bool {
    matches!(
        arch.to_ascii_lowercase().as_str(),
        "amd64" | "x86_64" | "scmp_arch_x86_64"
    )
}

/// The capability with `name` (any case, with or without `CAP_`), if the caps crate
/// knows it.
fn cap_bit(name: &str) -> Option<u64> {
    caps::Capability::from_str(&caps::to_canonical(name))
        .ok()
        .map(|c| c.bitmask())
}

/// `"5.8"` → `(5, 8)`; `"6.18.44-foo"` → `(6, 18)`.
fn parse_kernel(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()
        .map(|m| {
            m.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    Some((major, minor))
}

/// The running kernel's version, from `/proc/sys/kernel/osrelease`.
pub fn running_kernel() -> Option<(u32, u32)> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|v| parse_kernel(&v))
}

/// Whether entry `i` applies to a task holding `caps_mask` on x86_64 and `kernel`.
fn entry_applies(
    i: usize,
    entry: &Entry,
    caps_mask: u64,
    kernel: Option<(u32, u32)>,
) -> Result<bool, ProfileError> {
    if let Some(inc) = &entry.includes {
        for cap in inc.caps.iter().flatten() {
            match cap_bit(cap) {
                Some(bit) if caps_mask & bit != 0 => {}
                // A capability the task does not hold (or that no known kernel has).
                _ => return Ok(false),
            }
        }
        if let Some(arches) = &inc.arches {
            if !arches.is_empty() && !arches.iter().any(|a| is_x86_64(a)) {
                return Ok(false);
            }
        }
        if let Some(min) = &inc.min_kernel {
            let wanted = parse_kernel(min).ok_or_else(|| {
                field_err(
                    format!("syscalls[{i}].includes.minKernel"),
                    format!("{min:?} is not a kernel version; expected e.g. \"4.8\""),
                )
            })?;
            match kernel {
                Some(running) if running >= wanted => {}
                _ => return Ok(false),
            }
        }
    }
    if let Some(exc) = &entry.excludes {
        for cap in exc.caps.iter().flatten() {
            if cap_bit(cap).is_some_and(|bit| caps_mask & bit != 0) {
                return Ok(false);
            }
        }
        if exc.arches.iter().flatten().any(|a| is_x86_64(a)) {
            return Ok(false);
        }
        if let Some(min) = &exc.min_kernel {
            let limit = parse_kernel(min).ok_or_else(|| {
                field_err(
                    format!("syscalls[{i}].excludes.minKernel"),
                    format!("{min:?} is not a kernel version; expected e.g. \"4.8\""),
                )
            })?;
            if kernel.is_some_and(|running| running >= limit) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

const ACTIONS: &str = "SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL, SCMP_ACT_KILL_THREAD, \
                       SCMP_ACT_KILL_PROCESS, SCMP_ACT_TRAP, SCMP_ACT_TRACE or SCMP_ACT_LOG";

fn parse_action(
    field: &str,
    action: &str,
    errno: Option<u32>,
) -> Result<SeccompAction, ProfileError> {
    let errno_checked = |default: u32| -> Result<u32, ProfileError> {
        let value = errno.unwrap_or(default);
        if value > MAX_ERRNO {
            return Err(field_err(
                format!("{field} errno"),
                format!("{value} is out of range; expected an errno between 0 and {MAX_ERRNO}"),
            ));
        }
        Ok(value)
    };
    Ok(match action {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno_checked(DEFAULT_ERRNO)?),
        // libseccomp's SCMP_ACT_KILL is SECCOMP_RET_KILL_THREAD.
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno_checked(0)?),
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err(field_err(
                field,
                "SCMP_ACT_NOTIFY needs a seccomp agent listening on a socket, which Cella \
                 does not support; use SCMP_ACT_ERRNO or SCMP_ACT_LOG",
            ));
        }
        other => {
            return Err(field_err(
                field,
                format!("unknown action {other:?}; expected one of {ACTIONS}"),
            ));
        }
    })
}

fn parse_arg(field: &str, arg: &Arg) -> Result<Cond, ProfileError> {
    let index = u8::try_from(arg.index)
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(|| {
            field_err(
                format!("{field}.index"),
                format!("{} is not a syscall argument; expected 0 to 5", arg.index),
            )
        })?;
    // libseccomp compares the whole 64-bit register; so do we.
    let (op, value) = match arg.op.as_str() {
        "SCMP_CMP_NE" => (CmpOp::Ne, arg.value),
        "SCMP_CMP_LT" => (CmpOp::Lt, arg.value),
        "SCMP_CMP_LE" => (CmpOp::Le, arg.value),
        "SCMP_CMP_EQ" => (CmpOp::Eq, arg.value),
        "SCMP_CMP_GE" => (CmpOp::Ge, arg.value),
        "SCMP_CMP_GT" => (CmpOp::Gt, arg.value),
        // (arg & value) == valueTwo
        "SCMP_CMP_MASKED_EQ" => (CmpOp::MaskedEq(arg.value), arg.value_two),
        other => {
            return Err(field_err(
                format!("{field}.op"),
                format!(
                    "unknown comparison {other:?}; expected SCMP_CMP_EQ, SCMP_CMP_NE, \
                     SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_GT, SCMP_CMP_GE or SCMP_CMP_MASKED_EQ"
                ),
            ));
        }
    };
    Ok(Cond { index, op, value })
}

/// A profile reduced to what applies to the task on x86_64.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub default_action: SeccompAction,
    /// Rules with argument conditions, in profile order: (action, number, conditions).
    pub conditional: Vec<(SeccompAction, u32, Vec<Cond>)>,
    /// Unconditional actions by syscall number.
    pub unconditional: BTreeMap<u32, SeccompAction>,
    /// Syscall names that were skipped because x86_64 has no such syscall.
    pub skipped: Vec<String>,
}

impl Parsed {
    /// The per-syscall view the code generator works from.
    pub fn policy(&self) -> Policy {
        let mut policy = Policy {
            default_action: u32::from(self.default_action.clone()),
            unconditional: self
                .unconditional
                .iter()
                .map(|(nr, action)| (*nr, u32::from(action.clone())))
                .collect(),
            conditional: BTreeMap::new(),
        };
        for (action, nr, conds) in &self.conditional {
            policy.conditional.entry(*nr).or_default().push(Rule {
                action: u32::from(action.clone()),
                conds: conds.clone(),
            });
        }
        policy
    }
}

/// Parses a Docker JSON profile and keeps the entries that apply to a task holding
/// the capabilities in `caps_mask`, on x86_64, on the kernel version `kernel` (`None`:
/// `minKernel` conditions fail).
pub fn parse(
    json: &str,
    caps_mask: u64,
    kernel: Option<(u32, u32)>,
) -> Result<Parsed, ProfileError> {
    let profile: Profile = serde_json::from_str(json).map_err(ProfileError::Json)?;
    let default_action = parse_action(
        "defaultAction",
        &profile.default_action,
        profile.default_errno_ret,
    )?;

    // Conditional rules in profile order; unconditional ones by syscall number (with
    // the entry that set them, for errors).
    let mut conditional: Vec<(SeccompAction, u32, Vec<Cond>)> = Vec::new();
    let mut unconditional: BTreeMap<u32, (SeccompAction, usize)> = BTreeMap::new();
    let mut skipped = Vec::new();

    for (i, entry) in profile.syscalls.iter().flatten().enumerate() {
        let names: Vec<&String> = entry
            .names
            .iter()
            .flatten()
            .chain(entry.name.iter())
            .collect();
        if names.is_empty() {
            return Err(field_err(
                format!("syscalls[{i}].names"),
                "no syscall names; expected e.g. \"names\": [\"mkdir\"]",
            ));
        }
        let action = parse_action(
            &format!("syscalls[{i}].action"),
            &entry.action,
            entry.errno_ret,
        )?;
        if !entry_applies(i, entry, caps_mask, kernel)? {
            continue;
        }
        let conditions = entry
            .args
            .iter()
            .flatten()
            .enumerate()
            .map(|(a, arg)| parse_arg(&format!("syscalls[{i}].args[{a}]"), arg))
            .collect::<Result<Vec<_>, _>>()?;
        for name in names {
            let Some(nr) = syscall_number(name).and_then(|nr| u32::try_from(nr).ok()) else {
                if !skipped.contains(name) {
                    skipped.push(name.clone());
                }
                continue;
            };
            if conditions.is_empty() {
                match unconditional.get(&nr) {
                    Some((earlier, j)) if *earlier != action => {
                        return Err(field_err(
                            format!("syscalls[{i}].action"),
                            format!(
                                "{name} already has a different action in syscalls[{j}]; \
                                 give each syscall one unconditional action"
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        unconditional.insert(nr, (action.clone(), i));
                    }
                }
            } else {
                conditional.push((action.clone(), nr, conditions.clone()));
            }
        }
    }
    Ok(Parsed {
        default_action,
        conditional,
        unconditional: unconditional
            .into_iter()
            .map(|(nr, (action, _))| (nr, action))
            .collect(),
        skipped,
    })
}

/// Compiles a Docker JSON profile for a task holding the capabilities in `caps_mask`,
/// on x86_64, for the kernel version `kernel` (`None`: `minKernel` conditions fail).
pub fn compile(
    json: &str,
    caps_mask: u64,
    kernel: Option<(u32, u32)>,
) -> Result<Compiled, ProfileError> {
    let parsed = parse(json, caps_mask, kernel)?;
    let program = super::codegen::generate(&parsed.policy());
    if program.len() > MAX_INSTRUCTIONS {
        return Err(ProfileError::Backend(format!(
            "the profile compiles to {} BPF instructions, more than the kernel's limit of \
             {MAX_INSTRUCTIONS}; merge rules or remove argument conditions",
            program.len()
        )));
    }
    Ok(Compiled {
        program,
        skipped: parsed.skipped,
    })
}

/// The x86_64 number of syscall `name`, if x86_64 has it.
pub fn syscall_number(name: &str) -> Option<i64> {
    SYSCALLS_X86_64
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, nr)| *nr)
}

/// x86_64 syscall names and numbers (the x86_64 ABI of `arch/x86/entry/syscalls/
/// syscall_64.tbl`, Linux 6.15). Checked against the kernel headers in the tests.
pub const SYSCALLS_X86_64: &[(&str, i64)] = &[
    ("read", 0),
    ("write", 1),
    ("open", 2),
    ("close", 3),
    ("stat", 4),
    ("fstat", 5),
    ("lstat", 6),
    ("poll", 7),
    ("lseek", 8),
    ("mmap", 9),
    ("mprotect", 10),
    ("munmap", 11),
    ("brk", 12),
    ("rt_sigaction", 13),
    ("rt_sigprocmask", 14),
    ("rt_sigreturn", 15),
    ("ioctl", 16),
    ("pread64", 17),
    ("pwrite64", 18),
    ("readv", 19),
    ("writev", 20),
    ("access", 21),
    ("pipe", 22),
    ("select", 23),
    ("sched_yield", 24),
    ("mremap", 25),
    ("msync", 26),
    ("mincore", 27),
    ("madvise", 28),
    ("shmget", 29),
    ("shmat", 30),
    ("shmctl", 31),
    ("dup", 32),
    ("dup2", 33),
    ("pause", 34),
    ("nanosleep", 35),
    ("getitimer", 36),
    ("alarm", 37),
    ("setitimer", 38),
    ("getpid", 39),
    ("sendfile", 40),
    ("socket", 41),
    ("connect", 42),
    ("accept", 43),
    ("sendto", 44),
    ("recvfrom", 45),
    ("sendmsg", 46),
    ("recvmsg", 47),
    ("shutdown", 48),
    ("bind", 49),
    ("listen", 50),
    ("getsockname", 51),
    ("getpeername", 52),
    ("socketpair", 53),
    ("setsockopt", 54),
    ("getsockopt", 55),
    ("clone", 56),
    ("fork", 57),
    ("vfork", 58),
    ("execve", 59),
    ("exit", 60),
    ("wait4", 61),
    ("kill", 62),
    ("uname", 63),
    ("semget", 64),
    ("semop", 65),
    ("semctl", 66),
    ("shmdt", 67),
    ("msgget", 68),
    ("msgsnd", 69),
    ("msgrcv", 70),
    ("msgctl", 71),
    ("fcntl", 72),
    ("flock", 73),
    ("fsync", 74),
    ("fdatasync", 75),
    ("truncate", 76),
    ("ftruncate", 77),
    ("getdents", 78),
    ("getcwd", 79),
    ("chdir", 80),
    ("fchdir", 81),
    ("rename", 82),
    ("mkdir", 83),
    ("rmdir", 84),
    ("creat", 85),
    ("link", 86),
    ("unlink", 87),
    ("symlink", 88),
    ("readlink", 89),
    ("chmod", 90),
    ("fchmod", 91),
    ("chown", 92),
    ("fchown", 93),
    ("lchown", 94),
    ("umask", 95),
    ("gettimeofday", 96),
    ("getrlimit", 97),
    ("getrusage", 98),
    ("sysinfo", 99),
    ("times", 100),
    ("ptrace", 101),
    ("getuid", 102),
    ("syslog", 103),
    ("getgid", 104),
    ("setuid", 105),
    ("setgid", 106),
    ("geteuid", 107),
    ("getegid", 108),
    ("setpgid", 109),
    ("getppid", 110),
    ("getpgrp", 111),
    ("setsid", 112),
    ("setreuid", 113),
    ("setregid", 114),
    ("getgroups", 115),
    ("setgroups", 116),
    ("setresuid", 117),
    ("getresuid", 118),
    ("setresgid", 119),
    ("getresgid", 120),
    ("getpgid", 121),
    ("setfsuid", 122),
    ("setfsgid", 123),
    ("getsid", 124),
    ("capget", 125),
    ("capset", 126),
    ("rt_sigpending", 127),
    ("rt_sigtimedwait", 128),
    ("rt_sigqueueinfo", 129),
    ("rt_sigsuspend", 130),
    ("sigaltstack", 131),
    ("utime", 132),
    ("mknod", 133),
    ("uselib", 134),
    ("personality", 135),
    ("ustat", 136),
    ("statfs", 137),
    ("fstatfs", 138),
    ("sysfs", 139),
    ("getpriority", 140),
    ("setpriority", 141),
    ("sched_setparam", 142),
    ("sched_getparam", 143),
    ("sched_setscheduler", 144),
    ("sched_getscheduler", 145),
    ("sched_get_priority_max", 146),
    ("sched_get_priority_min", 147),
    ("sched_rr_get_interval", 148),
    ("mlock", 149),
    ("munlock", 150),
    ("mlockall", 151),
    ("munlockall", 152),
    ("vhangup", 153),
    ("modify_ldt", 154),
    ("pivot_root", 155),
    ("_sysctl", 156),
    ("prctl", 157),
    ("arch_prctl", 158),
    ("adjtimex", 159),
    ("setrlimit", 160),
    ("chroot", 161),
    ("sync", 162),
    ("acct", 163),
    ("settimeofday", 164),
    ("mount", 165),
    ("umount2", 166),
    ("swapon", 167),
    ("swapoff", 168),
    ("reboot", 169),
    ("sethostname", 170),
    ("setdomainname", 171),
    ("iopl", 172),
    ("ioperm", 173),
    ("create_module", 174),
    ("init_module", 175),
    ("delete_module", 176),
    ("get_kernel_syms", 177),
    ("query_module", 178),
    ("quotactl", 179),
    ("nfsservctl", 180),
    ("getpmsg", 181),
    ("putpmsg", 182),
    ("afs_syscall", 183),
    ("tuxcall", 184),
    ("security", 185),
    ("gettid", 186),
    ("readahead", 187),
    ("setxattr", 188),
    ("lsetxattr", 189),
    ("fsetxattr", 190),
    ("getxattr", 191),
    ("lgetxattr", 192),
    ("fgetxattr", 193),
    ("listxattr", 194),
    ("llistxattr", 195),
    ("flistxattr", 196),
    ("removexattr", 197),
    ("lremovexattr", 198),
    ("fremovexattr", 199),
    ("tkill", 200),
    ("time", 201),
    ("futex", 202),
    ("sched_setaffinity", 203),
    ("sched_getaffinity", 204),
    ("set_thread_area", 205),
    ("io_setup", 206),
    ("io_destroy", 207),
    ("io_getevents", 208),
    ("io_submit", 209),
    ("io_cancel", 210),
    ("get_thread_area", 211),
    ("lookup_dcookie", 212),
    ("epoll_create", 213),
    ("epoll_ctl_old", 214),
    ("epoll_wait_old", 215),
    ("remap_file_pages", 216),
    ("getdents64", 217),
    ("set_tid_address", 218),
    ("restart_syscall", 219),
    ("semtimedop", 220),
    ("fadvise64", 221),
    ("timer_create", 222),
    ("timer_settime", 223),
    ("timer_gettime", 224),
    ("timer_getoverrun", 225),
    ("timer_delete", 226),
    ("clock_settime", 227),
    ("clock_gettime", 228),
    ("clock_getres", 229),
    ("clock_nanosleep", 230),
    ("exit_group", 231),
    ("epoll_wait", 232),
    ("epoll_ctl", 233),
    ("tgkill", 234),
    ("utimes", 235),
    ("vserver", 236),
    ("mbind", 237),
    ("set_mempolicy", 238),
    ("get_mempolicy", 239),
    ("mq_open", 240),
    ("mq_unlink", 241),
    ("mq_timedsend", 242),
    ("mq_timedreceive", 243),
    ("mq_notify", 244),
    ("mq_getsetattr", 245),
    ("kexec_load", 246),
    ("waitid", 247),
    ("add_key", 248),
    ("request_key", 249),
    ("keyctl", 250),
    ("ioprio_set", 251),
    ("ioprio_get", 252),
    ("inotify_init", 253),
    ("inotify_add_watch", 254),
    ("inotify_rm_watch", 255),
    ("migrate_pages", 256),
    ("openat", 257),
    ("mkdirat", 258),
    ("mknodat", 259),
    ("fchownat", 260),
    ("futimesat", 261),
    ("newfstatat", 262),
    ("unlinkat", 263),
    ("renameat", 264),
    ("linkat", 265),
    ("symlinkat", 266),
    ("readlinkat", 267),
    ("fchmodat", 268),
    ("faccessat", 269),
    ("pselect6", 270),
    ("ppoll", 271),
    ("unshare", 272),
    ("set_robust_list", 273),
    ("get_robust_list", 274),
    ("splice", 275),
    ("tee", 276),
    ("sync_file_range", 277),
    ("vmsplice", 278),
    ("move_pages", 279),
    ("utimensat", 280),
    ("epoll_pwait", 281),
    ("signalfd", 282),
    ("timerfd_create", 283),
    ("eventfd", 284),
    ("fallocate", 285),
    ("timerfd_settime", 286),
    ("timerfd_gettime", 287),
    ("accept4", 288),
    ("signalfd4", 289),
    ("eventfd2", 290),
    ("epoll_create1", 291),
    ("dup3", 292),
    ("pipe2", 293),
    ("inotify_init1", 294),
    ("preadv", 295),
    ("pwritev", 296),
    ("rt_tgsigqueueinfo", 297),
    ("perf_event_open", 298),
    ("recvmmsg", 299),
    ("fanotify_init", 300),
    ("fanotify_mark", 301),
    ("prlimit64", 302),
    ("name_to_handle_at", 303),
    ("open_by_handle_at", 304),
    ("clock_adjtime", 305),
    ("syncfs", 306),
    ("sendmmsg", 307),
    ("setns", 308),
    ("getcpu", 309),
    ("process_vm_readv", 310),
    ("process_vm_writev", 311),
    ("kcmp", 312),
    ("finit_module", 313),
    ("sched_setattr", 314),
    ("sched_getattr", 315),
    ("renameat2", 316),
    ("seccomp", 317),
    ("getrandom", 318),
    ("memfd_create", 319),
    ("kexec_file_load", 320),
    ("bpf", 321),
    ("execveat", 322),
    ("userfaultfd", 323),
    ("membarrier", 324),
    ("mlock2", 325),
    ("copy_file_range", 326),
    ("preadv2", 327),
    ("pwritev2", 328),
    ("pkey_mprotect", 329),
    ("pkey_alloc", 330),
    ("pkey_free", 331),
    ("statx", 332),
    ("io_pgetevents", 333),
    ("rseq", 334),
    ("uretprobe", 335),
    ("pidfd_send_signal", 424),
    ("io_uring_setup", 425),
    ("io_uring_enter", 426),
    ("io_uring_register", 427),
    ("open_tree", 428),
    ("move_mount", 429),
    ("fsopen", 430),
    ("fsconfig", 431),
    ("fsmount", 432),
    ("fspick", 433),
    ("pidfd_open", 434),
    ("clone3", 435),
    ("close_range", 436),
    ("openat2", 437),
    ("pidfd_getfd", 438),
    ("faccessat2", 439),
    ("process_madvise", 440),
    ("epoll_pwait2", 441),
    ("mount_setattr", 442),
    ("quotactl_fd", 443),
    ("landlock_create_ruleset", 444),
    ("landlock_add_rule", 445),
    ("landlock_restrict_self", 446),
    ("memfd_secret", 447),
    ("process_mrelease", 448),
    ("futex_waitv", 449),
    ("set_mempolicy_home_node", 450),
    ("cachestat", 451),
    ("fchmodat2", 452),
    ("map_shadow_stack", 453),
    ("futex_wake", 454),
    ("futex_wait", 455),
    ("futex_requeue", 456),
    ("statmount", 457),
    ("listmount", 458),
    ("lsm_get_self_attr", 459),
    ("lsm_set_self_attr", 460),
    ("lsm_list_modules", 461),
    ("mseal", 462),
    ("setxattrat", 463),
    ("getxattrat", 464),
    ("listxattrat", 465),
    ("removexattrat", 466),
    ("open_tree_attr", 467),
];

/// The program Cella generated before [`super::codegen`]: one seccompiler filter per run
/// of rules sharing an action, chained (a linear search, 1628 instructions for the
/// default profile). Kept as a reference for the equivalence tests.
#[cfg(test)]
pub mod seccompiler_reference {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch, sock_filter,
    };

    use super::{CmpOp, Cond, Parsed, ProfileError};

    const BPF_RET_K: u16 = 0x06;
    const BPF_JMP_JA: u16 = 0x05;

    /// Packs one instruction as `code<<48 | jt<<40 | jf<<32 | k`.
    pub fn pack(ins: &sock_filter) -> u64 {
        (u64::from(ins.code) << 48)
            | (u64::from(ins.jt) << 40)
            | (u64::from(ins.jf) << 32)
            | u64::from(ins.k)
    }

    fn condition(cond: &Cond) -> SeccompCondition {
        let op = match cond.op {
            CmpOp::Eq => SeccompCmpOp::Eq,
            CmpOp::Ne => SeccompCmpOp::Ne,
            CmpOp::Lt => SeccompCmpOp::Lt,
            CmpOp::Le => SeccompCmpOp::Le,
            CmpOp::Gt => SeccompCmpOp::Gt,
            CmpOp::Ge => SeccompCmpOp::Ge,
            CmpOp::MaskedEq(mask) => SeccompCmpOp::MaskedEq(mask),
        };
        SeccompCondition::new(cond.index, SeccompCmpArgLen::Qword, op, cond.value)
            .expect("index checked by parse_arg")
    }

    /// One run of rules sharing a match action.
    struct Segment {
        action: SeccompAction,
        rules: BTreeMap<i64, Vec<SeccompRule>>,
    }

    /// Compiles `segment` and appends it to `out`, turning its mismatch returns into
    /// jumps past its end.
    fn emit_segment(segment: Segment, out: &mut Vec<u64>) -> Result<(), ProfileError> {
        let sentinel = if segment.action == SeccompAction::Trace(0xffff) {
            SeccompAction::Trace(0xfffe)
        } else {
            SeccompAction::Trace(0xffff)
        };
        let sentinel_k = u32::from(sentinel.clone());
        let filter =
            SeccompFilter::new(segment.rules, sentinel, segment.action, TargetArch::x86_64)
                .map_err(|e| ProfileError::Backend(format!("seccompiler: {e}")))?;
        let bpf: BpfProgram = filter
            .try_into()
            .map_err(|e| ProfileError::Backend(format!("seccompiler: {e}")))?;
        let len = bpf.len();
        for (i, mut ins) in bpf.into_iter().enumerate() {
            if ins.code == BPF_RET_K && ins.k == sentinel_k {
                ins = sock_filter {
                    code: BPF_JMP_JA,
                    jt: 0,
                    jf: 0,
                    k: u32::try_from(len - i - 1).expect("small segment"),
                };
            }
            out.push(pack(&ins));
        }
        Ok(())
    }

    /// The seccompiler program for `parsed`.
    pub fn program(parsed: &Parsed) -> Result<Vec<u64>, ProfileError> {
        let mut segments: Vec<Segment> = Vec::new();
        for (action, nr, conds) in &parsed.conditional {
            let rule = SeccompRule::new(conds.iter().map(condition).collect())
                .map_err(|e| ProfileError::Backend(e.to_string()))?;
            match segments.last_mut() {
                Some(last) if last.action == *action => {
                    last.rules.entry(i64::from(*nr)).or_default().push(rule);
                }
                _ => segments.push(Segment {
                    action: action.clone(),
                    rules: BTreeMap::from([(i64::from(*nr), vec![rule])]),
                }),
            }
        }
        let mut by_action: Vec<Segment> = Vec::new();
        for (nr, action) in &parsed.unconditional {
            if *action == parsed.default_action {
                continue;
            }
            match by_action.iter_mut().find(|s| s.action == *action) {
                Some(segment) => {
                    segment.rules.insert(i64::from(*nr), Vec::new());
                }
                None => by_action.push(Segment {
                    action: action.clone(),
                    rules: BTreeMap::from([(i64::from(*nr), Vec::new())]),
                }),
            }
        }
        segments.extend(by_action);
        let mut program = Vec::new();
        if segments.is_empty() {
            emit_segment(
                Segment {
                    action: if parsed.default_action == SeccompAction::Allow {
                        SeccompAction::Log
                    } else {
                        SeccompAction::Allow
                    },
                    rules: BTreeMap::new(),
                },
                &mut program,
            )?;
        }
        for segment in segments {
            emit_segment(segment, &mut program)?;
        }
        program.push(pack(&sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: u32::from(parsed.default_action.clone()),
        }));
        Ok(program)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_kernel_headers_when_present() {
        let Ok(header) = std::fs::read_to_string("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
        else {
            eprintln!("kernel headers not installed; skipping the table check");
            return;
        };
        let mut checked = 0;
        for line in header.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("#define") {
                continue;
            }
            let (Some(name), Some(nr)) = (words.next(), words.next()) else {
                continue;
            };
            let (Some(name), Ok(nr)) = (name.strip_prefix("__NR_"), nr.parse::<i64>()) else {
                continue;
            };
            assert_eq!(syscall_number(name), Some(nr), "{name}");
            checked += 1;
        }
        assert!(checked > 300);
    }

    #[test]
    fn table_matches_libc() {
        for (name, nr) in [
            ("read", libc::SYS_read),
            ("mkdir", libc::SYS_mkdir),
            ("mkdirat", libc::SYS_mkdirat),
            ("clone", libc::SYS_clone),
            ("clone3", libc::SYS_clone3),
            ("mount", libc::SYS_mount),
            ("unshare", libc::SYS_unshare),
            ("close_range", libc::SYS_close_range),
            ("fchmodat2", libc::SYS_fchmodat2),
            ("mseal", libc::SYS_mseal),
            ("set_mempolicy_home_node", libc::SYS_set_mempolicy_home_node),
        ] {
            assert_eq!(syscall_number(name), Some(nr), "{name}");
        }
        assert_eq!(syscall_number("_llseek"), None);
        assert_eq!(syscall_number("chown32"), None);
        let mut names: Vec<_> = SYSCALLS_X86_64.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SYSCALLS_X86_64.len(), "duplicate names");
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel("6.18.44-fc-v669\n"), Some((6, 18)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel("5"), Some((5, 0)));
        assert_eq!(parse_kernel("x"), None);
    }
}

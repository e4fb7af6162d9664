//! Compiling seccomp profiles in Docker's JSON format to classic BPF.
//!
//! This file is shared: the library includes it as `crate::seccomp::compile`, and
//! `build.rs` includes it with `#[path]` (next to [`super::codegen`] and
//! [`super::syscalls`]) to compile `profiles/default.json` at build time. It may
//! therefore only use `std`, `serde`, `serde_json`, `seccompiler` and `caps` (all of
//! them are both dependencies and build-dependencies), and no `crate::` paths.
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
use super::syscalls::syscall_number;

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

/// A profile's `minKernel`: `"5.8"` → `(5, 8)`; `"6.18.44-foo"` → `(6, 18)`. Written
/// here rather than with procfs's version parser because this file is also compiled
/// into build.rs, which has only the dependencies listed above.
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

/// The `minKernel` value of the profile's `field`, parsed.
fn min_kernel(min: &str, field: impl FnOnce() -> String) -> Result<(u32, u32), ProfileError> {
    parse_kernel(min).ok_or_else(|| {
        field_err(
            field(),
            format!("{min:?} is not a kernel version; expected e.g. \"4.8\""),
        )
    })
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
            let wanted = min_kernel(min, || format!("syscalls[{i}].includes.minKernel"))?;
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
            let limit = min_kernel(min, || format!("syscalls[{i}].excludes.minKernel"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel("6.18.44-fc-v669\n"), Some((6, 18)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel("5"), Some((5, 0)));
        assert_eq!(parse_kernel("x"), None);
    }
}

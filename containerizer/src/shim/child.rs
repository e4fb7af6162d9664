//! The task side of the clone: runs in the new namespaces, in a copy of the
//! single-threaded shim, and ends in execve. Order (as Mesos' launcher and runc):
//! wait to be placed in the cgroups → stdio → filesystem → hostname → network →
//! rlimits → working directory → capability bounding set → user → capabilities →
//! no_new_privs → close-on-exec for every fd but 0-2 → seccomp → execve.
//!
//! Any failure is written to the error pipe as one code byte and a message
//! ([`Failure::report`], read back by [`Failure::from_report`]), and the child exits
//! with that code; a successful execve closes the pipe (O_CLOEXEC).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::cgroups::Placement;
use crate::spec::{SeccompProgram, ShimSpec};
use crate::start_failure::StartFailure;
use crate::task::{NetMode, Stdio};

/// A failed step: why the task never ran, and a message for the person who ran it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub failure: StartFailure,
    pub message: String,
}

impl Failure {
    pub fn setup(what: &str, err: impl std::fmt::Display) -> Self {
        Self {
            failure: StartFailure::Setup,
            message: format!("{what}: {err}"),
        }
    }

    fn new(failure: StartFailure, message: String) -> Self {
        Self { failure, message }
    }

    /// What the child writes to the error pipe: the code byte, then the message.
    fn report(&self) -> Vec<u8> {
        let mut report = Vec::with_capacity(self.message.len() + 1);
        report.push(self.failure.code());
        report.extend_from_slice(self.message.as_bytes());
        report
    }

    /// What the shim read from the error pipe; `None` for nothing (the task exec'd).
    /// A code that is none of the three is a setup failure (the child wrote it, so
    /// this cannot happen short of memory corruption, but the shim must not panic).
    pub fn from_report(report: &[u8]) -> Option<Self> {
        let (&code, message) = report.split_first()?;
        Some(Self {
            failure: StartFailure::from_code(i32::from(code)).unwrap_or(StartFailure::Setup),
            message: String::from_utf8_lossy(message).into_owned(),
        })
    }
}

pub fn run(spec: &ShimSpec, stdio: Option<&StdioFiles>, err_pipe: OwnedFd) -> ! {
    let failure = match setup_and_exec(spec, stdio) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    let _ = nix::unistd::write(&err_pipe, &failure.report());
    // SAFETY: _exit ends this forked copy without running the shim's atexit handlers
    // or flushing buffers that belong to the parent.
    unsafe { libc::_exit(failure.failure.exit_code()) }
}

enum Never {}

fn setup_and_exec(spec: &ShimSpec, stdio: Option<&StdioFiles>) -> Result<Never, Failure> {
    // First of all, enter the task's cgroups (on v2 the clone put us there): nothing
    // below runs unconfined.
    if let Placement::V1 { procs_files } = &spec.cgroup {
        enter_v1_cgroups(procs_files)?;
    }
    // The launcher may keep itself from the OOM killer (the agent's unit sets
    // OOMScoreAdjust=-900) and the shim inherits that; the task must not: when memory
    // runs out, tasks go before the agent. Raising the value needs no privilege.
    std::fs::write("/proc/self/oom_score_adj", "0")
        .map_err(|e| Failure::setup("resetting /proc/self/oom_score_adj", e))?;
    // Decoded before privileges drop; loading it is the last step before exec.
    let default_program = match &spec.seccomp {
        Some(SeccompProgram::Default) => crate::seccomp::default_program(),
        _ => Vec::new(),
    };

    if let Some(files) = stdio {
        redirect_stdio(files)?;
    }
    super::mounts::setup(&spec.filesystem).map_err(|e| Failure::setup("filesystem", e))?;
    if stdio.is_some() {
        // The task's own /dev/null in place of the host's: nothing of the host's tree
        // stays reachable through fd 0 (fchmod, /proc/self/fd/0).
        stdin_from_task_null()?;
    }
    if let Some(name) = &spec.hostname {
        nix::unistd::sethostname(name).map_err(|e| Failure::setup("setting the hostname", e))?;
    }
    if spec.net == NetMode::None {
        loopback_up().map_err(|e| Failure::setup("bringing up lo", e))?;
    }
    for limit in &spec.rlimits {
        let rlim = libc::rlimit {
            rlim_cur: limit.soft,
            rlim_max: limit.hard,
        };
        // SAFETY: setrlimit reads one valid rlimit struct.
        if unsafe { libc::setrlimit(limit.resource as _, &rlim) } != 0 {
            return Err(Failure::setup("setrlimit", io::Error::last_os_error()));
        }
    }
    std::env::set_current_dir(&spec.cwd)
        .map_err(|e| Failure::setup(&format!("working directory {}", spec.cwd.display()), e))?;

    // The program is looked up before privileges drop and the filter is loaded, so a
    // missing command is reported as such (127) and not as a seccomp denial.
    let program = resolve_program(spec)?;
    let argv: Vec<CString> = spec
        .args
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|e| cstring(e))
        .collect::<Result<_, _>>()?;

    if let Some(id) = &spec.identity {
        // The bounding set shrinks while we still hold CAP_SETPCAP; setuid to a
        // non-root uid then clears the permitted and effective sets, as with Docker.
        crate::capabilities::limit_bounding(spec.capabilities)
            .map_err(|e| Failure::setup("capabilities", e))?;
        let groups: Vec<nix::unistd::Gid> = id
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups).map_err(|e| Failure::setup("setgroups", e))?;
        nix::unistd::setgid(nix::unistd::Gid::from_raw(id.gid))
            .map_err(|e| Failure::setup("setgid", e))?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(id.uid))
            .map_err(|e| Failure::setup("setuid", e))?;
    }
    if spec.identity.as_ref().is_none_or(|id| id.uid == 0) {
        crate::capabilities::apply(spec.capabilities)
            .map_err(|e| Failure::setup("capabilities", e))?;
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Failure::setup("no_new_privs", io::Error::last_os_error()));
    }
    crate::sys::cloexec_from(3).map_err(|e| Failure::setup("closing inherited descriptors", e))?;
    match &spec.seccomp {
        Some(SeccompProgram::Default) => {
            crate::seccomp::install(&default_program).map_err(|e| Failure::setup("seccomp", e))?
        }
        Some(SeccompProgram::Custom(program)) => {
            crate::seccomp::install(program).map_err(|e| Failure::setup("seccomp", e))?;
        }
        None => {}
    }

    let err = nix::unistd::execve(&program, &argv, &envp).unwrap_err();
    let failure = match err {
        nix::errno::Errno::ENOENT => StartFailure::NotFound,
        _ => StartFailure::NotExecutable,
    };
    Err(Failure::new(
        failure,
        format!("{}: {}", program.to_string_lossy(), err.desc()),
    ))
}

/// Moves the calling (single-threaded) task into each v1 hierarchy by writing "0"
/// to `tasks`. Moving one's own thread is the one cgroup migration the kernel does
/// without its global threadgroup lock, whose RCU grace period made the shim's
/// write of the pid to `cgroup.procs` cost 4–25 ms under load (measured).
fn enter_v1_cgroups(procs_files: &[PathBuf]) -> Result<(), Failure> {
    for procs in procs_files {
        let tasks = procs.with_file_name("tasks");
        fs::write(&tasks, b"0")
            .map_err(|e| Failure::setup(&format!("entering cgroup {}", tasks.display()), e))?;
    }
    Ok(())
}

fn cstring(s: &str) -> Result<CString, Failure> {
    CString::new(s).map_err(|_| {
        Failure::setup(
            "argument or environment",
            format!("{s:?} contains a NUL byte"),
        )
    })
}

/// The task's stdin (/dev/null), stdout and stderr files, opened by the shim before
/// the clone: a file opened for writing in the task's new mount namespace would
/// count as a writer on its copy of `/` and keep it from turning read-only (EBUSY).
pub struct StdioFiles([fs::File; 3]);

pub fn open_stdio(stdio: &Stdio) -> Result<Option<StdioFiles>, Failure> {
    let Stdio::Files { stdout, stderr } = stdio else {
        return Ok(None);
    };
    let open_out = |path: &Path| {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Failure::setup(&format!("opening {}", path.display()), e))
    };
    let null = fs::File::open("/dev/null").map_err(|e| Failure::setup("opening /dev/null", e))?;
    Ok(Some(StdioFiles([
        null,
        open_out(stdout)?,
        open_out(stderr)?,
    ])))
}

fn stdin_from_task_null() -> Result<(), Failure> {
    let null = fs::File::open("/dev/null").map_err(|e| Failure::setup("opening /dev/null", e))?;
    // SAFETY: dup2 onto fd 0 from a descriptor we own; the old fd 0 is closed.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(Failure::setup(
            "redirecting stdin",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn redirect_stdio(files: &StdioFiles) -> Result<(), Failure> {
    for (target, file) in (0..).zip(&files.0) {
        // SAFETY: dup2 on descriptors we own; 0-2 are replaced atomically.
        if unsafe { libc::dup2(file.as_raw_fd(), target) } < 0 {
            return Err(Failure::setup(
                "redirecting stdio",
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Finds the program as execvp would: a name with a slash is used as is, otherwise
/// each directory of the task's PATH is tried.
fn resolve_program(spec: &ShimSpec) -> Result<CString, Failure> {
    let name = spec
        .args
        .first()
        .ok_or_else(|| Failure::setup("command", "empty"))?;
    let not_found = || Failure::new(StartFailure::NotFound, format!("{name}: command not found"));
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(name)]
    } else {
        let path = spec
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(name))
            .collect()
    };
    let mut not_executable = None;
    for candidate in candidates {
        match fs::metadata(&candidate) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                return CString::new(candidate.as_os_str().as_bytes()).map_err(|_| not_found());
            }
            Ok(_) => not_executable.get_or_insert(candidate),
            Err(_) => continue,
        };
    }
    match not_executable {
        Some(path) => Err(Failure::new(
            StartFailure::NotExecutable,
            format!(
                "{}: permission denied (not an executable file)",
                path.display()
            ),
        )),
        None if name.contains('/') => Err(Failure::new(
            StartFailure::NotFound,
            format!("{name}: no such file or directory"),
        )),
        None => Err(not_found()),
    }
}

/// A new network namespace has `lo` down; programs expect 127.0.0.1 to work.
fn loopback_up() -> io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        // IFF_UP is 1: it fits the short flags field.
        req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        for failure in [
            StartFailure::Setup,
            StartFailure::NotExecutable,
            StartFailure::NotFound,
        ] {
            let f = Failure::new(failure, "why: it did not".into());
            assert_eq!(Failure::from_report(&f.report()), Some(f));
        }
        assert_eq!(Failure::from_report(&[]), None);
        let odd = Failure::from_report(&[3, 0xff, b'x']).expect("a failure");
        assert_eq!(odd.failure, StartFailure::Setup);
    }
}

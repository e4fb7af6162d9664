//! Who holds a lease: a process, named so that its end can be told apart from the
//! start of another process that got the same pid. A lease whose holder is gone
//! (`cella exec` killed with SIGKILL never releases its lease) counts as released.
//!
//! A holder may also name a lock file that the processes it starts inherit (the
//! shim of `cella exec`'s task holds its run directory's locked `spec.json`): the
//! lease is then held until the process is gone and nobody holds that file's lock,
//! so it is written once, before the process it names starts any other.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ImageError;

/// A process on this machine: pid, start time and the boot it started in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    pub pid: i32,
    /// Clock ticks after boot when it started (`/proc/PID/stat`, field 22): a pid
    /// reused later has another start time.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when the lease was taken: a process of an
    /// earlier boot is gone, whatever its pid and start time.
    pub boot_id: String,
    /// A file whose `flock` the process takes, and the processes it starts inherit,
    /// before they can use the image: held by anyone, the lease is held too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<PathBuf>,
}

impl LeaseHolder {
    /// The calling process.
    pub fn this_process() -> Result<Self, ImageError> {
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        Self::of(pid).ok_or_else(|| ImageError::Io {
            path: format!("/proc/{pid}/stat").into(),
            op: "read the process's start time",
            source: std::io::Error::other("this process is not in /proc"),
        })
    }

    /// Process `pid` as it is now; `None` when there is none (or only its zombie).
    pub fn of(pid: i32) -> Option<Self> {
        let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
        if stat.state == 'Z' || stat.state == 'X' {
            return None;
        }
        Some(Self {
            pid,
            start_time: stat.starttime,
            boot_id: boot_id()?,
            lock: None,
        })
    }

    /// The same holder, and after it whoever holds the `flock` of `lock` (see
    /// [`LeaseHolder::lock`]). Only the process itself may take that lock first, and
    /// only while it lives.
    pub fn with_lock(self, lock: PathBuf) -> Self {
        Self {
            lock: Some(lock),
            ..self
        }
    }

    /// Whether the process is gone (no process has this pid, or the one that has it
    /// started later, or the machine rebooted) and so is its lock's holder.
    ///
    /// The process is looked at first: once it is gone, nobody new takes the lock
    /// (only the process takes it; the processes it started inherit it), so a lock
    /// found free afterwards stays free.
    pub fn is_gone(&self) -> bool {
        let alive = Self::of(self.pid)
            .is_some_and(|now| now.start_time == self.start_time && now.boot_id == self.boot_id);
        !alive && self.lock.as_deref().is_none_or(|lock| !lock_held(lock))
    }
}

/// Whether some process holds a `flock` on `path`: tried with a shared lock that is
/// not waited for (and released at once). A missing file is held by nobody; a file
/// that cannot be opened or locked for another reason counts as held (GC keeps the
/// image). Not read from `/proc/locks`, which hides the lock of a holder that has
/// ended when read from another pid namespace than the machine's.
fn lock_held(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    // The guard releases the lock this probe may take.
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock).is_err()
}

/// Read once per process: it changes only with a reboot.
fn boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            procfs::sys::kernel::random::boot_id()
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_held_while_it_lives() {
        let me = LeaseHolder::this_process().unwrap();
        assert!(!me.is_gone());
        let reused = LeaseHolder {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(reused.is_gone(), "another process with the same pid");
        let rebooted = LeaseHolder {
            boot_id: "another boot".into(),
            ..me.clone()
        };
        assert!(rebooted.is_gone());

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let holder = LeaseHolder::of(i32::try_from(child.id()).unwrap()).unwrap();
        assert!(!holder.is_gone());
        child.kill().unwrap();
        // Its zombie, before it is reaped, holds nothing either.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !holder.is_gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(holder.is_gone());
        child.wait().unwrap();
        assert!(holder.is_gone());
    }

    #[test]
    fn a_lock_holds_the_lease_after_its_process_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("spec.json");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let holder = LeaseHolder::of(i32::try_from(child.id()).unwrap())
            .unwrap()
            .with_lock(lock.clone());
        assert!(!holder.is_gone(), "the process lives; no lock file yet");

        // What the process started (here: this one) holds the lock it took.
        let file = std::fs::File::create(&lock).unwrap();
        let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!holder.is_gone(), "the process is gone, its lock is held");
        assert!(!holder.is_gone(), "probing leaves the lock as it was");

        drop(held);
        assert!(holder.is_gone(), "the process and its lock are gone");
        std::fs::remove_file(&lock).unwrap();
        assert!(holder.is_gone(), "no lock file: nobody holds it");
    }
}

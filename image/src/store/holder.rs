//! Who holds a lease: a process, named so that its end can be told apart from the
//! start of another process that got the same pid. A lease whose holder is gone
//! (`cella exec` killed with SIGKILL never releases its lease) counts as released.

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
        })
    }

    /// Whether the process is gone: no process has this pid, or the one that has it
    /// started later, or the machine rebooted.
    pub fn is_gone(&self) -> bool {
        Self::of(self.pid).as_ref() != Some(self)
    }
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
}

//! What the containerizer reads from /proc, through the `procfs` crate: process start
//! times and states (to tell a process from a later one with the same pid), the
//! kernel's version, and the decoding of mountinfo fields, which procfs leaves as the
//! kernel wrote them.

use procfs::process::{ProcState, Process};

/// A process's start time (clock ticks since boot, field 22 of /proc/PID/stat):
/// with the pid it identifies a process across pid reuse.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = Process::new(pid).and_then(|p| p.stat()).ok()?;
    Some(stat.starttime)
}

/// The wall-clock time (ns since the epoch) of `ticks` clock ticks after boot, e.g. a
/// process's start time.
pub fn boot_ticks_to_epoch_ns(ticks: u64) -> Option<u64> {
    let boot = procfs::boot_time_secs().ok()?;
    let per_second = procfs::ticks_per_second().max(1);
    Some(
        boot.saturating_mul(1_000_000_000)
            .saturating_add(ticks.saturating_mul(1_000_000_000) / per_second),
    )
}

/// Whether `pid` is a zombie: it has exited and waits to be reaped.
pub fn process_is_zombie(pid: i32) -> bool {
    Process::new(pid)
        .and_then(|p| p.stat())
        .and_then(|stat| stat.state())
        .is_ok_and(|state| state == ProcState::Zombie)
}

/// The running kernel's (major, minor) version, from /proc/sys/kernel/osrelease.
pub fn kernel_version() -> Option<(u32, u32)> {
    let version = procfs::KernelVersion::current().ok()?;
    Some((u32::from(version.major), u32::from(version.minor)))
}

/// Decodes a mountinfo path field (root, mount point): the kernel escapes space, tab,
/// newline and backslash as `\ooo`, and procfs (`MountInfo::from_line` in procfs-core
/// 0.18) hands the fields over undecoded, so this is the one decoder Cella has.
pub fn unescape_mountinfo(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(process_start_time(me).is_some());
        assert!(process_start_time(i32::MAX).is_none());
        assert!(!process_is_zombie(me));
    }

    #[test]
    fn kernel_version_is_known() {
        let (major, _) = kernel_version().expect("/proc/sys/kernel/osrelease");
        assert!(major >= 3);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(
            unescape_mountinfo("/t\\011ab\\012nl\\134bs"),
            "/t\tab\nnl\\bs"
        );
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        // Not an escape: kept as is.
        assert_eq!(unescape_mountinfo("/x\\04"), "/x\\04");
    }
}

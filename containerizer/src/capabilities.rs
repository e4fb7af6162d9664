//! Capabilities: Docker's default set without `CAP_NET_RAW` (13), `--cap-add` /
//! `--cap-drop` (with `ALL`), and applying a mask in the task before exec.

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};

#[derive(Debug, thiserror::Error)]
pub enum CapError {
    #[error("unknown capability {0:?} (use names like NET_ADMIN or CAP_NET_ADMIN, or ALL)")]
    Unknown(String),
    #[error("setting capabilities failed: {0}")]
    Apply(String),
}

/// Where the kernel says which capability is its last one.
const CAP_LAST_CAP: &str = "/proc/sys/kernel/cap_last_cap";

/// The default capability set as a mask: Docker's without `CAP_NET_RAW`. With the
/// host's network a raw socket sees the host's traffic (the master's and the agent's
/// too); Kubernetes' restricted profile drops it as well. `--cap-add NET_RAW` gives
/// it back.
pub fn default_mask() -> u64 {
    crate::seccomp::compile::docker_default_caps_mask() & !Capability::CAP_NET_RAW.bitmask()
}

/// The highest capability number the running kernel knows, from
/// `/proc/sys/kernel/cap_last_cap`; the highest the `caps` crate knows if unreadable.
pub fn last_cap() -> u8 {
    std::fs::read_to_string(CAP_LAST_CAP)
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .filter(|n| *n < 64)
        .unwrap_or_else(|| caps::all().iter().map(Capability::index).max().unwrap_or(0))
}

/// Every capability of the running kernel as a mask.
pub fn all_mask() -> u64 {
    let last = last_cap();
    if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    }
}

/// Parses one capability name (any case, with or without `CAP_`).
pub fn parse(name: &str) -> Result<Capability, CapError> {
    Capability::from_str(&caps::to_canonical(name.trim()))
        .map_err(|_| CapError::Unknown(name.to_string()))
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// default − drop + add (names case-insensitive, with or without `CAP_`; `ALL`).
pub fn resolve(add: &[String], drop: &[String]) -> Result<u64, CapError> {
    let mut mask = default_mask();
    for name in drop {
        if is_all(name) {
            mask = 0;
        } else {
            mask &= !parse(name)?.bitmask();
        }
    }
    for name in add {
        if is_all(name) {
            mask |= all_mask();
        } else {
            mask |= parse(name)?.bitmask();
        }
    }
    Ok(mask)
}

/// The names of the capabilities in `mask` (`CAP_CHOWN`, …), in number order; bits
/// the `caps` crate has no name for are shown as `CAP_<n>`.
pub fn names(mask: u64) -> Vec<String> {
    let mut known: Vec<Capability> = caps::all().into_iter().collect();
    known.sort_by_key(Capability::index);
    (0u8..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| {
            known
                .iter()
                .find(|c| c.index() == bit)
                .map_or_else(|| format!("CAP_{bit}"), ToString::to_string)
        })
        .collect()
}

fn set_of(mask: u64) -> CapsHashSet {
    caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .collect()
}

fn mask_of(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// Drops every capability not in `mask` from the bounding set (needs CAP_SETPCAP in
/// the effective set). Done before `setuid` to a non-root uid, which then clears the
/// permitted and effective sets, as with Docker.
///
/// Capabilities of the running kernel that the `caps` crate does not know are dropped
/// with `prctl(PR_CAPBSET_DROP)` directly.
pub fn limit_bounding(mask: u64) -> Result<(), CapError> {
    let err = |what: &str, e: caps::errors::CapsError| {
        CapError::Apply(format!(
            "{what}: {e} (the shim must run as root with CAP_SETPCAP to restrict capabilities)"
        ))
    };
    let known = caps::all();
    for cap in 0..=last_cap() {
        if mask & (1u64 << cap) != 0 {
            continue;
        }
        match known.iter().find(|c| c.index() == cap) {
            Some(c) => caps::drop(None, CapSet::Bounding, *c)
                .map_err(|e| err(&format!("dropping {c} from the bounding set"), e))?,
            None => {
                // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers.
                let rc = unsafe {
                    libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0)
                };
                // EINVAL: the kernel does not know this capability; nothing to drop.
                if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                    return Err(CapError::Apply(format!(
                        "dropping capability {cap} from the bounding set: {}",
                        std::io::Error::last_os_error()
                    )));
                }
            }
        }
    }

    Ok(())
}

/// In the task, before exec: bounding set = mask; permitted/effective/inheritable =
/// mask for root (a non-root uid loses them at setuid, as with Docker); ambient cleared.
///
/// Bits the `caps` crate has no name for cannot be kept in the other sets.
pub fn apply(mask: u64) -> Result<(), CapError> {
    let err = |what: &str, e: caps::errors::CapsError| {
        CapError::Apply(format!(
            "{what}: {e} (the shim must run as root with CAP_SETPCAP to restrict capabilities)"
        ))
    };
    // Ambient first: lowering the other sets would drop ambient bits anyway.
    caps::clear(None, CapSet::Ambient).map_err(|e| err("clearing the ambient set", e))?;

    limit_bounding(mask)?;

    // We can only keep what we hold: a non-root caller (after setuid with keepcaps) may
    // have lost some permitted capabilities already.
    let permitted =
        caps::read(None, CapSet::Permitted).map_err(|e| err("reading the permitted set", e))?;
    let target = set_of(mask & mask_of(&permitted));
    caps::set(None, CapSet::Inheritable, &target)
        .map_err(|e| err("setting the inheritable set", e))?;
    // Effective before permitted: the effective set must stay a subset of permitted.
    caps::set(None, CapSet::Effective, &target).map_err(|e| err("setting the effective set", e))?;
    caps::set(None, CapSet::Permitted, &target).map_err(|e| err("setting the permitted set", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_string()).collect()
    }

    #[test]
    fn default_is_dockers_fourteen_without_net_raw() {
        let m = default_mask();
        assert_eq!(m.count_ones(), 13);
        // CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7,
        // SETPCAP 8, NET_BIND_SERVICE 10, SYS_CHROOT 18, MKNOD 27, AUDIT_WRITE 29,
        // SETFCAP 31 (Docker's also has NET_RAW 13).
        let bits = [0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 27, 29, 31];
        assert_eq!(m, bits.iter().fold(0u64, |m, b| m | (1 << b)));
        assert_eq!(m, 0xa80405fb);
    }

    #[test]
    fn resolve_add_drop() {
        let net_raw = Capability::CAP_NET_RAW.bitmask();
        assert_eq!(
            resolve(&s(&["NET_RAW"]), &[]).unwrap(),
            default_mask() | net_raw
        );
        assert_eq!(
            resolve(&[], &s(&["cap_kill"])).unwrap(),
            default_mask() & !Capability::CAP_KILL.bitmask()
        );
        assert_eq!(resolve(&[], &s(&["Net_Raw"])).unwrap(), default_mask());
        let admin = Capability::CAP_SYS_ADMIN.bitmask();
        assert_eq!(
            resolve(&s(&["sys_admin"]), &[]).unwrap(),
            default_mask() | admin
        );
        // drop ALL then add one.
        assert_eq!(
            resolve(&s(&["NET_BIND_SERVICE"]), &s(&["all"])).unwrap(),
            1 << 10
        );
        // add wins over drop, as with Docker.
        assert_eq!(
            resolve(&s(&["CHOWN"]), &s(&["CHOWN"])).unwrap(),
            default_mask()
        );
        assert_eq!(resolve(&s(&["ALL"]), &[]).unwrap(), all_mask());
        assert_eq!(all_mask().count_ones(), u32::from(last_cap()) + 1);
    }

    #[test]
    fn unknown_names() {
        match resolve(&s(&["NET_FOO"]), &[]) {
            Err(CapError::Unknown(name)) => assert_eq!(name, "NET_FOO"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            resolve(&[], &s(&["CAP_"])),
            Err(CapError::Unknown(_))
        ));
        let msg = resolve(&s(&["bogus"]), &[]).unwrap_err().to_string();
        assert!(msg.contains("bogus") && msg.contains("NET_ADMIN"), "{msg}");
    }

    #[test]
    fn names_of_mask() {
        assert_eq!(names(0), Vec::<String>::new());
        assert_eq!(names(1 | (1 << 13)), s(&["CAP_CHOWN", "CAP_NET_RAW"]));
        assert_eq!(names(1 << 63), s(&["CAP_63"]));
        assert_eq!(names(default_mask()).len(), 13);
    }
}

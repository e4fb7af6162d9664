//! The system calls every program makes before its own code runs: the dynamic loader
//! maps the program's libraries (`openat`, `read`, `mmap`, `mprotect`, `close`), sets up
//! its thread (`arch_prctl`) and heap (`brk`), and a static binary's start-up does the
//! same. A profile that refuses one of them stops every command before it can start,
//! usually with a SIGSEGV in the loader and no message of the command's own, so Cella
//! names the calls instead.

use std::path::Path;

use seccompiler::SeccompAction;

use super::{compile, syscalls};

const STARTUP: [&str; 8] = [
    "brk",
    "mmap",
    "mprotect",
    "arch_prctl",
    "openat",
    "read",
    "close",
    "exit_group",
];

/// The start-up calls the profile in `json` refuses whatever their arguments, for a
/// task with Docker's default capabilities; empty when the profile does not parse.
pub fn denied_startup_calls(json: &str) -> Vec<&'static str> {
    let caps = compile::docker_default_caps_mask();
    let Ok(parsed) = compile::parse(json, caps, crate::proc_info::kernel_version()) else {
        return Vec::new();
    };
    STARTUP
        .into_iter()
        .filter(|name| {
            let Some(nr) = syscalls::syscall_number(name).and_then(|n| u32::try_from(n).ok())
            else {
                return false;
            };
            if parsed.conditional.iter().any(|(_, n, _)| *n == nr) {
                return false;
            }
            let action = parsed
                .unconditional
                .get(&nr)
                .unwrap_or(&parsed.default_action);
            !matches!(action, SeccompAction::Allow)
        })
        .collect()
}

/// What a command stopped by such a profile is told, if the profile at `path` refuses
/// any start-up call; `None` otherwise (the command died of something else).
pub fn startup_explanation(path: &Path) -> Option<String> {
    let json = std::fs::read_to_string(path).ok()?;
    let denied = denied_startup_calls(&json);
    if denied.is_empty() {
        return None;
    }
    Some(format!(
        "the seccomp profile {} denies {}, which every program calls while it starts: \
         the profile stopped the command before it could start. Allow these calls in \
         the profile (Cella's default, containerizer/profiles/default.json, is a \
         starting point)",
        path.display(),
        denied.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deny_all_profile_denies_every_startup_call() {
        let denied = denied_startup_calls(r#"{ "defaultAction": "SCMP_ACT_ERRNO" }"#);
        assert_eq!(denied, STARTUP.to_vec());
    }

    #[test]
    fn profiles_that_allow_start_up_deny_none() {
        let default = include_str!("../../profiles/default.json");
        assert!(denied_startup_calls(default).is_empty());
        let allow_all = r#"{ "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [ { "names": ["mkdir"], "action": "SCMP_ACT_ERRNO" } ] }"#;
        assert!(denied_startup_calls(allow_all).is_empty());
        let no_mmap = r#"{ "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [ { "names": ["mmap"], "action": "SCMP_ACT_ERRNO" } ] }"#;
        assert_eq!(denied_startup_calls(no_mmap), vec!["mmap"]);
    }
}

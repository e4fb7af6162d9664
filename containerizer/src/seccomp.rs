//! Seccomp: Cella's default allowlist (Docker's default profile with the differences
//! listed in docs/security.md, checked by [`docker_diff`]),
//! profiles in Docker's JSON format, compiled to compact classic BPF (a binary search
//! over syscall-number ranges, see [`codegen`]).
//! The default profile is compiled at build time (build.rs), never per launch.
//!
//! The compiler lives in [`compile`], [`codegen`] and [`syscalls`] (shared with
//! `build.rs`); see their documentation for how profile entries, capabilities and argument conditions
//! are evaluated and how the program is laid out.

use std::path::{Path, PathBuf};

pub(crate) mod codegen;
pub(crate) mod compile;
#[cfg(test)]
mod docker_diff;
#[cfg(test)]
mod equivalence;
#[cfg(test)]
mod reference;
mod startup;
pub(crate) mod syscalls;

pub use startup::startup_explanation;

/// A compiled filter: `struct sock_filter` instructions packed as
/// `code<<48 | jt<<40 | jf<<32 | k` (the form carried in [`crate::spec::ShimSpec`]).
pub type Program = Vec<u64>;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile {path}: {why}")]
    Profile {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("seccomp: {0}")]
    Compile(String),
    #[error("loading the seccomp filter failed: {0}")]
    Install(std::io::Error),
}

/// The default profile's JSON (`containerizer/profiles/default.json`).
pub const DEFAULT_PROFILE_JSON: &str = include_str!("../profiles/default.json");

/// The default profile compiled by build.rs for [`compile::docker_default_caps_mask`],
/// as little-endian u64 instructions.
static DEFAULT_PROGRAM_BYTES: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/default_seccomp.bpf"));

/// Name used in errors for profiles that were given as a string.
const INLINE: &str = "(inline profile)";

/// The default profile's program, compiled at build time.
pub fn default_program() -> Program {
    DEFAULT_PROGRAM_BYTES
        .chunks_exact(8)
        .map(|c| {
            let mut word = [0u8; 8];
            word.copy_from_slice(c);
            u64::from_le_bytes(word)
        })
        .collect()
}

/// The default profile for a task holding `caps_mask`: the build-time program for
/// Docker's default capabilities, otherwise compiled now (a task given e.g.
/// `CAP_SYS_ADMIN` may use `mount`, as with Docker).
pub fn default_program_for(caps_mask: u64) -> Result<Program, SeccompError> {
    // The profile names no rule for CAP_NET_RAW: with or without it (Cella's default
    // set drops it) the program is the build-time one.
    let net_raw = caps::Capability::CAP_NET_RAW.bitmask();
    if caps_mask | net_raw == compile::docker_default_caps_mask() {
        return Ok(default_program());
    }
    compile_profile(DEFAULT_PROFILE_JSON, caps_mask)
}

fn to_seccomp_error(path: &Path, e: compile::ProfileError) -> SeccompError {
    match e {
        compile::ProfileError::Backend(why) => {
            SeccompError::Compile(format!("{}: {why}", path.display()))
        }
        other => SeccompError::Profile {
            path: path.to_path_buf(),
            why: other.to_string(),
        },
    }
}

fn compile_at(json: &str, caps_mask: u64, path: &Path) -> Result<Program, SeccompError> {
    let compiled = compile::compile(json, caps_mask, crate::proc_info::kernel_version())
        .map_err(|e| to_seccomp_error(path, e))?;
    if !compiled.skipped.is_empty() {
        tracing::debug!(
            profile = %path.display(),
            skipped = ?compiled.skipped,
            "seccomp: syscalls that do not exist on x86_64 were skipped"
        );
    }
    Ok(compiled.program)
}

/// Compiles a profile in Docker's JSON format for a task holding the capabilities in
/// `caps_mask` (entries with `includes.caps` / `excludes.caps` depend on it).
pub fn compile_profile(json: &str, caps_mask: u64) -> Result<Program, SeccompError> {
    compile_at(json, caps_mask, Path::new(INLINE))
}

/// Reads and compiles a profile in Docker's JSON format, for Docker's default
/// capabilities.
pub fn load_profile(path: &std::path::Path) -> Result<Program, SeccompError> {
    load_profile_for(path, compile::docker_default_caps_mask())
}

/// Reads and compiles a profile in Docker's JSON format for a task holding `caps_mask`.
pub fn load_profile_for(path: &Path, caps_mask: u64) -> Result<Program, SeccompError> {
    let json = std::fs::read_to_string(path).map_err(|e| SeccompError::Profile {
        path: PathBuf::from(path),
        why: format!(
            "cannot read the file: {e} (give the path of a JSON profile readable by the agent)"
        ),
    })?;
    compile_at(&json, caps_mask, path)
}

/// What a task that died of `SIGSYS` is told: a seccomp filter killed it at a system
/// call, and how to find which. `profile` names the profile Cella gave it; `None`
/// when Cella's filter cannot have done it (the default profile answers with an
/// errno), so the filter is one the command installed itself.
pub fn sigsys_explanation(profile: Option<&str>) -> String {
    let whose = match profile {
        Some(name) => format!("the seccomp profile {name}"),
        None => "a seccomp filter the command installed (Cella's default profile fails \
                 denied calls with EPERM instead)"
            .to_string(),
    };
    format!(
        "killed by seccomp (SIGSYS): {whose} denies a system call the command made. \
         To find it: the kernel logged the call (`journalctl -k` or `dmesg`: \
         `type=1326 ... sig=31 ... syscall=N`; `ausyscall N` names it), or run the \
         command under the default profile, where the call fails with EPERM and the \
         command's own error names it"
    )
}

/// Splits a packed instruction into a `sock_filter`, without integer casts.
fn unpack(ins: u64) -> libc::sock_filter {
    let codegen::Insn { code, jt, jf, k } = codegen::Insn::unpack(ins);
    libc::sock_filter { code, jt, jf, k }
}

/// Sets no_new_privs must already be done; installs `program` for the calling thread.
/// Async-signal-safe enough to run in the forked child (no allocation): the program is
/// unpacked into a buffer on the stack (32 KiB, the kernel's maximum program size).
pub fn install(program: &[u64]) -> Result<(), SeccompError> {
    const EMPTY: libc::sock_filter = libc::sock_filter {
        code: 0,
        jt: 0,
        jf: 0,
        k: 0,
    };
    if program.is_empty() || program.len() > compile::MAX_INSTRUCTIONS {
        return Err(SeccompError::Install(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the program must hold 1 to 4096 instructions",
        )));
    }
    let mut buf = [EMPTY; compile::MAX_INSTRUCTIONS];
    for (slot, ins) in buf.iter_mut().zip(program) {
        *slot = unpack(*ins);
    }
    let len = u16::try_from(program.len()).map_err(|_| {
        SeccompError::Install(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "program too long",
        ))
    })?;
    let prog = libc::sock_fprog {
        len,
        filter: buf.as_mut_ptr(),
    };
    // SAFETY: `prog` points to `len` initialised `sock_filter`s in `buf`, which outlives
    // the call; the kernel copies the program and keeps no pointer to it.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(SeccompError::Install(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_time_program_equals_runtime_compile() {
        let runtime = compile_profile(DEFAULT_PROFILE_JSON, compile::docker_default_caps_mask())
            .expect("default profile compiles");
        assert_eq!(runtime, default_program());
        assert!(default_program().len() < compile::MAX_INSTRUCTIONS);
        // Cella's default set (without CAP_NET_RAW) gets the same program.
        let without_net_raw =
            compile_profile(DEFAULT_PROFILE_JSON, crate::capabilities::default_mask())
                .expect("default profile compiles");
        assert_eq!(without_net_raw, default_program());
    }

    #[test]
    fn pack_unpack_roundtrip() {
        let ins = codegen::Insn {
            code: 0x15,
            jt: 3,
            jf: 250,
            k: 0xdead_beef,
        };
        let packed = ins.pack();
        assert_eq!(packed, 0x0015_03fa_dead_beef);
        assert_eq!(codegen::Insn::unpack(packed), ins);
        let back = unpack(packed);
        assert_eq!(
            (back.code, back.jt, back.jf, back.k),
            (0x15, 3, 250, 0xdead_beef)
        );
    }

    #[test]
    fn sys_admin_changes_the_default_program() {
        let mut mask = compile::docker_default_caps_mask();
        mask |= caps::Capability::CAP_SYS_ADMIN.bitmask();
        let with_admin = default_program_for(mask).expect("compiles");
        assert_ne!(with_admin, default_program());
    }

    #[test]
    fn errors_name_the_field() {
        let err = compile_profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read"],"action":"SCMP_ACT_ALLOW"},
                {"names":["write"],"action":"SCMP_ACT_BOGUS"}]}"#,
            0,
        )
        .expect_err("bogus action");
        let msg = err.to_string();
        assert!(msg.contains("syscalls[1].action"), "{msg}");
        assert!(msg.contains("SCMP_ACT_BOGUS"), "{msg}");

        let err = compile_profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read"],"action":"SCMP_ACT_ALLOW",
                 "args":[{"index":7,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
            0,
        )
        .expect_err("bad index");
        assert!(
            err.to_string().contains("syscalls[0].args[0].index"),
            "{err}"
        );

        let err = compile_profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read"],"action":"SCMP_ACT_ALLOW",
                 "args":[{"index":0,"value":1,"op":"SCMP_CMP_ABOUT"}]}]}"#,
            0,
        )
        .expect_err("bad op");
        assert!(err.to_string().contains("syscalls[0].args[0].op"), "{err}");

        let err = compile_profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read"],"action":"SCMP_ACT_ALLOW"},
                {"names":["read"],"action":"SCMP_ACT_ERRNO"}]}"#,
            0,
        )
        .expect_err("conflict");
        assert!(err.to_string().contains("syscalls[0]"), "{err}");

        let err = compile_profile(r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [}"#, 0)
            .expect_err("malformed");
        assert!(matches!(err, SeccompError::Profile { .. }));
        assert!(err.to_string().contains("line 1 column"), "{err}");
    }

    #[test]
    fn unknown_names_are_skipped_and_includes_are_evaluated() {
        let json = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["read","_llseek","fcntl64"],"action":"SCMP_ACT_ALLOW"},
            {"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
            {"names":["ptrace"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["s390x"]}},
            {"names":["kcmp"],"action":"SCMP_ACT_ALLOW","excludes":{"arches":["amd64"]}},
            {"names":["uname"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"99.0"}}]}"#;
        let only_read = compile_profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
            0,
        )
        .expect("compiles");
        assert_eq!(compile_profile(json, 0).expect("compiles"), only_read);
        let admin = caps::Capability::CAP_SYS_ADMIN.bitmask();
        assert_ne!(compile_profile(json, admin).expect("compiles"), only_read);
    }

    #[test]
    fn empty_and_allow_all_profiles_compile() {
        let p = compile_profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#, 0).expect("compiles");
        // Ends with RET ALLOW.
        assert_eq!(p.last().copied(), Some((0x06u64 << 48) | 0x7fff_0000));
        compile_profile(r#"{"defaultAction":"SCMP_ACT_LOG","syscalls":null}"#, 0)
            .expect("compiles");
    }
}

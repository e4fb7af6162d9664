//! Seccomp: Cella's default allowlist (equivalent to Docker's default profile),
//! profiles in Docker's JSON format, compiled to classic BPF with `seccompiler`.
//! The default profile is compiled at build time (build.rs), never per launch.
//! HELPER-OWNED: see the interface below.

/// A compiled filter: `struct sock_filter` instructions packed as
/// `code<<48 | jt<<40 | jf<<32 | k` (the form carried in [`crate::spec::ShimSpec`]).
pub type Program = Vec<u64>;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile {path}: {why}")]
    Profile { path: std::path::PathBuf, why: String },
    #[error("seccomp: {0}")]
    Compile(String),
    #[error("loading the seccomp filter failed: {0}")]
    Install(std::io::Error),
}

/// The default profile's program, compiled at build time.
pub fn default_program() -> Program {
    todo!("helper")
}

/// Reads and compiles a profile in Docker's JSON format.
pub fn load_profile(path: &std::path::Path) -> Result<Program, SeccompError> {
    let _ = path;
    todo!("helper")
}

/// Sets no_new_privs must already be done; installs `program` for the calling thread.
/// Async-signal-safe enough to run in the forked child (no allocation).
pub fn install(program: &[u64]) -> Result<(), SeccompError> {
    let _ = program;
    todo!("helper")
}

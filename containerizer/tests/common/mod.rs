//! What the containerizer's integration tests share.

// Each test binary uses a part of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use cella_containerizer::task::Stdio;
use cella_containerizer::{Containerizer, ContainerizerConfig, TaskConfig, TaskId};

/// `cella-shim` next to the test's target directory (target/debug/deps/.. ).
pub fn shim_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let shim = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("cella-shim");
    assert!(
        shim.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        shim.display()
    );
    shim
}

/// What a root-only test works in: a runtime directory of its own (removed on drop,
/// also when an assertion failed) and a cgroup root name no other test uses,
/// `cella-test-<pid>-<tag><n>`. Dropping it destroys every task left in that cgroup
/// root and removes the root.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub cgroup_root: PathBuf,
    shim: PathBuf,
}

impl Workspace {
    /// Fails unless the test runs as root: cgroups and namespaces need it.
    pub fn new(tag: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests need root (cgroups, namespaces)"
        );
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            cgroup_root: PathBuf::from(format!("cella-test-{}-{tag}{n}", std::process::id())),
            shim: shim_path(),
        }
    }

    fn config(&self) -> ContainerizerConfig {
        config(
            self.shim.clone(),
            &self.dir.path().join("run"),
            &self.cgroup_root,
        )
    }

    /// A containerizer on this runtime directory and cgroup root; a second one made
    /// later is what an agent restart creates.
    pub fn containerizer(&self) -> Containerizer {
        Containerizer::new(self.config()).expect("containerizer")
    }

    /// Task `name` running `sh -c script` in a sandbox of its own below the runtime
    /// directory, its output in the sandbox's `stdout` and `stderr` files.
    pub fn sh_task(&self, name: &str, script: &str) -> (TaskId, TaskConfig) {
        let sandbox = self.dir.path().join(name);
        std::fs::create_dir_all(&sandbox).expect("sandbox");
        let mut config = TaskConfig::new(
            vec!["sh".into(), "-c".into(), script.into()],
            sandbox.clone(),
        );
        config.stdio = Stdio::Files {
            stdout: sandbox.join("stdout"),
            stderr: sandbox.join("stderr"),
        };
        (TaskId::new(name).expect("id"), config)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // No panic here: a drop during a failed assertion would abort the run.
        let Ok(c) = Containerizer::new(self.config()) else {
            return;
        };
        if let Ok(names) = c.cgroups().list() {
            for name in names {
                if let Ok(id) = TaskId::new(name) {
                    c.destroy(&id);
                }
            }
        }
        c.cgroups().remove_base_if_empty();
    }
}

/// A containerizer's configuration as the tests run it: no cleanup of orphans,
/// nothing hidden, no systemd slice.
fn config(shim_path: PathBuf, runtime_dir: &Path, cgroup_root: &Path) -> ContainerizerConfig {
    ContainerizerConfig {
        shim_path,
        runtime_dir: runtime_dir.to_path_buf(),
        cgroup_root: Some(cgroup_root.to_path_buf()),
        cleanup_if_orphaned: false,
        hidden: Vec::new(),
        systemd_slice: None,
    }
}

/// A containerizer on `runtime_dir` under cgroup root `cgroup_root`, configured as
/// [`Workspace::containerizer`] configures it.
pub fn containerizer(runtime_dir: &Path, cgroup_root: &Path) -> Containerizer {
    Containerizer::new(config(shim_path(), runtime_dir, cgroup_root)).expect("containerizer")
}

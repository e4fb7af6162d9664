//! What the containerizer's integration tests share.

use std::path::{Path, PathBuf};

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

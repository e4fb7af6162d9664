//! Shared by the image tests: a real registry, image builders, an overlay runner.
#![allow(dead_code)]

pub mod images;
pub mod registry;
pub mod token;

use std::path::{Path, PathBuf};
use std::process::Command;

use cella_image::{
    ImageReference, ImageStore, PrepareOptions, PreparedImage, RegistrySettings, StoreSettings,
};

/// The tests create files owned by other users, device nodes and overlay mounts.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the image tests must run as root (ownership, whiteout devices, overlay mounts)"
    );
}

pub fn open_store(dir: &Path, registries: RegistrySettings) -> ImageStore {
    ImageStore::open(
        dir.join("store"),
        StoreSettings {
            registries,
            ..StoreSettings::default()
        },
    )
    .expect("open the store")
}

pub fn parse(store: &ImageStore, text: &str) -> ImageReference {
    ImageReference::parse(text, &store.settings().registries.default_registry).expect("reference")
}

/// [`prepare`], which must succeed.
pub async fn prepared(store: &ImageStore, text: &str, lease: &str) -> PreparedImage {
    prepare(store, text, lease)
        .await
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

pub async fn prepare(
    store: &ImageStore,
    text: &str,
    lease: &str,
) -> Result<PreparedImage, cella_image::ImageError> {
    store
        .prepare(&parse(store, text), lease, &PrepareOptions::default())
        .await
}

/// Mounts the layers with overlayfs (in a private mount namespace that dies with the
/// command: nothing stays mounted) and runs `script` with `/bin/sh` chrooted into it.
/// Returns (success, stdout, stderr).
pub fn run_in_overlay(layers: &[PathBuf], script: &str) -> (bool, String, String) {
    require_root();
    let work = tempfile::tempdir().expect("temp dir");
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir(work.path().join(d)).unwrap();
    }
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" && exec chroot "$4" /bin/sh -c "$5""#)
        .arg("sh")
        .arg(lower.join(":"))
        .arg(work.path().join("upper"))
        .arg(work.path().join("work"))
        .arg(work.path().join("merged"))
        .arg(script)
        .output()
        .expect("run unshare");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Bytes that do not compress (a xorshift stream): big layers without a download.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2).wrapping_add(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Walks a directory and returns every path below it (relative), sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

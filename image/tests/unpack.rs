//! Layers are untrusted: each attack gets its own layer, written with the `tar` crate,
//! and must be refused with an error naming the image and the entry, leaving nothing
//! outside the store and nothing half-done inside it.

mod common;

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

use cella_image::unpack::UnpackError;
use cella_image::{ImageError, ImageStore, PreparedImage, StoreSettings, UnpackLimits};
use common::images::{self, Compression, LayerBlob};
use serde_json::json;

/// Prepares `oci:<layout>:latest` made of `layers` in a fresh store.
async fn prepare_layers(
    dir: &Path,
    layers: Vec<LayerBlob>,
    limits: UnpackLimits,
) -> (ImageStore, Result<PreparedImage, ImageError>) {
    common::require_root();
    let layout = dir.join("layout");
    images::write_image(
        &layout,
        "latest",
        "amd64",
        &layers,
        json!({"Cmd": ["/bin/sh"]}),
    );
    let store = ImageStore::open(
        dir.join("store"),
        StoreSettings {
            limits,
            ..Default::default()
        },
    )
    .unwrap();
    let reference = common::parse(&store, &format!("oci:{}:latest", layout.display()));
    let result = store.prepare(&reference, "t", &Default::default()).await;
    (store, result)
}

/// The unpacking error that `err` must be.
fn unpack_error(err: ImageError) -> UnpackError {
    match err {
        ImageError::Unpack { source, .. } => *source,
        other => panic!("not an unpacking error: {other}"),
    }
}

async fn refused(layers: Vec<LayerBlob>) -> (tempfile::TempDir, String, ImageError) {
    let dir = tempfile::tempdir().unwrap();
    let (store, result) = prepare_layers(dir.path(), layers, UnpackLimits::default()).await;
    let err = result.expect_err("the image must be refused");
    let message = err.to_string();
    assert!(
        message.starts_with("image oci:"),
        "the error names the image: {message}"
    );
    assert!(
        store.list().unwrap().is_empty(),
        "a refused image is not listed"
    );
    let left = common::tree(&store.paths().tmp());
    assert!(
        left.iter().all(|p| p.ends_with(".partial")),
        "no unpack left in tmp: {left:?}"
    );
    (dir, message, err)
}

fn one(build: impl FnOnce(&mut images::TarWriter)) -> Vec<LayerBlob> {
    vec![images::layer(Compression::Gzip, build)]
}

#[tokio::test]
async fn dot_dot_that_climbs_out_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let name = outside
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for path in [
        format!("../../../../../../tmp/{name}/escaped"),
        format!("a/../../tmp/{name}/escaped"),
    ] {
        let (_dir, message, err) = refused(one(|t| {
            t.file(&path, b"x", 0o644);
        }))
        .await;
        assert!(
            matches!(unpack_error(err), UnpackError::Escape { .. }),
            "{message}"
        );
        assert!(
            message.contains(&path) && message.contains("climbs out"),
            "{message}"
        );
        assert!(!outside.path().join("escaped").exists());
    }
}

#[tokio::test]
async fn absolute_paths_stay_inside_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("cella-absolute-{}", std::process::id());
    let (_store, result) = prepare_layers(
        dir.path(),
        one(|t| {
            t.file(&format!("/tmp/{marker}"), b"inside", 0o644);
        }),
        UnpackLimits::default(),
    )
    .await;
    let image = result.unwrap();
    assert_eq!(
        std::fs::read(image.layers[0].join("tmp").join(&marker)).unwrap(),
        b"inside"
    );
    assert!(!Path::new("/tmp").join(&marker).exists());
}

#[tokio::test]
async fn a_write_through_a_symlink_of_the_same_layer_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().display().to_string();
    for link_target in [
        target.clone(),
        "../../../../../../".to_owned() + target.trim_start_matches('/'),
    ] {
        let (_dir, message, err) = refused(one(|t| {
            t.dir("etc/", 0o755).symlink("etc/evil", &link_target).file(
                "etc/evil/pwned",
                b"x",
                0o644,
            );
        }))
        .await;
        assert!(
            matches!(unpack_error(err), UnpackError::ThroughSymlink { .. }),
            "{message}"
        );
        assert!(
            message.contains("entry etc/evil/pwned would be written through the symlink etc/evil"),
            "{message}"
        );
        assert!(!outside.path().join("pwned").exists());
    }
}

#[tokio::test]
async fn a_write_through_a_symlink_of_a_lower_layer_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().display().to_string();
    let lower = images::layer(Compression::Gzip, |t| {
        t.dir("usr/", 0o755).symlink("usr/lib", &target);
    });
    // The upper layer never lists usr/lib: it means the symlink's target.
    let upper = images::layer(Compression::Gzip, |t| {
        t.file("usr/lib/pwned.so", b"x", 0o755);
    });
    let (_dir, message, err) = refused(vec![lower.clone(), upper]).await;
    assert!(matches!(err, ImageError::LayerCheck { .. }), "{message}");
    assert!(
        message.contains("layer 1 writes into usr/lib") && message.contains("symlink at usr/lib"),
        "{message}"
    );
    assert!(!outside.path().join("pwned.so").exists());

    // Listing usr/lib as a directory replaces the symlink (as in Docker): accepted,
    // and overlayfs shows a directory.
    let replacing = images::layer(Compression::Gzip, |t| {
        t.dir("usr/lib/", 0o755).file("usr/lib/ok.so", b"ok", 0o644);
    });
    let dir = tempfile::tempdir().unwrap();
    let (_store, result) =
        prepare_layers(dir.path(), vec![lower, replacing], UnpackLimits::default()).await;
    let image = result.expect("a layer replacing a symlink with a directory");
    assert!(image.layers[1].join("usr/lib/ok.so").is_file());
}

#[tokio::test]
async fn hard_links_must_stay_in_the_layer() {
    type Build = Box<dyn Fn(&mut images::TarWriter)>;
    let cases: [(&str, Build); 4] = [
        (
            "../../../../etc/passwd",
            Box::new(|t| {
                t.hardlink("stolen", "../../../../etc/passwd");
            }),
        ),
        (
            "/etc/passwd",
            Box::new(|t| {
                t.hardlink("stolen", "/etc/passwd");
            }),
        ),
        (
            "hostetc/passwd",
            Box::new(|t| {
                t.symlink("hostetc", "/etc")
                    .hardlink("stolen", "hostetc/passwd");
            }),
        ),
        (
            "missing",
            Box::new(|t| {
                t.hardlink("stolen", "missing");
            }),
        ),
    ];
    for (target, build) in cases {
        let (_dir, message, err) = refused(one(|t| build(t))).await;
        assert!(
            matches!(unpack_error(err), UnpackError::HardLinkOutside { .. }),
            "{message}"
        );
        assert!(
            message.contains(&format!("entry stolen is a hard link to {target:?}")),
            "{message}"
        );
    }
    // A file of a lower layer is not this layer's either.
    let lower = images::layer(Compression::Gzip, |t| {
        t.file("shadow", b"secret", 0o600);
    });
    let upper = images::layer(Compression::Gzip, |t| {
        t.hardlink("copy", "shadow");
    });
    let (_dir, message, _) = refused(vec![lower, upper]).await;
    assert!(
        message
            .contains("entry copy is a hard link to \"shadow\", which is not a file of this layer"),
        "{message}"
    );
}

#[tokio::test]
async fn device_nodes_are_refused_but_the_whiteout_device_is_not() {
    for (kind, major, minor, word) in [
        (tar::EntryType::Char, 1, 3, "character"),
        (tar::EntryType::Block, 8, 0, "block"),
    ] {
        let (_dir, message, _) = refused(one(|t| {
            t.device("dev/disk", kind, major, minor);
        }))
        .await;
        assert!(
            message.contains(&format!(
                "entry dev/disk is a {word} device node ({major}:{minor})"
            )),
            "{message}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (_store, result) = prepare_layers(
        dir.path(),
        one(|t| {
            t.device("gone", tar::EntryType::Char, 0, 0)
                .file(".wh.also-gone", b"", 0o644)
                .fifo("pipe");
        }),
        UnpackLimits::default(),
    )
    .await;
    let image = result.unwrap();
    for name in ["gone", "also-gone"] {
        let meta = std::fs::symlink_metadata(image.layers[0].join(name)).unwrap();
        assert!(
            meta.file_type().is_char_device() && meta.rdev() == 0,
            "{name} is overlayfs's whiteout"
        );
    }
    assert!(
        std::fs::symlink_metadata(image.layers[0].join("pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

/// Why preparing an image of `layers` in a new store fails under `limits`; with the
/// store and its directory.
async fn refused_under(
    limits: UnpackLimits,
    layers: Vec<LayerBlob>,
) -> (tempfile::TempDir, ImageStore, String) {
    let dir = tempfile::tempdir().unwrap();
    let (store, result) = prepare_layers(dir.path(), layers, limits).await;
    (dir, store, result.unwrap_err().to_string())
}

#[tokio::test]
async fn layers_that_expand_without_bound_are_stopped() {
    let limits = UnpackLimits {
        max_layer_bytes: 1 << 20,
        max_entries: 100,
    };
    // 8 MiB of zeros compress to a few KiB: the limit is on what it expands to.
    let (_dir, store, message) = refused_under(
        limits,
        one(|t| {
            t.file("zeros", &vec![0u8; 8 << 20], 0o644);
        }),
    )
    .await;
    assert!(
        message.contains("expands past the limit of 1048576 bytes (max_layer_bytes)"),
        "{message}"
    );
    assert!(common::tree(&store.paths().layers()).is_empty());

    let (_dir, _store, message) = refused_under(
        limits,
        one(|t| {
            for i in 0..101 {
                t.file(&format!("f{i}"), b"", 0o644);
            }
        }),
    )
    .await;
    assert!(
        message.contains("more than 100 entries (max_entries)"),
        "{message}"
    );
}

#[tokio::test]
async fn a_layer_that_does_not_match_its_diff_id_is_refused() {
    let mut layer = images::layer(Compression::Gzip, |t| {
        t.file("a", b"a", 0o644);
    });
    let promised = cella_image::Digest::of(b"something else");
    layer.diff_id = promised.clone();
    let (_dir, message, _) = refused(vec![layer]).await;
    assert!(
        message.contains(&format!("the image configuration says {promised}")),
        "{message}"
    );
}

#[tokio::test]
async fn ownership_modes_times_xattrs_and_links_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, result) = prepare_layers(
        dir.path(),
        one(|t| {
            t.dir("bin/", 0o755)
                .file_with(
                    "bin/tool",
                    b"#!/bin/sh\n",
                    0o4755,
                    (1234, 5678),
                    1_500_000_000,
                    &[
                        ("user.origin", b"test"),
                        ("trusted.overlay.opaque", b"y"),
                        ("trusted.overlay.redirect", b"/etc"),
                    ],
                )
                .hardlink("bin/tool-link", "bin/tool")
                .symlink("bin/tool-symlink", "tool")
                .dir("private/", 0o700)
                .file("private/key", b"k", 0o600);
        }),
        UnpackLimits::default(),
    )
    .await;
    let image = result.unwrap();
    let root = &image.layers[0];
    let tool = std::fs::metadata(root.join("bin/tool")).unwrap();
    assert_eq!((tool.uid(), tool.gid()), (1234, 5678));
    assert_eq!(
        tool.mode() & 0o7777,
        0o4755,
        "setuid is kept (tasks run with no_new_privs)"
    );
    assert_eq!(tool.mtime(), 1_500_000_000);
    assert_eq!(tool.nlink(), 2);
    assert_eq!(
        std::fs::metadata(root.join("bin/tool-link")).unwrap().ino(),
        tool.ino()
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/tool-symlink")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        std::fs::metadata(root.join("private")).unwrap().mode() & 0o7777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(root.join("bin")).unwrap().mtime(),
        1_600_000_000,
        "directory mtimes survive their children"
    );
    let xattr = |name: &str| {
        let file = std::fs::File::open(root.join("bin/tool")).unwrap();
        cella_image::unpack::get_xattr(std::os::fd::AsFd::as_fd(&file), name).unwrap()
    };
    assert_eq!(xattr("user.origin").as_deref(), Some(&b"test"[..]));
    assert_eq!(
        xattr("trusted.overlay.opaque"),
        None,
        "an image cannot forge overlay metadata"
    );
    assert_eq!(xattr("trusted.overlay.redirect"), None);
}

#[tokio::test]
async fn whiteouts_and_opaque_directories_take_overlayfs_form() {
    let dir = tempfile::tempdir().unwrap();
    let lower = images::layer(Compression::Zstd, |t| {
        t.dir("etc/", 0o755)
            .file("etc/a", b"a", 0o644)
            .dir("opt/", 0o755)
            .file("opt/old", b"o", 0o644);
    });
    let upper = images::layer(Compression::None, |t| {
        t.file("etc/.wh.a", b"", 0o644)
            .file("opt/.wh..wh..opq", b"", 0o644)
            .file("opt/new", b"n", 0o644);
    });
    let (_store, result) =
        prepare_layers(dir.path(), vec![lower, upper], UnpackLimits::default()).await;
    let image = result.unwrap();
    let top = &image.layers[1];
    let whiteout = std::fs::symlink_metadata(top.join("etc/a")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    let opt = std::fs::File::open(top.join("opt")).unwrap();
    let opaque =
        cella_image::unpack::get_xattr(std::os::fd::AsFd::as_fd(&opt), "trusted.overlay.opaque")
            .unwrap();
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    assert!(!top.join("opt/.wh..wh..opq").exists() && !top.join("etc/.wh.a").exists());
}

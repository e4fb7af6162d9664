//! The store's life cycle: leases, GC, removal, what a crash leaves, local sources.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cella_image::{Digest, ImageError, ImageStore, StoreSettings};
use common::images::{self, Compression};
use common::registry::run;
use serde_json::json;

/// A one-layer image of `size` bytes of noise in its own layout; returns its reference.
fn noise_image(dir: &Path, name: &str, seed: u64, size: usize) -> String {
    let layout = dir.join(name);
    let layer = images::layer(Compression::Gzip, |t| {
        t.file("noise", &common::noise(size, seed), 0o644);
    });
    images::write_image(&layout, "latest", "amd64", &[layer], json!({}));
    format!("oci:{}:latest", layout.display())
}

fn open(dir: &Path) -> ImageStore {
    ImageStore::open(dir.join("store"), StoreSettings::default()).unwrap()
}

/// A store in a new directory and, beside it, the layout of a one-layer image of
/// `size` bytes of noise (see [`noise_image`]); returns the directory (removed on
/// drop), the store and the image's reference.
fn store_with_noise_image(seed: u64, size: usize) -> (tempfile::TempDir, ImageStore, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let name = noise_image(dir.path(), "img", seed, size);
    (dir, store, name)
}

#[tokio::test]
async fn gc_removes_least_recently_used_images_and_never_a_leased_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let names: Vec<String> = (0..3)
        .map(|i| noise_image(dir.path(), &format!("img{i}"), i + 1, 1 << 20))
        .collect();
    let mut digests = Vec::new();
    for (i, name) in names.iter().enumerate() {
        digests.push(
            common::prepared(&store, name, &format!("task-{i}"))
                .await
                .digest,
        );
    }
    // Used in the order 0, 1; image 2 is still in use.
    assert!(store.release("task-0").unwrap());
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(store.release("task-1").unwrap());
    assert!(
        !store.release("task-1").unwrap(),
        "a lease is released once"
    );

    let one_image = store.disk_usage().unwrap() / 3;
    let report = store.gc(2 * one_image + one_image / 2).unwrap();
    assert_eq!(
        report.removed,
        [digests[0].clone()],
        "the least recently used goes first"
    );
    assert!(report.bytes_after < report.bytes_before);

    let report = store.gc(0).unwrap();
    assert_eq!(report.removed, [digests[1].clone()]);
    assert_eq!(
        report.kept_leased,
        [digests[2].clone()],
        "a leased image is kept over any budget"
    );
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, digests[2]);
    assert_eq!(listed[0].leases, ["task-2"]);
    // Only the kept image's content is left.
    assert_eq!(
        common::tree(&store.paths().layers())
            .iter()
            .filter(|p| !p.contains('/'))
            .count(),
        1
    );
    assert_eq!(store.disk_usage().unwrap(), report.bytes_after);
}

#[tokio::test]
async fn leases_survive_a_restart_and_can_be_re_established() {
    let dir = tempfile::tempdir().unwrap();
    let name = noise_image(dir.path(), "img", 5, 64 << 10);
    let digest = {
        let store = open(dir.path());
        common::prepared(&store, &name, "task-a").await.digest
    };
    // A new store on the same directory (the agent after a restart) sees the lease
    // and can re-establish others from its checkpoint before running GC.
    let store = open(dir.path());
    let leases = store.leases().unwrap();
    assert_eq!(
        (leases.len(), leases[0].name.as_str(), &leases[0].image),
        (1, "task-a", &digest)
    );
    store.lease("task-b", &digest).await.unwrap();
    assert!(store.release("task-a").unwrap());
    assert!(
        store.gc(0).unwrap().removed.is_empty(),
        "task-b holds the image"
    );

    let missing = Digest::of(b"no such image");
    let err = store.lease("task-c", &missing).await.unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    let err = store.lease("", &digest).await.unwrap_err().to_string();
    assert!(err.contains("invalid lease name"), "{err}");
}

#[tokio::test]
async fn remove_refuses_an_image_in_use_and_then_frees_its_content() {
    let (_dir, store, name) = store_with_noise_image(9, 256 << 10);
    common::prepared(&store, &name, "task-1").await;
    let err = store.remove(&name).unwrap_err().to_string();
    assert!(err.contains("is in use by task-1"), "{err}");
    store.release("task-1").unwrap();
    assert_eq!(store.remove(&name).unwrap().len(), 1);
    assert!(store.list().unwrap().is_empty());
    assert!(common::tree(&store.paths().layers()).is_empty());
    assert!(common::tree(&store.paths().blobs()).is_empty());
    let err = store.remove(&name).unwrap_err().to_string();
    assert!(err.contains("no image"), "{err}");
}

#[tokio::test]
async fn what_a_crash_leaves_is_discarded_or_collected() {
    let dir = tempfile::tempdir().unwrap();
    let name = noise_image(dir.path(), "img", 3, 128 << 10);
    let (digest, layer) = {
        let store = open(dir.path());
        let image = common::prepared(&store, &name, "task").await;
        (image.digest, image.layers[0].clone())
    };
    let paths = open(dir.path()).paths().clone();
    // An unpack and a removal cut short, a blob and a layer no image refers to, a
    // record write that never reached its rename.
    let stray = Digest::of(b"stray");
    std::fs::create_dir_all(paths.unpacking(&stray).join("fs/half")).unwrap();
    std::fs::create_dir_all(paths.tmp().join("trash-x/fs")).unwrap();
    std::fs::write(paths.blob(&stray), b"orphan").unwrap();
    std::fs::create_dir_all(paths.layer_fs(&stray)).unwrap();
    std::fs::write(paths.images().join(".half.json.1.0.tmp"), b"{").unwrap();

    let store = open(dir.path());
    assert!(
        !paths.unpacking(&stray).exists(),
        "an interrupted unpack is discarded at open"
    );
    assert!(!paths.tmp().join("trash-x").exists());
    assert_eq!(
        store.list().unwrap().len(),
        1,
        "a record's temp file is never read"
    );
    store.gc(u64::MAX).unwrap();
    assert!(
        !paths.blob(&stray).exists() && !paths.layer(&stray).exists(),
        "orphans are collected"
    );
    assert!(layer.join("noise").is_file(), "the image is intact");

    // A record whose layer went missing is pulled again, not handed out broken.
    std::fs::remove_dir_all(
        paths.layer(
            &Digest::from_hex(
                layer
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap(),
            )
            .unwrap(),
        ),
    )
    .unwrap();
    let image = common::prepared(&store, &name, "task").await;
    assert_eq!(image.digest, digest);
    assert!(image.layers[0].join("noise").is_file());
}

#[tokio::test]
async fn docker_archives_and_oci_layouts_are_sources() {
    common::require_root();
    common::registry::require_tool("skopeo");
    let dir = tempfile::tempdir().unwrap();
    let layout = images::busybox_layout(dir.path(), "bb");
    let archive = dir.path().join("busybox.tar");
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(format!("oci:{}:bb", layout.display()))
        .arg(format!(
            "docker-archive:{}:cella/busybox:1",
            archive.display()
        )));
    let store = open(dir.path());

    let from_layout = common::prepared(&store, &format!("oci:{}:bb", layout.display()), "a").await;
    let from_path = common::prepared(&store, &layout.display().to_string(), "b").await;
    assert_eq!(
        from_path.digest, from_layout.digest,
        "a layout path with one image needs no tag"
    );
    let from_archive = common::prepared(
        &store,
        &format!("docker-archive:{}", archive.display()),
        "c",
    )
    .await;
    let from_tar_path = common::prepared(&store, &archive.display().to_string(), "d").await;
    assert_eq!(from_archive.digest, from_tar_path.digest);
    // The archive's layers are the same tars: unpacked once, shared.
    assert_eq!(from_archive.layers, from_layout.layers);
    assert_eq!(from_archive.config.cmd, ["echo hi"]);
    let (ok, stdout, stderr) =
        common::run_in_overlay(&from_archive.layers, "echo hi from the archive; ls /data");
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "hi from the archive\nnew\n");

    let named = common::prepared(
        &store,
        &format!("docker-archive:{}:cella/busybox:1", archive.display()),
        "e",
    )
    .await;
    assert_eq!(named.digest, from_archive.digest);
    let err = common::prepare(
        &store,
        &format!("docker-archive:{}:other:2", archive.display()),
        "f",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no image named \"other:2\"") && err.contains("cella/busybox:1"),
        "{err}"
    );
    let err = common::prepare(&store, &format!("oci:{}:nope", layout.display()), "g")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no image tagged \"nope\"; the layout has: bb"),
        "{err}"
    );
    let missing: PathBuf = dir.path().join("missing");
    let err = common::prepare(&store, &format!("oci:{}", missing.display()), "h")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not an OCI image layout"), "{err}");
}

#[tokio::test]
async fn a_stored_image_is_prepared_without_waiting_only_when_whole() {
    let dir = tempfile::tempdir().unwrap();
    let name = noise_image(dir.path(), "img", 4, 64 << 10);
    let pulled = common::prepared(&open(dir.path()), &name, "pull").await;

    let store =
        ImageStore::open_existing(dir.path().join("store"), StoreSettings::default()).unwrap();
    let reference = common::parse(&store, &name);
    let options = cella_image::PrepareOptions::default();
    let image = store
        .prepare_stored(&reference, "fast", &options)
        .unwrap()
        .expect("a stored image needs no pull");
    assert_eq!(
        (image.digest.clone(), image.layers.clone()),
        (pulled.digest.clone(), pulled.layers.clone())
    );
    assert!(
        store
            .leases()
            .unwrap()
            .iter()
            .any(|l| l.name == "fast" && l.image == image.digest),
        "the lease is written"
    );

    // GC or a removal holds the store: no lease is taken behind its back.
    let paths = store.paths().clone();
    let gc = std::fs::File::create(paths.lock("store")).unwrap();
    let held = nix::fcntl::Flock::lock(gc, nix::fcntl::FlockArg::LockExclusive).unwrap();
    assert!(
        store
            .prepare_stored(&reference, "waits", &options)
            .unwrap()
            .is_none()
    );
    drop(held);

    // A layer without its summary (an unpack a crash cut short) is never handed out.
    let summary = pulled.layers[0].parent().unwrap().join("layer.json");
    std::fs::remove_file(&summary).unwrap();
    assert!(
        store
            .prepare_stored(&reference, "half", &options)
            .unwrap()
            .is_none()
    );
    assert!(!store.leases().unwrap().iter().any(|l| l.name == "half"));

    // A store missing a directory is set up again, as by `open`.
    std::fs::remove_dir_all(paths.tmp()).unwrap();
    let store = ImageStore::open_existing(paths.root(), StoreSettings::default()).unwrap();
    assert!(store.paths().tmp().is_dir());
}

/// A lease written once by a starting `cella exec` names it and the lock its shim
/// inherits: GC keeps the image while either lives, and releases the lease (then
/// collects the image) only once both are gone.
#[tokio::test]
async fn a_lease_written_once_holds_the_image_until_its_process_and_lock_are_gone() {
    let (dir, store, name) = store_with_noise_image(6, 64 << 10);
    let reference = common::parse(&store, &name);
    let lock = dir.path().join("spec.json");
    // The launcher, started as its own process so that it can be killed.
    let mut launcher = Command::new("sleep").arg("30").spawn().unwrap();
    let holder = cella_image::LeaseHolder::of(i32::try_from(launcher.id()).unwrap())
        .unwrap()
        .with_lock(lock.clone());
    let options = cella_image::PrepareOptions {
        holder: Some(holder),
        ..cella_image::PrepareOptions::default()
    };
    let image = store.prepare(&reference, "exec-1", &options).await.unwrap();
    let lease_file = std::fs::read_dir(store.paths().leases())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let written = std::fs::metadata(&lease_file).unwrap().modified().unwrap();

    // Starting: the launcher lives, its shim's lock is not there yet.
    let report = store.gc(0).unwrap();
    assert_eq!(report.kept_leased, std::slice::from_ref(&image.digest));
    assert!(report.released_leases.is_empty());

    // Running: the shim holds the lock; the launcher is killed (-9).
    let shim = std::fs::File::create(&lock).unwrap();
    let shim = nix::fcntl::Flock::lock(shim, nix::fcntl::FlockArg::LockExclusive).unwrap();
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    let report = store.gc(0).unwrap();
    assert_eq!(report.kept_leased, std::slice::from_ref(&image.digest));
    assert!(report.released_leases.is_empty());
    assert_eq!(
        std::fs::metadata(&lease_file).unwrap().modified().unwrap(),
        written,
        "the lease was written once"
    );
    assert_eq!(store.list().unwrap()[0].leases, ["exec-1"]);

    // Ended: the lease of a holder that is gone is released, and the image goes.
    drop(shim);
    let report = store.gc(0).unwrap();
    assert_eq!(report.released_leases, ["exec-1"]);
    assert_eq!(report.removed, [image.digest]);
    assert!(store.list().unwrap().is_empty());
    assert!(store.leases().unwrap().is_empty());
}

/// Releasing a prepared image drops its lease without reading it back, and rewrites
/// the image's last use only when the one seen at prepare time is stale.
#[tokio::test]
async fn a_prepared_image_is_released_without_reading_its_lease_back() {
    let (_dir, store, name) = store_with_noise_image(7, 64 << 10);
    let image = common::prepared(&store, &name, "exec-2").await;
    let recorded = store.image(&image.digest).unwrap().unwrap().last_used_ms;
    assert_eq!(image.last_used_ms, recorded);

    assert!(store.release_prepared(&image).unwrap());
    assert!(store.leases().unwrap().is_empty());
    assert_eq!(
        store.image(&image.digest).unwrap().unwrap().last_used_ms,
        recorded,
        "a use within the last minute is not written again"
    );
    assert!(!store.release_prepared(&image).unwrap(), "released once");

    // Prepared long ago (as seen then): the record is looked at again.
    let image = common::prepared(&store, &name, "exec-3").await;
    let stale = cella_image::PreparedImage {
        last_used_ms: 0,
        ..image
    };
    assert!(store.release_prepared(&stale).unwrap());
    assert_eq!(store.gc(0).unwrap().removed, [stale.digest]);
}

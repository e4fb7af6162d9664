//! Interrupted pulls continue where they stopped; concurrent pulls fetch each blob once.
//! The registry's access log tells what was transferred.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cella_image::{Digest, PrepareOptions, ProgressEvent};
use common::images::{self, Compression};
use common::registry::Registry;
use common::{open_store, parse, prepare};
use serde_json::json;

/// Pushes a one-layer image whose layer is `size` bytes of noise (uncompressed, so the
/// blob is as big as the layer). Returns the reference and the layer blob's digest.
fn push_big_image(
    registry: &Registry,
    dir: &std::path::Path,
    repo: &str,
    size: usize,
) -> (String, Digest, u64) {
    let layout = dir.join(format!("layout-{repo}"));
    let layer = images::layer(Compression::None, |t| {
        t.file("big", &common::noise(size, size as u64), 0o644);
    });
    let (digest, blob_size) = (layer.digest(), layer.blob.len() as u64);
    images::write_image(&layout, "v1", "amd64", &[layer], json!({}));
    registry.push(&layout, "v1", &format!("{repo}:v1"));
    (format!("{}/{repo}:v1", registry.host), digest, blob_size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_blob_is_continued_with_a_range_request() {
    let registry = Registry::insecure();
    let work = tempfile::tempdir().unwrap();
    let (reference, digest, size) = push_big_image(&registry, work.path(), "resume", 8 << 20);
    let blob = std::fs::read(registry.blob_data(&digest)).unwrap();
    let store = open_store(work.path(), registry.settings());
    let kept: usize = 3 << 20;
    std::fs::write(store.paths().partial_blob(&digest), &blob[..kept]).unwrap();

    let image = prepare(&store, &reference, "t")
        .await
        .expect("resumed pull");
    let gets = registry.blob_gets(&digest);
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(
        (gets[0].status, gets[0].written),
        (206, size - kept as u64),
        "only the rest is fetched"
    );
    assert_eq!(
        std::fs::metadata(image.layers[0].join("big"))
            .unwrap()
            .len(),
        8 << 20
    );
    assert!(!store.paths().partial_blob(&digest).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_partial_blob_is_discarded_and_fetched_again() {
    let registry = Registry::insecure();
    let work = tempfile::tempdir().unwrap();
    let (reference, digest, size) = push_big_image(&registry, work.path(), "damaged", 4 << 20);
    let store = open_store(work.path(), registry.settings());
    let kept: usize = 1 << 20;
    std::fs::write(store.paths().partial_blob(&digest), common::noise(kept, 99)).unwrap();

    let image = prepare(&store, &reference, "t")
        .await
        .expect("pull after a bad partial");
    let gets = registry.blob_gets(&digest);
    let written: Vec<u64> = gets.iter().map(|g| g.written).collect();
    assert_eq!(
        written,
        [size - kept as u64, size],
        "continued, failed to verify, fetched whole: {gets:?}"
    );
    let content = std::fs::read(image.layers[0].join("big")).unwrap();
    assert_eq!(content, common::noise(4 << 20, 4 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_cancelled_mid_download_resumes() {
    let registry = Registry::insecure();
    let work = tempfile::tempdir().unwrap();
    let (reference, digest, size) = push_big_image(&registry, work.path(), "cancel", 64 << 20);
    let store = Arc::new(open_store(work.path(), registry.settings()));

    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let started_tx = std::sync::Mutex::new(Some(started_tx));
    let options = PrepareOptions {
        progress: Some(Arc::new(move |p: &cella_image::Progress| {
            if let ProgressEvent::LayerBytes { done, .. } = p.event
                && done >= 4 << 20
                && let Some(tx) = started_tx.lock().unwrap().take()
            {
                let _ = tx.send(());
            }
        })),
        ..PrepareOptions::default()
    };
    let task = {
        let (store, reference) = (store.clone(), parse(&store, &reference));
        tokio::spawn(async move { store.prepare(&reference, "t", &options).await })
    };
    tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the download started");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    // Writes already handed to a blocking thread may still land: wait until the
    // partial file stops growing.
    let partial = store.paths().partial_blob(&digest);
    let mut kept = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = std::fs::metadata(&partial)
            .expect("the partial blob is kept")
            .len();
        if now == kept || Instant::now() > deadline {
            break;
        }
        kept = now;
    }
    assert!(kept > 0 && kept < size, "kept {kept} of {size}");
    assert!(
        store.list().unwrap().is_empty(),
        "nothing half-done is listed"
    );

    let image = prepare(&store, &reference, "t")
        .await
        .expect("resumed pull");
    let gets = registry.blob_gets(&digest);
    let last = gets.last().unwrap();
    assert_eq!((last.status, last.written), (206, size - kept), "{gets:?}");
    assert_eq!(
        std::fs::metadata(image.layers[0].join("big"))
            .unwrap()
            .len(),
        64 << 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_fetch_each_blob_once() {
    let registry = Registry::insecure();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let layers: Vec<_> = (0..3u64)
        .map(|i| {
            images::layer(Compression::Gzip, |t| {
                t.file(&format!("layer{i}"), &common::noise(1 << 20, i + 1), 0o644);
            })
        })
        .collect();
    let digests: Vec<Digest> = layers.iter().map(|l| l.digest()).collect();
    images::write_image(&layout, "v1", "amd64", &layers, json!({}));
    registry.push(&layout, "v1", "shared:v1");
    registry.push(&layout, "v1", "shared:v2");
    let reference = format!("{}/shared:v1", registry.host);
    let other_name = format!("{}/shared:v2", registry.host);

    // Two stores on one directory stand for two processes: they share nothing in
    // memory, only the directory and its lock files.
    let first = open_store(work.path(), registry.settings());
    let second = open_store(work.path(), registry.settings());
    // The same name four times (one resolution, then the store), and another name of
    // the same image (its layers are shared: each is fetched and unpacked once).
    let (a, b, c, d, e) = tokio::join!(
        prepare(&first, &reference, "a"),
        prepare(&first, &reference, "b"),
        prepare(&second, &reference, "c"),
        prepare(&second, &reference, "d"),
        prepare(&second, &other_name, "e"),
    );
    let results = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap(), e.unwrap()];
    assert!(
        results
            .iter()
            .all(|r| r.digest == results[0].digest && r.layers == results[0].layers)
    );
    for digest in &digests {
        assert_eq!(
            registry.blob_gets(digest).len(),
            1,
            "blob {digest} fetched more than once"
        );
    }
    let config_gets = registry
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "GET"
                && r.uri.contains("/blobs/")
                && !digests.iter().any(|d| r.uri.ends_with(&d.to_string()))
        })
        .count();
    assert!(
        config_gets <= 2,
        "the configuration is fetched once per name at most"
    );
    assert_eq!(first.leases().unwrap().len(), 5);
}

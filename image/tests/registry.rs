//! Pulls from a real registry (docker-registry on loopback) of images built and pushed
//! here with umoci and skopeo.

mod common;

use std::sync::{Arc, Mutex};

use cella_image::{
    Credentials, ImageError, ImageStore, PrepareOptions, PreparedImage, ProgressEvent, PullPolicy,
    RegistrySettings,
};
use common::images::{self, Compression};
use common::registry::{PASSWORD, Registry, USER};
use common::{open_store, parse, prepare, run_in_overlay};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_over_tls_with_basic_auth_runs_in_an_overlay() {
    common::require_root();
    let registry = Registry::secure();
    let work = tempfile::tempdir().unwrap();
    let layout = images::busybox_layout(work.path(), "bb");
    registry.push(&layout, "bb", "library/busybox:latest");

    // Credentials from a Docker config.json, not from the credentials map.
    let mut settings = registry.settings();
    settings.credentials.clear();
    let docker_config = work.path().join("config.json");
    let auth = base64_encode(&format!("{USER}:{PASSWORD}"));
    std::fs::write(
        &docker_config,
        json!({"auths": {(registry.host.clone()): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    settings.docker_config = Some(docker_config);
    let store = open_store(work.path(), settings);

    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let options = PrepareOptions {
        progress: Some(Arc::new(move |p: &cella_image::Progress| {
            sink.lock().unwrap().push(p.clone())
        })),
        ..PrepareOptions::default()
    };
    // A short name: resolved against the default registry as library/busybox.
    let image = store
        .prepare(&parse(&store, "busybox"), "task-1", &options)
        .await
        .expect("pull busybox");
    assert_eq!(
        image.reference,
        format!("{}/library/busybox:latest", registry.host)
    );
    assert_eq!(image.layers.len(), 3);
    assert_eq!(image.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(image.config.cmd, ["echo hi"]);
    assert_eq!(image.config.env, ["PATH=/bin", "GREETING=hello"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/data"));
    assert_eq!(image.config.user.as_deref(), Some("0:0"));

    {
        let events = events.lock().unwrap();
        let last = events.last().expect("progress events");
        assert_eq!((last.layers_done, last.layers_total), (3, 3));
        assert_eq!(last.bytes_done, last.bytes_total);
        assert!(matches!(last.event, ProgressEvent::Done { .. }));
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e.event, ProgressEvent::LayerDone { cached: false, .. }))
                .count(),
            3
        );
    }

    // The layers stacked by overlayfs: the whiteout hides etc/removed-later, the
    // opaque /data shows only layer 3's file, busybox runs.
    let (ok, stdout, stderr) = run_in_overlay(
        &image.layers,
        "echo hi; ls /data; test -e /etc/removed-later && echo removed-later-visible; cat /etc/added; \
         stat -c %h /etc/hosts",
    );
    assert!(ok, "overlay run failed: {stderr}");
    assert_eq!(stdout, "hi\nnew\nadded in layer 2\n2\n");

    // The lease is recorded; a second prepare of the same name needs no network.
    assert_eq!(store.leases().unwrap().len(), 1);
    let before = registry.requests().len();
    let again = prepare(&store, "busybox", "task-2").await.unwrap();
    assert_eq!(again.digest, image.digest);
    assert_eq!(
        registry.requests().len(),
        before,
        "if-not-present pulls use the store"
    );
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].references, std::slice::from_ref(&image.reference));
    assert_eq!(listed[0].leases.len(), 2);
    assert!(
        listed[0].size_bytes > 1 << 20,
        "size {}",
        listed[0].size_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_tls_failures_say_what_to_fix() {
    let registry = Registry::secure();
    let work = tempfile::tempdir().unwrap();
    let reference = push_file_image(
        &registry,
        work.path(),
        Compression::Gzip,
        ("hello", b"hello\n"),
        "app:v1",
    );

    let mut settings = registry.settings();
    settings.credentials.clear();
    let store = open_store(work.path(), settings.clone());
    let err = prepare_error(&store, &reference).await;
    assert!(
        err.contains("requires authentication") && err.contains(&registry.host),
        "{err}"
    );

    let wrong = PrepareOptions {
        credentials: Some(Credentials::Basic {
            username: USER.into(),
            password: "not-the-password".into(),
        }),
        ..PrepareOptions::default()
    };
    let err = store
        .prepare(&parse(&store, &reference), "t", &wrong)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused the configured credentials"), "{err}");

    // Without the test CA, the registry's certificate is not trusted.
    let mut untrusted = registry.settings();
    untrusted.ca_file = None;
    let err = pull_error(&work.path().join("other"), untrusted, &reference).await;
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_only_for_registries_configured_insecure() {
    let registry = Registry::insecure();
    let work = tempfile::tempdir().unwrap();
    let reference = push_and_pull_back(
        &registry,
        work.path(),
        Compression::Zstd,
        ("zstd-layer", "compressed with zstd\n"),
        "plain/app:v1",
    )
    .await;

    let mut https_only = registry.settings();
    https_only.insecure_registries.clear();
    let err = pull_error(&work.path().join("https-only"), https_only, &reference).await;
    assert!(err.contains(&registry.host), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_yields_the_requested_platform() {
    let registry = Registry::insecure();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let amd64 = images::write_image(&layout, "", "amd64", &[platform_marker("amd64")], json!({}));
    let arm64 = images::write_image(&layout, "", "arm64", &[platform_marker("arm64")], json!({}));
    let arm = images::write_image(&layout, "", "arm", &[platform_marker("arm-v7")], json!({}));
    images::write_index(
        &layout,
        "multi",
        &[
            (arm64, "arm64", Some("v8")),
            (arm, "arm", Some("v7")),
            (amd64, "amd64", None),
        ],
    );
    registry.push(&layout, "multi", "multi:1");
    let store = open_store(work.path(), registry.settings());
    let reference = parse(&store, &format!("{}/multi:1", registry.host));

    let host = store
        .prepare(&reference, "a", &PrepareOptions::default())
        .await
        .unwrap();
    assert_eq!(marked_platform(&host), "amd64");

    let arm64 = PrepareOptions {
        platform: linux("arm64"),
        pull_policy: PullPolicy::Always,
        ..PrepareOptions::default()
    };
    let image = store.prepare(&reference, "b", &arm64).await.unwrap();
    assert_eq!(marked_platform(&image), "arm64");

    let s390x = PrepareOptions {
        platform: linux("s390x"),
        ..arm64
    };
    let err = store
        .prepare(&reference, "c", &s390x)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no manifest for linux/s390x")
            && err.contains("linux/arm64/v8, linux/arm/v7, linux/amd64"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_blob_is_refused_and_nothing_is_kept() {
    let registry = Registry::insecure();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let layer = images::layer(Compression::Gzip, |t| {
        t.file("data", &common::noise(256 << 10, 7), 0o644);
    });
    let digest = layer.digest();
    images::write_image(&layout, "v1", "amd64", &[layer], json!({}));
    registry.push(&layout, "v1", "corrupt:v1");
    // Same size, different bytes: only the digest can tell.
    let data = registry.blob_data(&digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let store = open_store(work.path(), registry.settings());
    let err = prepare(&store, &format!("{}/corrupt:v1", registry.host), "t")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ImageError::Fetch { .. }), "{message}");
    assert!(
        message.contains(&format!("blob {digest} does not verify")),
        "{message}"
    );
    assert!(!store.paths().blob(&digest).exists());
    assert!(
        !store.paths().partial_blob(&digest).exists()
            || std::fs::metadata(store.paths().partial_blob(&digest))
                .unwrap()
                .len()
                == 0
    );
    assert!(common::tree(&store.paths().layers()).is_empty());
    assert!(store.list().unwrap().is_empty());
}

/// A layer whose file `platform` names the platform it was built for.
fn platform_marker(arch: &str) -> images::LayerBlob {
    images::layer(Compression::Gzip, |t| {
        t.file("platform", arch.as_bytes(), 0o644);
    })
}

/// The platform named by the marker layer of a pulled image.
fn marked_platform(image: &PreparedImage) -> String {
    std::fs::read_to_string(image.layers[0].join("platform")).unwrap()
}

fn linux(architecture: &str) -> cella_image::Platform {
    cella_image::Platform {
        os: "linux".into(),
        architecture: architecture.into(),
        variant: None,
    }
}

/// Pushes a one-layer image holding the file `name` as `repo_tag`; returns its
/// full reference.
fn push_file_image(
    registry: &Registry,
    dir: &std::path::Path,
    compression: Compression,
    (name, content): (&str, &[u8]),
    repo_tag: &str,
) -> String {
    let layout = dir.join(format!("layout-{}", repo_tag.replace(['/', ':'], "-")));
    let layer = images::layer(compression, |t| {
        t.file(name, content, 0o644);
    });
    images::write_image(&layout, "v1", "amd64", &[layer], json!({}));
    registry.push(&layout, "v1", repo_tag);
    format!("{}/{repo_tag}", registry.host)
}

/// Pushes a one-layer image holding the file `name` as `repo_tag`, pulls it into a
/// store in `dir` with the registry's settings and checks that the file reads back
/// the same; returns the image's full reference.
async fn push_and_pull_back(
    registry: &Registry,
    dir: &std::path::Path,
    compression: Compression,
    (name, content): (&str, &str),
    repo_tag: &str,
) -> String {
    let reference = push_file_image(
        registry,
        dir,
        compression,
        (name, content.as_bytes()),
        repo_tag,
    );
    let store = open_store(dir, registry.settings());
    let image = prepare(&store, &reference, "t")
        .await
        .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
    let pulled = std::fs::read_to_string(image.layers[0].join(name)).unwrap();
    assert_eq!(pulled, content);
    reference
}

/// Why pulling `reference` into `store` fails.
async fn prepare_error(store: &ImageStore, reference: &str) -> String {
    prepare(store, reference, "t")
        .await
        .unwrap_err()
        .to_string()
}

/// Why pulling `reference` into a new store in `dir` with `settings` fails.
async fn pull_error(dir: &std::path::Path, settings: RegistrySettings, reference: &str) -> String {
    prepare_error(&open_store(dir, settings), reference).await
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_from_the_registry_token_service() {
    use common::registry::Auth;
    let registry = Registry::start(true, Auth::Token);
    let work = tempfile::tempdir().unwrap();
    let reference = push_and_pull_back(
        &registry,
        work.path(),
        Compression::Gzip,
        ("token", "pulled with a bearer token\n"),
        "tok/app:v1",
    )
    .await;
    assert!(
        registry
            .token_scopes()
            .iter()
            .any(|s| s == "repository:tok/app:pull"),
        "{:?}",
        registry.token_scopes()
    );

    let mut wrong = registry.settings();
    wrong.credentials.insert(
        registry.host.clone(),
        Credentials::Basic {
            username: USER.into(),
            password: "wrong".into(),
        },
    );
    let err = pull_error(&work.path().join("wrong"), wrong, &reference).await;
    assert!(err.contains("refused the configured credentials"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_schema_2_manifests_and_manifest_lists() {
    let registry = Registry::insecure();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let amd64 = images::write_image(
        &layout,
        "single",
        "amd64",
        &[platform_marker("amd64")],
        json!({"Cmd": ["true"]}),
    );
    let arm64 = images::write_image(&layout, "", "arm64", &[platform_marker("arm64")], json!({}));
    images::write_index(
        &layout,
        "multi",
        &[(arm64, "arm64", None), (amd64, "amd64", None)],
    );
    registry.push_docker_schema2(&layout, "single", "docker/single:1");
    registry.push_docker_schema2(&layout, "multi", "docker/multi:1");
    let store = open_store(work.path(), registry.settings());

    let single = prepare(&store, &format!("{}/docker/single:1", registry.host), "a")
        .await
        .unwrap();
    assert_eq!(single.config.cmd, ["true"]);
    let multi = prepare(&store, &format!("{}/docker/multi:1", registry.host), "b")
        .await
        .unwrap();
    assert_eq!(marked_platform(&multi), "amd64");
    // What the registry stored really is Docker schema 2.
    let stored = std::fs::read_to_string(store.paths().blob(&single.digest)).unwrap();
    assert!(
        stored.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{stored}"
    );
    let manifests = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.uri.contains("/docker/multi/manifests/"))
        .count();
    assert_eq!(manifests, 2, "the manifest list, then the amd64 manifest");
}

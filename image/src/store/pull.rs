//! `prepare`: resolve a reference, fetch what is missing, unpack each layer once,
//! check the layers together, record the image and its lease.
//!
//! Order makes a crash at any moment harmless: blobs and layers are complete before
//! they get their final names (rename), the image record is written only when all of
//! them exist, the reference and lease after the record. What a crash leaves behind
//! is either a partial download (continued next time) or content no record refers to
//! (removed by GC).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cella_proto::atomic_file::sync_dir;
use futures::future::join_all;
use tokio::sync::Semaphore;

use super::locks::{FileLock, KeyLock};
use super::records::{self, ImageRecord, RefRecord};
use super::{ImageStore, PrepareOptions, PreparedImage, PullPolicy, check_lease_name, remove_tree};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::LayerDescriptor;
use crate::progress::Tracker;
use crate::reference::ImageReference;
use crate::settings::UnpackLimits;
use crate::source::{
    ArchiveSource, BlobFetch, FetchError, LayoutSource, OnBytes, RegistrySource, Source,
};
use crate::unpack::{LayerSummary, UnpackError, check_layers, unpack_layer};

pub(super) async fn prepare(
    store: &ImageStore,
    reference: &ImageReference,
    lease: &str,
    options: &PrepareOptions,
) -> Result<PreparedImage, ImageError> {
    if let Some(image) = prepare_stored(store, reference, lease, options)? {
        return Ok(image);
    }
    let name = reference.to_string();
    // Pulls share the store; GC and removal wait for them (and they for GC).
    let _shared = store.lock_store(false).await?;
    let ref_key = Digest::of(name.as_bytes());
    let _ref_lock = KeyLock::acquire(
        &store.keyed,
        &format!("ref:{}", ref_key.hex()),
        store.paths.lock(&format!("ref-{}", ref_key.hex())),
    )
    .await?;

    if let Some((record, named)) = stored_image(store, reference, &name, options)? {
        return finish(store, &name, record, lease, options, named);
    }

    let tracker = Arc::new(Tracker::new(name.clone(), options.progress.clone()));
    let fetch_error = |source: FetchError| match source {
        FetchError::Manifest(source) => ImageError::Manifest {
            reference: name.clone(),
            source: Box::new(source),
        },
        source => ImageError::Fetch {
            reference: name.clone(),
            source: Box::new(source),
        },
    };
    let source = source_for(store, reference, options, &name)?;
    source.prepare().await.map_err(fetch_error)?;
    let paths = store.paths.clone();
    let stored_blob = move |digest: &Digest| std::fs::read(paths.blob(digest)).ok();
    let resolved = source
        .resolve(&options.platform, &stored_blob)
        .await
        .map_err(fetch_error)?;
    store_small_blob(store, &resolved.manifest_digest, &resolved.manifest_bytes)?;
    store_small_blob(store, &resolved.config_digest, &resolved.config_bytes)?;

    let layers = resolved.image.layers;
    let sizes: Vec<u64> = layers.iter().map(|l| l.size).collect();
    tracker.resolved(&resolved.manifest_digest, &sizes);
    // Layers are fetched and unpacked concurrently. When one fails, the others stop
    // at their next chunk, and the pull returns once nothing of it is still running.
    let permits = Semaphore::new(store.settings.max_concurrent_layers.max(1));
    let failed = Arc::new(AtomicBool::new(false));
    let results = join_all(layers.iter().enumerate().map(|(index, layer)| {
        let (permits, tracker, source, name, failed) =
            (&permits, tracker.clone(), &source, &name, failed.clone());
        async move {
            let _permit = permits
                .acquire()
                .await
                .map_err(|e| ImageError::Task(e.to_string()))?;
            if failed.load(Ordering::Relaxed) {
                return Err(ImageError::Stopped);
            }
            let result = ensure_layer(store, source, index, layer, name, &tracker, &failed).await;
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            result
        }
    }))
    .await;
    let mut summaries = Vec::with_capacity(results.len());
    let mut first_error = None;
    for result in results {
        match result {
            Ok(summary) => summaries.push(summary),
            Err(ImageError::Stopped) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if summaries.len() != layers.len() {
        return Err(ImageError::Stopped);
    }

    let lowers: Vec<_> = layers
        .iter()
        .zip(&summaries)
        .map(|(layer, summary)| {
            (
                store.paths.layer_fs(&layer.diff_id),
                summary.implicit_dirs.clone(),
            )
        })
        .collect();
    tokio::task::spawn_blocking(move || check_layers(&lowers))
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
        .map_err(|source| ImageError::LayerCheck {
            reference: name.clone(),
            source: Box::new(source),
        })?;

    let image_path = store.paths.image(&resolved.manifest_digest);
    let pulled_at_ms =
        records::read::<ImageRecord>(&image_path)?.map_or_else(records::now_ms, |r| r.pulled_at_ms);
    let record = ImageRecord {
        digest: resolved.manifest_digest.clone(),
        config_digest: resolved.config_digest,
        platform: options.platform.clone(),
        config: resolved.image.config,
        layers,
        pulled_at_ms,
        last_used_ms: records::now_ms(),
    };
    records::write(&image_path, &record)?;
    tracker.done(&record.digest);
    finish(store, &name, record, lease, options, false)
}

/// An image already in the store, prepared without waiting: `None` when it must be
/// pulled, or when GC or a removal holds the store exclusively.
///
/// Without the reference's lock, which only orders pulls of the same name: every
/// record read here is replaced atomically; an image record is written only once
/// all its layers are complete, and GC (which removes records before their layers)
/// waits for the store's shared lock, held until the lease is written. The only
/// record this may write besides the lease is a digest-pinned reference's, whose
/// content every writer agrees on.
pub(super) fn prepare_stored(
    store: &ImageStore,
    reference: &ImageReference,
    lease: &str,
    options: &PrepareOptions,
) -> Result<Option<PreparedImage>, ImageError> {
    check_lease_name(lease)?;
    let Some(_shared) = FileLock::try_acquire_shared(&store.paths.lock("store"))? else {
        return Ok(None);
    };
    let name = reference.to_string();
    let Some((record, named)) = stored_image(store, reference, &name, options)? else {
        return Ok(None);
    };
    finish(store, &name, record, lease, options, named).map(Some)
}

/// The stored image for `reference` when no pull is needed: a digest-pinned
/// reference already stored, or (if-not-present) the image the name last resolved
/// to; with it, whether the reference's record was read and names it.
fn stored_image(
    store: &ImageStore,
    reference: &ImageReference,
    name: &str,
    options: &PrepareOptions,
) -> Result<Option<(ImageRecord, bool)>, ImageError> {
    let pinned = reference.as_registry().and_then(|r| r.digest.clone());
    let (digest, named) = match (pinned, options.pull_policy) {
        (Some(digest), _) => (Some(digest), false),
        (None, PullPolicy::IfNotPresent) => (
            records::read::<RefRecord>(&store.paths.reference(name))?.map(|r| r.digest),
            true,
        ),
        (None, PullPolicy::Always) => (None, false),
    };
    let Some(digest) = digest else {
        return Ok(None);
    };
    let Some(record) = store.image(&digest)? else {
        return Ok(None);
    };
    let complete = record.platform == options.platform
        && record
            .layers
            .iter()
            .all(|l| store.paths.layer_summary(&l.diff_id).is_file());
    Ok(complete.then_some((record, named)))
}

/// Records the reference (unless its record, just read, names the image already) and
/// the lease, and hands out the layer paths.
fn finish(
    store: &ImageStore,
    name: &str,
    mut record: ImageRecord,
    lease: &str,
    options: &PrepareOptions,
    named: bool,
) -> Result<PreparedImage, ImageError> {
    // A pulled image's record has just been written with its last use.
    let now = records::now_ms();
    if now.saturating_sub(record.last_used_ms) >= super::LAST_USE_GRANULARITY_MS {
        record.last_used_ms = now;
        records::write(&store.paths.image(&record.digest), &record)?;
    }
    let ref_path = store.paths.reference(name);
    if !named && records::read::<RefRecord>(&ref_path)?.is_none_or(|r| r.digest != record.digest) {
        records::write(
            &ref_path,
            &RefRecord {
                reference: name.to_owned(),
                digest: record.digest.clone(),
            },
        )?;
    }
    store.write_lease(lease, &record.digest, options.holder.clone())?;
    Ok(PreparedImage {
        reference: name.to_owned(),
        digest: record.digest.clone(),
        layers: record
            .layers
            .iter()
            .map(|l| store.paths.layer_fs(&l.diff_id))
            .collect(),
        config: record.config,
        platform: options.platform.clone(),
        lease: lease.to_owned(),
        last_used_ms: record.last_used_ms,
    })
}

fn source_for(
    store: &ImageStore,
    reference: &ImageReference,
    options: &PrepareOptions,
    name: &str,
) -> Result<Source, ImageError> {
    let settings_error = |source| ImageError::Settings {
        reference: name.to_owned(),
        source,
    };
    Ok(match reference {
        ImageReference::Registry(r) => {
            let registries = &store.settings.registries;
            let credentials = match &options.credentials {
                Some(c) => Some(c.clone()),
                None => registries
                    .credentials_for(&r.registry)
                    .map_err(settings_error)?,
            };
            let ca = registries.ca_pem().map_err(settings_error)?;
            Source::Registry(RegistrySource::new(r, registries, credentials, ca).map_err(
                |source| ImageError::Fetch {
                    reference: name.to_owned(),
                    source: Box::new(source),
                },
            )?)
        }
        ImageReference::OciLayout { dir, tag } => {
            Source::Layout(LayoutSource::new(dir, tag.as_deref()))
        }
        ImageReference::DockerArchive { file, name } => {
            Source::Archive(ArchiveSource::new(file, name.as_deref()))
        }
    })
}

/// Stores a verified manifest or configuration under its digest.
fn store_small_blob(store: &ImageStore, digest: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
    let path = store.paths.blob(digest);
    if path.is_file() {
        return Ok(());
    }
    // Unique to this call: two pulls of the same manifest (its tag and its digest)
    // may run at once in one agent.
    let name = cella_proto::atomic_file::unique_name(&format!("{}.small", digest.hex()), "");
    let tmp = store.paths.tmp().join(name);
    cella_proto::atomic_file::replace(&path, &tmp, bytes)
        .map_err(ImageError::io(&path, "store a blob"))
}

/// Makes one layer ready: unpacked already, or downloaded (if its blob is not
/// stored), verified, unpacked and checked.
async fn ensure_layer(
    store: &ImageStore,
    source: &Source,
    index: usize,
    layer: &LayerDescriptor,
    name: &str,
    tracker: &Arc<Tracker>,
    failed: &Arc<AtomicBool>,
) -> Result<LayerSummary, ImageError> {
    if let Some(summary) = store.layer_summary(&layer.diff_id)? {
        tracker.layer_done(index, &layer.blob, layer.size, true);
        return Ok(summary);
    }
    let hex = layer.diff_id.hex();
    let lock = KeyLock::acquire(
        &store.keyed,
        &format!("layer:{hex}"),
        store.paths.lock(&format!("layer-{hex}")),
    )
    .await?;
    // Another task or process may have unpacked it while this one waited.
    if let Some(summary) = store.layer_summary(&layer.diff_id)? {
        tracker.layer_done(index, &layer.blob, layer.size, true);
        return Ok(summary);
    }
    let blob = store.paths.blob(&layer.blob);
    if !blob.is_file() {
        tracker.layer_started(index, &layer.blob, layer.size);
        let partial = store.paths.partial_blob(&layer.blob);
        let progress = tracker.clone();
        let size = layer.size;
        let failed = failed.clone();
        let on_bytes: OnBytes = Arc::new(move |bytes| {
            progress.layer_bytes(index, bytes, size);
            !failed.load(Ordering::Relaxed)
        });
        source
            .fetch_blob(BlobFetch {
                digest: layer.blob.clone(),
                size: layer.size,
                partial: partial.clone(),
                on_bytes,
            })
            .await
            .map_err(|source| match source {
                FetchError::Stopped => ImageError::Stopped,
                source => ImageError::Fetch {
                    reference: name.to_owned(),
                    source: Box::new(source),
                },
            })?;
        std::fs::rename(&partial, &blob)
            .map_err(ImageError::io(&blob, "store the verified blob"))?;
        sync_dir(&store.paths.blobs()).map_err(ImageError::io(store.paths.blobs(), "fsync"))?;
    }
    tracker.layer_unpacking(index, &layer.blob);

    let job = UnpackJob {
        staging: store.paths.unpacking(&layer.diff_id),
        target: store.paths.layer(&layer.diff_id),
        layers_dir: store.paths.layers(),
        blob,
        diff_id: layer.diff_id.clone(),
        limits: store.settings.limits,
        _lock: lock,
    };
    // The job owns the layer's lock: if this future is dropped (the caller gave up),
    // the unpack still finishes or cleans up before anyone else may touch the layer.
    let summary = tokio::task::spawn_blocking(move || job.run())
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
        .map_err(|e| match e {
            JobError::Unpack(source) => ImageError::Unpack {
                reference: name.to_owned(),
                layer: layer.blob.clone(),
                source: Box::new(source),
            },
            JobError::Store(e) => e,
        })?;
    tracker.layer_done(index, &layer.blob, layer.size, false);
    Ok(summary)
}

enum JobError {
    Unpack(UnpackError),
    Store(ImageError),
}

impl From<ImageError> for JobError {
    fn from(e: ImageError) -> Self {
        Self::Store(e)
    }
}

/// Unpacks one verified layer blob into place: a staging directory, then a rename.
struct UnpackJob {
    staging: PathBuf,
    target: PathBuf,
    layers_dir: PathBuf,
    blob: PathBuf,
    diff_id: Digest,
    limits: UnpackLimits,
    _lock: KeyLock,
}

impl UnpackJob {
    fn run(self) -> Result<LayerSummary, JobError> {
        remove_tree(&self.staging)?;
        std::fs::create_dir(&self.staging)
            .map_err(ImageError::io(&self.staging, "create the unpack directory"))?;
        let summary = match unpack_layer(
            &self.blob,
            &self.staging.join("fs"),
            &self.diff_id,
            &self.limits,
        ) {
            Ok(summary) => summary,
            Err(source) => {
                remove_tree(&self.staging)?;
                if matches!(source, UnpackError::DiffIdMismatch { .. }) {
                    // The blob verified but does not hold what the configuration
                    // says: the image is wrong, not the download. Keep nothing of it.
                    let _ = std::fs::remove_file(&self.blob);
                }
                return Err(JobError::Unpack(source));
            }
        };
        records::write(&self.staging.join("layer.json"), &summary)?;
        std::fs::rename(&self.staging, &self.target).map_err(ImageError::io(
            &self.target,
            "move the unpacked layer into place",
        ))?;
        sync_dir(&self.layers_dir).map_err(ImageError::io(&self.layers_dir, "fsync"))?;
        // Tasks use the unpacked tree; the compressed copy is not needed any more.
        let _ = std::fs::remove_file(&self.blob);
        Ok(summary)
    }
}

//! Garbage collection and removal, both under the store's exclusive lock (no pull
//! runs meanwhile, in this process or another).

use std::collections::HashSet;
use std::path::Path;

use super::records::{self, ImageRecord, Lease, RefRecord};
use super::{ImageStore, remove_tree};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::reference::ImageReference;

/// What a GC run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    /// Images removed, least recently used first.
    pub removed: Vec<Digest>,
    /// Images over the budget that a lease kept.
    pub kept_leased: Vec<Digest>,
    /// Leases removed because their holder process was gone.
    #[serde(default)]
    pub released_leases: Vec<String>,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

pub(super) fn gc(store: &ImageStore, max_bytes: u64) -> Result<GcReport, ImageError> {
    let _exclusive = super::locks::FileLock::acquire_blocking(&store.paths.lock("store"), true)?;
    let (released_leases, held) = store.release_abandoned()?;
    let leased: HashSet<Digest> = held.into_iter().map(|l: Lease| l.image).collect();
    let bytes_before = disk_usage(store)?;
    let mut images: Vec<ImageRecord> = records::read_all(&store.paths.images())?;
    sweep(store, &images)?;
    images.sort_by_key(|i| (i.last_used_ms, i.pulled_at_ms));
    let mut report = GcReport {
        bytes_before,
        released_leases,
        ..GcReport::default()
    };
    let mut usage = disk_usage(store)?;
    let mut remaining = images.clone();
    for image in &images {
        if usage <= max_bytes {
            break;
        }
        if leased.contains(&image.digest) {
            report.kept_leased.push(image.digest.clone());
            continue;
        }
        remove_image_records(store, &image.digest)?;
        remaining.retain(|i| i.digest != image.digest);
        sweep(store, &remaining)?;
        report.removed.push(image.digest.clone());
        usage = disk_usage(store)?;
    }
    if usage > max_bytes {
        // Partial downloads go last: they save a restart of an interrupted pull.
        for entry in read_dir(&store.paths.tmp())? {
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        usage = disk_usage(store)?;
    }
    report.bytes_after = usage;
    tracing::info!(
        removed = report.removed.len(),
        kept_leased = report.kept_leased.len(),
        bytes_before = report.bytes_before,
        bytes_after = report.bytes_after,
        "image store GC"
    );
    Ok(report)
}

pub(super) fn remove(store: &ImageStore, text: &str) -> Result<Vec<Digest>, ImageError> {
    let _exclusive = super::locks::FileLock::acquire_blocking(&store.paths.lock("store"), true)?;
    let refs: Vec<RefRecord> = records::read_all(&store.paths.refs())?;
    let leases = store.leases()?;
    let (digest, only_ref) = match text.parse::<Digest>() {
        Ok(digest) => (digest, None),
        Err(_) => {
            let name = ImageReference::parse(text, &store.settings.registries.default_registry)?
                .to_string();
            let digest = refs
                .iter()
                .find(|r| r.reference == name)
                .map(|r| r.digest.clone())
                .ok_or_else(|| ImageError::NotFound {
                    reference: name.clone(),
                })?;
            (digest, Some(name))
        }
    };
    if store.image(&digest)?.is_none() && only_ref.is_none() {
        return Err(ImageError::NotFound {
            reference: text.to_owned(),
        });
    }
    let holders: Vec<String> = leases
        .iter()
        .filter(|l| l.image == digest)
        .map(|l| l.name.clone())
        .collect();
    if !holders.is_empty() {
        return Err(ImageError::InUse {
            reference: text.to_owned(),
            leases: holders,
        });
    }
    let mut removed = Vec::new();
    match only_ref {
        Some(name) => {
            records::remove(&store.paths.reference(&name))?;
            if !refs
                .iter()
                .any(|r| r.digest == digest && r.reference != name)
            {
                records::remove(&store.paths.image(&digest))?;
                removed.push(digest);
            }
        }
        None => {
            remove_image_records(store, &digest)?;
            removed.push(digest);
        }
    }
    let images: Vec<ImageRecord> = records::read_all(&store.paths.images())?;
    sweep(store, &images)?;
    Ok(removed)
}

/// Bytes on disk: blobs, unpacked layers (their recorded size), partial downloads.
pub(super) fn disk_usage(store: &ImageStore) -> Result<u64, ImageError> {
    let mut total = 0;
    for dir in [store.paths.blobs(), store.paths.tmp()] {
        for entry in read_dir(&dir)? {
            total += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    for entry in read_dir(&store.paths.layers())? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(diff_id) = Digest::from_hex(&name) {
            total += store.layer_summary(&diff_id)?.map_or(0, |s| s.disk_bytes);
        }
    }
    Ok(total)
}

/// The references and the record of one image (its content goes in the next sweep).
fn remove_image_records(store: &ImageStore, digest: &Digest) -> Result<(), ImageError> {
    let refs: Vec<RefRecord> = records::read_all(&store.paths.refs())?;
    for r in refs.iter().filter(|r| &r.digest == digest) {
        records::remove(&store.paths.reference(&r.reference))?;
    }
    records::remove(&store.paths.image(digest))
}

/// Removes everything no image in `images` refers to: blobs, layers, references to
/// missing images, lock files and leftovers in tmp (nobody pulls meanwhile).
fn sweep(store: &ImageStore, images: &[ImageRecord]) -> Result<(), ImageError> {
    let mut blobs = HashSet::new();
    let mut layers = HashSet::new();
    for image in images {
        blobs.insert(image.digest.hex().to_owned());
        blobs.insert(image.config_digest.hex().to_owned());
        for layer in &image.layers {
            layers.insert(layer.diff_id.hex().to_owned());
        }
    }
    for entry in read_dir(&store.paths.blobs())? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !blobs.contains(&name) {
            std::fs::remove_file(entry.path())
                .map_err(ImageError::io(entry.path(), "remove the blob"))?;
        }
    }
    for entry in read_dir(&store.paths.layers())? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !layers.contains(&name) {
            // Renamed first, so a crash never leaves half a layer under layers/.
            let trash = store.paths.tmp().join(format!("trash-{name}"));
            remove_tree(&trash)?;
            std::fs::rename(entry.path(), &trash)
                .map_err(ImageError::io(entry.path(), "move the layer to trash"))?;
            remove_tree(&trash)?;
        }
    }
    let digests: HashSet<&Digest> = images.iter().map(|i| &i.digest).collect();
    let refs: Vec<RefRecord> = records::read_all(&store.paths.refs())?;
    for r in refs.iter().filter(|r| !digests.contains(&r.digest)) {
        records::remove(&store.paths.reference(&r.reference))?;
    }
    for dir in [
        store.paths.images(),
        store.paths.refs(),
        store.paths.leases(),
        store.paths.blobs(),
    ] {
        for entry in read_dir(&dir)? {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    for entry in read_dir(&store.paths.tmp())? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("layer-") || name.starts_with("trash-") || name.contains(".small.") {
            remove_tree(&entry.path())?;
        }
    }
    for entry in read_dir(&store.paths.lock("."))? {
        if entry.file_name() != "store" {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, ImageError> {
    std::fs::read_dir(dir)
        .map_err(ImageError::io(dir, "list"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(ImageError::io(dir, "list"))
}

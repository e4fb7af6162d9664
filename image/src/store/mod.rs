//! The content-addressed image store: what the agent and the CLI call.
//!
//! ```no_run
//! # async fn example() -> Result<(), cella_image::ImageError> {
//! use cella_image::{ImageReference, ImageStore, PrepareOptions, StoreSettings};
//! let store = ImageStore::open("/var/lib/cella/agent/images", StoreSettings::default())?;
//! let reference = ImageReference::parse("localhost:5000/busybox:latest", "docker.io")?;
//! let image = store.prepare(&reference, "task-1234", &PrepareOptions::default()).await?;
//! // mount overlay: lowerdir = image.layers reversed (overlayfs lists the top first)
//! store.release("task-1234")?;          // when the task has ended
//! store.gc(10 << 30)?;                  // keep the store under 10 GiB
//! # Ok(()) }
//! ```

mod gc;
mod holder;
mod locks;
mod paths;
mod pull;
mod records;

use std::path::{Path, PathBuf};

pub use gc::GcReport;
pub use holder::LeaseHolder;
pub use paths::StorePaths;
pub use records::{ImageRecord, Lease};

use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{ImageConfig, Platform};
use crate::progress::ProgressCallback;
use crate::settings::{Credentials, StoreSettings};
use crate::unpack::LayerSummary;
use locks::{FileLock, KeyedMutex};

/// How stale an image's recorded last use may get before a use rewrites it.
pub(crate) const LAST_USE_GRANULARITY_MS: u64 = 60_000;

/// When a reference already in the store is fetched again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Use the image the reference named when it was last pulled (as `docker run`).
    /// A reference pinned to a digest never needs the network once stored.
    #[default]
    IfNotPresent,
    /// Resolve the reference again at its source; layers already stored are reused.
    Always,
}

/// How one image is prepared.
#[derive(Clone)]
pub struct PrepareOptions {
    pub platform: Platform,
    /// Credentials for this pull, instead of the configured ones.
    pub credentials: Option<Credentials>,
    pub pull_policy: PullPolicy,
    pub progress: Option<ProgressCallback>,
    /// The process holding the lease: once it is gone the lease counts as released
    /// (`cella exec` killed with SIGKILL). `None`: held until released (the agent's
    /// task leases, which it reconciles with its checkpoint).
    pub holder: Option<LeaseHolder>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            platform: Platform::host(),
            credentials: None,
            pull_policy: PullPolicy::default(),
            progress: None,
            holder: None,
        }
    }
}

impl std::fmt::Debug for PrepareOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrepareOptions")
            .field("platform", &self.platform)
            .field("credentials", &self.credentials)
            .field("pull_policy", &self.pull_policy)
            .field("progress", &self.progress.is_some())
            .field("holder", &self.holder)
            .finish()
    }
}

/// An image ready to run, held by a lease until [`ImageStore::release`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedImage {
    /// The reference as normalised (`localhost:5000/library/busybox:latest`).
    pub reference: String,
    /// The manifest digest.
    pub digest: Digest,
    /// Unpacked layer directories, lowest first. overlayfs wants them the other way
    /// round: `lowerdir=top:…:lowest`.
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
    pub platform: Platform,
    /// The lease that keeps the image from GC.
    pub lease: String,
    /// The image's last use as recorded when the lease was taken (milliseconds since
    /// the epoch; see [`ImageStore::release_prepared`]).
    pub last_used_ms: u64,
}

/// One image as listed (also the JSON of the agent's `/api/v1/images`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageInfo {
    pub digest: Digest,
    /// Names pointing at it (none once a re-pulled tag moved to a newer image).
    pub references: Vec<String>,
    /// Space it takes: manifest, configuration and unpacked layers (layers shared
    /// with other images count for each).
    pub size_bytes: u64,
    /// Milliseconds since the epoch.
    pub pulled_at_ms: u64,
    pub last_used_ms: u64,
    pub leases: Vec<String>,
}

/// The store under one directory. Cheap to share behind an `Arc`; every method is
/// safe to call concurrently, also from several processes on the same directory.
pub struct ImageStore {
    paths: StorePaths,
    settings: StoreSettings,
    keyed: KeyedMutex,
}

impl ImageStore {
    /// Opens (creating) the store at `root` and discards what a crash left half done:
    /// unpacks in progress and removals. Partial downloads are kept to be continued.
    pub fn open(root: impl AsRef<Path>, settings: StoreSettings) -> Result<Self, ImageError> {
        let paths = StorePaths::new(root.as_ref());
        std::fs::create_dir_all(paths.root())
            .map_err(ImageError::io(paths.root(), "create the store"))?;
        set_private(paths.root())?;
        for dir in paths.dirs() {
            std::fs::create_dir_all(&dir).map_err(ImageError::io(&dir, "create the directory"))?;
        }
        let store = Self {
            paths,
            settings,
            keyed: KeyedMutex::default(),
        };
        store.discard_leftovers()?;
        Ok(store)
    }

    /// Opens a store that [`ImageStore::open`] set up before, without its per-open
    /// work: when the root is private and every directory is there, nothing is created
    /// and `tmp/` is not scanned (what a crash left there is never used: unpacks are
    /// renamed into place only when complete, and `open` or GC discards the rest).
    /// Otherwise the same as `open`. For launches, which open the store each time.
    pub fn open_existing(
        root: impl AsRef<Path>,
        settings: StoreSettings,
    ) -> Result<Self, ImageError> {
        use std::os::unix::fs::PermissionsExt as _;
        let paths = StorePaths::new(root.as_ref());
        let private = std::fs::metadata(paths.root())
            .is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o777 == 0o700);
        if !private || !paths.dirs().iter().all(|dir| dir.is_dir()) {
            return Self::open(root, settings);
        }
        Ok(Self {
            paths,
            settings,
            keyed: KeyedMutex::default(),
        })
    }

    pub fn paths(&self) -> &StorePaths {
        &self.paths
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// Pulls (or finds) the image, unpacks its layers, and records the lease `lease`
    /// (a task id) on it, so GC keeps it until [`ImageStore::release`]. Taking the same
    /// lease again moves it to this image.
    pub async fn prepare(
        &self,
        reference: &crate::ImageReference,
        lease: &str,
        options: &PrepareOptions,
    ) -> Result<PreparedImage, ImageError> {
        pull::prepare(self, reference, lease, options).await
    }

    /// [`ImageStore::prepare`] of an image already in the store, without waiting and
    /// without an async runtime: `None` when the image must be pulled, or when GC or
    /// a removal holds the store (then `prepare` waits for it). The store's shared
    /// lock is held while the lease is written, as in `prepare`.
    pub fn prepare_stored(
        &self,
        reference: &crate::ImageReference,
        lease: &str,
        options: &PrepareOptions,
    ) -> Result<Option<PreparedImage>, ImageError> {
        pull::prepare_stored(self, reference, lease, options)
    }

    /// Records `lease` on the stored image `digest` (re-establishing a task's lease
    /// after a restart, for instance). Fails if the image is not in the store.
    pub async fn lease(&self, lease: &str, digest: &Digest) -> Result<(), ImageError> {
        check_lease_name(lease)?;
        let _shared = self.lock_store(false).await?;
        if !self.paths.image(digest).exists() {
            return Err(ImageError::NotFound {
                reference: digest.to_string(),
            });
        }
        self.write_lease(lease, digest, None)
    }

    /// Drops a lease; `false` if there was none. The image's last use becomes now.
    pub fn release(&self, lease: &str) -> Result<bool, ImageError> {
        let path = self.paths.lease(lease);
        let held = match records::read::<Lease>(&path) {
            Ok(Some(held)) => Some(held),
            Ok(None) => return Ok(false),
            // A lease a power loss cut short: it goes all the same.
            Err(ImageError::Damaged { .. }) => None,
            Err(e) => return Err(e),
        };
        if let Some(held) = held {
            self.touch(&held.image)?;
        }
        self.remove_lease(lease)
    }

    /// [`ImageStore::release`] of the lease that `prepare` took for `image`, without
    /// reading back the lease or the image's record: the record's last use is
    /// rewritten only if the one `prepare` saw is stale by now. For a lease name only
    /// this caller uses (`cella exec`'s), which nobody moved to another image.
    pub fn release_prepared(&self, image: &PreparedImage) -> Result<bool, ImageError> {
        if records::now_ms().saturating_sub(image.last_used_ms) >= LAST_USE_GRANULARITY_MS {
            self.touch(&image.digest)?;
        }
        self.remove_lease(&image.lease)
    }

    fn remove_lease(&self, lease: &str) -> Result<bool, ImageError> {
        let path = self.paths.lease(lease);
        // Leases live within one boot: no fsync (see `write_lease`).
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::io(&path, "remove the lease")(e)),
        }
    }

    /// Every lease that holds its image: those whose holder process is gone count as
    /// released (GC removes them). After a restart the agent compares these with its
    /// checkpoint and releases those of tasks that no longer exist, before any GC.
    pub fn leases(&self) -> Result<Vec<Lease>, ImageError> {
        let all: Vec<Lease> = records::read_all_lenient(&self.paths.leases())?;
        Ok(all.into_iter().filter(|l| !l.abandoned()).collect())
    }

    /// Removes the leases whose holder is gone; their names, and the leases that still
    /// hold their image. Only with the store's exclusive lock held: no lease is being
    /// written meanwhile, so a lease taken again under the same name is never removed
    /// by mistake. One reading decides both: a holder that ends between two readings
    /// would otherwise leave its lease behind with its image removed.
    fn release_abandoned(&self) -> Result<(Vec<String>, Vec<Lease>), ImageError> {
        let all: Vec<Lease> = records::read_all_lenient(&self.paths.leases())?;
        let (abandoned, held): (Vec<Lease>, Vec<Lease>) =
            all.into_iter().partition(Lease::abandoned);
        let mut released = Vec::new();
        for lease in abandoned {
            self.release(&lease.name)?;
            released.push(lease.name);
        }
        Ok((released, held))
    }

    /// Every image, most recently used first.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let images: Vec<ImageRecord> = records::read_all(&self.paths.images())?;
        let refs: Vec<records::RefRecord> = records::read_all(&self.paths.refs())?;
        let leases = self.leases()?;
        let mut infos = Vec::with_capacity(images.len());
        for image in images {
            let mut references: Vec<String> = refs
                .iter()
                .filter(|r| r.digest == image.digest)
                .map(|r| r.reference.clone())
                .collect();
            references.sort();
            infos.push(ImageInfo {
                size_bytes: self.image_size(&image),
                references,
                pulled_at_ms: image.pulled_at_ms,
                last_used_ms: image.last_used_ms,
                leases: leases
                    .iter()
                    .filter(|l| l.image == image.digest)
                    .map(|l| l.name.clone())
                    .collect(),
                digest: image.digest,
            });
        }
        infos.sort_by(|a, b| {
            b.last_used_ms
                .cmp(&a.last_used_ms)
                .then(a.digest.cmp(&b.digest))
        });
        Ok(infos)
    }

    /// The record of one stored image.
    pub fn image(&self, digest: &Digest) -> Result<Option<ImageRecord>, ImageError> {
        records::read(&self.paths.image(digest))
    }

    /// Removes a reference (as written, normalised against the default registry) or,
    /// given `sha256:…`, an image with all its references. The image's content goes
    /// when no reference is left. Refused while a lease holds the image.
    pub fn remove(&self, reference: &str) -> Result<Vec<Digest>, ImageError> {
        gc::remove(self, reference)
    }

    /// Removes images no lease holds, least recently used first, until the store takes
    /// at most `max_bytes`; first of all, anything no image refers to (left by an
    /// interrupted pull). Waits for pulls in progress to finish. Blocking: call it from
    /// a blocking thread in async code.
    pub fn gc(&self, max_bytes: u64) -> Result<GcReport, ImageError> {
        gc::gc(self, max_bytes)
    }

    /// Bytes the store takes on disk (blobs, unpacked layers, partial downloads).
    pub fn disk_usage(&self) -> Result<u64, ImageError> {
        gc::disk_usage(self)
    }

    async fn lock_store(&self, exclusive: bool) -> Result<FileLock, ImageError> {
        FileLock::acquire(self.paths.lock("store"), exclusive).await
    }

    fn write_lease(
        &self,
        lease: &str,
        digest: &Digest,
        holder: Option<LeaseHolder>,
    ) -> Result<(), ImageError> {
        let path = self.paths.lease(lease);
        let since = match records::read::<Lease>(&path)? {
            Some(existing) if &existing.image == digest => existing.since_ms,
            _ => records::now_ms(),
        };
        // A lease matters only while its task may run, within this boot of the
        // machine (a reboot ends every task): it is written without fsync, which
        // keeps two disk flushes off every launch from a stored image.
        records::write_volatile(
            &path,
            &Lease {
                name: lease.to_owned(),
                image: digest.clone(),
                since_ms: since,
                holders: holder.into_iter().collect(),
            },
        )
    }

    /// Sets an image's last use to now; a use within the last minute is close
    /// enough for least-recently-used GC, so the record (durable) is not rewritten.
    fn touch(&self, digest: &Digest) -> Result<(), ImageError> {
        let path = self.paths.image(digest);
        if let Some(mut record) = records::read::<ImageRecord>(&path)? {
            let now = records::now_ms();
            if now.saturating_sub(record.last_used_ms) >= LAST_USE_GRANULARITY_MS {
                record.last_used_ms = now;
                records::write(&path, &record)?;
            }
        }
        Ok(())
    }

    fn layer_summary(&self, diff_id: &Digest) -> Result<Option<LayerSummary>, ImageError> {
        records::read(&self.paths.layer_summary(diff_id))
    }

    fn image_size(&self, image: &ImageRecord) -> u64 {
        let file_size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut size = file_size(self.paths.blob(&image.digest))
            + file_size(self.paths.blob(&image.config_digest));
        for layer in &image.layers {
            size += self
                .layer_summary(&layer.diff_id)
                .ok()
                .flatten()
                .map_or(0, |s| s.disk_bytes);
        }
        size
    }

    /// Unpacks and removals a crash interrupted: nobody else holds their locks.
    fn discard_leftovers(&self) -> Result<(), ImageError> {
        let tmp = self.paths.tmp();
        let entries = std::fs::read_dir(&tmp).map_err(ImageError::io(&tmp, "list"))?;
        for entry in entries {
            let entry = entry.map_err(ImageError::io(&tmp, "list"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            // Another process may be removing the same leftovers (its GC): a failure
            // here is logged, and GC finishes the job.
            let removed = if let Some(hex) = name.strip_prefix("layer-") {
                let lock = self.paths.lock(&format!("layer-{hex}"));
                let Some(_held) = FileLock::try_acquire(&lock)? else {
                    continue;
                };
                remove_tree(&path)
            } else if name.starts_with("trash-") {
                remove_tree(&path)
            } else {
                Ok(())
            };
            if let Err(e) = removed {
                tracing::warn!(error = %e, "cannot discard what an interrupted pull or removal left");
            }
        }
        Ok(())
    }
}

pub(crate) fn check_lease_name(name: &str) -> Result<(), ImageError> {
    if name.is_empty() || name.len() > 200 || name.contains(['\0', '\n']) {
        return Err(ImageError::InvalidLease {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Removes a directory tree (never following symlinks); a missing one is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<(), ImageError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(path, "remove")(e)),
    }
}

fn set_private(path: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(ImageError::io(path, "make the store private (0700)"))
}

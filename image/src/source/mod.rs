//! Where images come from: a registry, an OCI image layout directory, or a
//! `docker save` archive. Each source hands out manifests and blobs; this module
//! resolves a reference to one verified manifest and configuration for a platform.

mod archive;
mod layout;
mod registry;

use std::path::{Path, PathBuf};

pub use archive::ArchiveSource;
pub use layout::LayoutSource;
pub use registry::RegistrySource;

use crate::digest::{Digest, Hasher};
use crate::manifest::{
    Document, MAX_METADATA_BYTES, ManifestError, Platform, ResolvedConfig, descriptor_digest,
    resolve_config, select_platform,
};

/// Fetching from a source failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot set up the client for {registry}: {message}")]
    Client { registry: String, message: String },
    #[error("{}", unauthorized_message(registry, *with_credentials, detail))]
    Unauthorized {
        registry: String,
        with_credentials: bool,
        detail: String,
    },
    #[error("{what} was not found in {registry}")]
    NotFound { registry: String, what: String },
    #[error("{registry}: cannot {op}: {message}")]
    Registry {
        registry: String,
        op: &'static str,
        message: String,
    },
    #[error("{registry}: the transfer of blob {digest} failed: {message}")]
    Transfer {
        registry: String,
        digest: Digest,
        message: String,
    },
    #[error(
        "{what} {expected} does not verify: the content received ({size} bytes) has digest {actual}; it was discarded"
    )]
    DigestMismatch {
        what: &'static str,
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("stopped: another layer of the same pull failed")]
    Stopped,
    #[error("{path}: {problem}")]
    Local { path: PathBuf, problem: String },
    #[error("{path}: cannot {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
}

impl FetchError {
    /// The error of the file operation `op` on `path` (for `map_err`).
    pub(crate) fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io {
            path: path.to_owned(),
            op,
            source,
        }
    }
}

fn unauthorized_message(registry: &str, with_credentials: bool, detail: &str) -> String {
    if with_credentials {
        format!(
            "{registry} refused the configured credentials ({detail}); check the user name and password"
        )
    } else {
        format!(
            "{registry} requires authentication ({detail}); configure credentials for it (a Docker config.json or the credentials map)"
        )
    }
}

/// Checks `bytes` against a descriptor's digest and size.
pub(crate) fn verify_bytes(bytes: &[u8], digest: &Digest, size: u64) -> Result<(), FetchError> {
    let actual = Digest::of(bytes);
    if &actual != digest || bytes.len() as u64 != size {
        return Err(FetchError::DigestMismatch {
            what: "blob",
            expected: digest.clone(),
            actual,
            size: bytes.len() as u64,
        });
    }
    Ok(())
}

/// One image, resolved to a manifest and a configuration that both verified.
pub struct Resolved {
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub config_bytes: Vec<u8>,
    pub image: ResolvedConfig,
}

pub enum Source {
    Registry(RegistrySource),
    Layout(LayoutSource),
    Archive(ArchiveSource),
}

impl Source {
    /// The manifest for `platform` (through an index if there is one) and its
    /// configuration, both verified against their digests.
    /// `stored` returns a blob the store already holds (a configuration shared by
    /// another reference), so it is not fetched again.
    pub async fn resolve(
        &self,
        platform: &Platform,
        stored: &(dyn Fn(&Digest) -> Option<Vec<u8>> + Send + Sync),
    ) -> Result<Resolved, FetchError> {
        let (mut bytes, expected) = self.top_manifest().await?;
        let mut digest = Digest::of(&bytes);
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(FetchError::DigestMismatch {
                what: "manifest",
                size: bytes.len() as u64,
                expected,
                actual: digest,
            });
        }
        let mut nested = 0;
        let manifest = loop {
            match Document::parse(&bytes)? {
                Document::Manifest(manifest) => break manifest,
                Document::Index(_) if nested > 0 => {
                    return Err(FetchError::Manifest(ManifestError::NoPlatform {
                        wanted: platform.clone(),
                        available: "an index nested in an index".to_owned(),
                    }));
                }
                Document::Index(index) => {
                    let entry = select_platform(&index, platform)?;
                    let (entry_digest, size) =
                        descriptor_digest(&entry, "manifest", MAX_METADATA_BYTES)?;
                    bytes = self.manifest_by_digest(&entry_digest, size).await?;
                    digest = entry_digest;
                    nested += 1;
                }
            }
        };
        let (config_digest, config_size) =
            descriptor_digest(manifest.config(), "configuration", MAX_METADATA_BYTES)?;
        let config_bytes = match stored(&config_digest) {
            Some(bytes) => bytes,
            None => self.small_blob(&config_digest, config_size).await?,
        };
        let image = resolve_config(&manifest, &config_bytes, platform)?;
        Ok(Resolved {
            manifest_digest: digest,
            manifest_bytes: bytes,
            config_digest,
            config_bytes,
            image,
        })
    }

    /// Authenticates with a registry; nothing for local sources.
    pub async fn prepare(&self) -> Result<(), FetchError> {
        match self {
            Self::Registry(r) => r.authenticate().await,
            Self::Layout(_) => Ok(()),
            Self::Archive(a) => a.load().await,
        }
    }

    async fn top_manifest(&self) -> Result<(Vec<u8>, Option<Digest>), FetchError> {
        match self {
            Self::Registry(r) => {
                let bytes = r.manifest(None).await?;
                Ok((bytes, r_digest(r)))
            }
            Self::Layout(l) => l.top_manifest().await,
            Self::Archive(a) => a.top_manifest().await,
        }
    }

    async fn manifest_by_digest(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, FetchError> {
        let bytes = match self {
            Self::Registry(r) => r.manifest(Some(digest)).await?,
            _ => self.small_blob(digest, size).await?,
        };
        verify_bytes(&bytes, digest, size)?;
        Ok(bytes)
    }

    async fn small_blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, FetchError> {
        match self {
            Self::Registry(r) => r.small_blob(digest, size).await,
            Self::Layout(l) => l.small_blob(digest, size).await,
            Self::Archive(a) => a.small_blob(digest, size).await,
        }
    }

    /// Fetches a blob into its partial file and verifies it.
    pub async fn fetch_blob(&self, blob: BlobFetch) -> Result<(), FetchError> {
        match self {
            Self::Registry(r) => r.download_blob(&blob).await,
            Self::Layout(l) => l.copy_blob(blob).await,
            Self::Archive(a) => a.copy_blob(blob).await,
        }
    }
}

fn r_digest(r: &RegistrySource) -> Option<Digest> {
    r.pinned_digest()
}

/// A blob to fetch: the digest and size it must have, the partial file it goes to
/// (where a registry download continues what an earlier attempt left), and who hears
/// of every chunk written.
#[derive(Clone)]
pub struct BlobFetch {
    pub digest: Digest,
    pub size: u64,
    pub partial: PathBuf,
    pub on_bytes: OnBytes,
}

/// Told the number of bytes of every chunk fetched (progress); returns `false` to
/// stop the transfer (another layer of the same pull failed). What was fetched stays
/// in the partial file, to be continued.
pub type OnBytes = std::sync::Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// Runs blocking file work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(FetchError::Local {
            path: PathBuf::new(),
            problem: format!("a file copy task failed: {e}"),
        })
    })
}

/// Copies `reader` into a new file at `partial` while hashing it, and verifies the
/// result: the local sources' way of fetching a blob.
pub(crate) fn copy_verified(
    mut reader: impl std::io::Read,
    blob: &BlobFetch,
) -> Result<(), FetchError> {
    use std::io::Write as _;
    let (digest, size, partial) = (&blob.digest, blob.size, blob.partial.as_path());
    let on_bytes = &*blob.on_bytes;
    let io = |op| FetchError::io(partial, op);
    let mut file = std::fs::File::create(partial).map_err(io("create the partial blob"))?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(io("read the source blob"))?;
        if n == 0 {
            break;
        }
        if hasher.len() + n as u64 > size {
            return Err(FetchError::DigestMismatch {
                what: "blob",
                expected: digest.clone(),
                actual: Digest::of(&[]),
                size: hasher.len() + n as u64,
            });
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(io("write the partial blob"))?;
        if !on_bytes(n as u64) {
            return Err(FetchError::Stopped);
        }
    }
    let length = hasher.len();
    let actual = hasher.finish();
    if &actual != digest || length != size {
        drop(file);
        let _ = std::fs::remove_file(partial);
        return Err(FetchError::DigestMismatch {
            what: "blob",
            expected: digest.clone(),
            actual,
            size: length,
        });
    }
    file.sync_all().map_err(io("fsync the partial blob"))
}

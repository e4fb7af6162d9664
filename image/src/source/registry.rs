//! Pulling from a registry over the OCI distribution API, with `oci-client`.
//!
//! `oci-client` (the ORAS project's client, formerly `oci-distribution`) speaks the
//! protocol: the `/v2/` challenge, bearer tokens from the registry's token service or
//! HTTP basic authentication, manifests by tag or digest, and blobs by range. It runs
//! on reqwest with rustls; Cella gives it the ring provider (no OpenSSL, no aws-lc).
//! Cella keeps for itself what decides safety: every byte is hashed here and compared
//! with the digest (and size) the manifest promised before anything is used, and a
//! partial blob is continued with a `Range` request, or restarted, never trusted.

use std::time::Duration;

use cella_proto::tls::error_chain;
use futures::StreamExt as _;
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol,
};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use super::{BlobFetch, FetchError};
use crate::digest::{Digest, Hasher};
use crate::manifest::MANIFEST_MEDIA_TYPES;
use crate::reference::RegistryReference;
use crate::settings::{Credentials, RegistrySettings};

/// How often a blob transfer that breaks off is continued before the pull fails.
const TRANSFER_ATTEMPTS: u32 = 3;

pub struct RegistrySource {
    client: Client,
    reference: RegistryReference,
    auth: RegistryAuth,
    has_credentials: bool,
}

impl RegistrySource {
    pub fn new(
        reference: &RegistryReference,
        settings: &RegistrySettings,
        credentials: Option<Credentials>,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, FetchError> {
        // reqwest is built without a default crypto provider; Cella uses ring. An
        // error only means the process already installed one, which is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: if settings.insecure_registries.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(settings.insecure_registries.clone())
            },
            extra_root_certificates: ca_pem
                .map(|data| {
                    vec![Certificate {
                        encoding: CertificateEncoding::Pem,
                        data,
                    }]
                })
                .unwrap_or_default(),
            // Index entries are chosen by Cella (manifest::select_platform).
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(settings.connect_timeout_secs)),
            read_timeout: Some(Duration::from_secs(settings.read_timeout_secs)),
            user_agent: concat!("cella-image/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|e| FetchError::Client {
            registry: reference.registry.clone(),
            message: error_chain(&e),
        })?;
        let has_credentials = credentials.is_some();
        let auth = match credentials {
            None => RegistryAuth::Anonymous,
            Some(Credentials::Basic { username, password }) => {
                RegistryAuth::Basic(username, password)
            }
            Some(Credentials::Bearer(token)) => RegistryAuth::Bearer(token),
        };
        Ok(Self {
            client,
            reference: reference.clone(),
            auth,
            has_credentials,
        })
    }

    fn oci_reference(&self, digest: Option<&Digest>) -> Reference {
        let r = &self.reference;
        match (digest.or(r.digest.as_ref()), &r.tag) {
            (Some(digest), _) => {
                Reference::with_digest(r.registry.clone(), r.repository.clone(), digest.to_string())
            }
            (None, Some(tag)) => {
                Reference::with_tag(r.registry.clone(), r.repository.clone(), tag.clone())
            }
            (None, None) => Reference::with_tag(
                r.registry.clone(),
                r.repository.clone(),
                crate::reference::DEFAULT_TAG.to_owned(),
            ),
        }
    }

    /// Answers the registry's authentication challenge once; the token (or basic
    /// credentials) is then sent with every request of this pull.
    pub async fn authenticate(&self) -> Result<(), FetchError> {
        self.client
            .auth(
                &self.oci_reference(None),
                &self.auth,
                RegistryOperation::Pull,
            )
            .await
            .map(drop)
            .map_err(|e| self.map_error(e, "authenticate"))
    }

    /// The manifest (or index) bytes for the reference, or for `digest`. The caller
    /// verifies the digest.
    pub async fn manifest(&self, digest: Option<&Digest>) -> Result<Vec<u8>, FetchError> {
        let reference = self.oci_reference(digest);
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| self.map_error(e, "fetch the manifest"))?;
        Ok(bytes.to_vec())
    }

    /// A small blob (the configuration) held in memory, verified.
    pub async fn small_blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, FetchError> {
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let (_, mut stream) = self
            .fetch_range(digest, 0, "fetch the configuration")
            .await?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| FetchError::Transfer {
                registry: self.reference.registry.clone(),
                digest: digest.clone(),
                message: error_chain(&e),
            })?;
            out.extend_from_slice(&chunk);
            if out.len() as u64 > size {
                break;
            }
        }
        super::verify_bytes(&out, digest, size)?;
        Ok(out)
    }

    /// Downloads the blob into its partial file, continuing what an earlier attempt
    /// (perhaps of a process that was killed) left there, and verifies size and digest.
    /// On a mismatch after continuing, the download is restarted from zero once.
    pub async fn download_blob(&self, blob: &BlobFetch) -> Result<(), FetchError> {
        let (digest, size, partial) = (&blob.digest, blob.size, blob.partial.as_path());
        let on_bytes = &*blob.on_bytes;
        let io = |op| FetchError::io(partial, op);
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(partial)
            .await
            .map_err(io("open the partial blob"))?;
        let mut hasher = Hasher::new();
        let mut have = file
            .metadata()
            .await
            .map_err(io("stat the partial blob"))?
            .len();
        if have > size {
            file.set_len(0)
                .await
                .map_err(io("truncate the partial blob"))?;
            have = 0;
        }
        // Hash what an earlier attempt left: it is trusted only if the whole blob
        // verifies in the end.
        let mut buf = vec![0u8; 1 << 20];
        let mut left = have;
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = file
                .read(&mut buf[..want])
                .await
                .map_err(io("read the partial blob"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        if have > 0 {
            let _ = on_bytes(have);
        }
        let mut resumed = have > 0;
        let mut attempts = 0;
        loop {
            let mut stream_error = None;
            if hasher.len() < size {
                attempts += 1;
                let offset = hasher.len();
                match self.fetch_range(digest, offset, "fetch a blob").await {
                    Ok((full, mut stream)) => {
                        if full && offset > 0 {
                            // The registry ignored the range: start over.
                            hasher = Hasher::new();
                            file.set_len(0)
                                .await
                                .map_err(io("truncate the partial blob"))?;
                        }
                        file.seek(std::io::SeekFrom::Start(hasher.len()))
                            .await
                            .map_err(io("seek in the partial blob"))?;
                        while let Some(chunk) = stream.next().await {
                            match chunk {
                                Ok(chunk) => {
                                    if hasher.len() + chunk.len() as u64 > size {
                                        stream_error = Some(
                                            "the registry sent more bytes than the manifest says"
                                                .to_owned(),
                                        );
                                        break;
                                    }
                                    file.write_all(&chunk)
                                        .await
                                        .map_err(io("write the partial blob"))?;
                                    hasher.update(&chunk);
                                    if !on_bytes(chunk.len() as u64) {
                                        file.flush().await.map_err(io("write the partial blob"))?;
                                        return Err(FetchError::Stopped);
                                    }
                                }
                                Err(e) => {
                                    stream_error = Some(error_chain(&e));
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) if attempts >= TRANSFER_ATTEMPTS => return Err(e),
                    Err(e) => {
                        tracing::warn!(blob = %digest, error = %e, "blob request failed; retrying");
                        continue;
                    }
                }
            }
            if hasher.len() < size {
                if attempts >= TRANSFER_ATTEMPTS {
                    return Err(FetchError::Transfer {
                        registry: self.reference.registry.clone(),
                        digest: digest.clone(),
                        message: stream_error
                            .unwrap_or_else(|| "the transfer ended early".to_owned()),
                    });
                }
                file.flush().await.map_err(io("write the partial blob"))?;
                continue;
            }
            let got = std::mem::take(&mut hasher);
            let length = got.len();
            let actual = got.finish();
            if &actual == digest && length == size {
                file.sync_all()
                    .await
                    .map_err(io("fsync the partial blob"))?;
                return Ok(());
            }
            // Never keep unverified bytes: the next attempt starts from zero.
            file.set_len(0)
                .await
                .map_err(io("truncate the partial blob"))?;
            if resumed {
                resumed = false;
                tracing::warn!(blob = %digest, "continued blob did not verify; downloading it again from the start");
                continue;
            }
            return Err(FetchError::DigestMismatch {
                what: "blob",
                expected: digest.clone(),
                actual,
                size: length,
            });
        }
    }

    /// The blob from byte `offset` on, and whether the registry sent it whole instead
    /// (it ignored the range); `op` names the operation in errors.
    async fn fetch_range(
        &self,
        digest: &Digest,
        offset: u64,
        op: &'static str,
    ) -> Result<
        (
            bool,
            futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
        ),
        FetchError,
    > {
        let response = self
            .client
            .pull_blob_stream_partial(
                &self.oci_reference(None),
                digest.to_string().as_str(),
                offset,
                None,
            )
            .await
            .map_err(|e| self.map_error(e, op))?;
        Ok(match response {
            BlobResponse::Full(s) => (true, s.stream),
            BlobResponse::Partial(s) => (false, s.stream),
        })
    }

    fn map_error(&self, error: OciDistributionError, op: &'static str) -> FetchError {
        let registry = self.reference.registry.clone();
        match &error {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => FetchError::Unauthorized {
                registry,
                with_credentials: self.has_credentials,
                detail: error.to_string(),
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<_> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    FetchError::Unauthorized {
                        registry,
                        with_credentials: self.has_credentials,
                        detail: error.to_string(),
                    }
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    FetchError::NotFound {
                        registry,
                        what: self.reference.to_string(),
                    }
                } else {
                    FetchError::Registry {
                        registry,
                        op,
                        message: error.to_string(),
                    }
                }
            }
            OciDistributionError::ImageManifestNotFoundError(_) => FetchError::NotFound {
                registry,
                what: self.reference.to_string(),
            },
            _ => FetchError::Registry {
                registry,
                op,
                message: error_chain(&error),
            },
        }
    }
}

impl RegistrySource {
    /// The digest the reference pins, which the manifest must hash to.
    pub fn pinned_digest(&self) -> Option<Digest> {
        self.reference.digest.clone()
    }
}

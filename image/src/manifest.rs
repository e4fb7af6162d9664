//! Manifests, indexes and image configurations (OCI and Docker schema 2), parsed with
//! `oci-spec`, and the choice of one platform from an index.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Media types asked for when fetching a manifest by tag or digest.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The platform an image must be built for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// GOOS value, e.g. `linux`.
    pub os: String,
    /// GOARCH value, e.g. `amd64`.
    pub architecture: String,
    /// e.g. `v8` for arm64; `None` accepts any variant.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on, in OCI (Go) names.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "x86" => ("386", None),
            "arm" => ("arm", None),
            "powerpc64" => ("ppc64le", None),
            "riscv64" => ("riscv64", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Self {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant,
        }
    }

    fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && self
                .variant
                .as_deref()
                .is_none_or(|wanted| variant == Some(wanted))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

/// What the runtime needs from an image's configuration to start a task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` strings, in the image's order.
    pub env: Vec<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, as the image gives it.
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub stop_signal: Option<String>,
}

/// One layer of a manifest, with the uncompressed digest the configuration promises.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDescriptor {
    /// Digest of the blob as stored (compressed or not).
    pub blob: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
    pub media_type: String,
    /// Digest of the uncompressed tar stream (`rootfs.diff_ids`).
    pub diff_id: Digest,
}

/// A manifest or index that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the {what} is not valid JSON of its kind: {source}")]
    Parse {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error(
        "Docker schema 1 manifests are not supported: push the image again with a current tool"
    )]
    SchemaOne,
    #[error("no manifest for {wanted} in the index; it has: {available}")]
    NoPlatform { wanted: Platform, available: String },
    #[error("the image is built for {found}, not {wanted}")]
    WrongPlatform { wanted: Platform, found: String },
    #[error("descriptor digest: {0}")]
    Digest(#[from] crate::digest::DigestError),
    #[error("layer {digest} has media type {media_type:?}, which is not a container image layer")]
    NotALayer { digest: String, media_type: String },
    #[error(
        "the manifest lists {layers} layers but the configuration's rootfs.diff_ids has {diff_ids}"
    )]
    LayerCountMismatch { layers: usize, diff_ids: usize },
    #[error("the manifest lists no layers")]
    NoLayers,
    #[error("{what} {digest} is {size} bytes, more than the {limit} bytes accepted for it")]
    TooLarge {
        what: &'static str,
        digest: String,
        size: u64,
        limit: u64,
    },
}

/// Largest manifest, index or configuration accepted (they are held in memory).
pub const MAX_METADATA_BYTES: u64 = 8 << 20;

/// A parsed manifest document: an index of manifests or an image manifest.
pub enum Document {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    manifests: Option<serde_json::Value>,
}

impl Document {
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
                what: "manifest",
                source,
            })?;
        if probe.schema_version == Some(1) {
            return Err(ManifestError::SchemaOne);
        }
        if probe.manifests.is_some() {
            serde_json::from_slice(bytes)
                .map(|i| Self::Index(Box::new(i)))
                .map_err(|source| ManifestError::Parse {
                    what: "image index",
                    source,
                })
        } else {
            serde_json::from_slice(bytes)
                .map(|m| Self::Manifest(Box::new(m)))
                .map_err(|source| ManifestError::Parse {
                    what: "image manifest",
                    source,
                })
        }
    }
}

/// The descriptor in `index` for `wanted`. Entries without a platform, or for
/// `unknown/unknown` (build attestations), are never chosen.
pub fn select_platform(index: &ImageIndex, wanted: &Platform) -> Result<Descriptor, ManifestError> {
    let mut available = Vec::new();
    for entry in index.manifests() {
        let Some(platform) = entry.platform() else {
            continue;
        };
        let os = platform.os().to_string();
        let arch = platform.architecture().to_string();
        if wanted.matches(&os, &arch, platform.variant().as_deref()) {
            return Ok(entry.clone());
        }
        if os != "unknown" {
            available.push(match platform.variant() {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            });
        }
    }
    Err(ManifestError::NoPlatform {
        wanted: wanted.clone(),
        available: if available.is_empty() {
            "no platform entries".to_owned()
        } else {
            available.join(", ")
        },
    })
}

/// The digest and size of a descriptor, the size checked against `limit`.
pub fn descriptor_digest(
    descriptor: &Descriptor,
    what: &'static str,
    limit: u64,
) -> Result<(Digest, u64), ManifestError> {
    let digest: Digest = descriptor.digest().to_string().parse()?;
    let size = descriptor.size();
    if size > limit {
        return Err(ManifestError::TooLarge {
            what,
            digest: digest.to_string(),
            size,
            limit,
        });
    }
    Ok((digest, size))
}

/// The parsed configuration of an image together with its layers.
pub struct ResolvedConfig {
    pub config: ImageConfig,
    pub layers: Vec<LayerDescriptor>,
}

/// Checks `config_bytes` against the manifest (platform, layer count) and pairs each
/// layer with its diff id.
pub fn resolve_config(
    manifest: &ImageManifest,
    config_bytes: &[u8],
    wanted: &Platform,
) -> Result<ResolvedConfig, ManifestError> {
    let configuration: ImageConfiguration =
        serde_json::from_slice(config_bytes).map_err(|source| ManifestError::Parse {
            what: "image configuration",
            source,
        })?;
    let os = configuration.os().to_string();
    let arch = configuration.architecture().to_string();
    if !wanted.matches(&os, &arch, configuration.variant().as_deref()) {
        return Err(ManifestError::WrongPlatform {
            wanted: wanted.clone(),
            found: format!("{os}/{arch}"),
        });
    }
    let diff_ids = configuration.rootfs().diff_ids();
    if manifest.layers().is_empty() {
        return Err(ManifestError::NoLayers);
    }
    if diff_ids.len() != manifest.layers().len() {
        return Err(ManifestError::LayerCountMismatch {
            layers: manifest.layers().len(),
            diff_ids: diff_ids.len(),
        });
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (descriptor, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let media_type = descriptor.media_type().to_string();
        let (blob, size) = descriptor_digest(descriptor, "layer", u64::MAX)?;
        if !is_layer_media_type(&media_type) {
            return Err(ManifestError::NotALayer {
                digest: blob.to_string(),
                media_type,
            });
        }
        layers.push(LayerDescriptor {
            blob,
            size,
            media_type,
            diff_id: diff_id.parse()?,
        });
    }
    let runtime = configuration.config().clone().unwrap_or_default();
    let config = ImageConfig {
        entrypoint: runtime.entrypoint().clone().unwrap_or_default(),
        cmd: runtime.cmd().clone().unwrap_or_default(),
        env: runtime.env().clone().unwrap_or_default(),
        user: runtime.user().clone().filter(|u| !u.is_empty()),
        working_dir: runtime.working_dir().clone().filter(|w| !w.is_empty()),
        stop_signal: runtime.stop_signal().clone(),
    };
    Ok(ResolvedConfig { config, layers })
}

fn is_layer_media_type(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.index.v1+json",
      "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 10,
         "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 10,
         "digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222",
         "platform": {"os": "unknown", "architecture": "unknown"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 10,
         "digest": "sha256:3333333333333333333333333333333333333333333333333333333333333333",
         "platform": {"os": "linux", "architecture": "amd64"}}
      ]}"#;

    #[test]
    fn picks_the_wanted_platform_and_lists_the_others() {
        let Document::Index(index) = Document::parse(INDEX.as_bytes()).unwrap() else {
            panic!("not an index");
        };
        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        assert!(
            select_platform(&index, &amd64)
                .unwrap()
                .digest()
                .to_string()
                .contains("3333")
        );
        let s390x = Platform {
            architecture: "s390x".into(),
            ..amd64
        };
        let err = select_platform(&index, &s390x).unwrap_err().to_string();
        assert_eq!(
            err,
            "no manifest for linux/s390x in the index; it has: linux/arm64/v8, linux/amd64"
        );
    }

    #[test]
    fn schema_one_is_refused_with_advice() {
        let err = Document::parse(br#"{"schemaVersion": 1, "fsLayers": []}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("schema 1"), "{err}");
    }
}

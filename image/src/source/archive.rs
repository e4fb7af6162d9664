//! A `docker save` archive: `manifest.json` naming a configuration and uncompressed
//! layer tars (`<id>/layer.tar`, or `blobs/sha256/<hex>` from Docker 25 on).
//!
//! The archive has no registry manifest, so one is made: an OCI manifest whose layers
//! are the archive's tars, each addressed by its diff id (the digest of an
//! uncompressed layer). Every member is verified against those digests when copied.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::json;

use super::{BlobFetch, FetchError, blocking, copy_verified};
use crate::digest::Digest;
use crate::manifest::MAX_METADATA_BYTES;

pub struct ArchiveSource {
    file: PathBuf,
    name: Option<String>,
    loaded: OnceLock<Loaded>,
}

struct Loaded {
    manifest: Vec<u8>,
    config_digest: Digest,
    config: Vec<u8>,
    /// Layer digest → archive member.
    members: HashMap<Digest, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl ArchiveSource {
    pub fn new(file: &Path, name: Option<&str>) -> Self {
        Self {
            file: file.to_owned(),
            name: name.map(str::to_owned),
            loaded: OnceLock::new(),
        }
    }

    /// Reads `manifest.json` and the configuration, and makes the manifest.
    pub async fn load(&self) -> Result<(), FetchError> {
        if self.loaded.get().is_some() {
            return Ok(());
        }
        let (file, name) = (self.file.clone(), self.name.clone());
        let loaded = blocking(move || load(&file, name.as_deref())).await?;
        let _ = self.loaded.set(loaded);
        Ok(())
    }

    fn loaded(&self) -> Result<&Loaded, FetchError> {
        self.loaded.get().ok_or_else(|| FetchError::Local {
            path: self.file.clone(),
            problem: "the archive was not loaded".to_owned(),
        })
    }

    pub async fn top_manifest(&self) -> Result<(Vec<u8>, Option<Digest>), FetchError> {
        self.load().await?;
        let manifest = self.loaded()?.manifest.clone();
        let digest = Digest::of(&manifest);
        Ok((manifest, Some(digest)))
    }

    pub async fn small_blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, FetchError> {
        let loaded = self.loaded()?;
        if digest != &loaded.config_digest {
            return Err(FetchError::Local {
                path: self.file.clone(),
                problem: format!("the archive has no configuration {digest}"),
            });
        }
        super::verify_bytes(&loaded.config, digest, size)?;
        Ok(loaded.config.clone())
    }

    pub async fn copy_blob(&self, blob: BlobFetch) -> Result<(), FetchError> {
        let digest = &blob.digest;
        let member =
            self.loaded()?
                .members
                .get(digest)
                .cloned()
                .ok_or_else(|| FetchError::Local {
                    path: self.file.clone(),
                    problem: format!("the archive has no layer {digest}"),
                })?;
        let file = self.file.clone();
        blocking(move || {
            let mut archive = open(&file)?;
            let entries = archive.entries_with_seek().map_err(|e| bad(&file, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| bad(&file, e))?;
                if member_name(&entry) == member {
                    return copy_verified(entry, &blob).map_err(
                        |e| match e {
                            FetchError::DigestMismatch { .. } => FetchError::Local {
                                path: file.clone(),
                                problem: format!(
                                    "layer {member} does not hash to its diff id {} (compressed layers are not supported in docker archives): {e}",
                                    blob.digest
                                ),
                            },
                            other => other,
                        },
                    );
                }
            }
            Err(FetchError::Local {
                path: file,
                problem: format!("the archive has no member {member}"),
            })
        })
        .await
    }
}

fn open(file: &Path) -> Result<tar::Archive<File>, FetchError> {
    File::open(file)
        .map(tar::Archive::new)
        .map_err(FetchError::io(file, "open the docker archive"))
}

fn bad(file: &Path, e: std::io::Error) -> FetchError {
    FetchError::Local {
        path: file.to_owned(),
        problem: format!("not a valid docker archive (tar): {e}"),
    }
}

fn member_name<R: std::io::Read>(entry: &tar::Entry<'_, R>) -> String {
    let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    path.trim_start_matches("./").to_owned()
}

/// Reads the small members (`manifest.json`, configurations) in one pass.
fn load(file: &Path, name: Option<&str>) -> Result<Loaded, FetchError> {
    let local = |problem: String| FetchError::Local {
        path: file.to_owned(),
        problem,
    };
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    let mut sizes: HashMap<String, u64> = HashMap::new();
    let mut archive = open(file)?;
    for entry in archive.entries_with_seek().map_err(|e| bad(file, e))? {
        let mut entry = entry.map_err(|e| bad(file, e))?;
        let member = member_name(&entry);
        let size = entry.size();
        sizes.insert(member.clone(), size);
        if size <= MAX_METADATA_BYTES && (member.ends_with(".json") || member.starts_with("blobs/"))
        {
            let mut bytes = Vec::new();
            if size <= MAX_METADATA_BYTES / 8 || member == "manifest.json" {
                std::io::Read::read_to_end(&mut entry, &mut bytes).map_err(|e| bad(file, e))?;
                small.insert(member, bytes);
            }
        }
    }
    let manifest = small.get("manifest.json").ok_or_else(|| {
        local("no manifest.json: not an archive written by docker save".to_owned())
    })?;
    let images: Vec<SavedImage> = serde_json::from_slice(manifest)
        .map_err(|e| local(format!("manifest.json is not valid: {e}")))?;
    let tags = |i: &SavedImage| i.repo_tags.clone().unwrap_or_default();
    let image = match name {
        Some(name) => images
            .iter()
            .find(|i| {
                tags(i)
                    .iter()
                    .any(|t| t == name || t.ends_with(&format!("/{name}")))
            })
            .ok_or_else(|| {
                let all: Vec<String> = images.iter().flat_map(tags).collect();
                local(format!(
                    "no image named {name:?}; the archive has: {}",
                    all.join(", ")
                ))
            })?,
        None => match images.as_slice() {
            [one] => one,
            _ => {
                let all: Vec<String> = images.iter().flat_map(tags).collect();
                return Err(local(format!(
                    "the archive holds {} images; name one as docker-archive:FILE:NAME:TAG ({})",
                    images.len(),
                    all.join(", ")
                )));
            }
        },
    };
    let config = small
        .get(&image.config)
        .cloned()
        .ok_or_else(|| local(format!("the configuration {} is missing", image.config)))?;
    let config_digest = Digest::of(&config);
    let parsed: serde_json::Value = serde_json::from_slice(&config).map_err(|e| {
        local(format!(
            "the configuration {} is not valid JSON: {e}",
            image.config
        ))
    })?;
    let diff_ids: Vec<Digest> = parsed["rootfs"]["diff_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|d| d.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != image.layers.len() {
        return Err(local(format!(
            "manifest.json lists {} layers but the configuration has {} diff ids",
            image.layers.len(),
            diff_ids.len()
        )));
    }
    let mut members = HashMap::new();
    let mut layers = Vec::new();
    for (member, diff_id) in image.layers.iter().zip(&diff_ids) {
        let size = *sizes
            .get(member)
            .ok_or_else(|| local(format!("the layer {member} is missing")))?;
        members.insert(diff_id.clone(), member.clone());
        layers.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": diff_id.to_string(),
            "size": size,
        }));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": layers,
    });
    Ok(Loaded {
        manifest: serde_json::to_vec(&manifest).map_err(|e| local(e.to_string()))?,
        config_digest,
        config,
        members,
    })
}

//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`), as
//! `umoci`, `skopeo copy … oci:DIR` and BuildKit write it.

use std::path::{Path, PathBuf};

use oci_spec::image::{ANNOTATION_REF_NAME, ImageIndex};

use super::{BlobFetch, FetchError, blocking, copy_verified, verify_bytes};
use crate::digest::Digest;
use crate::manifest::{MAX_METADATA_BYTES, descriptor_digest};

pub struct LayoutSource {
    dir: PathBuf,
    tag: Option<String>,
}

impl LayoutSource {
    pub fn new(dir: &Path, tag: Option<&str>) -> Self {
        Self {
            dir: dir.to_owned(),
            tag: tag.map(str::to_owned),
        }
    }

    fn local(&self, path: &Path, problem: impl Into<String>) -> FetchError {
        FetchError::Local {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// The manifest (or index) `index.json` names with the tag, or its only entry.
    pub async fn top_manifest(&self) -> Result<(Vec<u8>, Option<Digest>), FetchError> {
        let marker = self.dir.join("oci-layout");
        if !marker.is_file() {
            return Err(self.local(
                &self.dir,
                "not an OCI image layout (no oci-layout file); expected a directory written by umoci, skopeo or buildkit",
            ));
        }
        let index_path = self.dir.join("index.json");
        let text = read_limited(&index_path).map_err(|e| self.local(&index_path, e))?;
        let index: ImageIndex = serde_json::from_slice(&text)
            .map_err(|e| self.local(&index_path, format!("not a valid image index: {e}")))?;
        let name_of = |d: &oci_spec::image::Descriptor| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_REF_NAME).cloned())
        };
        let chosen: Vec<_> = match &self.tag {
            Some(tag) => index
                .manifests()
                .iter()
                .filter(|d| {
                    name_of(d).is_some_and(|n| n == *tag || n.ends_with(&format!(":{tag}")))
                })
                .collect(),
            None => index.manifests().iter().collect(),
        };
        let entry = match chosen.as_slice() {
            [one] => *one,
            [] => {
                let names: Vec<String> = index.manifests().iter().filter_map(name_of).collect();
                return Err(self.local(
                    &index_path,
                    format!(
                        "no image tagged {:?}; the layout has: {}",
                        self.tag.as_deref().unwrap_or(""),
                        if names.is_empty() {
                            "no tagged images".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
            }
            several => {
                let names: Vec<String> = several.iter().filter_map(|d| name_of(d)).collect();
                return Err(self.local(
                    &index_path,
                    format!(
                        "the layout holds {} images; name one as oci:DIR:TAG (tags: {})",
                        several.len(),
                        names.join(", ")
                    ),
                ));
            }
        };
        let (digest, size) = descriptor_digest(entry, "manifest", MAX_METADATA_BYTES)?;
        let bytes = self.small_blob(&digest, size).await?;
        Ok((bytes, Some(digest)))
    }

    pub async fn small_blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, FetchError> {
        let path = self.blob_path(digest);
        let bytes = read_limited(&path).map_err(|e| self.local(&path, e))?;
        verify_bytes(&bytes, digest, size)?;
        Ok(bytes)
    }

    pub async fn copy_blob(&self, blob: BlobFetch) -> Result<(), FetchError> {
        let path = self.blob_path(&blob.digest);
        let file =
            std::fs::File::open(&path).map_err(FetchError::io(&path, "open the layout's blob"))?;
        blocking(move || copy_verified(file, &blob)).await
    }
}

/// Reads a metadata file, refusing one larger than any manifest should be.
pub(super) fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if meta.len() > MAX_METADATA_BYTES {
        return Err(format!(
            "it is {} bytes, more than any manifest should be",
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))
}

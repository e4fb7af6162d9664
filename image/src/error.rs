//! The error of the store's operations: what failed, for which image, and why.

use std::path::PathBuf;

use crate::digest::Digest;
use crate::manifest::ManifestError;
use crate::reference::ReferenceError;
use crate::settings::SettingsError;
use crate::source::FetchError;
use crate::unpack::{LayerCheckError, UnpackError};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("image {reference}: {source}")]
    Settings {
        reference: String,
        source: SettingsError,
    },
    #[error("image {reference}: {source}")]
    Fetch {
        reference: String,
        source: Box<FetchError>,
    },
    #[error("image {reference}: {source}")]
    Manifest {
        reference: String,
        source: Box<ManifestError>,
    },
    #[error("image {reference}, layer {layer}: {source}")]
    Unpack {
        reference: String,
        layer: Digest,
        source: Box<UnpackError>,
    },
    #[error("image {reference}: {source}")]
    LayerCheck {
        reference: String,
        source: Box<LayerCheckError>,
    },
    #[error("image store {path}: cannot {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("image store {path}: the record is damaged ({problem}); remove the file or the image")]
    Damaged { path: PathBuf, problem: String },
    #[error("image {reference} is in use by {}; release those leases first", leases.join(", "))]
    InUse {
        reference: String,
        leases: Vec<String>,
    },
    #[error("no image {reference} in the store")]
    NotFound { reference: String },
    #[error("invalid lease name {name:?}: use 1-200 bytes without NUL or newline")]
    InvalidLease { name: String },
    #[error("the pull stopped because another of its layers failed")]
    Stopped,
    #[error("image store: a background task failed: {0}")]
    Task(String),
}

impl ImageError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        op: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, op, source }
    }
}

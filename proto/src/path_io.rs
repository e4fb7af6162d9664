//! I/O errors that name the file or directory they happened on.

use std::path::{Path, PathBuf};

/// An I/O error on `path`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct PathIoError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl PathIoError {
    /// The error of an operation on `path`, for `map_err`.
    pub fn on<E: From<PathIoError>>(path: &Path) -> impl FnOnce(std::io::Error) -> E + '_ {
        move |source| {
            PathIoError {
                path: path.to_owned(),
                source,
            }
            .into()
        }
    }
}

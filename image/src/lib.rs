//! OCI images for Cella tasks.
//!
//! `cella-image` turns an image reference into unpacked layer directories that the
//! task's shim stacks with overlayfs, and keeps them in a content-addressed store
//! shared by every task on the node. See `docs/images.md` for the store's layout, the
//! security checks and the references accepted.
//!
//! The entry point is [`ImageStore`]: [`ImageStore::prepare`] (pull if needed, unpack,
//! lease), [`ImageStore::release`], [`ImageStore::leases`], [`ImageStore::list`],
//! [`ImageStore::remove`] and [`ImageStore::gc`].
//!
//! Crates used, and why:
//! - `oci-client` speaks the OCI distribution protocol (token and basic
//!   authentication, manifests, ranged blob requests) over reqwest + rustls with the
//!   ring provider. It was chosen over hand-written HTTP because the protocol's
//!   authentication dance and its registry quirks are solved there and kept up to
//!   date. What decides safety stays in this crate: digests and sizes are verified
//!   here, partial downloads are continued here with ranged requests, and the index
//!   platform is chosen here (`platform_resolver` is off).
//! - `oci-spec` provides the manifest, index and configuration types (OCI and Docker
//!   schema 2 are the same JSON shape).
//! - `tar` reads the layer stream; it is not used to write files: its unpacker follows
//!   symlinks, so entries are created by this crate with `*at` calls and `O_NOFOLLOW`.
//! - `flate2` (zlib-rs) and `zstd` decompress layers; `ring` hashes them.

pub mod digest;
mod error;
pub mod manifest;
pub mod progress;
pub mod reference;
pub mod run_settings;
pub mod settings;
pub mod source;
mod store;
pub mod unpack;

pub use digest::Digest;
pub use error::ImageError;
pub use manifest::{ImageConfig, Platform};
pub use progress::{Progress, ProgressCallback, ProgressEvent};
pub use reference::{ImageReference, RegistryReference};
pub use run_settings::{NoCommand, RunSettings};
pub use settings::{Credentials, RegistrySettings, StoreSettings, UnpackLimits};
pub use store::{
    GcReport, ImageInfo, ImageRecord, ImageStore, Lease, LeaseHolder, PrepareOptions,
    PreparedImage, PullPolicy, StorePaths,
};

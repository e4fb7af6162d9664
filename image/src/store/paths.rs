//! Every path of the store, in one place.
//!
//! ```text
//! <root>/blobs/sha256/<hex>      verified manifests, configurations; layer blobs until unpacked
//! <root>/layers/<diff-hex>/fs    one unpacked layer (an overlayfs lower dir), shared read-only
//! <root>/layers/<diff-hex>/layer.json   its summary (sizes, implicit directories)
//! <root>/images/<hex>.json       one image: manifest digest, config, layers, last use
//! <root>/refs/<hash>.json        a reference (name) → image digest
//! <root>/leases/<hash>.json      a lease: a name (a task) holding an image
//! <root>/tmp/                    partial blobs (<hex>.partial, kept to resume), unpacks
//!                                in progress (layer-<hex>), removals in progress (trash-*)
//! <root>/locks/                  flock files: store (shared by pulls, exclusive for GC
//!                                and removal), ref-*, layer-*, blob-*
//! ```

use std::path::{Path, PathBuf};

use crate::digest::Digest;

#[derive(Clone, Debug)]
pub struct StorePaths {
    root: PathBuf,
}

impl StorePaths {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dirs(&self) -> [PathBuf; 7] {
        [
            self.blobs(),
            self.root.join("layers"),
            self.root.join("images"),
            self.root.join("refs"),
            self.root.join("leases"),
            self.tmp(),
            self.root.join("locks"),
        ]
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn blob(&self, digest: &Digest) -> PathBuf {
        self.blobs().join(digest.hex())
    }

    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub fn layer(&self, diff_id: &Digest) -> PathBuf {
        self.layers().join(diff_id.hex())
    }

    /// The directory handed to overlayfs as a lower layer.
    pub fn layer_fs(&self, diff_id: &Digest) -> PathBuf {
        self.layer(diff_id).join("fs")
    }

    pub fn layer_summary(&self, diff_id: &Digest) -> PathBuf {
        self.layer(diff_id).join("layer.json")
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn image(&self, digest: &Digest) -> PathBuf {
        self.images().join(format!("{}.json", digest.hex()))
    }

    pub fn refs(&self) -> PathBuf {
        self.root.join("refs")
    }

    pub fn reference(&self, reference: &str) -> PathBuf {
        self.refs()
            .join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
    }

    pub fn leases(&self) -> PathBuf {
        self.root.join("leases")
    }

    pub fn lease(&self, name: &str) -> PathBuf {
        self.leases()
            .join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn partial_blob(&self, digest: &Digest) -> PathBuf {
        self.tmp().join(format!("{}.partial", digest.hex()))
    }

    pub fn unpacking(&self, diff_id: &Digest) -> PathBuf {
        self.tmp().join(format!("layer-{}", diff_id.hex()))
    }

    pub fn lock(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(name)
    }
}

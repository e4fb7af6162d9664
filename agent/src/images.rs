//! The agent's image store (`<work-dir>/images`): a task's image is prepared (pulled
//! once however many tasks ask for it at the same time: the store locks each
//! reference, and the second pull finds the first one's image) and held by a lease
//! named after the task while the task may run. Leases of tasks that ended are
//! released, and the store is kept within `--image-store-size`, least recently used
//! images first, never one a lease holds.

use std::collections::HashSet;
use std::path::PathBuf;

use cella_image::{
    ImageReference, ImageStore, PrepareOptions, PreparedImage, RunSettings, StoreSettings,
};
use cella_proto::v1;

use crate::config::AgentConfig;
use crate::paths;

/// Why a task's image is not ready.
#[derive(Debug, thiserror::Error)]
pub enum ImageFailure {
    /// The task is wrong (a reference that names no image, no command).
    #[error("{0}")]
    Invalid(String),
    /// The image could not be pulled or prepared (the message names it).
    #[error("{0}")]
    Failed(String),
}

/// An image ready for one task.
#[derive(Debug)]
pub struct TaskImage {
    pub image: PreparedImage,
    /// The command, environment, user and working directory with the image's
    /// configuration applied.
    pub settings: RunSettings,
}

pub struct Images {
    store: ImageStore,
    store_size: u64,
}

/// The store may be shared (`cella exec --image` and `cella images` use the agent's
/// by default): the agent's leases carry this prefix, and it releases no other.
const LEASE_PREFIX: &str = "agent-task:";

fn lease_of(task_id: &str) -> String {
    format!("{LEASE_PREFIX}{task_id}")
}

impl Images {
    /// Opens the store under the work directory, discarding what a crash left half
    /// written.
    pub fn open(config: &AgentConfig) -> Result<Self, String> {
        let dir = paths::images_dir(&config.work_dir);
        let store = ImageStore::open(
            &dir,
            StoreSettings {
                registries: config.images.registries.clone(),
                ..StoreSettings::default()
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            store,
            store_size: config.images.store_size,
        })
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// The size GC keeps the store within (`--image-store-size`).
    pub fn store_size(&self) -> u64 {
        self.store_size
    }

    /// Prepares `image` for the task `task_id` (its lease) and applies the image's
    /// configuration to the task's command, environment and user.
    pub async fn prepare(
        &self,
        task_id: &str,
        image: &v1::ContainerImage,
        info: &v1::TaskInfo,
    ) -> Result<TaskImage, ImageFailure> {
        let default_registry = &self.store.settings().registries.default_registry;
        let reference = ImageReference::parse(&image.reference, default_registry)
            .map_err(|e| ImageFailure::Invalid(format!("image.reference: {e}")))?;
        let prepared = self
            .store
            .prepare(&reference, &lease_of(task_id), &PrepareOptions::default())
            .await
            .map_err(|e| ImageFailure::Failed(e.to_string()))?;
        let user = (!info.user.is_empty()).then_some(info.user.as_str());
        let settings =
            prepared
                .config
                .run_settings(&prepared.reference, &info.command, &info.env, user);
        match settings {
            Ok(settings) => Ok(TaskImage {
                image: prepared,
                settings,
            }),
            Err(e) => {
                self.release(task_id);
                Err(ImageFailure::Invalid(e.to_string()))
            }
        }
    }

    /// Drops the lease of one task (its launch failed).
    pub fn release(&self, task_id: &str) {
        if let Err(e) = self.store.release(&lease_of(task_id)) {
            tracing::warn!(task = task_id, "releasing the task's image: {e}");
        }
    }

    /// Releases the leases of this agent's tasks not in `live` (ended, forgotten, or
    /// from a previous run that is gone), then removes unused images while the store
    /// is over its size. Blocking.
    pub fn release_ended(&self, live: &HashSet<String>) {
        let leases = match self.store.leases() {
            Ok(leases) => leases,
            Err(e) => {
                tracing::warn!("listing the image leases: {e}");
                return;
            }
        };
        for lease in &leases {
            let Some(task_id) = lease.name.strip_prefix(LEASE_PREFIX) else {
                continue;
            };
            if !live.contains(task_id) {
                self.release(task_id);
            }
        }
        match self.store.gc(self.store_size) {
            Ok(report) if !report.removed.is_empty() => tracing::info!(
                removed = report.removed.len(),
                bytes_after = report.bytes_after,
                "removed unused images"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("image store GC: {e}"),
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> PathBuf {
        self.store.paths().root().to_path_buf()
    }
}

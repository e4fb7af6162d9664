//! The node's image store as `cella exec --image` and `cella images` open it: the
//! agent's store by default (the store is safe to share between processes: pulls,
//! GC and removal take its file locks), with registries configured by flags.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use cella_image::{
    Credentials, ImageStore, Progress, ProgressCallback, ProgressEvent, RegistrySettings,
    StoreSettings,
};
use clap::Args;

/// Where the agent keeps its images (`<work dir>/images`) with the default work dir.
pub const DEFAULT_STORE: &str = "/var/lib/cella/agent/images";

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The image store: the agent's by default, so images pulled once serve both.
    #[arg(long, value_name = "DIR", env = "CELLA_IMAGE_STORE", default_value = DEFAULT_STORE)]
    pub image_store: PathBuf,
    /// The registry short names (`busybox`) are looked up in: HOST[:PORT].
    #[arg(long, value_name = "HOST[:PORT]", default_value = cella_image::settings::DOCKER_HUB)]
    pub default_registry: String,
    /// A registry spoken to over plain HTTP (repeatable); every other is HTTPS only.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// A PEM file of CA certificates trusted for registries, besides the system's.
    #[arg(long, value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
    /// Registry credentials in Docker's config.json format (default: $DOCKER_CONFIG/config.json
    /// or ~/.docker/config.json). `CELLA_REGISTRY_USER` and `CELLA_REGISTRY_PASSWORD`
    /// give credentials for the image's registry instead.
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
}

impl StoreArgs {
    pub fn open(&self) -> anyhow::Result<ImageStore> {
        ImageStore::open(&self.image_store, self.settings())
            .map_err(|e| anyhow::anyhow!("{e} (--image-store)"))
    }

    /// [`StoreArgs::open`] for a launch: a store set up before is opened without
    /// its checks (see [`ImageStore::open_existing`]).
    pub fn open_existing(&self) -> anyhow::Result<ImageStore> {
        ImageStore::open_existing(&self.image_store, self.settings())
            .map_err(|e| anyhow::anyhow!("{e} (--image-store)"))
    }

    fn settings(&self) -> StoreSettings {
        let docker_config = self.docker_config.clone().or_else(|| {
            std::env::var_os("DOCKER_CONFIG")
                .map(|d| PathBuf::from(d).join("config.json"))
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
                })
        });
        let registries = RegistrySettings {
            default_registry: self.default_registry.clone(),
            insecure_registries: self.insecure_registries.clone(),
            ca_file: self.registry_ca.clone(),
            docker_config,
            ..RegistrySettings::default()
        };
        StoreSettings {
            registries,
            ..StoreSettings::default()
        }
    }

    /// Credentials from the environment, for the pull at hand.
    pub fn env_credentials() -> Option<Credentials> {
        let username = std::env::var("CELLA_REGISTRY_USER").ok()?;
        let password = std::env::var("CELLA_REGISTRY_PASSWORD").unwrap_or_default();
        Some(Credentials::Basic { username, password })
    }
}

/// Reports a pull's progress on stderr: one line redrawn on a terminal, one line per
/// layer otherwise.
pub fn progress_printer() -> ProgressCallback {
    let terminal = std::io::stderr().is_terminal();
    Arc::new(move |p: &Progress| {
        let mut err = std::io::stderr().lock();
        let line = |p: &Progress| {
            format!(
                "{}: {}/{} layers, {} of {} ({}/s)",
                p.reference,
                p.layers_done,
                p.layers_total,
                cella_containerizer::units::format_bytes(p.bytes_done),
                cella_containerizer::units::format_bytes(p.bytes_total),
                cella_containerizer::units::format_bytes(p.bytes_per_second),
            )
        };
        if terminal {
            let _ = write!(err, "\r\x1b[2K{}", line(p));
            if matches!(p.event, ProgressEvent::Done { .. }) {
                let _ = writeln!(err);
            }
            return;
        }
        let _ = match &p.event {
            ProgressEvent::LayerDone {
                index,
                digest,
                cached,
            } => writeln!(
                err,
                "{}: layer {}/{} {digest} {}",
                p.reference,
                index + 1,
                p.layers_total,
                if *cached { "already stored" } else { "pulled" }
            ),
            ProgressEvent::Done { digest } => {
                writeln!(err, "{}: {digest} ready", line(p))
            }
            _ => Ok(()),
        };
    })
}

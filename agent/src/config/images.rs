//! The agent's image settings: where short names are looked up, which registries
//! are plain HTTP, a CA, credentials, and the store's size. Flags, or the TOML
//! file's `[images]` table; flags win.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cella_image::{Credentials, RegistrySettings};
use serde::Deserialize;

use super::error::ConfigError;
use super::sources::Sources;

/// The store's size when none is configured.
pub const DEFAULT_STORE_SIZE: u64 = 10 << 30;

/// The image settings, both as flags and as the TOML file's `[images]` table (where
/// `--insecure-registry` is `insecure_registries`, `--image-store-size` is
/// `store_size`, and `credentials` has no flag). All are optional, so that
/// [`ImageArgs::resolve`] can let the flags win over the file.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageArgs {
    /// Where short image names (`busybox`) are looked up: HOST[:PORT] [default: docker.io].
    #[arg(long, value_name = "HOST[:PORT]")]
    pub default_registry: Option<String>,
    /// A registry spoken to over plain HTTP (repeatable); every other one is HTTPS only.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// A PEM file of CA certificates trusted for registries, besides the system's.
    #[arg(long, value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
    /// Registry credentials in Docker's config.json format (`auths`).
    #[arg(long, value_name = "FILE")]
    pub registry_auth: Option<PathBuf>,
    /// Images no task uses are removed, least recently used first, while the image
    /// store (`<work-dir>/images`) takes more than this [default: 10GiB].
    #[arg(long, value_name = "SIZE")]
    #[serde(rename = "store_size")]
    pub image_store_size: Option<String>,
    /// `[images.credentials."HOST:PORT"]` with `username` and `password` (or
    /// `password_file`); these win over `registry_auth`. Only in the file.
    #[arg(skip)]
    pub credentials: Option<BTreeMap<String, CredentialsFile>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFile {
    pub username: String,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// The resolved image settings.
#[derive(Debug, Clone)]
pub struct ImagesConfig {
    pub registries: RegistrySettings,
    /// Bytes the store may take before unused images are removed.
    pub store_size: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            registries: RegistrySettings::default(),
            store_size: DEFAULT_STORE_SIZE,
        }
    }
}

fn check_registry(field: &str, host: &str) -> Result<(), ConfigError> {
    let ok = !host.is_empty()
        && !host.contains("://")
        && !host.contains('/')
        && !host.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{host:?}: give HOST or HOST:PORT, without a scheme or path"),
        ))
    }
}

impl ImageArgs {
    /// Combines the flags with the file's `[images]` (`source` names the file).
    pub fn resolve(
        &self,
        file: &ImageArgs,
        source: Option<&Path>,
    ) -> Result<ImagesConfig, ConfigError> {
        let from = Sources {
            file: source,
            table: "images.",
        };
        let mut config = ImagesConfig::default();
        let registries = &mut config.registries;
        let default_registry = from.pick(
            "default-registry",
            &self.default_registry,
            &file.default_registry,
        );
        if let Some((host, field)) = default_registry {
            check_registry(&field, &host)?;
            registries.default_registry = host;
        }
        let (insecure, field) = from.list(
            "insecure-registry",
            "insecure_registries",
            &self.insecure_registries,
            &file.insecure_registries,
        );
        for host in &insecure {
            check_registry(&field, host)?;
        }
        registries.insecure_registries = insecure;
        if let Some((ca, field)) = from.pick("registry-ca", &self.registry_ca, &file.registry_ca) {
            registries.ca_file = Some(ca);
            registries
                .ca_pem()
                .map_err(|e| ConfigError::new(field, e.to_string()))?;
        }
        registries.docker_config = self
            .registry_auth
            .clone()
            .or_else(|| file.registry_auth.clone());
        for (host, entry) in file.credentials.iter().flatten() {
            let field = from.field("", &format!("credentials.\"{host}\""), false);
            check_registry(&field, host)?;
            let password = match (&entry.password, &entry.password_file) {
                (Some(p), None) => p.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map(|p| p.trim_end_matches(['\r', '\n']).to_owned())
                    .map_err(|e| {
                        ConfigError::new(&field, format!("password_file {}: {e}", path.display()))
                    })?,
                _ => {
                    return Err(ConfigError::new(
                        field,
                        "give either password or password_file",
                    ));
                }
            };
            registries.credentials.insert(
                host.clone(),
                Credentials::Basic {
                    username: entry.username.clone(),
                    password,
                },
            );
        }
        let size = from.pick_as(
            "image-store-size",
            "store_size",
            &self.image_store_size,
            &file.image_store_size,
        );
        if let Some((size, field)) = size {
            config.store_size = cella_containerizer::units::parse_size(&size).map_err(|e| {
                ConfigError::new(field, format!("{size:?}: {e}; give a size such as 20GiB"))
            })?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_errors_name_the_key() {
        let file: ImageArgs = toml::from_str(
            r#"
            default_registry = "registry.example:5000"
            insecure_registries = ["localhost:5000"]
            store_size = "2GiB"
            [credentials."registry.example:5000"]
            username = "ci"
            password = "pw"
            "#,
        )
        .unwrap();
        let config = ImageArgs::default().resolve(&file, None).unwrap();
        assert_eq!(config.registries.default_registry, "registry.example:5000");
        assert!(config.registries.is_insecure("localhost:5000"));
        assert_eq!(config.store_size, 2 << 30);
        assert!(
            config
                .registries
                .credentials
                .contains_key("registry.example:5000")
        );

        let flags = ImageArgs {
            default_registry: Some("127.0.0.1:5001".into()),
            image_store_size: Some("1MiB".into()),
            ..ImageArgs::default()
        };
        let config = flags.resolve(&file, None).unwrap();
        assert_eq!(config.registries.default_registry, "127.0.0.1:5001");
        assert_eq!(config.store_size, 1 << 20);

        let bad = ImageArgs {
            default_registry: Some("https://x".into()),
            ..ImageArgs::default()
        };
        let err = bad.resolve(&ImageArgs::default(), None).unwrap_err();
        assert_eq!(err.field, "--default-registry");
        let bad_file: ImageArgs = toml::from_str("store_size = \"lots\"").unwrap();
        let err = ImageArgs::default()
            .resolve(&bad_file, Some(Path::new("/etc/cella/agent.toml")))
            .unwrap_err();
        assert!(
            err.field
                .starts_with("images.store_size (in /etc/cella/agent.toml)"),
            "{err:?}"
        );
    }
}

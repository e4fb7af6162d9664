//! Where the master is and which certificate to present: `--master`/`--tls-dir`,
//! then `CELLA_MASTER`/`CELLA_TLS_DIR`, then the client profile written by
//! `cella dev` (`$CELLA_CONFIG`, default `~/.config/cella/config.toml`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The client profile file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    /// e.g. `https://127.0.0.1:5050`
    pub master: String,
    /// Directory with ca.pem, client.pem and client-key.pem.
    pub tls_dir: PathBuf,
}

/// Options every cluster command accepts.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// The master's URL (default: $CELLA_MASTER, then the profile).
    #[arg(long, global = true, value_name = "URL")]
    pub master: Option<String>,
    /// Directory with ca.pem, client.pem, client-key.pem (default: $CELLA_TLS_DIR, then the profile).
    #[arg(long, global = true, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
}

pub fn profile_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CELLA_CONFIG") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".config/cella/config.toml")
}

pub fn read_profile(path: &Path) -> anyhow::Result<Option<Profile>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let profile = toml::from_str(&text).with_context(|| {
                format!(
                    "{}: not a valid profile (fields: master, tls_dir)",
                    path.display()
                )
            })?;
            Ok(Some(profile))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn write_profile(path: &Path, profile: &Profile) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = format!(
        "# Written by `cella dev`; used by cella run, tasks, logs…\n{}",
        toml::to_string(profile)?
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A resolved connection to the master.
pub struct Cluster {
    pub master: String,
    /// Where the CA and the client certificate come from (for error messages).
    pub tls_dir: PathBuf,
    /// For the master (its certificate must be the master's).
    pub tls: rustls::ClientConfig,
    /// For the agents' APIs (their certificates must be agents').
    pub agent_tls: rustls::ClientConfig,
}

impl ClusterArgs {
    pub fn resolve(&self) -> anyhow::Result<Cluster> {
        let path = profile_path();
        let profile = read_profile(&path)?;
        let master = self
            .master
            .clone()
            .or_else(|| std::env::var("CELLA_MASTER").ok())
            .or_else(|| profile.as_ref().map(|p| p.master.clone()));
        let tls_dir = self.tls_dir_from(profile.as_ref());
        let (Some(master), Some(tls_dir)) = (master, tls_dir) else {
            bail!(
                "no master configured: start one with `cella dev` (it writes {}), or pass --master URL and --tls-dir DIR",
                path.display()
            );
        };
        let master = master.trim_end_matches('/').to_string();
        if !master.starts_with("https://") {
            bail!(
                "master URL {master:?}: write it as https://HOST:PORT (e.g. https://127.0.0.1:5050); \
                 the master serves only TLS"
            );
        }
        let [tls, agent_tls] = client_configs(
            &tls_dir,
            [
                cella_proto::tls::ExpectedServer::Master,
                cella_proto::tls::ExpectedServer::Agent,
            ],
        )?;
        Ok(Cluster {
            master,
            tls_dir,
            tls,
            agent_tls,
        })
    }
}

impl ClusterArgs {
    fn tls_dir_from(&self, profile: Option<&Profile>) -> Option<PathBuf> {
        self.tls_dir
            .clone()
            .or_else(|| std::env::var_os("CELLA_TLS_DIR").map(PathBuf::from))
            .or_else(|| profile.map(|p| p.tls_dir.clone()))
    }

    /// The client configuration for an agent's API alone (no master needed):
    /// `--tls-dir`, then `CELLA_TLS_DIR`, then the profile's.
    pub fn agent_tls(&self) -> anyhow::Result<rustls::ClientConfig> {
        let path = profile_path();
        let profile = read_profile(&path)?;
        let Some(tls_dir) = self.tls_dir_from(profile.as_ref()) else {
            bail!(
                "no client certificate configured: pass --tls-dir DIR (ca.pem, client.pem,                  client-key.pem) or set CELLA_TLS_DIR"
            );
        };
        let [tls] = client_configs(&tls_dir, [cella_proto::tls::ExpectedServer::Agent])?;
        Ok(tls)
    }
}

/// The client certificate of `tls_dir`, configured for each kind of server.
fn client_configs<const N: usize>(
    tls_dir: &Path,
    servers: [cella_proto::tls::ExpectedServer; N],
) -> anyhow::Result<[rustls::ClientConfig; N]> {
    let layout = cella_proto::tls::Layout::new(tls_dir);
    let context = || format!("loading the client certificate from {}", tls_dir.display());
    let trust =
        cella_proto::tls::Trust::load(&layout.ca_cert, &layout.crl).with_context(context)?;
    let mut configs = Vec::with_capacity(N);
    for expected in servers {
        configs.push(
            cella_proto::tls::client_config_trusting(
                &trust,
                &layout.client_cert,
                &layout.client_key,
                expected,
            )
            .with_context(context)?,
        );
    }
    configs
        .try_into()
        .map_err(|_| anyhow::anyhow!("one configuration per server"))
}

impl Cluster {
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.master);
        cella_proto::tls::https_get_json(&url, &self.tls)
            .await
            .map_err(|e| self.explain(e))
    }

    pub async fn post<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.master);
        cella_proto::tls::https_post_json(&url, &serde_json::json!({}), &self.tls)
            .await
            .map_err(|e| self.explain(e))
    }

    /// The error with what it most likely means and what to do about it.
    fn explain(&self, e: cella_proto::tls::Error) -> anyhow::Error {
        let text = e.to_string();
        let hint = if text.contains("UnknownIssuer") {
            Some(format!(
                "the server's certificate is not signed by the CA in {}: point --tls-dir at \
                 this cluster's TLS directory, or --master at this cluster's master",
                self.tls_dir.display()
            ))
        } else if text.contains("not the master's certificate expected there") {
            Some(format!(
                "{} is not the master: it answers with another Cella certificate (an agent's \
                 API, say, port 5051 by default); point --master at the master's URL (port \
                 5050 by default)",
                self.master
            ))
        } else if text.contains("InvalidContentType") {
            Some(format!(
                "{} does not speak TLS (a plain HTTP server, or another service on that \
                 port?); point --master at the Cella master's URL",
                self.master
            ))
        } else if matches!(&e, cella_proto::tls::Error::Http { status: 404, message, .. }
            if message.starts_with("no such endpoint"))
        {
            Some(format!(
                "{} has no such endpoint: is it the master's URL (an agent's API is not the \
                 master's)?",
                self.master
            ))
        } else {
            None
        };
        match hint {
            Some(hint) => anyhow::anyhow!("{text}\n  {hint}"),
            None => e.into(),
        }
    }
}

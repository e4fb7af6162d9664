//! `cella-master --config FILE`: the TOML file with the same settings as the flags
//! (keys are the flag names with underscores, `--agent-timeout` → `agent_timeout`).
//! A flag (or its environment variable) wins over the file; the file wins over the
//! default. Unknown keys are refused; every error names the key and the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The settings of the file; each is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub tls_dir: Option<PathBuf>,
    pub acl: Option<PathBuf>,
    pub credentials: Option<PathBuf>,
    pub work_dir: Option<PathBuf>,
    pub audit_dir: Option<PathBuf>,
    pub audit_segment_size: Option<String>,
    pub audit_checkpoint_interval: Option<String>,
    pub offer_timeout: Option<String>,
    pub ping_interval: Option<String>,
    pub agent_unreachable_after: Option<String>,
    pub agent_timeout: Option<String>,
    pub kill_grace_period: Option<String>,
    pub max_kill_grace_period: Option<String>,
    pub allocation_interval: Option<String>,
    /// `"10GiB"`: the disk of a task that names none.
    pub default_task_disk: Option<String>,
    /// The process limit of a task that names none.
    pub default_task_pids: Option<u64>,
    /// `"1s:10m,10s:6h,1m:24h"`: each task's usage history tiers.
    pub usage_history: Option<String>,
    /// DRF weights: `{ prod = 2, batch = 0.5 }`.
    pub role_weights: Option<BTreeMap<String, f64>>,
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub idle_timeout: Option<String>,
    pub max_message_size: Option<String>,
    pub log_level: Option<String>,
}

/// A value of the file that cannot be used: the key, the file and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} (in {file}): {message}")]
pub struct FileError {
    pub key: String,
    pub file: String,
    pub message: String,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<FileConfig, FileError> {
        cella_proto::config_file::load(path, "agent_timeout = \"60s\"").map_err(|message| {
            FileError {
                key: "--config".into(),
                file: path.display().to_string(),
                message,
            }
        })
    }
}

/// One setting: the flag's value if given, else the file's `key` parsed with `parse`
/// (an error names the key and `file`), else `default`.
pub fn setting<T, F>(
    flag: Option<T>,
    from_file: Option<&F>,
    key: &str,
    file: Option<&Path>,
    parse: impl FnOnce(&F) -> Result<T, String>,
    default: impl FnOnce() -> T,
) -> Result<T, FileError>
where
    F: ?Sized,
{
    if let Some(v) = flag {
        return Ok(v);
    }
    match from_file {
        Some(raw) => parse(raw).map_err(|message| FileError {
            key: key.into(),
            file: file.map_or_else(String::new, |f| f.display().to_string()),
            message,
        }),
        None => Ok(default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_parses_and_flags_win() {
        let text = include_str!("../../systemd/master.toml");
        let file: FileConfig = toml::from_str(text).expect("systemd/master.toml parses");
        assert_eq!(file.listen.as_deref(), Some("0.0.0.0:5050"));
        // The flag wins; without one the file's value counts.
        for (flag, want) in [(Some("127.0.0.1:1"), "127.0.0.1:1"), (None, "0.0.0.0:5050")] {
            let listen = setting(
                flag.map(String::from),
                file.listen.as_ref(),
                "listen",
                None,
                |s: &String| Ok(s.clone()),
                String::new,
            );
            assert_eq!(listen.as_deref(), Ok(want));
        }
    }

    #[test]
    fn every_commented_key_is_known() {
        // Each documented key, uncommented, must be accepted.
        let text = include_str!("../../systemd/master.toml");
        let mut table = String::new();
        let mut section = String::new();
        for line in text.lines() {
            let l = line.trim_start_matches("# ").trim();
            if l.starts_with('[') && l.ends_with(']') {
                section = format!("{l}\n");
            } else if let Some((key, _)) = l.split_once(" = ")
                && !key.contains(' ')
                && section.is_empty()
            {
                table.push_str(l);
                table.push('\n');
            }
        }
        let parsed: Result<FileConfig, _> = toml::from_str(&table);
        assert!(parsed.is_ok(), "{table}\n{parsed:?}");
        assert!(!section.is_empty(), "role_weights is documented");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: Result<FileConfig, _> = toml::from_str("listen_on = \"x\"\n");
        assert!(r.is_err());
    }
}

//! The daemons' `--config FILE`: a TOML file with the same settings as the flags.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Reads and parses the configuration file at `path`. A file that does not parse
/// gets a reminder of how keys are named, with `example` (a line such a file may
/// hold, e.g. `work_dir = "/var/lib/cella/agent"`).
pub fn load<T: DeserializeOwned>(path: &Path, example: &str) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the file: {e}"))?;
    toml::from_str(&text).map_err(|e| {
        format!(
            "{}\n(keys are the flag names with underscores, e.g. {example})",
            e.to_string().trim()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        work_dir: Option<String>,
    }

    #[test]
    fn errors_say_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let missing = load::<Settings>(&path, "work_dir = \"/x\"").unwrap_err();
        assert!(missing.starts_with("cannot read the file: "), "{missing}");
        std::fs::write(&path, "wrok_dir = \"/x\"\n").unwrap();
        let unknown = load::<Settings>(&path, "work_dir = \"/x\"").unwrap_err();
        assert!(unknown.contains("wrok_dir"), "{unknown}");
        assert!(
            unknown
                .ends_with("\n(keys are the flag names with underscores, e.g. work_dir = \"/x\")"),
            "{unknown}"
        );
        std::fs::write(&path, "work_dir = \"/x\"\n").unwrap();
        let settings: Settings = load(&path, "").unwrap();
        assert_eq!(settings.work_dir.as_deref(), Some("/x"));
    }
}

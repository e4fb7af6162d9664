//! How an image's configuration becomes a task's command, environment, user and
//! working directory, as `docker run IMAGE [CMD…]` does: a command given with the
//! task replaces the image's `Cmd` and keeps its `Entrypoint`; the task's
//! environment overrides the image's variable by variable.

use std::path::PathBuf;

use crate::manifest::ImageConfig;

/// What a task runs, after the image's configuration is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSettings {
    pub command: Vec<String>,
    /// `KEY=VALUE`, the image's first (in its order), then the task's.
    pub env: Vec<String>,
    /// The task's user if it names one, else the image's.
    pub user: Option<String>,
    /// The image's working directory (absolute), if it sets one.
    pub working_dir: Option<PathBuf>,
}

/// The image gives nothing to run and the task named no command.
#[derive(Debug, thiserror::Error)]
#[error(
    "image {reference} has neither an entrypoint nor a command: give the command to run after `--`"
)]
pub struct NoCommand {
    pub reference: String,
}

impl ImageConfig {
    /// Applies this configuration to a task with `command` (empty: the image's),
    /// `env` and `user` (`None`: the image's).
    pub fn run_settings(
        &self,
        reference: &str,
        command: &[String],
        env: &[String],
        user: Option<&str>,
    ) -> Result<RunSettings, NoCommand> {
        let mut full = self.entrypoint.clone();
        full.extend_from_slice(if command.is_empty() {
            &self.cmd
        } else {
            command
        });
        if full.is_empty() {
            return Err(NoCommand {
                reference: reference.to_owned(),
            });
        }
        let key = |kv: &str| kv.split_once('=').map_or(kv, |(k, _)| k).to_owned();
        let mut merged: Vec<String> = self
            .env
            .iter()
            .filter(|kv| !env.iter().any(|e| key(e) == key(kv)))
            .cloned()
            .collect();
        merged.extend_from_slice(env);
        let user = user
            .filter(|u| !u.is_empty())
            .or(self.user.as_deref().filter(|u| !u.is_empty()))
            .map(str::to_owned);
        let working_dir = self
            .working_dir
            .as_deref()
            .filter(|d| d.starts_with('/'))
            .map(PathBuf::from);
        Ok(RunSettings {
            command: full,
            env: merged,
            user,
            working_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn as_docker_run() {
        let config = ImageConfig {
            entrypoint: strings(&["/bin/sh", "-c"]),
            cmd: strings(&["echo hi"]),
            env: strings(&["PATH=/bin", "GREETING=hello"]),
            user: Some("0:0".into()),
            working_dir: Some("/data".into()),
            stop_signal: None,
        };
        let image = config.run_settings("img", &[], &[], None).unwrap();
        assert_eq!(image.command, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(image.env, ["PATH=/bin", "GREETING=hello"]);
        assert_eq!(image.user.as_deref(), Some("0:0"));
        assert_eq!(image.working_dir, Some(PathBuf::from("/data")));

        let task = config
            .run_settings(
                "img",
                &strings(&["echo bye"]),
                &strings(&["GREETING=bye", "X=1"]),
                Some("nobody"),
            )
            .unwrap();
        assert_eq!(task.command, ["/bin/sh", "-c", "echo bye"]);
        assert_eq!(task.env, ["PATH=/bin", "GREETING=bye", "X=1"]);
        assert_eq!(task.user.as_deref(), Some("nobody"));

        let empty = ImageConfig::default();
        let err = empty.run_settings("reg/img:1", &[], &[], None).unwrap_err();
        assert!(err.to_string().contains("reg/img:1"), "{err}");
        let given = empty.run_settings("img", &strings(&["true"]), &[], None);
        assert_eq!(given.unwrap().command, ["true"]);
    }
}

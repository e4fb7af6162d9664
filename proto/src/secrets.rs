//! Secret environment variables of a task ([`v1::SecretEnv`]): they reach the task's
//! environment and nothing else. Their values never appear in a debug print (so in no
//! log), in a JSON view, or in what the master and the agent store: both keep a task's
//! info with the values removed ([`redacted`]) once the task is on its way.

use crate::v1;

impl std::fmt::Debug for v1::SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretEnv")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// `task` with every secret's value removed (the names stay, so people can see that a
/// task had them).
pub fn redacted(task: &v1::TaskInfo) -> v1::TaskInfo {
    let mut t = task.clone();
    for s in &mut t.secrets {
        s.value.clear();
    }
    t
}

/// The secrets as `NAME=VALUE` environment entries, for the task's environment only.
pub fn environment(task: &v1::TaskInfo) -> impl Iterator<Item = String> + '_ {
    task.secrets
        .iter()
        .map(|s| format!("{}={}", s.name, s.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_print() {
        let task = v1::TaskInfo {
            task_id: "t".into(),
            secrets: vec![v1::SecretEnv {
                name: "DB_PASSWORD".into(),
                value: "hunter2".into(),
            }],
            ..Default::default()
        };
        assert!(!format!("{task:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&task).unwrap().contains("hunter2"));
        assert_eq!(
            environment(&task).collect::<Vec<_>>(),
            ["DB_PASSWORD=hunter2"]
        );
        let r = redacted(&task);
        assert_eq!(r.secrets[0].name, "DB_PASSWORD");
        assert!(r.secrets[0].value.is_empty());
    }
}

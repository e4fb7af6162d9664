//! A configuration value that cannot be used: which flag or key, and what to do.

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The flag or TOML key, e.g. `--resources` or `resources (in /etc/cella/agent.toml)`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    /// The process exit status for a bad configuration.
    pub const EXIT_CODE: i32 = 2;

    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

//! The path of a tar entry, made relative to the layer's root without ever leaving it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// A normalised path inside a layer: no empty, `.` or `..` components, no leading `/`.
/// The empty path is the layer's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPath {
    components: Vec<Vec<u8>>,
}

impl EntryPath {
    /// Normalises `raw` as tar tools do: a leading `/` is dropped (the entry is rooted
    /// at the layer, as Docker does), `.` is dropped and `..` removes the previous
    /// component. `None` when a `..` would climb above the layer's root.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let mut components: Vec<Vec<u8>> = Vec::new();
        for component in raw.split(|&b| b == b'/') {
            match component {
                b"" | b"." => {}
                b".." => {
                    components.pop()?;
                }
                name => components.push(name.to_vec()),
            }
        }
        Some(Self { components })
    }

    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The directory components and the final name; `None` for the root.
    pub fn split_last(&self) -> Option<(&[Vec<u8>], &[u8])> {
        self.components
            .split_last()
            .map(|(name, parents)| (parents, name.as_slice()))
    }

    pub fn components(&self) -> &[Vec<u8>] {
        &self.components
    }

    pub fn as_path(&self) -> PathBuf {
        let mut path = PathBuf::new();
        for component in &self.components {
            path.push(OsStr::from_bytes(component));
        }
        path
    }

    /// The path with `name` appended.
    pub fn join(&self, name: &[u8]) -> Self {
        let mut components = self.components.clone();
        components.push(name.to_vec());
        Self { components }
    }
}

impl std::fmt::Display for EntryPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_root() {
            return f.write_str("/");
        }
        f.write_str(&self.as_path().to_string_lossy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Option<String> {
        EntryPath::parse(raw.as_bytes()).map(|p| p.to_string())
    }

    #[test]
    fn normalises_inside_the_root() {
        assert_eq!(norm("./etc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(norm("/etc//passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(norm("a/b/../c").as_deref(), Some("a/c"));
        assert_eq!(norm("./").as_deref(), Some("/"));
    }

    #[test]
    fn refuses_climbing_out() {
        assert_eq!(norm("../etc/passwd"), None);
        assert_eq!(norm("a/../../etc"), None);
        assert_eq!(norm("/.."), None);
    }
}

//! Image references: what a user writes after `--image`.
//!
//! Accepted forms (see docs/images.md):
//! - `host[:port]/repo[/more]:tag`, `host[:port]/repo@sha256:…` (both may be combined);
//! - short names, Docker Hub style: `busybox` and `library/busybox` are looked up in
//!   the configured default registry as `library/busybox`; a first component is a
//!   registry host only when it contains `.` or `:` or is `localhost`;
//! - `oci:DIR[:tag]`, or a path (`/…`, `./…`, `../…`) to a directory: an OCI image layout;
//! - `docker-archive:FILE[:name:tag]`, or a path ending in `.tar`: a `docker save` archive.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// The tag used when a registry reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// A reference that cannot name an image, with what is wrong in it.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {reference:?}: {problem}")]
pub struct ReferenceError {
    pub reference: String,
    pub problem: String,
}

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageReference {
    /// An image in a registry spoken to over the OCI distribution API.
    Registry(RegistryReference),
    /// An OCI image layout directory; `tag` selects a manifest by its
    /// `org.opencontainers.image.ref.name` annotation (the only one when absent).
    OciLayout { dir: PathBuf, tag: Option<String> },
    /// A `docker save` archive; `name` selects one of its `RepoTags` (the only image
    /// when absent).
    DockerArchive { file: PathBuf, name: Option<String> },
}

/// `registry/repository[:tag][@digest]`, fully resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RegistryReference {
    /// `host` or `host:port`.
    pub registry: String,
    /// The repository path, e.g. `library/busybox`.
    pub repository: String,
    /// At least one of tag and digest is set after parsing.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageReference {
    /// Parses `text`; short registry names resolve against `default_registry`
    /// (`host[:port]`). Relative paths are made absolute against the current directory.
    pub fn parse(text: &str, default_registry: &str) -> Result<Self, ReferenceError> {
        let fail = |problem: &str| ReferenceError {
            reference: text.to_owned(),
            problem: problem.to_owned(),
        };
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, tag) = split_path_suffix(rest);
            if dir.is_empty() {
                return Err(fail("oci: needs a directory, as in oci:DIR[:tag]"));
            }
            if let Some(tag) = &tag {
                check_tag(tag).map_err(|p| fail(&p))?;
            }
            return Ok(Self::OciLayout {
                dir: absolute(dir).map_err(|p| fail(&p))?,
                tag,
            });
        }
        if let Some(rest) = text.strip_prefix("docker-archive:") {
            let (file, name) = match rest.find(".tar:") {
                Some(i) => (&rest[..i + 4], Some(rest[i + 5..].to_owned())),
                None => (rest, None),
            };
            if file.is_empty() {
                return Err(fail(
                    "docker-archive: needs a file, as in docker-archive:FILE[:name:tag]",
                ));
            }
            return Ok(Self::DockerArchive {
                file: absolute(file).map_err(|p| fail(&p))?,
                name: name.filter(|n| !n.is_empty()),
            });
        }
        if text.starts_with('/') || text.starts_with("./") || text.starts_with("../") {
            let path = absolute(text).map_err(|p| fail(&p))?;
            return Ok(if text.ends_with(".tar") {
                Self::DockerArchive {
                    file: path,
                    name: None,
                }
            } else {
                Self::OciLayout {
                    dir: path,
                    tag: None,
                }
            });
        }
        RegistryReference::parse(text, default_registry).map(Self::Registry)
    }

    /// The registry reference, if this is one.
    pub fn as_registry(&self) -> Option<&RegistryReference> {
        match self {
            Self::Registry(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registry(r) => r.fmt(f),
            Self::OciLayout { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                match tag {
                    Some(tag) => write!(f, ":{tag}"),
                    None => Ok(()),
                }
            }
            Self::DockerArchive { file, name } => {
                write!(f, "docker-archive:{}", file.display())?;
                match name {
                    Some(name) => write!(f, ":{name}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl RegistryReference {
    fn parse(text: &str, default_registry: &str) -> Result<Self, ReferenceError> {
        let fail = |problem: String| ReferenceError {
            reference: text.to_owned(),
            problem,
        };
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (
                name,
                Some(digest.parse::<Digest>().map_err(|e| fail(e.to_string()))?),
            ),
            None => (text, None),
        };
        let (name, tag) = match name.rfind(':') {
            Some(i) if !name[i..].contains('/') => (&name[..i], Some(name[i + 1..].to_owned())),
            _ => (name, None),
        };
        if let Some(tag) = &tag {
            check_tag(tag).map_err(fail)?;
        }
        let (registry, repository, explicit) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned(), true)
            }
            _ => (default_registry.to_owned(), name.to_owned(), false),
        };
        check_registry(&registry).map_err(fail)?;
        // Docker Hub's convention for one-component names, applied to short names in
        // every default registry so that `busybox` means the same image wherever the
        // default points; a name with an explicit host other than Docker Hub is kept.
        let hub = registry == crate::settings::DOCKER_HUB;
        let repository = if repository.contains('/') || (explicit && !hub) {
            repository
        } else {
            format!("library/{repository}")
        };
        check_repository(&repository).map_err(fail)?;
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            _ => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The same image pinned to a digest (what the store records as resolved).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for RegistryReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Splits `DIR[:tag]`: the last `:` starts a tag when no `/` follows it.
fn split_path_suffix(text: &str) -> (&str, Option<String>) {
    match text.rfind(':') {
        Some(i) if !text[i..].contains('/') => (&text[..i], Some(text[i + 1..].to_owned())),
        _ => (text, None),
    }
}

fn absolute(path: &str) -> Result<PathBuf, String> {
    std::path::absolute(Path::new(path))
        .map_err(|e| format!("cannot make {path} absolute against the current directory: {e}"))
}

fn check_tag(tag: &str) -> Result<(), String> {
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok
        || tag.len() > 128
        || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!(
            "tag {tag:?} must be 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || registry.starts_with('[') => {
            (host, Some(port))
        }
        _ => (registry, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    if !host_ok || !port_ok {
        return Err(format!(
            "registry {registry:?} is not host or host:port (port 1-65535)"
        ));
    }
    Ok(())
}

fn check_repository(repository: &str) -> Result<(), String> {
    if repository.len() > 255 {
        return Err("the repository name is longer than 255 characters".to_owned());
    }
    for component in repository.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let ok = !bytes.is_empty()
            && bytes.first().is_some_and(alnum)
            && bytes.last().is_some_and(alnum)
            && bytes
                .iter()
                .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(format!(
                "repository component {component:?} must be lowercase letters and digits, \
                 separated by '.', '_' or '-'"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "registry.example:5000";

    fn registry(text: &str) -> RegistryReference {
        match ImageReference::parse(text, DEFAULT) {
            Ok(ImageReference::Registry(r)) => r,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn short_names_resolve_against_the_default_registry() {
        for (short, full) in [
            ("busybox", "registry.example:5000/library/busybox:latest"),
            (
                "library/busybox:1.36",
                "registry.example:5000/library/busybox:1.36",
            ),
            ("team/app", "registry.example:5000/team/app:latest"),
            (
                "registry.example:5000/app",
                "registry.example:5000/app:latest",
            ),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ] {
            assert_eq!(registry(short).to_string(), full, "{short}");
        }
    }

    #[test]
    fn hosts_ports_tags_and_digests() {
        let r = registry("localhost:5000/busybox:latest");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "busybox")
        );
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let hex = "a".repeat(64);
        let r = registry(&format!("quay.io/org/app@sha256:{hex}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.unwrap().hex(), hex);
        let r = registry(&format!("localhost/app:v1@sha256:{hex}"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.registry, "localhost");
    }

    #[test]
    fn local_sources() {
        let layout = |dir: &str, tag: Option<&str>| ImageReference::OciLayout {
            dir: dir.into(),
            tag: tag.map(Into::into),
        };
        let archive = |file: &str, name: Option<&str>| ImageReference::DockerArchive {
            file: file.into(),
            name: name.map(Into::into),
        };
        for (text, parsed) in [
            ("oci:/srv/layout:v2", layout("/srv/layout", Some("v2"))),
            ("/srv/layout", layout("/srv/layout", None)),
            ("/srv/saved.tar", archive("/srv/saved.tar", None)),
            (
                "docker-archive:/srv/saved.tar:app:v1",
                archive("/srv/saved.tar", Some("app:v1")),
            ),
        ] {
            assert_eq!(
                ImageReference::parse(text, DEFAULT).unwrap(),
                parsed,
                "{text}"
            );
        }
    }

    #[test]
    fn errors_name_the_reference_and_the_problem() {
        for (text, needle) in [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("localhost:5000/busybox:bad tag", "tag"),
            ("busybox@sha256:1234", "invalid digest"),
            ("localhost:99999/busybox", "port"),
            ("oci:", "directory"),
        ] {
            let err = ImageReference::parse(text, DEFAULT)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{err}");
        }
    }
}

//! Resolving `--user NAME|UID[:GID]` against the passwd/group files of the host or of
//! the task's rootfs.
//!
//! Follows Docker (runc's `GetExecUser`):
//! * the user part matches a passwd entry by name, or by uid when it is numeric; a
//!   numeric uid missing from passwd is accepted with gid 0;
//! * an explicit group (name or number) sets the primary gid and then no supplementary
//!   groups are added; a numeric gid missing from the group file is accepted;
//! * without a group, the gid is the passwd entry's, and the supplementary groups are
//!   the groups of `/etc/group` whose member list names the user.

use std::path::{Path, PathBuf};

use crate::spec::Identity;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unknown user {0:?}: no such name in {1}")]
    UnknownUser(String, String),
    #[error("unknown group {0:?}: no such name in {1}")]
    UnknownGroup(String, String),
    #[error("invalid --user {0:?}: use NAME, UID or UID:GID")]
    Invalid(String),
    #[error("reading {path}: {source} (check that the file is readable, or use a numeric UID:GID)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The entries of a passwd or group file: the name and the fields after the password
/// of each line that is not blank or a comment and has a name.
fn entries(text: &str) -> impl Iterator<Item = (&str, std::str::Split<'_, char>)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?.trim();
            let _password = f.next()?;
            (!name.is_empty()).then_some((name, f))
        })
}

/// The next field as a numeric id; `None` if it is missing or not a number.
fn next_id(fields: &mut std::str::Split<'_, char>) -> Option<u32> {
    fields.next()?.trim().parse().ok()
}

/// Parses passwd lines `name:password:uid:gid:gecos:home:shell`; comments, blank and
/// malformed lines are skipped (as libc does).
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    entries(text)
        .filter_map(|(name, mut f)| {
            Some(PasswdEntry {
                name: name.to_string(),
                uid: next_id(&mut f)?,
                gid: next_id(&mut f)?,
            })
        })
        .collect()
}

/// Parses group lines `name:password:gid:member,member`; comments, blank and malformed
/// lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    entries(text)
        .filter_map(|(name, mut f)| {
            let gid = next_id(&mut f)?;
            let members = f
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            Some(GroupEntry {
                name: name.to_string(),
                gid,
                members,
            })
        })
        .collect()
}

/// Reads a file, `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, UserError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(UserError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A decimal id; `Err` for numbers that do not fit (or are negative).
fn numeric(spec: &str, s: &str) -> Result<Option<u32>, UserError> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    s.parse::<u32>()
        .map(Some)
        .map_err(|_| UserError::Invalid(spec.to_string()))
}

/// Resolves a user spec; `root` is `/` or the task's rootfs.
pub fn resolve(spec: &str, root: &std::path::Path) -> Result<Identity, UserError> {
    resolve_with(spec, &root.join("etc/passwd"), &root.join("etc/group"))
}

/// Resolves a user spec against an image's layers (lowest first), before they are
/// stacked: each file comes from the highest layer that has it. A layer where the
/// path is not a regular file (a whiteout, a directory) hides the lower ones.
pub fn resolve_in_layers(spec: &str, layers: &[PathBuf]) -> Result<Identity, UserError> {
    let top = |file: &str| {
        layers
            .iter()
            .rev()
            .map(|layer| layer.join(file))
            .find(|path| path.symlink_metadata().is_ok())
            .filter(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from(format!("/{file} (not in the image)")))
    };
    resolve_with(spec, &top("etc/passwd"), &top("etc/group"))
}

fn resolve_with(spec: &str, passwd_path: &Path, group_path: &Path) -> Result<Identity, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let user_num = numeric(spec, user)?;
    let passwd = read_optional(passwd_path)?
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    let found = passwd
        .iter()
        .find(|p| p.name == user || user_num.is_some_and(|uid| p.uid == uid));
    let (uid, mut gid, name) = match (found, user_num) {
        (Some(p), _) => (p.uid, p.gid, Some(p.name.as_str())),
        // Docker: a numeric uid that passwd does not list runs with gid 0.
        (None, Some(uid)) => (uid, 0, None),
        (None, None) => {
            return Err(UserError::UnknownUser(
                user.to_string(),
                passwd_path.display().to_string(),
            ));
        }
    };

    let groups_text = read_optional(group_path)?;
    let groups_file = groups_text.as_deref().map(parse_group).unwrap_or_default();
    let mut groups = Vec::new();
    match group {
        Some(g) => {
            let g_num = numeric(spec, g)?;
            match groups_file
                .iter()
                .find(|e| e.name == g || g_num.is_some_and(|n| e.gid == n))
            {
                Some(entry) => gid = entry.gid,
                None => match g_num {
                    Some(n) => gid = n,
                    None => {
                        return Err(UserError::UnknownGroup(
                            g.to_string(),
                            group_path.display().to_string(),
                        ));
                    }
                },
            }
        }
        None => {
            if let Some(name) = name {
                for entry in &groups_file {
                    if entry.members.iter().any(|m| m == name) && !groups.contains(&entry.gid) {
                        groups.push(entry.gid);
                    }
                }
            }
        }
    }
    Ok(Identity { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "# comment\n\
             root:x:0:0:root:/root:/bin/bash\n\
             daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
             broken line\n\
             alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n\
             bob:x:1001:100::/home/bob:/bin/sh\n\
             \n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\n\
             users:x:100:alice\n\
             alice:x:1000:\n\
             docker:x:998:alice, bob\n\
             wheel:x:10:bob\n\
             nogid:x:zz:alice\n",
        )
        .unwrap();
        dir
    }

    fn id(uid: u32, gid: u32, groups: &[u32]) -> Identity {
        Identity {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    /// Asserts that each spec resolves to its identity.
    fn assert_resolves(root: &Path, cases: &[(&str, Identity)]) {
        for (spec, identity) in cases {
            assert_eq!(&resolve(spec, root).unwrap(), identity, "{spec:?}");
        }
    }

    #[test]
    fn resolution() {
        let r = rootfs();
        assert_resolves(
            r.path(),
            &[
                // By name, with the supplementary groups that list the user.
                ("alice", id(1000, 1000, &[100, 998])),
                ("bob", id(1001, 100, &[998, 10])),
                ("root", id(0, 0, &[])),
                // By uid; an unknown numeric uid is accepted with gid 0 (Docker).
                ("1000", id(1000, 1000, &[100, 998])),
                ("4242", id(4242, 0, &[])),
                ("4242:4243", id(4242, 4243, &[])),
                // An explicit group replaces the supplementary groups.
                ("alice:docker", id(1000, 998, &[])),
                ("alice:10", id(1000, 10, &[])),
                ("1001:users", id(1001, 100, &[])),
                ("alice:777", id(1000, 777, &[])),
            ],
        );
    }

    #[test]
    fn errors() {
        let r = rootfs();
        let err = resolve("mallory", r.path()).unwrap_err();
        assert!(
            matches!(err, UserError::UnknownUser(ref u, ref f) if u == "mallory" && f.ends_with("etc/passwd"))
        );
        assert!(err.to_string().contains("etc/passwd"), "{err}");
        let err = resolve("alice:staff", r.path()).unwrap_err();
        assert!(
            matches!(err, UserError::UnknownGroup(ref g, ref f) if g == "staff" && f.ends_with("etc/group"))
        );
        for bad in [
            "",
            ":",
            "alice:",
            ":10",
            "a:b:c",
            "99999999999",
            "1:99999999999",
        ] {
            assert!(
                matches!(resolve(bad, r.path()), Err(UserError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn missing_files() {
        let empty = tempfile::tempdir().unwrap();
        assert_resolves(
            empty.path(),
            &[("0", id(0, 0, &[])), ("1000:1000", id(1000, 1000, &[]))],
        );
        assert!(matches!(
            resolve("alice", empty.path()),
            Err(UserError::UnknownUser(..))
        ));
    }

    #[test]
    fn parsers() {
        let g = parse_group("a:x:1:u1,u2\nb:x:2\n");
        assert_eq!(g[0].members, vec!["u1", "u2"]);
        assert_eq!(g[1].members, Vec::<String>::new());
        let p = parse_passwd("a:x:1:2\nb:x:-1:2:::\n");
        assert_eq!(
            p,
            vec![PasswdEntry {
                name: "a".into(),
                uid: 1,
                gid: 2
            }]
        );
    }
}

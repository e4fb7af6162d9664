//! What a peer is, as its certificate says: the one place that reads an identity out of
//! a certificate and writes one into it.
//!
//! # The scheme
//!
//! | peer | subject CN | subject alternative names | extended key usage |
//! |---|---|---|---|
//! | the master | `master` | the master's DNS names and addresses | serverAuth |
//! | an agent | `agent:<node>` | the node's DNS name (and addresses given at issue) | serverAuth, clientAuth |
//! | a user or scheduler | `user:<name>` | one URI `urn:cella:group:<group>` per group | clientAuth |
//!
//! The CN is the principal string that ACL files, logs and the API show
//! (`agent:node1`, `user:alice`). Groups travel as URI SANs because a distinguished
//! name holds one value per attribute type, and a user may be in several groups.
//!
//! A certificate of the cluster CA whose CN follows none of these forms names a user of
//! that name (`CN=alice` is `user:alice`), so that certificates made by other tooling
//! still authenticate, as users only. A certificate without a CN has no identity.

use x509_parser::extensions::GeneralName;

/// The prefix of a group's URI subject alternative name.
pub const GROUP_URI_PREFIX: &str = "urn:cella:group:";

/// What a peer is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// The master (the only identity valid for serving the cluster port).
    Master,
    /// The agent of one node.
    Agent { node: String },
    /// A person or a scheduler, with the groups the certificate (or credential) names.
    User { name: String, groups: Vec<String> },
}

/// A name that cannot be part of an identity, with what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} name {name:?}: {rule}")]
pub struct InvalidName {
    pub kind: &'static str,
    pub name: String,
    pub rule: &'static str,
}

const NODE_RULE: &str = "use 1 to 253 characters from a-z A-Z 0-9 '.' '-' (a DNS name)";
const USER_RULE: &str = "use 1 to 128 characters from a-z A-Z 0-9 '.' '_' '-' '@'";

/// Whether `node` can name an agent's node: a DNS-style name.
pub fn check_node_name(node: &str) -> Result<(), InvalidName> {
    let ok = !node.is_empty()
        && node.len() <= 253
        && !node.starts_with(['.', '-'])
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    ok.then_some(()).ok_or_else(|| InvalidName {
        kind: "node",
        name: node.to_string(),
        rule: NODE_RULE,
    })
}

/// Whether `name` can name a user or a group.
pub fn check_user_name(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    ok.then_some(()).ok_or_else(|| InvalidName {
        kind,
        name: name.to_string(),
        rule: USER_RULE,
    })
}

impl Identity {
    /// A user with groups, after checking the names.
    pub fn user(name: &str, groups: &[String]) -> Result<Identity, InvalidName> {
        check_user_name("user", name)?;
        for g in groups {
            check_user_name("group", g)?;
        }
        let mut groups = groups.to_vec();
        groups.sort();
        groups.dedup();
        Ok(Identity::User {
            name: name.to_string(),
            groups,
        })
    }

    /// An agent, after checking the node name.
    pub fn agent(node: &str) -> Result<Identity, InvalidName> {
        check_node_name(node)?;
        Ok(Identity::Agent {
            node: node.to_string(),
        })
    }

    /// The principal string: `master`, `agent:<node>`, `user:<name>` (also the CN).
    pub fn principal(&self) -> String {
        match self {
            Identity::Master => "master".to_string(),
            Identity::Agent { node } => format!("agent:{node}"),
            Identity::User { name, .. } => format!("user:{name}"),
        }
    }

    /// The groups of a user (none for agents and the master).
    pub fn groups(&self) -> &[String] {
        match self {
            Identity::User { groups, .. } => groups,
            _ => &[],
        }
    }

    /// The node of an agent.
    pub fn node(&self) -> Option<&str> {
        match self {
            Identity::Agent { node } => Some(node),
            _ => None,
        }
    }

    /// What kind of peer, for messages: `master`, `agent`, `user`.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Master => "master",
            Identity::Agent { .. } => "agent",
            Identity::User { .. } => "user",
        }
    }

    /// The identity a subject CN (plus the certificate's groups) names.
    pub fn from_common_name(cn: &str, groups: Vec<String>) -> Option<Identity> {
        if cn.is_empty() {
            return None;
        }
        if cn == "master" {
            return Some(Identity::Master);
        }
        if let Some(node) = cn.strip_prefix("agent:") {
            return Identity::agent(node).ok();
        }
        let name = cn.strip_prefix("user:").unwrap_or(cn);
        Identity::user(name, &groups).ok()
    }

    /// The identity of a DER certificate. The caller is responsible for having verified
    /// the certificate (rustls does, in [`super::serve`]).
    pub fn from_cert_der(der: &[u8]) -> Option<Identity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())?
            .to_string();
        let mut groups = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    if let Some(g) = uri.strip_prefix(GROUP_URI_PREFIX) {
                        groups.push(g.to_string());
                    }
                }
            }
        }
        Identity::from_common_name(&cn, groups)
    }

    /// The URI subject alternative names that carry this identity's groups.
    pub fn group_uris(&self) -> Vec<String> {
        self.groups()
            .iter()
            .map(|g| format!("{GROUP_URI_PREFIX}{g}"))
            .collect()
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.principal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names() {
        assert_eq!(
            Identity::from_common_name("master", vec![]),
            Some(Identity::Master)
        );
        assert_eq!(
            Identity::from_common_name("agent:node-1.example", vec![]),
            Some(Identity::Agent {
                node: "node-1.example".into()
            })
        );
        let alice = Identity::from_common_name("user:alice", vec!["ops".into(), "a".into()]);
        assert_eq!(
            alice,
            Some(Identity::User {
                name: "alice".into(),
                groups: vec!["a".into(), "ops".into()]
            })
        );
        // Other tooling's certificates are users, never agents or the master.
        assert_eq!(
            Identity::from_common_name("agent", vec![]).map(|i| i.principal()),
            Some("user:agent".into())
        );
        assert_eq!(Identity::from_common_name("agent:", vec![]), None);
        assert_eq!(Identity::from_common_name("agent:a b", vec![]), None);
        assert_eq!(Identity::from_common_name("", vec![]), None);
        assert_eq!(Identity::from_common_name("user:x y", vec![]), None);
        assert!(check_user_name("group", "bad/group").is_err());
        assert!(check_node_name("-x").is_err());
    }
}

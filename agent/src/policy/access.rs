//! Who may read what through the agent's HTTP API ([`Access`]).
//!
//! The rules are the cluster's ACL ([`cella_proto::acl`]): the master sends its ACL
//! (or "not enforced") after every registration and whenever it changes, and the agent
//! checks `view(sandbox)` for a task's files, `view(tasks)` for its container list and
//! `view(state)` for `/metrics`, each against the task's framework (its owner and role,
//! which came with the launch). An agent with an ACL file of its own (`--acl`) uses
//! that instead and ignores the master's; it is re-read when it changes or on SIGHUP.
//! Until the agent has a policy (it has not registered yet and has no `--acl`),
//! everything but `/health` is refused.

use std::path::Path;
use std::sync::RwLock;

use cella_proto::acl::{Acl, Action, Denied, Policy};
use cella_proto::reload::Watched;
use cella_proto::tls::Identity;
use cella_proto::v1::master_to_agent::AccessPolicy;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// The label of a denial counter: the permission that was missing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PermissionLabel {
    pub permission: String,
}

/// The access policy of the agent's API; see the module documentation.
pub struct Access {
    /// The agent's own ACL file, if it has one: it rules, the master's is ignored.
    local: Option<Watched<Acl>>,
    /// The master's last policy.
    from_master: RwLock<Option<Policy>>,
    denials: Family<PermissionLabel, Counter>,
}

fn read_acl(path: &Path) -> Result<Acl, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e} (the ACL file given with --acl)", path.display()))?;
    Acl::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Access {
    /// With `acl`, the agent's own ACL file rules its API; without, the master's.
    pub fn new(acl: Option<&Path>) -> Result<Access, String> {
        Ok(Access {
            local: acl.map(|p| Watched::load(p, read_acl)).transpose()?,
            from_master: RwLock::new(None),
            denials: Family::default(),
        })
    }

    /// The denial counters, for `/metrics`.
    pub fn denials(&self) -> &Family<PermissionLabel, Counter> {
        &self.denials
    }

    fn set(&self, policy: Policy) {
        *self
            .from_master
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(policy);
    }

    fn current(&self) -> Option<Policy> {
        match &self.local {
            Some(acl) => Some(Policy::Enforced(acl.current())),
            None => self
                .from_master
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }

    /// The master's policy arrived (ignored when the agent has an ACL of its own). An
    /// ACL the agent cannot parse denies everything until a usable one arrives.
    pub fn from_master(&self, policy: &AccessPolicy) {
        if self.local.is_some() {
            return;
        }
        if !policy.enforced {
            self.set(Policy::Permissive);
            return;
        }
        match Acl::parse(&policy.acl_toml) {
            Ok(acl) => self.set(Policy::Enforced(std::sync::Arc::new(acl))),
            Err(e) => {
                tracing::error!(
                    "the master's ACL cannot be read here ({e}): the API denies everything"
                );
                self.set(Policy::Enforced(std::sync::Arc::default()));
            }
        }
    }

    /// Re-reads the agent's own ACL file if it changed (or always, with `force`);
    /// `Err` leaves the previous ACL in force.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        self.local.as_ref().map_or(Ok(false), |l| l.reload(force))
    }

    /// The agent's own ACL file, if any.
    pub fn local_path(&self) -> Option<&Path> {
        self.local.as_ref().map(Watched::path)
    }

    /// May `who` do `action`? A denial is logged (naming `what`) and counted.
    pub fn check(&self, who: &Identity, action: &Action<'_>, what: &str) -> Result<(), Denied> {
        let result = match self.current() {
            Some(policy) => policy.check(who, action),
            None => Err(Denied {
                principal: who.principal(),
                permission: "access to this agent's API".into(),
                detail: Some(
                    "the agent has no access policy yet: it has not registered with the master \
                     and has no --acl of its own"
                        .into(),
                ),
            }),
        };
        result.inspect_err(|denied| {
            self.denials
                .get_or_create(&PermissionLabel {
                    permission: denied.permission_name().to_string(),
                })
                .inc();
            tracing::warn!(principal = %denied.principal, "denied: {what}: {denied}");
        })
    }

    /// [`Access::check`] without logging or counting, for filtering lists.
    pub fn allows(&self, who: &Identity, action: &Action<'_>) -> bool {
        self.current().is_some_and(|p| p.check(who, action).is_ok())
    }
}

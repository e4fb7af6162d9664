//! Authorization in the master: the one place that answers "may this principal do
//! that?" for the gRPC streams, the HTTP handlers and the actor.
//!
//! * [`Authorizer`] holds the ACL in force ([`cella_proto::acl::Policy`]: permissive
//!   without an ACL file, default deny with one), reloads it when the file changes or
//!   on SIGHUP, and logs and counts every denial (`cella_master_authz_denied_total`,
//!   labelled by permission; a principal refused in a loop has only some of its
//!   denials logged and recorded, [`denial_budget`]). Its [`Authorizer::check`] is the call other code makes;
//!   [`Authorizer::allows`] answers quietly, for filtering lists.
//! * [`agents`] holds what an agent may say for itself whatever the ACL: it registers
//!   as the node its certificate names, never twice at once, and reports only its own
//!   tasks, with legal states.
//!
//! What is checked where is listed in `docs/api.md` (the permission of each call).

pub mod agents;
pub mod denial_budget;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, PoisonError};

use cella_proto::acl::{Acl, Action, Denied, Policy, TaskRequest};
use cella_proto::reload::Watched;
use cella_proto::tls::Identity;
use cella_proto::v1::{self, master_to_agent};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::audit::{AuditLog, Event, record};
use denial_budget::DenialBudget;

/// The label of a denial counter: the permission that was missing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PermissionLabel {
    pub permission: String,
}

/// An ACL file as read: the ACL, and its text (handed to agents).
struct AclFile {
    acl: Arc<Acl>,
    text: String,
}

fn read_acl(path: &Path) -> Result<AclFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e} (the ACL file given with --acl)", path.display()))?;
    let acl = Acl::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(AclFile {
        acl: Arc::new(acl),
        text,
    })
}

/// The ACL in force; see the module documentation.
pub struct Authorizer {
    /// `None`: permissive.
    file: Option<Watched<AclFile>>,
    denials: Family<PermissionLabel, Counter>,
    /// Where denials are recorded besides the log and the counter.
    audit: std::sync::RwLock<Option<Arc<AuditLog>>>,
    /// How many of each principal's denials are recorded there.
    budget: DenialBudget,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// No ACL file: every authenticated principal may do everything.
    pub fn permissive() -> Arc<Authorizer> {
        Arc::new(Authorizer {
            file: None,
            denials: Family::default(),
            audit: Default::default(),
            budget: DenialBudget::default(),
        })
    }

    /// Default deny: only what the ACL file at `path` grants.
    pub fn from_file(path: &Path) -> Result<Arc<Authorizer>, String> {
        Ok(Arc::new(Authorizer {
            file: Some(Watched::load(path, read_acl)?),
            denials: Family::default(),
            audit: Default::default(),
            budget: DenialBudget::default(),
        }))
    }

    /// The ACL file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(Watched::path)
    }

    /// Re-reads the ACL file if it changed (or always, with `force`): `Ok(true)` when
    /// a new ACL is in force; `Err` (an unreadable or invalid file) leaves the previous
    /// one in force.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        self.file.as_ref().map_or(Ok(false), |f| f.reload(force))
    }

    fn policy(&self) -> Policy {
        match &self.file {
            Some(f) => Policy::Enforced(f.current().acl.clone()),
            None => Policy::Permissive,
        }
    }

    /// Whether an ACL is enforced (default deny).
    pub fn is_enforced(&self) -> bool {
        self.file.is_some()
    }

    /// The access policy agents get (they authorize their own API with it).
    pub fn agent_policy(&self) -> master_to_agent::AccessPolicy {
        master_to_agent::AccessPolicy {
            enforced: self.is_enforced(),
            acl_toml: self
                .file
                .as_ref()
                .map(|f| f.current().text.clone())
                .unwrap_or_default(),
        }
    }

    /// Records every later denial in `log` too.
    pub fn record_denials_in(&self, log: Arc<AuditLog>) {
        *self.audit.write().unwrap_or_else(PoisonError::into_inner) = Some(log);
    }

    /// The denial counters, for `/metrics`.
    pub fn denials(&self) -> &Family<PermissionLabel, Counter> {
        &self.denials
    }

    /// May `who` do `action`? `what` says what was attempted (for the log line and
    /// the error). A denial is logged and counted; its message names the principal,
    /// the permission missing and what was attempted.
    pub fn check(&self, who: &Identity, action: &Action<'_>, what: &str) -> Result<(), Denied> {
        self.policy().check(who, action).inspect_err(|denied| {
            self.denials
                .get_or_create(&PermissionLabel {
                    permission: denied.permission_name().to_string(),
                })
                .inc();
            // A principal refused in a loop: counted, not logged nor recorded.
            let Some(left_out) = self
                .budget
                .take(&denied.principal, std::time::Instant::now())
            else {
                return;
            };
            tracing::warn!(
                principal = %denied.principal,
                permission = %denied.permission,
                left_out,
                "denied: {what}: {denied}"
            );
            let audit = self.audit.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(log) = audit.as_ref() {
                let _ = log.record(Event::Denied(record::Denied {
                    principal: denied.principal.clone(),
                    permission: denied.permission.clone(),
                    what: what.to_string(),
                    left_out,
                }));
            }
        })
    }

    /// [`Authorizer::check`] without logging or counting: for filtering what a list
    /// shows.
    pub fn allows(&self, who: &Identity, action: &Action<'_>) -> bool {
        self.policy().check(who, action).is_ok()
    }
}

/// What `task` asks for, in the terms of the ACL: the framework's `role`, the task's
/// user, volumes, rootfs, image, devices and resources, and the attributes of the agent it would run
/// on.
pub fn task_request<'a>(
    task: &'a v1::TaskInfo,
    role: &'a str,
    agent_attributes: Option<&'a BTreeMap<String, String>>,
) -> TaskRequest<'a> {
    let r = task.resources.unwrap_or_default();
    TaskRequest {
        task_id: &task.task_id,
        role,
        user: &task.user,
        volumes: task
            .volumes
            .iter()
            .map(|v| (v.host_path.as_str(), !v.read_only))
            .collect(),
        rootfs: (!task.rootfs.is_empty()).then_some(task.rootfs.as_str()),
        // As the scheduler wrote it: `use_image` prefixes name what it may write.
        image: task.image.as_ref().map(|i| i.reference.as_str()),
        devices: task.devices.iter().map(String::as_str).collect(),
        cpus: r.cpus,
        mem_bytes: r.mem_bytes,
        disk_bytes: r.disk_bytes,
        agent_attributes,
    }
}

/// The gRPC status of a denial.
pub fn denied_status(what: &str, denied: &Denied) -> tonic::Status {
    tonic::Status::permission_denied(format!("{what}: {denied}"))
}

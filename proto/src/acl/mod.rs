//! Who may do what: the access control list and the one function that answers
//! "may this identity do this?" ([`Policy::check`]).
//!
//! An ACL file (format in [`file`]) maps principals and groups to *ACL roles*, and ACL
//! roles to permissions. (ACL roles are sets of permissions; the *framework roles* a
//! scheduler subscribes in, which DRF shares resources between, are what permissions
//! such as `subscribe` and `run_task` name.) Once an ACL file is configured,
//! everything it does not grant is denied ([`Policy::Enforced`]); without one, every
//! authenticated principal may do everything ([`Policy::Permissive`], `cella dev`).
//!
//! What an identity is allowed regardless of the ACL, and what no ACL can allow, is
//! decided by the callers before they ask: only agent certificates open the agent
//! stream, only users subscribe, an agent speaks only for itself, a framework belongs
//! to the principal that registered it. Owners always see their own tasks, their
//! usage and their sandboxes.
//!
//! The master and the agent share this module: the master authorizes its gRPC and
//! HTTP calls with it, and hands the ACL text to its agents, which authorize reads of
//! their sandboxes with the same rules.

pub mod file;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::tls::Identity;

pub use file::{normal_absolute, parse_size};

/// A name or a prefix (a trailing `*`), for principals and framework roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn new(s: &str) -> Pattern {
        Pattern(s.to_string())
    }

    pub fn matches(&self, value: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => value.starts_with(prefix),
            None => self.0 == value,
        }
    }
}

/// How far a kill or teardown permission reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// The principal's own frameworks.
    Own,
    /// Frameworks in the framework roles the principal may subscribe to.
    Role,
    /// Every framework.
    Any,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Own => "own",
            Scope::Role => "role",
            Scope::Any => "any",
        }
    }
}

/// What can be viewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewKind {
    /// Agents, frameworks, the whole state, `/metrics`.
    State,
    /// Tasks (others' tasks: the owner always sees its own).
    Tasks,
    /// Usage figures (measured, or historical).
    Usage,
    /// Files in tasks' sandboxes (on the agents).
    Sandbox,
    /// The audit log.
    Audit,
}

impl ViewKind {
    pub fn name(self) -> &'static str {
        match self {
            ViewKind::State => "state",
            ViewKind::Tasks => "tasks",
            ViewKind::Usage => "usage",
            ViewKind::Sandbox => "sandbox",
            ViewKind::Audit => "audit",
        }
    }

    pub fn from_name(s: &str) -> Option<ViewKind> {
        Some(match s {
            "state" => ViewKind::State,
            "tasks" => ViewKind::Tasks,
            "usage" => ViewKind::Usage,
            "sandbox" => ViewKind::Sandbox,
            "audit" => ViewKind::Audit,
            _ => return None,
        })
    }
}

/// Per-task ceilings of a `run_task` grant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub cpus: Option<f64>,
    pub mem_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunTaskGrant {
    pub role: Pattern,
    /// Task users; `*` is any user but root (root must be named: `root` or `0`).
    pub as_user: Vec<String>,
    /// The agent must have all these attributes.
    pub agent_attributes: BTreeMap<String, String>,
    pub limits: Limits,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeGrant {
    /// A normal absolute path ([`normal_absolute`]).
    pub prefix: String,
    /// Read-write (a read-write grant covers read-only volumes too).
    pub read_write: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewGrant {
    pub what: ViewKind,
    /// Only for frameworks in these roles (`None`: all).
    pub roles: Option<Pattern>,
}

/// The permissions of one ACL role.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Grants {
    pub admin: bool,
    pub register_agent: bool,
    pub subscribe: Vec<Pattern>,
    pub run_task: Vec<RunTaskGrant>,
    pub use_volume: Vec<VolumeGrant>,
    pub use_rootfs: Vec<String>,
    pub use_image: Vec<String>,
    /// Host device paths (normal absolute paths, [`normal_absolute`]) a task may be
    /// given; exact paths, not prefixes.
    pub use_device: Vec<String>,
    pub kill_task: Option<Scope>,
    pub teardown_framework: Option<Scope>,
    pub view: Vec<ViewGrant>,
}

/// A parsed ACL file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Acl {
    pub principals: Vec<(Pattern, Vec<String>)>,
    pub roles: BTreeMap<String, Grants>,
}

impl Acl {
    /// Parses an ACL file's text; errors name the key and what to write.
    pub fn parse(text: &str) -> Result<Acl, String> {
        file::parse(text)
    }

    /// The grants of every ACL role `who` (or one of its groups) is given.
    fn grants_of(&self, who: &Identity) -> Vec<&Grants> {
        let principal = who.principal();
        let groups: Vec<String> = who.groups().iter().map(|g| format!("group:{g}")).collect();
        let mut names: Vec<&str> = Vec::new();
        for (pattern, roles) in &self.principals {
            let hit = pattern.matches(&principal)
                || groups
                    .iter()
                    .any(|g| pattern.0.starts_with("group:") && pattern.matches(g));
            if hit {
                names.extend(roles.iter().map(String::as_str));
            }
        }
        names.sort_unstable();
        names.dedup();
        names.iter().filter_map(|n| self.roles.get(*n)).collect()
    }
}

/// The framework an action is about: who owns it and its role.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub owner: &'a str,
    pub role: &'a str,
}

/// What a task asks for, as far as permissions go.
#[derive(Clone, Debug, Default)]
pub struct TaskRequest<'a> {
    pub task_id: &'a str,
    /// The framework's role.
    pub role: &'a str,
    /// The task's user; empty: the agent's default (unprivileged) task user.
    pub user: &'a str,
    /// (host path, read-write).
    pub volumes: Vec<(&'a str, bool)>,
    pub rootfs: Option<&'a str>,
    /// A container image reference (`registry/name:tag`).
    pub image: Option<&'a str>,
    /// Host device paths (`/dev/fuse`).
    pub devices: Vec<&'a str>,
    pub cpus: f64,
    pub mem_bytes: u64,
    pub disk_bytes: u64,
    pub agent_attributes: Option<&'a BTreeMap<String, String>>,
}

/// What a principal asks to do.
#[derive(Clone, Debug)]
pub enum Action<'a> {
    RegisterAgent,
    Subscribe {
        role: &'a str,
    },
    RunTask(TaskRequest<'a>),
    KillTask(Target<'a>),
    TeardownFramework(Target<'a>),
    /// `target`: the framework whose data is viewed; `None` for the whole cluster.
    View {
        what: ViewKind,
        target: Option<Target<'a>>,
    },
    Admin,
}

/// A refusal: for whom, which permission was missing, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("permission denied: {principal} lacks {permission}{}", detail_text(.detail))]
pub struct Denied {
    pub principal: String,
    /// The permission that was needed, e.g. `run_task(role=batch, as_user=root)`.
    pub permission: String,
    pub detail: Option<String>,
}

fn detail_text(detail: &Option<String>) -> String {
    detail
        .as_deref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

impl Denied {
    /// The permission's name alone (`run_task`, `view`…), for metric labels.
    pub fn permission_name(&self) -> &str {
        self.permission
            .split_once('(')
            .map_or(self.permission.as_str(), |(n, _)| n)
    }
}

/// The access control in force.
#[derive(Clone, Debug)]
pub enum Policy {
    /// No ACL file: every authenticated principal may do everything.
    Permissive,
    /// Default deny: only what the ACL grants.
    Enforced(Arc<Acl>),
}

/// Whether `user` names root (by name or uid, with or without a group).
pub fn is_root_user(user: &str) -> bool {
    let name = user.split_once(':').map_or(user, |(u, _)| u);
    name == "root" || name == "0"
}

/// Whether `path` lies within `prefix` (both normal absolute paths), component-wise.
fn within(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl Policy {
    pub fn is_enforced(&self) -> bool {
        matches!(self, Policy::Enforced(_))
    }

    /// May `who` do `action`? The one question every handler asks.
    pub fn check(&self, who: &Identity, action: &Action<'_>) -> Result<(), Denied> {
        let Policy::Enforced(acl) = self else {
            return Ok(());
        };
        let principal = who.principal();
        let grants = acl.grants_of(who);
        if grants.iter().any(|g| g.admin) {
            return Ok(());
        }
        let deny = |permission: String, detail: Option<String>| Denied {
            principal: principal.clone(),
            permission,
            detail,
        };
        match action {
            Action::Admin => Err(deny("admin".into(), None)),
            Action::RegisterAgent => grants
                .iter()
                .any(|g| g.register_agent)
                .then_some(())
                .ok_or_else(|| deny("register_agent".into(), None)),
            Action::Subscribe { role } => may_subscribe(&grants, role)
                .then_some(())
                .ok_or_else(|| deny(format!("subscribe(role={role})"), None)),
            Action::KillTask(target) => scoped(&grants, &principal, target, |g| g.kill_task)
                .map_err(|needed| {
                    deny(
                        format!("kill_task({})", needed.name()),
                        Some(format!(
                            "the framework belongs to {} in role {}",
                            target.owner, target.role
                        )),
                    )
                }),
            Action::TeardownFramework(target) => {
                scoped(&grants, &principal, target, |g| g.teardown_framework).map_err(|needed| {
                    deny(
                        format!("teardown_framework({})", needed.name()),
                        Some(format!(
                            "the framework belongs to {} in role {}",
                            target.owner, target.role
                        )),
                    )
                })
            }
            Action::View { what, target } => {
                if let Some(t) = target {
                    let own = t.owner == principal
                        && matches!(what, ViewKind::Tasks | ViewKind::Usage | ViewKind::Sandbox);
                    if own {
                        return Ok(());
                    }
                }
                let granted = grants.iter().flat_map(|g| &g.view).any(|v| {
                    v.what == *what
                        && match (&v.roles, target) {
                            (None, _) => true,
                            (Some(p), Some(t)) => p.matches(t.role),
                            (Some(_), None) => false,
                        }
                });
                granted.then_some(()).ok_or_else(|| {
                    deny(
                        match target {
                            Some(t) => format!("view({}:{})", what.name(), t.role),
                            None => format!("view({})", what.name()),
                        },
                        None,
                    )
                })
            }
            Action::RunTask(task) => {
                check_task(&grants, task).map_err(|(permission, detail)| deny(permission, detail))
            }
        }
    }
}

fn may_subscribe(grants: &[&Grants], role: &str) -> bool {
    grants
        .iter()
        .flat_map(|g| &g.subscribe)
        .any(|p| p.matches(role))
}

/// The widest scope granted, checked against the target; `Err` with the scope needed.
fn scoped(
    grants: &[&Grants],
    principal: &str,
    target: &Target<'_>,
    scope_of: impl Fn(&Grants) -> Option<Scope>,
) -> Result<(), Scope> {
    let needed = if target.owner == principal {
        Scope::Own
    } else if may_subscribe(grants, target.role) {
        Scope::Role
    } else {
        Scope::Any
    };
    let widest = grants.iter().filter_map(|g| scope_of(g)).max();
    match widest {
        Some(s) if s >= needed => Ok(()),
        _ => Err(needed),
    }
}

type Refusal = (String, Option<String>);

fn check_task(grants: &[&Grants], task: &TaskRequest<'_>) -> Result<(), Refusal> {
    run_task_grant(grants, task)?;
    for (path, read_write) in &task.volumes {
        let mode = if *read_write { "rw" } else { "ro" };
        let Some(path) = normal_absolute(path) else {
            return Err((
                format!("use_volume({path}, {mode})"),
                Some("a volume's host path must be absolute, without '..'".into()),
            ));
        };
        let ok = grants
            .iter()
            .flat_map(|g| &g.use_volume)
            .any(|v| within(&path, &v.prefix) && (v.read_write || !read_write));
        if !ok {
            return Err((format!("use_volume({path}, {mode})"), None));
        }
    }
    if let Some(rootfs) = task.rootfs {
        let ok = normal_absolute(rootfs).is_some_and(|p| {
            grants
                .iter()
                .flat_map(|g| &g.use_rootfs)
                .any(|prefix| within(&p, prefix))
        });
        if !ok {
            return Err((format!("use_rootfs({rootfs})"), None));
        }
    }
    if let Some(image) = task.image {
        let ok = grants
            .iter()
            .flat_map(|g| &g.use_image)
            .any(|prefix| image.starts_with(prefix.as_str()));
        if !ok {
            return Err((format!("use_image({image})"), None));
        }
    }
    for device in &task.devices {
        // Exact paths: a device is a node, not a tree ("/dev" would hand out every disk).
        let ok = normal_absolute(device).is_some_and(|d| {
            grants
                .iter()
                .flat_map(|g| &g.use_device)
                .any(|allowed| *allowed == d)
        });
        if !ok {
            return Err((format!("use_device({device})"), None));
        }
    }
    Ok(())
}

/// A `run_task` grant that covers the task, or the most specific reason none does.
fn run_task_grant(grants: &[&Grants], task: &TaskRequest<'_>) -> Result<(), Refusal> {
    let user_shown = if task.user.is_empty() {
        "the agent's task user"
    } else {
        task.user
    };
    let permission = format!("run_task(role={}, as_user={user_shown})", task.role);
    let mut closest: Option<String> = None;
    for grant in grants.iter().flat_map(|g| &g.run_task) {
        if !grant.role.matches(task.role) {
            continue;
        }
        let user_ok = task.user.is_empty()
            || grant
                .as_user
                .iter()
                .any(|u| u == task.user || (u == "*" && !is_root_user(task.user)));
        if !user_ok {
            closest.get_or_insert_with(|| {
                format!("the grants of role {} name other users", task.role)
            });
            continue;
        }
        if !grant.agent_attributes.is_empty() {
            let attrs_ok = task.agent_attributes.is_some_and(|have| {
                grant
                    .agent_attributes
                    .iter()
                    .all(|(k, v)| have.get(k) == Some(v))
            });
            if !attrs_ok {
                let wanted: Vec<String> = grant
                    .agent_attributes
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                closest = Some(format!("only on agents with {}", wanted.join(",")));
                continue;
            }
        }
        let l = &grant.limits;
        let over = if l.cpus.is_some_and(|c| task.cpus > c + 1e-9) {
            Some(format!(
                "{} cpus is over the limit of {}",
                task.cpus,
                l.cpus.unwrap_or(0.0)
            ))
        } else if l.mem_bytes.is_some_and(|m| task.mem_bytes > m) {
            Some(format!(
                "{} bytes of memory is over the limit of {}",
                task.mem_bytes,
                l.mem_bytes.unwrap_or(0)
            ))
        } else if l.disk_bytes.is_some_and(|d| task.disk_bytes > d) {
            Some(format!(
                "{} bytes of disk is over the limit of {}",
                task.disk_bytes,
                l.disk_bytes.unwrap_or(0)
            ))
        } else {
            None
        };
        match over {
            Some(why) => closest = Some(why),
            None => return Ok(()),
        }
    }
    Err((permission, closest))
}

#[cfg(test)]
mod tests;

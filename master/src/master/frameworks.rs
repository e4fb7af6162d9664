//! Frameworks: subscription and failover, suppress and revive, heartbeats, and
//! removal (teardown or failover timeout) with the kill of their tasks.

use std::time::{Duration, Instant};

use cella_proto::acl::Action;
use cella_proto::tls::Identity;
use cella_proto::v1::{self, event};
use cella_proto::validate;
use tokio::sync::mpsc::UnboundedSender;
use tonic::Status;

use super::{Master, OperatorError, error_event, kill_message};
use crate::allocator::{Allocator, FrameworkId};
use crate::authz::denied_status;
use crate::state::{Framework, duration_ms};

/// The role of a framework that names none.
const DEFAULT_ROLE: &str = "*";

/// The failover timeout of a framework the master learns of from an agent's tasks
/// (bounded by `max_failover_timeout`).
const ADOPTED_FAILOVER: Duration = Duration::from_secs(3600);

impl Master {
    /// SUBSCRIBE from `caller`: a new framework in the role it asks for, or a failover
    /// of one it registered before; `subscribe(role)` either way.
    pub(super) fn subscribe(
        &mut self,
        info: v1::FrameworkInfo,
        caller: Identity,
        tx: UnboundedSender<v1::Event>,
    ) -> Result<(FrameworkId, u64), Status> {
        let principal = caller.principal();
        let role = if info.role.is_empty() {
            DEFAULT_ROLE.to_string()
        } else {
            info.role.clone()
        };
        if role.len() > 128 || role.contains('/') || role.chars().any(char::is_whitespace) {
            return Err(Status::invalid_argument(
                "framework.role: at most 128 characters, no '/' or spaces",
            ));
        }
        if !info.failover_timeout_secs.is_finite() || info.failover_timeout_secs < 0.0 {
            return Err(Status::invalid_argument(
                "framework.failover_timeout_secs: must be a number ≥ 0",
            ));
        }
        let failover = Duration::from_secs_f64(
            info.failover_timeout_secs
                .min(self.config.max_failover_timeout.as_secs_f64()),
        );
        let conn = self.next_conn;
        self.next_conn += 1;
        let id = if info.framework_id.is_empty() {
            FrameworkId::from(format!("fw-{}", uuid::Uuid::new_v4()))
        } else if validate::is_valid_id(&info.framework_id) {
            FrameworkId::from(info.framework_id.clone())
        } else {
            return Err(Status::invalid_argument(
                "framework.framework_id: letters, digits, '.', '_' and '-'",
            ));
        };
        // A failover keeps the framework's role: that is the role to be allowed.
        let effective_role = self
            .frameworks
            .get(&id)
            .map_or(role.as_str(), |f| f.role.as_str())
            .to_string();
        let what = format!("subscribing framework {id} in role {effective_role}");
        self.config
            .authorizer
            .check(
                &caller,
                &Action::Subscribe {
                    role: &effective_role,
                },
                &what,
            )
            .map_err(|denied| denied_status(&what, &denied))?;
        match self.frameworks.get_mut(&id) {
            Some(existing) => {
                if !existing.principal.is_empty() && existing.principal != principal {
                    tracing::warn!(framework_id = %id, owner = %existing.principal, principal, "refused a subscription to another principal's framework");
                    return Err(Status::permission_denied(format!(
                        "framework {id} belongs to principal {:?}, not {principal:?}: only the \
                         principal that registered a framework may subscribe to it again",
                        existing.principal
                    )));
                }
                // Failover: the new stream replaces the old one.
                if let Some((_, old)) = existing.conn.take() {
                    let _ = old.send(error_event(
                        "another scheduler subscribed with this framework id",
                    ));
                }
                existing.conn = Some((conn, tx.clone()));
                existing.caller = Some(caller.clone());
                existing.failover_deadline = None;
                existing.failover_timeout = failover;
                existing.principal = principal.clone();
                if !info.name.is_empty() {
                    existing.name = info.name.clone();
                }
                let _ = self.allocator.activate_framework(&id);
                tracing::info!(framework_id = %id, "framework re-subscribed");
            }
            None => {
                if !info.framework_id.is_empty() {
                    tracing::info!(framework_id = %id, "framework subscribed with an id this master does not know");
                }
                self.allocator
                    .add_framework(id.clone(), &role, true)
                    .map_err(|e| Status::internal(format!("allocator: {e}")))?;
                self.frameworks.insert(
                    id.clone(),
                    Framework {
                        id: id.clone(),
                        name: info.name.clone(),
                        role: role.clone(),
                        principal: principal.clone(),
                        caller: Some(caller.clone()),
                        failover_timeout: failover,
                        conn: Some((conn, tx.clone())),
                        failover_deadline: None,
                        suppressed: false,
                        tasks: Default::default(),
                    },
                );
                tracing::info!(framework_id = %id, role, principal, "framework subscribed");
            }
        }
        self.registry.framework_changed(&id);
        let _ = tx.send(v1::Event {
            event: Some(event::Event::Subscribed(event::Subscribed {
                framework_id: id.to_string(),
                heartbeat_interval_ms: duration_ms(self.config.ping_interval),
            })),
        });
        self.allocation_wanted = true;
        Ok((id, conn))
    }

    /// A framework the master has not seen subscribe (its tasks were reported by an
    /// agent): kept inactive, so it can re-subscribe within the failover timeout.
    pub(super) fn ensure_framework(&mut self, id: &FrameworkId) {
        if self.frameworks.contains_key(id) {
            return;
        }
        let timeout = self.config.max_failover_timeout.min(ADOPTED_FAILOVER);
        let _ = self
            .allocator
            .add_framework(id.clone(), DEFAULT_ROLE, false);
        self.frameworks.insert(
            id.clone(),
            Framework {
                id: id.clone(),
                name: String::new(),
                role: DEFAULT_ROLE.into(),
                principal: String::new(),
                caller: None,
                failover_timeout: timeout,
                conn: None,
                failover_deadline: Some(Instant::now() + timeout),
                suppressed: false,
                tasks: Default::default(),
            },
        );
        self.registry.framework_changed(id);
    }

    /// The scheduler's stream ended: the framework waits for a failover, without
    /// offers.
    pub(super) fn scheduler_disconnected(&mut self, id: &FrameworkId, conn: u64) {
        let Some(framework) = self.frameworks.get_mut(id) else {
            return;
        };
        if framework.conn.as_ref().map(|(c, _)| *c) != Some(conn) {
            return;
        }
        framework.conn = None;
        framework.caller = None;
        framework.failover_deadline = Some(Instant::now() + framework.failover_timeout);
        tracing::info!(framework_id = %id, timeout = ?framework.failover_timeout, "framework disconnected; waiting for failover");
        let _ = self.allocator.deactivate_framework(id);
        self.rescind_offers(|o| &o.framework == id, false);
    }

    pub(super) fn heartbeat_frameworks(&self) {
        for framework in self.frameworks.values() {
            if let Some((_, tx)) = &framework.conn {
                let _ = tx.send(v1::Event {
                    event: Some(event::Event::Heartbeat(event::Heartbeat {})),
                });
            }
        }
    }

    pub(super) fn expire_frameworks(&mut self, now: Instant) {
        let expired: Vec<FrameworkId> = self
            .frameworks
            .values()
            .filter(|f| f.conn.is_none() && f.failover_deadline.is_some_and(|d| now >= d))
            .map(|f| f.id.clone())
            .collect();
        for id in expired {
            tracing::info!(framework_id = %id, "failover timeout passed: removing the framework and killing its tasks");
            self.remove_framework(&id);
        }
    }

    /// Removes a framework (teardown, failover timeout): its tasks are killed and
    /// its offers dropped.
    pub(super) fn remove_framework(&mut self, id: &FrameworkId) {
        let Some(framework) = self.frameworks.remove(id) else {
            return;
        };
        self.registry.framework_changed(id);
        for task_id in &framework.tasks {
            if let Some(task) = self.tasks.get(task_id) {
                let grace = self.kill_grace(task, None);
                self.send_to_agent(&task.agent, kill_message(id, task_id, grace));
            }
        }
        for offer in self.allocator.remove_framework(id).unwrap_or_default() {
            self.offers.remove(&offer.id);
        }
        self.offers.retain(|_, o| &o.framework != id);
    }

    /// An operator's teardown (HTTP): allowed by `teardown_framework(own|role|any)`.
    pub(super) fn operator_teardown(
        &mut self,
        framework_id: &str,
        caller: &Identity,
    ) -> Result<(), OperatorError> {
        let id = FrameworkId::from(framework_id.to_string());
        if !self.frameworks.contains_key(&id) {
            return Err(OperatorError::NotFound(format!(
                "unknown framework {framework_id:?}"
            )));
        }
        #[expect(
            clippy::redundant_closure,
            reason = "the variant alone is not general over the target's lifetime"
        )]
        self.authorize_operator(
            caller,
            &id,
            |target| Action::TeardownFramework(target),
            &format!("tearing down framework {framework_id}"),
        )?;
        tracing::info!(framework_id = %id, by = %caller, "teardown by an operator: killing its tasks");
        if let Some((_, tx)) = self.frameworks.get(&id).and_then(|f| f.conn.as_ref()) {
            let _ = tx.send(error_event("an operator tore this framework down"));
        }
        self.remove_framework(&id);
        Ok(())
    }

    /// SUPPRESS: no offers until REVIVE (kept across master restarts).
    pub(super) fn suppress(&mut self, id: &FrameworkId) {
        let _ = self.allocator.suppress(id);
        if let Some(f) = self.frameworks.get_mut(id) {
            f.suppressed = true;
        }
        self.registry.framework_changed(id);
    }

    /// REVIVE: offers again, refusal filters cleared.
    pub(super) fn revive(&mut self, id: &FrameworkId) {
        let _ = self.allocator.revive(id);
        if let Some(f) = self.frameworks.get_mut(id) {
            f.suppressed = false;
        }
        self.registry.framework_changed(id);
        self.allocation_wanted = true;
    }
}

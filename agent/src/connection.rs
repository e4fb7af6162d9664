//! The agent's one stream to the master: connect, register (or re-register with
//! the tasks it holds), pass the master's messages on, and reconnect with backoff
//! when the stream breaks.
//!
//! The connection does not act on the master's messages itself: Launch, Kill,
//! Acknowledge and Shutdown become [`MasterCommand`]s on a channel, in the order
//! they arrived, for the agent to dispatch ([`crate::agent`]). Only Registered (the
//! agent id; the status update manager may send from now on), Policy (who may use the
//! agent's API) and Ping (answered with Pong) are handled here. Besides status updates (sent by the status update
//! manager on the stream handed to it at registration), the connection sends the
//! usage reports the task side publishes.

use std::sync::Arc;
use std::time::Duration;

use cella_proto::v1::{
    self, agent_message, agent_message::UsageReport, agent_service_client::AgentServiceClient,
    master_to_agent,
};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::state::{Shared, lock};
use crate::status_updates::StatusUpdateManager;
use crate::store::Write;

/// Reconnection delays: 100 ms doubling to 10 s, with jitter.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// What the master asks of the agent, in the order it asked.
#[derive(Debug, Clone, PartialEq)]
pub enum MasterCommand {
    /// Launch `task` for `framework_id` (whose role and owner the API authorizes
    /// sandbox reads with).
    Launch {
        framework_id: String,
        task: Box<v1::TaskInfo>,
        role: String,
        principal: String,
    },
    /// Kill a task: SIGTERM, then SIGKILL after `grace` (zero: SIGKILL at once).
    Kill {
        framework_id: String,
        task_id: String,
        grace: std::time::Duration,
    },
    /// A scheduler acknowledged the status update `uuid` of `task_id`.
    Acknowledge { task_id: String, uuid: String },
    /// The master removed this agent: it should kill its tasks and stop. The stream
    /// stays open meanwhile, so that the tasks' last updates still reach the master.
    Shutdown { why: String },
}

/// What the connection needs: the state it reports, the status update manager it
/// tells about registrations, where the master's commands go and where the usage
/// reports come from.
pub struct Connection {
    pub shared: Arc<Shared>,
    pub updates: Arc<StatusUpdateManager>,
    pub tls: rustls::ClientConfig,
    pub commands: mpsc::UnboundedSender<MasterCommand>,
    pub usage: watch::Receiver<Option<UsageReport>>,
}

/// A random fraction in [0.5, 1.0) of `d` ("equal jitter"), so that many agents
/// that lost the same master do not come back in lockstep.
pub fn jittered(d: Duration) -> Duration {
    let r = uuid::Uuid::new_v4().as_u128() % 1000;
    let factor = 0.5 + f64::from(u32::try_from(r).unwrap_or(0)) / 2000.0;
    d.mul_f64(factor)
}

/// How a session ended.
enum Ended {
    Stop,
    Broken { registered: bool, why: String },
}

/// Connects and serves sessions until `stop` is set.
pub async fn run(mut link: Connection, mut stop: watch::Receiver<bool>) {
    let mut backoff = RECONNECT_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        match session(&mut link, &mut stop).await {
            Ended::Stop => return,
            Ended::Broken { registered, why } => {
                link.shared.metrics.master_connected.set(0);
                link.updates.disconnected();
                let master = &link.shared.config.master;
                if registered {
                    backoff = RECONNECT_MIN;
                    tracing::warn!(%master, "connection to the master lost: {why}; reconnecting");
                } else {
                    tracing::warn!(%master, "cannot register with the master: {why}; retrying in {:?}", backoff);
                }
            }
        }
        let delay = jittered(backoff);
        backoff = (backoff * 2).min(RECONNECT_MAX);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
    }
}

fn register_message(shared: &Shared) -> v1::AgentMessage {
    v1::AgentMessage {
        message: Some(agent_message::Message::Register(agent_message::Register {
            agent_id: shared.agent_id().unwrap_or_default(),
            hostname: shared.hostname.clone(),
            attributes: v1::Attribute::list(shared.config.attributes.iter().cloned()),
            total: Some(shared.totals.to_wire()),
            tasks: shared.running_tasks(),
            http_endpoint: shared.http_endpoint.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })),
    }
}

async fn session(link: &mut Connection, stop: &mut watch::Receiver<bool>) -> Ended {
    let broken = |why: String| Ended::Broken {
        registered: false,
        why,
    };
    let channel = tokio::select! {
        c = cella_proto::tls::grpc_channel(&link.shared.config.master, &link.tls) => c,
        _ = stop.changed() => return Ended::Stop,
    };
    let channel = match channel {
        Ok(c) => c,
        Err(e) => return broken(e.to_string()),
    };
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::unbounded_channel::<v1::AgentMessage>();
    if tx.send(register_message(&link.shared)).is_err() {
        return broken("internal: outbound channel closed".into());
    }
    let response = tokio::select! {
        r = client.session(UnboundedReceiverStream::new(rx)) => r,
        _ = stop.changed() => return Ended::Stop,
    };
    let mut inbound = match response {
        Ok(r) => r.into_inner(),
        Err(status) => {
            return broken(format!(
                "{} ({})",
                status.message(),
                status.code().description()
            ));
        }
    };
    let mut registered = false;
    // The last report sent on this stream: the next one carries only what changed.
    let mut usage_sent: Option<UsageReport> = None;
    loop {
        tokio::select! {
            message = inbound.next() => {
                let message = match message {
                    Some(Ok(m)) => m,
                    Some(Err(status)) => {
                        return Ended::Broken { registered, why: format!("{} ({})", status.message(), status.code().description()) };
                    }
                    None => return Ended::Broken { registered, why: "the master closed the stream".into() },
                };
                let Some(message) = message.message else { continue };
                if let master_to_agent::Message::Registered(r) = &message {
                    registered = true;
                    usage_sent = None;
                    registered_as(link, r, &tx).await;
                    continue;
                }
                if let master_to_agent::Message::Policy(p) = &message {
                    access_policy(&link.shared, p).await;
                    continue;
                }
                pass_on(link, message, &tx);
            }
            Ok(()) = link.usage.changed() => {
                // Only the latest report matters; one made while not registered is
                // dropped (the master does not know the agent yet).
                let report = link.usage.borrow_and_update().clone();
                if let (true, Some(report)) = (registered, report) {
                    let wire = cella_proto::usage_delta::encode_report(usage_sent.as_ref(), &report);
                    usage_sent = Some(report);
                    let _ = tx.send(v1::AgentMessage {
                        message: Some(agent_message::Message::Usage(wire)),
                    });
                }
            }
            _ = stop.changed() => return Ended::Stop,
        }
    }
}

async fn registered_as(
    link: &Connection,
    r: &master_to_agent::Registered,
    tx: &mpsc::UnboundedSender<v1::AgentMessage>,
) {
    let shared = &link.shared;
    let previous = shared.agent_id();
    if previous.as_deref() != Some(r.agent_id.as_str()) {
        if let Some(old) = &previous {
            tracing::warn!(old = %old, new = %r.agent_id, "the master assigned a new agent id");
        }
        *lock(&shared.agent_id) = Some(r.agent_id.clone());
        if let Err(e) = shared
            .store
            .write(vec![Write::AgentId(r.agent_id.clone())])
            .await
        {
            tracing::error!("the agent id is not checkpointed: {e}");
        }
    }
    shared.metrics.registrations.inc();
    shared.metrics.master_connected.set(1);
    let sent = link.updates.connected(tx.clone());
    tracing::info!(
        agent_id = %r.agent_id,
        resent = sent,
        "{} with the master",
        if previous.is_some() { "re-registered" } else { "registered" }
    );
}

/// The master's access policy: in force for the API at once, and checkpointed so that
/// a restarted agent applies it while the master is away.
async fn access_policy(shared: &Shared, policy: &master_to_agent::AccessPolicy) {
    shared.access.from_master(policy);
    let acl = policy.enforced.then(|| policy.acl_toml.clone());
    if let Err(e) = shared.store.write(vec![Write::AccessPolicy(acl)]).await {
        tracing::error!("the master's access policy is not checkpointed: {e}");
    }
}

/// Passes one message of the master on: Ping is answered here, the rest goes to the
/// agent as a [`MasterCommand`]. Shutdown does not end the session: the agent kills
/// its tasks first, and their updates go out on this stream.
fn pass_on(
    link: &Connection,
    message: master_to_agent::Message,
    tx: &mpsc::UnboundedSender<v1::AgentMessage>,
) {
    let command = match message {
        master_to_agent::Message::Registered(_) | master_to_agent::Message::Policy(_) => return,
        master_to_agent::Message::Ping(ping) => {
            let _ = tx.send(v1::AgentMessage {
                message: Some(agent_message::Message::Pong(agent_message::Pong {
                    nonce: ping.nonce,
                })),
            });
            return;
        }
        master_to_agent::Message::Launch(launch) => {
            let Some(task) = launch.task else {
                tracing::warn!("Launch without a task ignored");
                return;
            };
            MasterCommand::Launch {
                framework_id: launch.framework_id,
                task: Box::new(task),
                role: launch.role,
                principal: launch.principal,
            }
        }
        master_to_agent::Message::Kill(kill) => MasterCommand::Kill {
            grace: std::time::Duration::from_millis(kill.grace_period_ms.unwrap_or(0)),
            framework_id: kill.framework_id,
            task_id: kill.task_id,
        },
        master_to_agent::Message::Acknowledge(ack) => MasterCommand::Acknowledge {
            task_id: ack.task_id,
            uuid: ack.uuid,
        },
        master_to_agent::Message::Shutdown(shutdown) => {
            tracing::warn!(
                "the master asks this agent to shut down: {}",
                shutdown.message
            );
            let why = if shutdown.message.is_empty() {
                "the master removed this agent".to_string()
            } else {
                shutdown.message
            };
            MasterCommand::Shutdown { why }
        }
    };
    if link.commands.send(command).is_err() {
        tracing::debug!("a message of the master arrived while the agent stops: ignored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(5) && d < Duration::from_secs(10),
                "{d:?}"
            );
        }
    }
}

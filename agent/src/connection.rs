//! The agent's one stream to the master: connect, register (or re-register with
//! the tasks it holds), serve the master's messages, and reconnect with backoff when
//! the stream breaks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cella_proto::v1::{
    self, agent_message, agent_service_client::AgentServiceClient, master_to_agent,
};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::agent::{Core, lock};
use crate::store::Write;

/// Reconnection delays: 100 ms doubling to 10 s, with jitter.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How often the re-send queue is looked at.
const RETRY_TICK: Duration = Duration::from_millis(200);

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
pub async fn run(core: Arc<Core>, tls: rustls::ClientConfig, mut stop: watch::Receiver<bool>) {
    let mut backoff = RECONNECT_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        match session(&core, &tls, &mut stop).await {
            Ended::Stop => return,
            Ended::Broken { registered, why } => {
                core.metrics.master_connected.set(0);
                lock(&core.updates).disconnected();
                if registered {
                    backoff = RECONNECT_MIN;
                    tracing::warn!(master = %core.config.master, "connection to the master lost: {why}; reconnecting");
                } else {
                    tracing::warn!(master = %core.config.master, "cannot register with the master: {why}; retrying in {:?}", backoff);
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

fn register_message(core: &Core) -> v1::AgentMessage {
    v1::AgentMessage {
        message: Some(agent_message::Message::Register(agent_message::Register {
            agent_id: lock(&core.agent_id).clone().unwrap_or_default(),
            hostname: core.hostname.clone(),
            attributes: core
                .config
                .attributes
                .iter()
                .map(|(k, v)| v1::Attribute {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            total: Some(core.totals.to_wire()),
            tasks: core.running_tasks(),
            http_endpoint: core.http_endpoint.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })),
    }
}

async fn session(
    core: &Arc<Core>,
    tls: &rustls::ClientConfig,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let broken = |why: String| Ended::Broken {
        registered: false,
        why,
    };
    let channel = tokio::select! {
        c = cella_proto::tls::grpc_channel(&core.config.master, tls) => c,
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
    if tx.send(register_message(core)).is_err() {
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
    let mut retry = tokio::time::interval(RETRY_TICK);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    registered_as(core, r, &tx).await;
                    continue;
                }
                if handle(core, message, &tx) {
                    return Ended::Stop;
                }
            }
            _ = retry.tick() => {
                if registered {
                    let sent = lock(&core.updates).retry_due(Instant::now());
                    if sent > 0 {
                        core.metrics.updates_sent.inc_by(u64::try_from(sent).unwrap_or(0));
                        tracing::debug!(sent, "re-sent unacknowledged status updates");
                    }
                }
            }
            _ = stop.changed() => return Ended::Stop,
        }
    }
}

async fn registered_as(
    core: &Arc<Core>,
    r: &master_to_agent::Registered,
    tx: &mpsc::UnboundedSender<v1::AgentMessage>,
) {
    let previous = lock(&core.agent_id).clone();
    if previous.as_deref() != Some(r.agent_id.as_str()) {
        if let Some(old) = &previous {
            tracing::warn!(old = %old, new = %r.agent_id, "the master assigned a new agent id");
        }
        *lock(&core.agent_id) = Some(r.agent_id.clone());
        if let Err(e) = core
            .store
            .write(vec![Write::AgentId(r.agent_id.clone())])
            .await
        {
            tracing::error!("the agent id is not checkpointed: {e}");
        }
    }
    core.metrics.registrations.inc();
    core.metrics.master_connected.set(1);
    let sent = lock(&core.updates).connected(tx.clone(), Instant::now());
    core.metrics
        .updates_sent
        .inc_by(u64::try_from(sent).unwrap_or(0));
    tracing::info!(
        agent_id = %r.agent_id,
        resent = sent,
        "{} with the master",
        if previous.is_some() { "re-registered" } else { "registered" }
    );
}

/// Serves one message; true when the agent must stop (Shutdown).
fn handle(
    core: &Arc<Core>,
    message: master_to_agent::Message,
    tx: &mpsc::UnboundedSender<v1::AgentMessage>,
) -> bool {
    match message {
        master_to_agent::Message::Registered(_) => {}
        master_to_agent::Message::Launch(launch) => {
            let Some(task) = launch.task else {
                tracing::warn!("Launch without a task ignored");
                return false;
            };
            tokio::spawn(crate::tasks::launch(
                core.clone(),
                launch.framework_id,
                task,
            ));
        }
        master_to_agent::Message::Kill(kill) => {
            tokio::spawn(crate::tasks::kill(
                core.clone(),
                kill.framework_id,
                kill.task_id,
            ));
        }
        master_to_agent::Message::Acknowledge(ack) => {
            core.acknowledge(&ack.task_id, &ack.uuid);
        }
        master_to_agent::Message::Ping(ping) => {
            let _ = tx.send(v1::AgentMessage {
                message: Some(agent_message::Message::Pong(agent_message::Pong {
                    nonce: ping.nonce,
                })),
            });
        }
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
            core.stopped_by_master.send_replace(Some(why));
            return false;
        }
    }
    false
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

//! A real master over mutual TLS in a temporary directory, the client configurations
//! of a user and of an agent, and a framework whose tasks run on a gRPC agent.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use cella_proto::tls::{self, Layout};
use cella_proto::v1::{self, agent_message};

use super::{Running, grpc_agent, grpc_scheduler, registration, start};

/// The master works in `dir/master`, its certificates are in `dir/certs`.
pub struct TlsMaster {
    pub dir: tempfile::TempDir,
    pub layout: Layout,
    /// A user's (a scheduler's, an operator's) client configuration.
    pub client: rustls::ClientConfig,
    pub agent_cfg: rustls::ClientConfig,
    pub master: Running,
    pub url: String,
}

impl TlsMaster {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let layout = tls::init_dir(&dir.path().join("certs"), &[]).unwrap();
        let client =
            tls::client_config(&layout.ca_cert, &layout.client_cert, &layout.client_key).unwrap();
        let agent_cfg =
            tls::client_config(&layout.ca_cert, &layout.agent_cert, &layout.agent_key).unwrap();
        let master = start(&layout, &dir.path().join("master")).await;
        let url = master.url();
        Self {
            dir,
            layout,
            client,
            agent_cfg,
            master,
            url,
        }
    }

    /// A new framework subscribed over gRPC, and agent `agent_id` registered with
    /// `tasks` of that framework, each RUNNING.
    pub async fn framework_on_agent(&self, agent_id: &str, tasks: &[&str]) -> FrameworkOnAgent {
        let (calls, events, fw) = grpc_scheduler(&self.url, &self.client, "").await;
        let running = tasks
            .iter()
            .map(|t| (fw.as_str(), *t, v1::TaskState::TaskRunning))
            .collect();
        let (agent_tx, to_agent) =
            grpc_agent(&self.url, &self.agent_cfg, registration(agent_id, running)).await;
        FrameworkOnAgent {
            calls,
            events,
            fw,
            agent_tx,
            to_agent,
        }
    }
}

/// Both ends' streams stay open as long as this lives.
pub struct FrameworkOnAgent {
    pub calls: UnboundedSender<v1::Call>,
    pub events: tonic::Streaming<v1::Event>,
    pub fw: String,
    pub agent_tx: UnboundedSender<v1::AgentMessage>,
    pub to_agent: tonic::Streaming<v1::MasterToAgent>,
}

impl FrameworkOnAgent {
    /// Sends `message` on the agent's session.
    pub fn send(&self, message: agent_message::Message) {
        self.agent_tx
            .send(v1::AgentMessage {
                message: Some(message),
            })
            .unwrap()
    }
}

/// `GET url + path` decoded as `T`, after checking that `T` encodes back to the JSON
/// the master served.
pub async fn get_typed<T: DeserializeOwned + Serialize>(
    url: &str,
    client: &rustls::ClientConfig,
    path: &str,
) -> (T, Value) {
    let raw: Value = tls::https_get_json(&format!("{url}{path}"), client)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let typed: T = serde_json::from_value(raw.clone()).unwrap_or_else(|e| {
        panic!(
            "GET {path}: not a {} ({e}): {raw}",
            std::any::type_name::<T>()
        )
    });
    assert_eq!(
        serde_json::to_value(&typed).unwrap(),
        raw,
        "GET {path}: the typed view encodes back to what was served"
    );
    (typed, raw)
}

/// GET `path` from the master's API at `url`, expected to fail: the status and the
/// `{"error": "..."}` body.
pub async fn get_error(
    url: &str,
    client: &rustls::ClientConfig,
    path: &str,
) -> (axum::http::StatusCode, cella_proto::api::Error) {
    let r = tls::https_request(
        axum::http::Method::GET,
        &format!("{url}{path}"),
        None,
        client,
    )
    .await
    .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let error = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "GET {path}: not an error body ({e}): {}",
            String::from_utf8_lossy(&r.body)
        )
    });
    (r.status, error)
}

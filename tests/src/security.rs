//! What the security tests add to a [`Cluster`]: users with their own certificates,
//! an ACL file, revocation, raw agent streams (to play a rogue agent), and HTTP
//! requests with credentials.

use std::path::{Path, PathBuf};

use cella_proto::tls::{ExpectedServer, HttpResponse};
use cella_proto::v1::{self, agent_message, agent_service_client::AgentServiceClient};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Cluster, cella_ok};

/// The TLS configurations of one user: for the master and for the agents.
#[derive(Clone)]
pub struct User {
    pub principal: String,
    pub dir: PathBuf,
    pub master: rustls::ClientConfig,
    pub agents: rustls::ClientConfig,
}

/// A raw agent stream: what the master says, and a way to speak.
pub struct AgentStream {
    pub to_master: mpsc::UnboundedSender<v1::AgentMessage>,
    pub from_master: tonic::Streaming<v1::MasterToAgent>,
}

impl AgentStream {
    pub fn send(&self, message: agent_message::Message) {
        let _ = self.to_master.send(v1::AgentMessage {
            message: Some(message),
        });
    }
}

/// TLS configurations presenting the certificate in `dir` (`client.pem` or
/// `agent.pem`), trusting the CA of `ca_dir`.
pub fn tls_of(
    ca_dir: &Path,
    cert: &Path,
    key: &Path,
    expected: ExpectedServer,
) -> rustls::ClientConfig {
    cella_proto::tls::client_config_for(&ca_dir.join("ca.pem"), cert, key, expected)
        .unwrap_or_else(|e| panic!("loading {}: {e}", cert.display()))
}

impl Cluster {
    /// Issues the certificate of user `name` with `groups` (`cella certs issue user`).
    pub fn user(&self, name: &str, groups: &[&str]) -> User {
        let dir = self.tls_dir.join("users").join(name);
        if !dir.exists() {
            let ca = self.tls_dir.to_str().expect("a UTF-8 path");
            let mut args = vec!["certs", "issue", "user", name, "--dir", ca];
            for g in groups {
                args.extend(["--group", g]);
            }
            cella_ok(&self.bins, &args);
        }
        let (cert, key) = (dir.join("client.pem"), dir.join("client-key.pem"));
        User {
            principal: format!("user:{name}"),
            master: tls_of(&self.tls_dir, &cert, &key, ExpectedServer::Master),
            agents: tls_of(&self.tls_dir, &cert, &key, ExpectedServer::Agent),
            dir,
        }
    }

    /// Writes the ACL file; masters started from now on enforce it (`--acl`).
    pub fn use_acl(&mut self, text: &str) -> PathBuf {
        let path = self.path().join("acl.toml");
        std::fs::write(&path, text).expect("writing the ACL");
        if !self.master_flags.iter().any(|f| f.starts_with("--acl")) {
            self.master_flags.push(format!("--acl={}", path.display()));
        }
        path
    }

    /// Revokes `what` (`cella certs revoke`) and copies the new `crl.pem` to every
    /// agent's TLS directory, as an operator would.
    pub fn revoke(&self, what: &str) {
        let ca = self.tls_dir.to_str().expect("a UTF-8 path");
        cella_ok(&self.bins, &["certs", "revoke", what, "--dir", ca]);
        let crl = self.tls_dir.join("crl.pem");
        for entry in std::fs::read_dir(self.tls_dir.join("agents"))
            .into_iter()
            .flatten()
            .flatten()
        {
            std::fs::copy(&crl, entry.path().join("crl.pem")).expect("copying crl.pem");
        }
    }

    /// A request to the master as `tls`, with extra headers; transport errors are
    /// returned, not panicked on.
    pub async fn request(
        &self,
        tls: &rustls::ClientConfig,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse, String> {
        let method = method.parse().expect("an HTTP method");
        let url = format!("{}{path}", self.master_url);
        cella_proto::tls::https_request_with(method, &url, None, tls, headers)
            .await
            .map_err(|e| e.to_string())
    }

    /// Opens an agent stream to the master with the certificate in `tls_dir`
    /// (`agent.pem`, or `client.pem` when there is none) and sends `register`.
    /// Returns the stream once the master answered, or the gRPC error.
    pub async fn agent_stream(
        &self,
        tls_dir: &Path,
        register: agent_message::Register,
    ) -> Result<AgentStream, tonic::Status> {
        let (cert, key) = if tls_dir.join("agent.pem").exists() {
            (tls_dir.join("agent.pem"), tls_dir.join("agent-key.pem"))
        } else {
            (tls_dir.join("client.pem"), tls_dir.join("client-key.pem"))
        };
        let tls = tls_of(&self.tls_dir, &cert, &key, ExpectedServer::Master);
        let channel = cella_proto::tls::grpc_channel(&self.master_url, &tls)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(v1::AgentMessage {
            message: Some(agent_message::Message::Register(register)),
        });
        let mut stream = AgentServiceClient::new(channel)
            .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        // The master answers the registration (Registered) or fails the stream.
        match tokio::time::timeout(super::DEADLINE, stream.next()).await {
            Ok(Some(Ok(first))) => {
                assert!(
                    matches!(
                        first.message,
                        Some(v1::master_to_agent::Message::Registered(_))
                    ),
                    "expected Registered, got {first:?}"
                );
                Ok(AgentStream {
                    to_master: tx,
                    from_master: stream,
                })
            }
            Ok(Some(Err(status))) => Err(status),
            Ok(None) => Err(tonic::Status::aborted("the stream ended")),
            Err(_) => Err(tonic::Status::deadline_exceeded("no answer to Register")),
        }
    }
}

/// A registration of agent `id` (empty: a new agent) with some resources.
pub fn registration(id: &str, hostname: &str) -> agent_message::Register {
    agent_message::Register {
        agent_id: id.into(),
        hostname: hostname.into(),
        total: Some(v1::Resources {
            cpus: 1.0,
            mem_bytes: 1 << 30,
            disk_bytes: 1 << 30,
        }),
        ..Default::default()
    }
}

/// Launches `task` on the next offer (declining the others) and returns its first
/// status that is RUNNING or an end.
pub async fn launch_one(s: &mut super::Scheduler, task: v1::TaskInfo) -> v1::TaskStatus {
    let id = task.task_id.clone();
    s.accept_next_offer(vec![task]).await;
    loop {
        let status = s.any_update(&id).await;
        let state = status.state();
        if state == v1::TaskState::TaskRunning || state.is_terminal() {
            return status;
        }
    }
}

/// An ACL file's text in which agents (`agent:*`) may register and the cluster's own
/// client (`user:test`) is an operator, plus the test's own `principals` (lines of
/// the `[principals]` table) and `roles` (tables).
pub fn acl_with(principals: &str, roles: &str) -> String {
    format!(
        r#"[principals]
"agent:*" = ["agent"]
"user:test" = ["operator"]
{principals}
[roles.agent]
register_agent = true

[roles.operator]
admin = true

{roles}"#
    )
}

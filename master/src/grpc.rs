//! The gRPC side: one bidirectional stream per agent and per scheduler. Each
//! stream is a small task that forwards inbound messages to the master actor and
//! outbound ones from the actor's channel to the peer.

use std::pin::Pin;

use cella_proto::v1::{
    self, agent_message, agent_service_server::AgentService, call,
    scheduler_service_server::SchedulerService,
};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use cella_proto::acl::Action;
use cella_proto::tls::{Identity, Peer};

use crate::authz::denied_status;
use crate::master::{Command, MasterHandle};

type OutStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The verified identity of the peer (from its client certificate).
fn identity<T>(request: &Request<T>) -> Result<Identity, Status> {
    cella_proto::tls::grpc_principal(request)?;
    request
        .extensions()
        .get::<Peer>()
        .and_then(|p| p.identity.clone())
        .ok_or_else(|| Status::unauthenticated("the client certificate names no identity"))
}

pub struct AgentApi {
    pub master: MasterHandle,
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type SessionStream = OutStream<v1::MasterToAgent>;

    async fn session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let identity = identity(&request)?;
        let Identity::Agent { node } = &identity else {
            let principal = identity.principal();
            self.master.metrics.agent_refused("not_an_agent");
            tracing::warn!(
                principal,
                "refused an agent stream from a certificate that is not an agent's"
            );
            return Err(Status::permission_denied(format!(
                "only an agent's certificate (CN=agent:<node>, from `cella certs issue agent`) may \
                 open the agent stream; this one is {principal}"
            )));
        };
        let node = node.clone();
        let what = format!("registering the agent of node {node}");
        self.master
            .authorizer
            .check(&identity, &Action::RegisterAgent, &what)
            .map_err(|d| denied_status(&what, &d))?;
        let mut inbound = request.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the stream ended before Register"))??;
        let Some(agent_message::Message::Register(register)) = first.message else {
            return Err(Status::invalid_argument(
                "the first message of an agent stream must be Register",
            ));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.master.send(Command::AgentRegister {
            register,
            node,
            tx,
            reply,
        });
        let (agent, conn) = answer
            .await
            .map_err(|_| Status::unavailable("the master is shutting down"))??;

        let master = self.master.clone();
        tokio::spawn(async move {
            while let Some(message) = inbound.next().await {
                match message {
                    Ok(v1::AgentMessage {
                        message: Some(message),
                    }) => {
                        master.send(Command::AgentMessage {
                            agent: agent.clone(),
                            conn,
                            message,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(agent_id = %agent, "agent stream error: {e}");
                        break;
                    }
                }
            }
            master.send(Command::AgentDisconnected { agent, conn });
        });
        Ok(Response::new(Box::pin(
            UnboundedReceiverStream::new(rx).map(Ok),
        )))
    }
}

pub struct SchedulerApi {
    pub master: MasterHandle,
}

#[tonic::async_trait]
impl SchedulerService for SchedulerApi {
    type SubscribeStream = OutStream<v1::Event>;

    async fn subscribe(
        &self,
        request: Request<Streaming<v1::Call>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = identity(&request)?;
        if !matches!(caller, Identity::User { .. }) {
            let principal = caller.principal();
            tracing::warn!(
                principal,
                "refused a scheduler stream from a certificate that is not a user's"
            );
            return Err(Status::permission_denied(format!(
                "only a user's certificate (CN=user:<name>, from `cella certs issue user`) may \
                 subscribe a framework; this one is {principal}"
            )));
        }
        let mut inbound = request.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the stream ended before SUBSCRIBE"))??;
        let Some(call::Call::Subscribe(subscribe)) = first.call else {
            return Err(Status::invalid_argument(
                "the first call of a scheduler stream must be SUBSCRIBE",
            ));
        };
        let framework = subscribe.framework.unwrap_or_default();
        let (tx, rx) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.master.send(Command::Subscribe {
            framework,
            caller,
            tx,
            reply,
        });
        let (framework, conn) = answer
            .await
            .map_err(|_| Status::unavailable("the master is shutting down"))??;

        let master = self.master.clone();
        tokio::spawn(async move {
            while let Some(call) = inbound.next().await {
                match call {
                    Ok(v1::Call { call: Some(call) }) => {
                        master.send(Command::Call {
                            framework: framework.clone(),
                            conn,
                            call,
                        });
                    }
                    Ok(v1::Call { call: None }) => {
                        master.send(Command::EmptyCall {
                            framework: framework.clone(),
                            conn,
                        });
                    }
                    Err(e) => {
                        tracing::debug!(framework_id = %framework, "scheduler stream error: {e}");
                        break;
                    }
                }
            }
            master.send(Command::SchedulerDisconnected { framework, conn });
        });
        Ok(Response::new(Box::pin(
            UnboundedReceiverStream::new(rx).map(Ok),
        )))
    }
}

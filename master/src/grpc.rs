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

use crate::master::{Command, MasterHandle};

type OutStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The verified principal of the peer (from its client certificate).
fn principal<T>(request: &Request<T>) -> Result<String, Status> {
    cella_proto::tls::grpc_principal(request).map(|p| p.0)
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
        let principal = principal(&request)?;
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
            principal,
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
                        tracing::debug!(agent = %agent, "agent stream error: {e}");
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
        let principal = principal(&request)?;
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
            principal,
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
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(framework = %framework, "scheduler stream error: {e}");
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

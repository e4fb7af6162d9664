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

/// Runs a stream session. The master accepts it first (`open` builds the command
/// around the sender of the stream's outbound messages and the reply, which gives
/// the session's id and connection number); then each inbound message goes to the
/// master as the command `forward` makes of it (none for one that says nothing),
/// and `closed` when the stream ends or breaks.
async fn run_session<In, Out, Id>(
    master: &MasterHandle,
    mut inbound: Streaming<In>,
    kind: &'static str,
    open: impl FnOnce(mpsc::UnboundedSender<Out>, oneshot::Sender<Result<(Id, u64), Status>>) -> Command,
    forward: impl Fn(&Id, u64, In) -> Option<Command> + Send + 'static,
    closed: impl FnOnce(Id, u64) -> Command + Send + 'static,
) -> Result<Response<OutStream<Out>>, Status>
where
    In: Send + 'static,
    Out: Send + 'static,
    Id: std::fmt::Display + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let (id, conn) = master
        .ask(|reply| open(tx, reply))
        .await
        .ok_or_else(|| Status::unavailable("the master is shutting down"))??;
    let master = master.clone();
    tokio::spawn(async move {
        while let Some(message) = inbound.next().await {
            match message {
                Ok(message) => {
                    if let Some(command) = forward(&id, conn, message) {
                        master.send(command);
                    }
                }
                Err(e) => {
                    tracing::debug!(%id, "{kind} stream error: {e}");
                    break;
                }
            }
        }
        master.send(closed(id, conn));
    });
    Ok(Response::new(Box::pin(
        UnboundedReceiverStream::new(rx).map(Ok),
    )))
}

/// The verified identity of the peer (from its client certificate).
fn identity<T>(request: &Request<T>) -> Result<Identity, Status> {
    cella_proto::tls::grpc_principal(request)?;
    request
        .extensions()
        .get::<Peer>()
        .and_then(|p| p.identity.clone())
        .ok_or_else(|| Status::unauthenticated("the client certificate names no identity"))
}

/// Refuses a stream opened with a certificate of the wrong kind: logs that the
/// `stream` came from a certificate that is not `wanted`, and answers `only` (what
/// may open it) with the caller's principal.
fn wrong_certificate(identity: &Identity, stream: &str, wanted: &str, only: &str) -> Status {
    let principal = identity.principal();
    tracing::warn!(
        principal,
        "refused {stream} from a certificate that is not {wanted}"
    );
    Status::permission_denied(format!("{only}; this one is {principal}"))
}

/// The first message of a stream, which must be `what`.
async fn first_message<In>(inbound: &mut Streaming<In>, what: &str) -> Result<In, Status> {
    inbound
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument(format!("the stream ended before {what}")))?
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
            self.master.metrics.agent_refused("not_an_agent");
            return Err(wrong_certificate(
                &identity,
                "an agent stream",
                "an agent's",
                "only an agent's certificate (CN=agent:<node>, from `cella certs issue agent`) may \
                 open the agent stream",
            ));
        };
        let node = node.clone();
        let what = format!("registering the agent of node {node}");
        self.master
            .config
            .authorizer
            .check(&identity, &Action::RegisterAgent, &what)
            .map_err(|d| denied_status(&what, &d))?;
        let mut inbound = request.into_inner();
        let first = first_message(&mut inbound, "Register").await?;
        let Some(agent_message::Message::Register(register)) = first.message else {
            return Err(Status::invalid_argument(
                "the first message of an agent stream must be Register",
            ));
        };
        run_session(
            &self.master,
            inbound,
            "agent",
            |tx, reply| Command::AgentRegister {
                register,
                node,
                tx,
                reply,
            },
            |agent, conn, message| {
                let message = message.message?;
                Some(Command::AgentMessage {
                    agent: agent.clone(),
                    conn,
                    message,
                })
            },
            |agent, conn| Command::AgentDisconnected { agent, conn },
        )
        .await
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
            return Err(wrong_certificate(
                &caller,
                "a scheduler stream",
                "a user's",
                "only a user's certificate (CN=user:<name>, from `cella certs issue user`) may \
                 subscribe a framework",
            ));
        }
        let mut inbound = request.into_inner();
        let first = first_message(&mut inbound, "SUBSCRIBE").await?;
        let Some(call::Call::Subscribe(subscribe)) = first.call else {
            return Err(Status::invalid_argument(
                "the first call of a scheduler stream must be SUBSCRIBE",
            ));
        };
        let framework = subscribe.framework.unwrap_or_default();
        run_session(
            &self.master,
            inbound,
            "scheduler",
            |tx, reply| Command::Subscribe {
                framework,
                caller,
                tx,
                reply,
            },
            |framework, conn, call| {
                Some(match call.call {
                    Some(call) => Command::Call {
                        framework: framework.clone(),
                        conn,
                        call,
                    },
                    None => Command::EmptyCall {
                        framework: framework.clone(),
                        conn,
                    },
                })
            },
            |framework, conn| Command::SchedulerDisconnected { framework, conn },
        )
        .await
    }
}

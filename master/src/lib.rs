//! The Cella master: agent registry, DRF allocator, scheduler API and operator
//! API, served on one mutual-TLS port.

pub mod allocator;
pub mod audit;
pub mod authz;
pub mod config;
pub mod control;
pub mod grpc;
pub mod http;
pub mod master;
pub mod metrics;
pub mod state;
pub mod store;
pub mod task_defaults;
pub mod usage;

pub use cella_proto::time::parse_duration;
pub use master::{MasterConfig, MasterHandle};

/// The router serving gRPC (agents, schedulers) and the HTTP operator API. gRPC
/// messages are limited to the configured size.
pub fn router(master: MasterHandle) -> axum::Router {
    use cella_proto::v1::agent_service_server::AgentServiceServer;
    use cella_proto::v1::scheduler_service_server::SchedulerServiceServer;
    let limit = master.config.max_message_bytes;
    let routes = tonic::service::Routes::new(
        AgentServiceServer::new(grpc::AgentApi {
            master: master.clone(),
        })
        .max_decoding_message_size(limit),
    )
    .add_service(
        SchedulerServiceServer::new(grpc::SchedulerApi {
            master: master.clone(),
        })
        .max_decoding_message_size(limit),
    );
    // JSON errors around the whole: their 405s then carry axum's Allow header (gRPC
    // answers are 200 with a grpc-status, which the middleware leaves alone).
    cella_proto::http_errors::with_json_errors(
        http::router(master).merge(cella_proto::tls::grpc_router(routes)),
    )
}

/// Runs a master on `listener` until `shutdown` completes.
pub async fn run(
    listener: tokio::net::TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
    config: MasterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let master = master::try_spawn(config).map_err(std::io::Error::other)?;
    serve(listener, tls, master, shutdown).await
}

/// Serves an already started master on `listener` until `shutdown` completes, then
/// stops it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
    master: MasterHandle,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let options = cella_proto::tls::ServeOptions {
        limits: master.config.limits.clone(),
        stats: master.connections.clone(),
        ..Default::default()
    };
    let served =
        cella_proto::tls::serve_with(listener, tls, router(master.clone()), shutdown, options)
            .await;
    // Write the registry and close the store, so a new master can open it.
    master.stop().await;
    served
}

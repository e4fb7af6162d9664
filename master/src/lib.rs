//! The Cella master: agent registry, DRF allocator, scheduler API and operator
//! API, served on one mutual-TLS port.

pub mod allocator;
pub mod grpc;
pub mod http;
pub mod master;
pub mod metrics;
pub mod state;
pub mod store;

pub use master::{MasterConfig, MasterHandle};

/// The router serving gRPC (agents, schedulers) and the HTTP operator API.
pub fn router(master: MasterHandle) -> axum::Router {
    use cella_proto::v1::agent_service_server::AgentServiceServer;
    use cella_proto::v1::scheduler_service_server::SchedulerServiceServer;
    let routes = tonic::service::Routes::new(AgentServiceServer::new(grpc::AgentApi {
        master: master.clone(),
    }))
    .add_service(SchedulerServiceServer::new(grpc::SchedulerApi {
        master: master.clone(),
    }));
    http::router(master).merge(cella_proto::tls::grpc_router(routes))
}

/// Runs a master on `listener` until `shutdown` completes.
pub async fn run(
    listener: tokio::net::TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
    config: MasterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let master = master::try_spawn(config).map_err(std::io::Error::other)?;
    let served = cella_proto::tls::serve(listener, tls, router(master.clone()), shutdown).await;
    // Write the registry and close the store, so a new master can open it.
    master.stop().await;
    served
}

/// Parses a duration as people write it: `500ms`, `30s`, `5m`, `2h`, or plain seconds.
pub fn parse_duration(input: &str) -> Result<std::time::Duration, String> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {input:?}: use e.g. 500ms, 30s, 5m or 2h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {input:?}: unknown unit {unit:?} (ms, s, m, h)"
            ));
        }
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 1e9 {
        return Err(format!(
            "invalid duration {input:?}: must be greater than zero"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod duration_tests {
    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(
            super::parse_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(super::parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(super::parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(super::parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "0", "-1s", "1x", "s", "1e400"] {
            assert!(super::parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}

//! The single-port server: TLS, then HTTP/1.1 or HTTP/2 (gRPC) on the same socket.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use x509_parser::extensions::GeneralName;

/// How long a client may take to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`serve`] waits for open connections after shutdown before closing them.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

const UNAUTHENTICATED_MESSAGE: &str = "a client certificate signed by the cluster CA is required \
    (see `cella certs init`); this connection presented none";

/// Who is calling: the subject CN of the client's verified certificate (or its first
/// subject alternative name when it has no CN).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Principal(pub String);

impl Principal {
    /// The principal named by a DER certificate, if it has a CN or a SAN. The caller is
    /// responsible for having verified the certificate (rustls does, in [`serve`]).
    pub fn from_cert_der(der: &[u8]) -> Option<Principal> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())
            .filter(|cn| !cn.is_empty())
        {
            return Some(Principal(cn.to_owned()));
        }
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|name| match name {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                Some(Principal((*s).to_owned()))
            }
            GeneralName::IPAddress(bytes) => {
                ip_from_bytes(bytes).map(|ip| Principal(ip.to_string()))
            }
            _ => None,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The other end of a connection; [`serve`] puts one into every request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// `None` when the client presented no certificate.
    pub principal: Option<Principal>,
    pub remote_addr: SocketAddr,
}

fn unauthenticated_response(is_grpc: bool) -> Response {
    if is_grpc {
        tonic::Status::unauthenticated(UNAUTHENTICATED_MESSAGE).into_http::<Body>()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({ "error": UNAUTHENTICATED_MESSAGE })),
        )
            .into_response()
    }
}

fn is_grpc(parts_headers: &axum::http::HeaderMap) -> bool {
    parts_headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// axum middleware (`axum::middleware::from_fn(require_principal)`): passes requests
/// whose connection presented a verified client certificate, answers the others with
/// `401` and a JSON error, or gRPC status `UNAUTHENTICATED` for gRPC requests.
pub async fn require_principal(req: Request, next: Next) -> Response {
    let authenticated = req
        .extensions()
        .get::<Peer>()
        .is_some_and(|p| p.principal.is_some());
    if authenticated {
        next.run(req).await
    } else {
        unauthenticated_response(is_grpc(req.headers()))
    }
}

/// Turns tonic services into an axum router (to merge with the JSON routes) whose every
/// request needs a principal ([`require_principal`]).
///
/// The router has a fallback (so merge it with routers that have none): gRPC requests
/// for unknown services or methods get `UNIMPLEMENTED`, other unknown paths a JSON `404`.
/// The fallback sits behind [`require_principal`] too, so clients without a certificate
/// learn nothing about which paths exist.
pub fn grpc_router(routes: tonic::service::Routes) -> Router {
    routes
        .into_axum_router()
        .fallback(fallback)
        .layer(axum::middleware::from_fn(require_principal))
}

async fn fallback(req: Request) -> Response {
    if is_grpc(req.headers()) {
        tonic::Status::unimplemented(format!("no gRPC method {}", req.uri().path()))
            .into_http::<Body>()
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "error": format!("no such endpoint: {} {}", req.method(), req.uri().path())
            })),
        )
            .into_response()
    }
}

/// The principal of a gRPC request served by [`serve`], or `UNAUTHENTICATED`.
pub fn grpc_principal<T>(req: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    req.extensions()
        .get::<Peer>()
        .and_then(|p| p.principal.clone())
        .ok_or_else(|| tonic::Status::unauthenticated(UNAUTHENTICATED_MESSAGE))
}

/// Extractor for handlers that need a caller: rejects requests without one (`401`).
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Peer>()
            .and_then(|p| p.principal.clone())
            .ok_or_else(|| unauthenticated_response(is_grpc(&parts.headers)))
    }
}

/// Extractor for the [`Peer`] of a request served by [`serve`].
impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Peer>().cloned().ok_or_else(|| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "request was not served by cella_proto::tls::serve",
            )
                .into_response()
        })
    }
}

/// Tunables of [`serve_with`].
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Connections that do not finish the TLS handshake in time are dropped.
    pub handshake_timeout: Duration,
    /// After shutdown, how long open connections (e.g. gRPC streams) may take to finish
    /// before they are closed.
    pub drain_timeout: Duration,
    /// HTTP/2 keep-alive ping interval (detects dead peers of long-lived gRPC streams).
    pub http2_keep_alive_interval: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            http2_keep_alive_interval: Some(Duration::from_secs(20)),
        }
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, with
/// [`ServeOptions::default`]. See [`serve_with`].
pub async fn serve<F>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    serve_with(listener, tls, router, shutdown, ServeOptions::default()).await
}

/// The accept loop: every connection gets its own task that runs the TLS handshake
/// (bounded by `handshake_timeout`, so a slow or silent client cannot hold anything up),
/// then serves HTTP/1.1 or HTTP/2 — whichever the client speaks — with a [`Peer`] in
/// every request's extensions. A connection that is not TLS (plaintext HTTP, say) fails
/// the handshake and is closed without an answer.
///
/// When `shutdown` completes, the listener is closed, open connections are asked to
/// finish (HTTP/2 GOAWAY, HTTP/1.1 close after the current request) and are closed
/// after `drain_timeout` at the latest. Accept errors (e.g. too many open files) are
/// logged and retried, never fatal; the function returns `Ok(())` after shutdown.
pub async fn serve_with<F>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    shutdown: F,
    options: ServeOptions,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.http2_keep_alive_interval);
    let graceful = GracefulShutdown::new();
    let mut connections: JoinSet<()> = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote_addr) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // EMFILE and friends: give the process a moment to close descriptors.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = options.handshake_timeout;
        connections.spawn(async move {
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%remote_addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote_addr, "TLS handshake timed out");
                    return;
                }
            };
            let principal = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| Principal::from_cert_der(cert));
            let peer = Peer {
                principal,
                remote_addr,
            };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(peer.clone());
                let router = router.clone();
                async move {
                    let resp: Result<Response, Infallible> =
                        router.oneshot(req.map(Body::new)).await;
                    resp
                }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%remote_addr, error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.drain_timeout) => {
            tracing::debug!("closing connections still open after the drain timeout");
        }
    }
    connections.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_falls_back_to_the_first_san() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["node1.example".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            Principal::from_cert_der(cert.der()),
            Some(Principal("node1.example".into()))
        );

        let mut params = rcgen::CertificateParams::new(vec!["10.1.2.3".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            Principal::from_cert_der(cert.der()).unwrap().as_str(),
            "10.1.2.3"
        );
        assert_eq!(Principal::from_cert_der(b"garbage"), None);
    }
}

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

use super::identity::Identity;
use super::limits::{ConnectionStats, ConnectionTable, Limits};

/// How long a client may take to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`serve`] waits for open connections after shutdown before closing them.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

const UNAUTHENTICATED_MESSAGE: &str = "a client certificate signed by the cluster CA is required \
    (see `cella certs issue`); this connection presented none";

/// Who is calling: the principal string of the client's verified certificate
/// (`agent:node1`, `user:alice`; see [`Identity`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Principal(pub String);

impl Principal {
    /// The principal named by a DER certificate, if it carries an identity. The caller
    /// is responsible for having verified the certificate (rustls does, in [`serve`]).
    pub fn from_cert_der(der: &[u8]) -> Option<Principal> {
        Identity::from_cert_der(der).map(|i| Principal(i.principal()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
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
    /// What the certificate says the client is.
    pub identity: Option<Identity>,
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
    /// Connection caps and the idle timeout (see [`super::limits`]).
    pub limits: Limits,
    /// Where the server counts its connections (shared with `/metrics`).
    pub stats: Arc<ConnectionStats>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            http2_keep_alive_interval: Some(Duration::from_secs(20)),
            limits: Limits::default(),
            stats: Arc::default(),
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

/// The accept loop: every connection is admitted by the [`ConnectionTable`] (caps per
/// address and in total, see [`super::limits`]) and gets its own task that runs the
/// TLS handshake (bounded by `handshake_timeout`, so a slow or silent client cannot
/// hold anything up), then serves HTTP/1.1 or HTTP/2 — whichever the client speaks —
/// with a [`Peer`] in every request's extensions, until it is idle for the idle
/// timeout or evicted. A connection that is not TLS (plaintext HTTP, say) fails the
/// handshake and is closed without an answer.
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
    let limits = options.limits.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.handshake_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.http2_keep_alive_interval)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let table = ConnectionTable::new(limits, options.stats.clone());
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
        let Some(admitted) = table.admit(remote_addr.ip()) else {
            tracing::debug!(%remote_addr, "connection refused: connection limit reached");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = options.handshake_timeout;
        let table = table.clone();
        connections.spawn(async move {
            let state = admitted.state.clone();
            let handshake = tokio::select! {
                r = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)) => r,
                () = state.close.notified() => return,
            };
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    table.stats().handshake_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(%remote_addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    table.stats().handshake_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(%remote_addr, "TLS handshake timed out");
                    return;
                }
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| Identity::from_cert_der(cert));
            if identity.is_some() {
                table.authenticated(&admitted);
            }
            let peer = Peer {
                principal: identity.as_ref().map(|i| Principal(i.principal())),
                identity,
                remote_addr,
            };
            let in_flight = state.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(peer.clone());
                let router = router.clone();
                let guard = in_flight.request();
                async move {
                    let resp: Result<Response, Infallible> =
                        router.oneshot(req.map(Body::new)).await;
                    // The request stays in flight until its body is sent (a gRPC
                    // stream's body lasts as long as the stream).
                    resp.map(|r| r.map(|body| Body::new(GuardedBody { inner: body, _guard: guard })))
                }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let conn = watcher.watch(conn.into_owned());
            let mut conn = std::pin::pin!(conn);
            let idle_timeout = table.limits().idle_timeout;
            let mut tick = tokio::time::interval(idle_timeout.div_f64(4.0).max(Duration::from_millis(50)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    result = &mut conn => {
                        if let Err(e) = result {
                            tracing::debug!(%remote_addr, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = state.close.notified() => {
                        tracing::debug!(%remote_addr, "connection evicted to make room for a newer one");
                        break;
                    }
                    _ = tick.tick() => {
                        if state.idle_for(idle_timeout) {
                            table.stats().idle_closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::debug!(%remote_addr, "idle connection closed");
                            break;
                        }
                    }
                }
            }
            drop(admitted);
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

/// A response body that keeps its request counted as in flight until it is dropped.
struct GuardedBody {
    inner: Body,
    _guard: super::limits::InFlight,
}

impl hyper::body::Body for GuardedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_without_a_common_name_names_nobody() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["node1.example".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(Principal::from_cert_der(cert.der()), None);
        assert_eq!(Principal::from_cert_der(b"garbage"), None);
    }
}

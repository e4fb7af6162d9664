//! Real mutual TLS on 127.0.0.1 with ephemeral ports: certificates, gRPC and JSON on one
//! port, principals, refusals, plaintext, TLS 1.2, shutdown.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode};
use axum::routing::get;
use cella_proto::tls::{self, Error, Layout, Peer, Principal, ServeOptions};
use cella_proto::v1::scheduler_service_client::SchedulerServiceClient;
use cella_proto::v1::scheduler_service_server::{SchedulerService, SchedulerServiceServer};
use cella_proto::v1::{Call, Event, FrameworkInfo, call, event};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Code, Request, Response, Status, Streaming};

#[derive(Clone, Default)]
struct TestScheduler {
    seen: Arc<Mutex<Vec<String>>>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl SchedulerService for TestScheduler {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<Call>>,
    ) -> Result<Response<EventStream>, Status> {
        let principal = tls::grpc_principal(&request)?;
        self.seen.lock().unwrap().push(principal.0.clone());
        let mut calls = request.into_inner();
        let first = calls
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty stream"))?;
        let Some(call::Call::Subscribe(sub)) = first.call else {
            return Err(Status::invalid_argument("first call must be SUBSCRIBE"));
        };
        let name = sub.framework.map(|f| f.name).unwrap_or_default();
        let subscribed = Event {
            event: Some(event::Event::Subscribed(event::Subscribed {
                framework_id: format!("fw-{name}"),
                heartbeat_interval_ms: 1000,
            })),
        };
        // Keep the stream open (as a real master does) until the client goes away.
        let rest = futures::stream::pending();
        Ok(Response::new(Box::pin(
            futures::stream::iter([Ok(subscribed)]).chain(rest),
        )))
    }
}

fn router(sched: TestScheduler) -> Router {
    let json = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/api/v1/whoami",
            get(|p: Principal, peer: Peer| async move {
                axum::Json(serde_json::json!({
                    "principal": p.0,
                    "loopback": peer.remote_addr.ip().is_loopback(),
                }))
            }),
        )
        .merge(
            Router::new()
                .route("/api/v1/secret", get(|| async { "secret" }))
                .layer(axum::middleware::from_fn(tls::require_principal)),
        );
    let grpc = tls::grpc_router(tonic::service::Routes::new(SchedulerServiceServer::new(
        sched,
    )));
    json.merge(grpc)
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// `GET /health` as the client configured by `client`.
    async fn health(&self, client: &rustls::ClientConfig) -> tls::Result<tls::HttpResponse> {
        tls::https_request(Method::GET, &format!("{}/health", self.url()), None, client).await
    }

    /// The TLS version a raw handshake of `client` with the server settles on.
    async fn negotiated_version(
        &self,
        client: &rustls::ClientConfig,
    ) -> Option<rustls::ProtocolVersion> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client.clone()));
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let stream = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        stream.get_ref().1.protocol_version()
    }

    async fn stop(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap()
    }
}

async fn start(layout: &Layout, options: ServeOptions) -> Server {
    let config =
        tls::server_config(&layout.ca_cert, &layout.master_cert, &layout.master_key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sched = TestScheduler::default();
    let seen = sched.seen.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(tls::serve_with(
        listener,
        Arc::new(config),
        router(sched),
        async move {
            let _ = stopped.await;
        },
        options,
    ));
    Server {
        addr,
        stop: Some(stop),
        task,
        seen,
    }
}

fn pki() -> (tempfile::TempDir, Layout) {
    let dir = tempfile::tempdir().unwrap();
    let layout = tls::init_dir(&dir.path().join("certs"), &[]).unwrap();
    (dir, layout)
}

/// A server with new certificates, served with `options`.
async fn serve(options: ServeOptions) -> (tempfile::TempDir, Layout, Server) {
    let (dir, layout) = pki();
    let server = start(&layout, options).await;
    (dir, layout, server)
}

fn client(layout: &Layout) -> rustls::ClientConfig {
    tls::client_config(&layout.ca_cert, &layout.client_cert, &layout.client_key).unwrap()
}

fn subscribe_call(name: &str) -> Call {
    Call::subscribe(FrameworkInfo {
        name: name.into(),
        role: "*".into(),
        ..Default::default()
    })
}

/// Sends SUBSCRIBE; returns the first event or the error status.
async fn subscribe(channel: tonic::transport::Channel, name: &str) -> Result<Event, Status> {
    let mut client = SchedulerServiceClient::new(channel);
    // The outbound stream ends after SUBSCRIBE; dropping `events` then cancels the call.
    let outbound = futures::stream::iter([subscribe_call(name)]);
    let mut events = client.subscribe(outbound).await?.into_inner();
    events
        .message()
        .await?
        .ok_or_else(|| Status::internal("stream ended"))
}

#[test]
fn init_dir_writes_keys_0600_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let layout = tls::init_dir(&certs, &["master.example".into(), "10.0.0.5".into()]).unwrap();
    assert_eq!(layout, Layout::new(&certs));
    for f in layout.files() {
        assert!(f.is_file(), "{} exists", f.display());
    }
    for key in [
        &layout.ca_key,
        &layout.master_key,
        &layout.agent_key,
        &layout.client_key,
    ] {
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    let dir_mode = std::fs::metadata(&certs).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);

    // Principals are the subject CNs: the master, the agent of one node, a user.
    for (cert, name) in [
        (&layout.master_cert, "master"),
        (&layout.agent_cert, "agent:localhost"),
        (&layout.client_cert, "user:local"),
    ] {
        let der = tls::load_certs(cert).unwrap().remove(0);
        assert_eq!(Principal::from_cert_der(&der), Some(Principal(name.into())));
    }

    let before = std::fs::read(&layout.ca_key).unwrap();
    let err = tls::init_dir(&certs, &[]).unwrap_err();
    assert!(matches!(err, Error::Exists { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("ca.pem"), "{msg}");
    assert!(
        msg.contains("another directory") && msg.contains("delete"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&layout.ca_key).unwrap(),
        before,
        "CA key untouched"
    );

    // Even one leftover file is refused, and nothing else gets written.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("client-key.pem"), "x").unwrap();
    let err = tls::init_dir(&other, &[]).unwrap_err();
    assert!(err.to_string().contains("client-key.pem"), "{err}");
    assert!(!other.join("ca.pem").exists());
    // ... and `cella dev`'s loader names the missing files.
    let err = tls::init_or_load_dir(&other, &[]).unwrap_err();
    assert!(err.to_string().contains("ca.pem"), "{err}");

    // init_or_load_dir: existing complete directory is reused as is.
    assert_eq!(tls::init_or_load_dir(&certs, &[]).unwrap(), layout);
    assert_eq!(std::fs::read(&layout.ca_key).unwrap(), before);
    let fresh = dir.path().join("fresh");
    let l = tls::init_or_load_dir(&fresh, &[]).unwrap();
    assert!(l.missing().is_empty());

    // The CA can be loaded back and issue more certificates.
    let pki = tls::Pki::load(&layout.ca_cert, &layout.ca_key).unwrap();
    let alice_id = tls::Identity::user("alice", &["ops".into()]).unwrap();
    let alice = pki
        .issue_identity(&alice_id, &[], tls::Validity::default())
        .unwrap();
    let (cert, key) = alice.write(&certs, "alice").unwrap();
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let der = tls::load_certs(&cert).unwrap().remove(0);
    assert_eq!(
        Principal::from_cert_der(&der).unwrap().as_str(),
        "user:alice"
    );
    assert_eq!(tls::Identity::from_cert_der(&der), Some(alice_id));
    assert!(alice.write(&certs, "alice").is_err(), "no overwrite");
}

#[tokio::test]
async fn grpc_and_json_share_the_port_over_mtls() {
    let (_dir, layout, server) = serve(ServeOptions::default()).await;
    let cfg = client(&layout);

    let channel = tls::grpc_channel(&server.url(), &cfg).await.unwrap();
    let ev = subscribe(channel.clone(), "one").await.unwrap();
    match ev.event {
        Some(event::Event::Subscribed(s)) => {
            assert_eq!(s.framework_id, "fw-one");
            assert_eq!(s.heartbeat_interval_ms, 1000);
        }
        other => panic!("unexpected event {other:?}"),
    }
    // A second stream over the same channel, and through the DNS name in the SANs.
    subscribe(channel, "two").await.unwrap();
    let by_name = format!("https://localhost:{}", server.addr.port());
    subscribe(tls::grpc_channel(&by_name, &cfg).await.unwrap(), "three")
        .await
        .unwrap();
    assert_eq!(
        *server.seen.lock().unwrap(),
        ["user:local", "user:local", "user:local"]
    );

    // JSON on the same port, with the principal from the certificate.
    let who: serde_json::Value =
        tls::https_get_json(&format!("{}/api/v1/whoami", server.url()), &cfg)
            .await
            .unwrap();
    assert_eq!(who["principal"], "user:local");
    assert_eq!(who["loopback"], true);
    let resp = server.health(&cfg).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(&resp.body[..], b"ok");

    // A service that is not mounted: UNIMPLEMENTED.
    let ch = tls::grpc_channel(&server.url(), &cfg).await.unwrap();
    let mut agent_client = cella_proto::v1::agent_service_client::AgentServiceClient::new(ch);
    let status = agent_client
        .session(futures::stream::iter([
            cella_proto::v1::AgentMessage::default(),
        ]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // Unknown JSON paths are 404 (behind authentication).
    let err =
        tls::https_get_json::<serde_json::Value>(&format!("{}/api/v1/nope", server.url()), &cfg)
            .await
            .unwrap_err();
    assert!(
        matches!(&err, Error::Http { status: 404, message, .. } if message.contains("/api/v1/nope")),
        "{err:?}"
    );

    // The agent certificate works as a client certificate too.
    let agent = tls::client_config(&layout.ca_cert, &layout.agent_cert, &layout.agent_key).unwrap();
    let who: serde_json::Value =
        tls::https_get_json(&format!("{}/api/v1/whoami", server.url()), &agent)
            .await
            .unwrap();
    assert_eq!(who["principal"], "agent:localhost");

    server.stop().await.unwrap();
}

#[tokio::test]
async fn no_client_certificate_health_only() {
    let (_dir, layout, server) = serve(ServeOptions::default()).await;
    let anon = tls::client_config_anonymous(&layout.ca_cert).unwrap();

    let resp = server.health(&anon).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);

    // Extractor-protected and middleware-protected JSON routes: 401 with a message.
    for path in ["/api/v1/whoami", "/api/v1/secret"] {
        let err =
            tls::https_get_json::<serde_json::Value>(&format!("{}{path}", server.url()), &anon)
                .await
                .unwrap_err();
        match &err {
            Error::Http {
                status, message, ..
            } => {
                assert_eq!(*status, 401);
                assert!(message.contains("client certificate"), "{message}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }

    // gRPC: the TLS connection is accepted, the call is not.
    let channel = tls::grpc_channel(&server.url(), &anon).await.unwrap();
    let status = subscribe(channel, "anon").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("client certificate"),
        "{status:?}"
    );
    assert!(server.seen.lock().unwrap().is_empty(), "handler never ran");

    server.stop().await.unwrap();
}

#[tokio::test]
async fn certificates_of_another_ca_fail_the_handshake() {
    let (_dir, layout) = pki();
    let (_dir2, foreign) = pki();
    let server = start(&layout, ServeOptions::default()).await;

    // A client certificate signed by another CA (the client trusts our server).
    let cfg =
        tls::client_config(&layout.ca_cert, &foreign.client_cert, &foreign.client_key).unwrap();
    let err = server.health(&cfg).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("UnknownCA"), "{err}");
    let grpc = match tls::grpc_channel(&server.url(), &cfg).await {
        Err(e) => e.to_string(),
        Ok(ch) => subscribe(ch, "foreign").await.unwrap_err().to_string(),
    };
    assert!(!grpc.is_empty());
    assert!(server.seen.lock().unwrap().is_empty());

    // A client that trusts only another CA rejects our server.
    let cfg = client(&foreign);
    let err = server.health(&cfg).await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(tls::grpc_channel(&server.url(), &cfg).await.is_err());

    server.stop().await.unwrap();
}

async fn read_all(mut s: TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    buf
}

#[tokio::test]
async fn plaintext_gets_no_http_answer() {
    let (_dir, layout, server) = serve(ServeOptions::default()).await;

    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(s).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(!answer.windows(2).any(|w| w == b"ok"));

    // Plaintext HTTP/2 (gRPC without TLS, "h2c" prior knowledge) neither.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(s).await;
    // An HTTP/2 server would answer with a SETTINGS frame (type 0x4 at byte 3).
    assert!(answer.len() < 9 || answer[3] != 4, "{answer:?}");

    // The client helpers refuse http:// URLs outright.
    let url = format!("http://127.0.0.1:{}/health", server.addr.port());
    let err = tls::https_request(Method::GET, &url, None, &client(&layout))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Url { .. }), "{err:?}");

    server.stop().await.unwrap();
}

#[tokio::test]
async fn tls12_client_is_accepted() {
    let (_dir, layout, server) = serve(ServeOptions::default()).await;

    let mut roots = rustls::RootCertStore::empty();
    for c in tls::load_certs(&layout.ca_cert).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            tls::load_certs(&layout.client_cert).unwrap(),
            tls::load_private_key(&layout.client_key).unwrap(),
        )
        .unwrap();

    // Check the negotiated version with a raw handshake.
    assert_eq!(
        server.negotiated_version(&cfg).await,
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    let who: serde_json::Value =
        tls::https_get_json(&format!("{}/api/v1/whoami", server.url()), &cfg)
            .await
            .unwrap();
    assert_eq!(who["principal"], "user:local");
    let ch = tls::grpc_channel(&server.url(), &cfg).await.unwrap();
    subscribe(ch, "tls12").await.unwrap();

    // The default client negotiates TLS 1.3.
    assert_eq!(
        server.negotiated_version(&client(&layout)).await,
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    server.stop().await.unwrap();
}

#[tokio::test]
async fn slow_handshakes_do_not_block_and_time_out() {
    let (_dir, layout, server) = serve(ServeOptions {
        handshake_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    })
    .await;

    // A client that connects and says nothing.
    let silent = TcpStream::connect(server.addr).await.unwrap();
    // Others are served meanwhile.
    let resp = server.health(&client(&layout)).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    // The silent one is dropped after the handshake timeout.
    let started = std::time::Instant::now();
    let answer = read_all(silent).await;
    assert!(answer.is_empty());
    assert!(started.elapsed() < Duration::from_secs(4));

    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_open_streams_after_the_drain_timeout() {
    let (_dir, layout, server) = serve(ServeOptions {
        drain_timeout: Duration::from_millis(500),
        ..ServeOptions::default()
    })
    .await;
    let addr = server.addr;
    let channel = tls::grpc_channel(&server.url(), &client(&layout))
        .await
        .unwrap();
    let mut sc = SchedulerServiceClient::new(channel);
    let outbound =
        futures::stream::iter([subscribe_call("long")]).chain(futures::stream::pending());
    let mut events = sc.subscribe(outbound).await.unwrap().into_inner();
    assert!(events.message().await.unwrap().is_some());

    let started = std::time::Instant::now();
    server.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    // The stream ends (with an error or cleanly) rather than hanging.
    let end = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("stream ends after shutdown");
    assert!(!matches!(end, Ok(Some(_))));
    // Nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[test]
fn messages_serialize_to_json() {
    let ev = Event {
        event: Some(event::Event::Subscribed(event::Subscribed {
            framework_id: "fw".into(),
            heartbeat_interval_ms: 5,
        })),
    };
    let v = serde_json::to_value(&ev).unwrap();
    assert_eq!(v["event"]["Subscribed"]["framework_id"], "fw");
}

//! Authentication, with real processes and real mutual TLS: client certificates,
//! bearer tokens and passwords, each accepted when good and refused when bad, expired
//! or revoked (revocation picked up without a restart); and what an unauthenticated
//! peer can take: a flood of idle connections does not stop `/health`, and idle
//! connections are closed.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cella_proto::tls::{CaDir, ExpectedServer, Identity, Validity};
use cella_tests::security::tls_of;
use cella_tests::{Cluster, DEADLINE, Scheduler, cella_ok, framework};
use tokio::io::AsyncReadExt;

fn anonymous(c: &Cluster) -> rustls::ClientConfig {
    cella_proto::tls::client_config_anonymous(&c.tls_dir.join("ca.pem")).expect("CA")
}

/// Waits until `f` is true, or panics naming `what`.
async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(c: &Cluster, tls: &rustls::ClientConfig, headers: &[(&str, &str)]) -> Option<u16> {
    c.request(tls, "GET", "/api/v1/tasks", headers)
        .await
        .ok()
        .map(|r| r.status.as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_good_expired_and_revoked() {
    let c = Cluster::start(0, "cpus:1;mem:1GiB").await;
    let alice = c.user("alice", &["ops"]);
    assert_eq!(
        status(&c, &alice.master, &[]).await,
        Some(200),
        "a good certificate"
    );

    // A certificate of the cluster's own CA that expired yesterday.
    let ca = CaDir::open(&c.tls_dir).expect("the CA directory");
    let old = Identity::user("old", &[]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let issued = ca
        .issue(
            &old,
            &[],
            Validity {
                not_before: now - time::Duration::days(10),
                not_after: now - time::Duration::days(1),
            },
        )
        .unwrap();
    let dir = ca.write_bundle(&old, &issued).unwrap();
    let expired = tls_of(
        &c.tls_dir,
        &dir.join("client.pem"),
        &dir.join("client-key.pem"),
        ExpectedServer::Master,
    );
    assert_eq!(
        status(&c, &expired, &[]).await,
        None,
        "an expired certificate fails the handshake"
    );
    assert!(
        Scheduler::subscribe(&c.master_url, &expired, framework("old", "*", 0.0))
            .await
            .is_err(),
        "an expired certificate cannot subscribe"
    );

    // Revoked: refused from the moment the master has the new list, without a restart;
    // others are not affected, and the listing says so.
    let bob = c.user("bob", &[]);
    assert_eq!(status(&c, &bob.master, &[]).await, Some(200));
    c.revoke("user:bob");
    wait_until("bob's certificate to be refused", async || {
        status(&c, &bob.master, &[]).await.is_none()
    })
    .await;
    assert!(
        Scheduler::subscribe(&c.master_url, &bob.master, framework("bob", "*", 0.0))
            .await
            .is_err()
    );
    assert_eq!(status(&c, &alice.master, &[]).await, Some(200));
    let listing = cella_ok(
        &c.bins,
        &["certs", "list", "--dir", c.tls_dir.to_str().unwrap()],
    );
    let bob_line = listing
        .lines()
        .find(|l| l.contains("user:bob"))
        .unwrap_or_else(|| panic!("bob listed: {listing}"));
    assert!(bob_line.contains("revoked"), "{listing}");
    assert!(
        listing
            .lines()
            .any(|l| l.contains("user:alice") && l.contains("valid") && l.contains("ops")),
        "{listing}"
    );
    assert!(
        c.log_lines_with("revocation list reloaded")
            .contains("1 certificate(s) revoked"),
        "{}",
        c.log_tails()
    );
    c.finish();
}

/// `cella auth token` for `user`: the token (its first line) and the credentials
/// entry (what follows the blank line).
fn new_token(c: &Cluster, user: &str) -> (String, String) {
    let out = cella_ok(&c.bins, &["auth", "token", user]);
    let (token, entry) = out.split_once("\n\n").expect("token, blank line, entry");
    (token.to_string(), entry.to_string())
}

/// `cella auth password` for `user`, the password on standard input.
fn password_entry(c: &Cluster, user: &str, password: &str) -> String {
    let mut child = Command::new(&c.bins.cella)
        .args(["auth", "password", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cella auth password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("writing the password");
    let out = child.wait_with_output().expect("cella auth password");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn write_private(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).expect("writing the credentials");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_and_passwords_good_bad_expired_and_revoked() {
    let mut c = Cluster::new();
    let (token, token_entry) = new_token(&c, "prom");
    let (old_token, _) = new_token(&c, "old");
    let alice_entry = password_entry(&c, "alice", "correct horse");
    let expired_password = cella_proto::auth::hash_password("old secret").unwrap();
    let expired = format!(
        "[[token]]\nuser = \"old\"\nsha256 = \"{}\"\nexpires = 2001-01-01T00:00:00Z\n\n\
         [[password]]\nuser = \"olduser\"\nargon2 = '{expired_password}'\n\
         expires = 2001-01-01T00:00:00Z\n",
        cella_proto::auth::token_digest(&old_token)
    );
    let credentials = c.path().join("credentials.toml");
    write_private(
        &credentials,
        &format!("{token_entry}\n{alice_entry}\n{expired}"),
    );
    c.master_flags
        .push(format!("--credentials={}", credentials.display()));
    c.start_master().await;
    let anon = anonymous(&c);
    let bearer = |t: &str| format!("Bearer {t}");

    let none = c.request(&anon, "GET", "/api/v1/tasks", &[]).await.unwrap();
    assert_eq!(none.status.as_u16(), 401);
    assert!(
        String::from_utf8_lossy(&none.body).contains("authentication required"),
        "{:?}",
        none.body
    );
    let good = bearer(&token);
    assert_eq!(
        status(&c, &anon, &[("authorization", &good)]).await,
        Some(200),
        "a good token"
    );
    let wrong = bearer("cella_not-a-token-of-this-cluster");
    assert_eq!(
        status(&c, &anon, &[("authorization", &wrong)]).await,
        Some(401)
    );
    let old = bearer(&old_token);
    assert_eq!(
        status(&c, &anon, &[("authorization", &old)]).await,
        Some(401),
        "an expired token"
    );
    let alice = basic("alice", "correct horse");
    assert_eq!(
        status(&c, &anon, &[("authorization", &alice)]).await,
        Some(200),
        "a good password"
    );
    for bad in [
        basic("alice", "wrong"),
        basic("nobody", "correct horse"),
        basic("olduser", "old secret"),
    ] {
        assert_eq!(
            status(&c, &anon, &[("authorization", &bad)]).await,
            Some(401),
            "{bad}"
        );
    }
    assert_eq!(
        status(&c, &anon, &[("authorization", "Digest x")]).await,
        Some(401)
    );

    // Revoked: removed from the file, refused without a restart.
    write_private(&credentials, &alice_entry);
    wait_until("the removed token to be refused", async || {
        status(&c, &anon, &[("authorization", &good)]).await == Some(401)
    })
    .await;
    assert_eq!(
        status(&c, &anon, &[("authorization", &alice)]).await,
        Some(200)
    );
    write_private(&credentials, "");
    wait_until("the removed password to be refused", async || {
        status(&c, &anon, &[("authorization", &alice)]).await == Some(401)
    })
    .await;

    // Counted.
    let metrics = c
        .request(&c.client_tls, "GET", "/metrics", &[])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    let figure = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    assert!(
        figure("cella_master_auth_token_failures_total") >= 3.0,
        "{text}"
    );
    assert!(
        figure("cella_master_auth_password_failures_total") >= 4.0,
        "{text}"
    );

    // An agent's API takes the tokens of its own credentials file too.
    let (scraper, scraper_entry) = new_token(&c, "scraper");
    let agent_credentials = c.path().join("agent-credentials.toml");
    write_private(&agent_credentials, &scraper_entry);
    c.agent_flags
        .push(format!("--credentials={}", agent_credentials.display()));
    let agent = c.start_agent("cpus:1;mem:1GiB").await;
    let to_agent = cella_proto::tls::client_config_anonymous_for(
        &c.tls_dir.join("ca.pem"),
        ExpectedServer::Agent,
    )
    .unwrap();
    let url = format!("https://{}/metrics", agent.http);
    let get = |headers: Vec<(&'static str, String)>| {
        let (url, tls) = (url.clone(), to_agent.clone());
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            cella_proto::tls::https_request_with("GET".parse().unwrap(), &url, None, &tls, &headers)
                .await
                .unwrap()
                .status
                .as_u16()
        }
    };
    assert_eq!(get(vec![("authorization", bearer(&scraper))]).await, 200);
    assert_eq!(get(vec![]).await, 401);
    assert_eq!(get(vec![("authorization", bearer(&token))]).await, 401);
    c.finish();
}

/// A TLS connection without a client certificate, handshake done, no request sent.
async fn idle_connection(
    addr: std::net::SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let name = rustls_pki_types::ServerName::try_from("localhost").ok()?;
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .ok()?
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_stop_health() {
    cella_proto::tls::raise_descriptor_limit();
    let c = Cluster::start(0, "cpus:1;mem:1GiB").await;
    let addr: std::net::SocketAddr = c.master_url.trim_start_matches("https://").parse().unwrap();
    let mut config = anonymous(&c);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    // ~1,000 idle anonymous TLS connections from this address, held open...
    let mut idle = Vec::new();
    for _ in 0..20 {
        let batch: Vec<_> = (0..50)
            .map(|_| {
                let connector = connector.clone();
                tokio::spawn(async move { idle_connection(addr, &connector).await })
            })
            .collect();
        for handle in batch {
            if let Ok(Some(conn)) = handle.await {
                idle.push(conn);
            }
        }
    }
    assert!(
        idle.len() > 500,
        "only {} connections were made",
        idle.len()
    );

    // ... plus a bounded flood of connections opened and dropped for a few seconds,
    // while /health is asked over and over: every answer comes, in time.
    let flood_until = Instant::now() + Duration::from_secs(4);
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let connector = connector.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < flood_until {
                    if idle_connection(addr, &connector).await.is_some() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let anon = anonymous(&c);
    for i in 0..15 {
        let started = Instant::now();
        let r = c.request(&anon, "GET", "/health", &[]).await;
        let took = started.elapsed();
        assert!(
            r.as_ref().is_ok_and(|r| r.status.is_success()),
            "probe {i}: /health failed under the flood: {r:?}\n{}",
            c.log_tails()
        );
        assert!(took < Duration::from_secs(5), "probe {i} took {took:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut flooded = 0;
    for f in flood {
        flooded += f.await.unwrap_or(0);
    }
    assert!(flooded > 0, "the flood made no connection");
    // The idle connections beyond the per-address cap made room for the others.
    let metrics = c
        .request(&c.client_tls, "GET", "/metrics", &[])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let evicted: f64 = text
        .lines()
        .find(|l| l.starts_with("cella_master_connections_evicted_total"))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(evicted > 0.0, "{text}");
    drop(idle);
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let mut c = Cluster::new();
    c.master_flags.push("--idle-timeout=1s".into());
    c.start_master().await;
    let addr = c.master_url.trim_start_matches("https://").parse().unwrap();
    let mut config = anonymous(&c);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut conn = idle_connection(addr, &connector)
        .await
        .expect("a TLS connection");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the server should close an idle connection: {read:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    c.finish();
}

//! The master's operator API as `curl` and `promtool` find it, over mutual TLS: every
//! error is JSON with the status that fits, query parameters are checked, `GET /`
//! says what the service is, `/metrics` is served in the format the client asks for
//! and passes `promtool check metrics`; and a scheduler's empty call gets an ERROR.

mod common;

use std::process::Command;

use axum::http::{Method, StatusCode};
use cella_proto::tls;
use cella_proto::v1::{self, event};
use common::*;
use serde_json::Value;

/// `method url+path` with extra headers: the status and the body.
async fn request(
    url: &str,
    client: &rustls::ClientConfig,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let r = tls::https_request_with(method, &format!("{url}{path}"), None, client, headers)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// The `error` of a JSON error body (panics if the body is not one).
fn json_error(path: &str, body: &str) -> String {
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{path}: the error body is not JSON ({e}): {body:?}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no \"error\" string in {v}"))
        .to_string()
}

#[path = "../../tests/src/promtool.rs"]
mod promtool;
use promtool::promtool_check;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_api_errors_queries_index_and_metrics() {
    let m = TlsMaster::start().await;
    let (url, client, layout) = (m.url.clone(), m.client.clone(), m.layout.clone());

    // Unknown paths, wrong methods, bad queries: JSON errors with the right status.
    let cases: [(Method, &str, StatusCode, &str); 7] = [
        (
            Method::GET,
            "/api/v1/nope",
            StatusCode::NOT_FOUND,
            "/api/v1/nope",
        ),
        (
            Method::GET,
            "/favicon.ico",
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
        (
            Method::POST,
            "/api/v1/tasks",
            StatusCode::METHOD_NOT_ALLOWED,
            "POST is not allowed on /api/v1/tasks; use GET",
        ),
        (
            Method::GET,
            "/api/v1/tasks/t1/kill",
            StatusCode::METHOD_NOT_ALLOWED,
            "GET is not allowed on /api/v1/tasks/t1/kill; use POST",
        ),
        (
            Method::GET,
            "/api/v1/tasks?state=BOGUS",
            StatusCode::BAD_REQUEST,
            "RUNNING, FINISHED",
        ),
        (
            Method::GET,
            "/api/v1/tasks?stat=RUNNING",
            StatusCode::BAD_REQUEST,
            "stat",
        ),
        (
            Method::GET,
            "/api/v1/tasks/none",
            StatusCode::NOT_FOUND,
            "unknown task",
        ),
    ];
    for (method, path, status, says) in cases {
        let (got, body) = request(&url, &client, method.clone(), path, &[]).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        let error = json_error(path, &body);
        assert!(
            error.contains(says),
            "{method} {path}: {error:?} should say {says:?}"
        );
    }
    let (status, body) = request(
        &url,
        &client,
        Method::POST,
        "/api/v1/tasks/none/kill?grace_period_secs=-1",
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        json_error("kill", &body).contains("grace_period_secs"),
        "{body}"
    );
    // A state in any case, with or without TASK_, is a filter.
    for state in ["running", "TASK_RUNNING"] {
        let (status, body) = request(
            &url,
            &client,
            Method::GET,
            &format!("/api/v1/tasks?state={state}"),
            &[],
        )
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"), "{state}");
    }

    // GET / says what this is and where the docs are (no certificate needed).
    let anonymous = tls::client_config_anonymous(&layout.ca_cert).unwrap();
    let (status, body) = request(&url, &anonymous, Method::GET, "/", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let index: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(index["service"], "cella-master", "{index}");
    assert!(
        index["docs"].as_str().unwrap().contains("api.md"),
        "{index}"
    );
    assert!(
        index["api"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "GET /api/v1/tasks/{id}"),
        "{index}"
    );

    // /metrics: Prometheus text unless OpenMetrics is asked for; promtool is content.
    let (status, text) = request(&url, &client, Method::GET, "/metrics", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!text.contains("# EOF"), "{text}");
    assert!(
        text.contains("# HELP cella_master_offers_sent_total ")
            && text.contains("# TYPE cella_master_offers_sent_total counter"),
        "{text}"
    );
    if let Err(said) = promtool_check(&text) {
        panic!("promtool check metrics: {said}\n{text}");
    }
    let (status, open) = request(
        &url,
        &client,
        Method::GET,
        "/metrics",
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(open.trim_end().ends_with("# EOF"), "{open}");
    assert!(
        open.contains("# TYPE cella_master_offers_sent counter"),
        "{open}"
    );

    // Every metric the docs list is served, and every one served is in the docs.
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap();
    for family in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
    {
        assert!(
            docs.contains(&format!("`{family}")),
            "{family} is not documented in docs/api.md"
        );
    }

    // A scheduler's empty call gets an ERROR that says so; the stream stays open.
    let (calls, mut events, _fw) = grpc_scheduler(&url, &client, "").await;
    calls.send(v1::Call { call: None }).unwrap();
    let message = loop {
        let e = tokio::time::timeout(WAIT, events.message())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        if let Some(event::Event::Error(e)) = e.event {
            break e.message;
        }
    };
    assert!(message.contains("empty call"), "{message}");
    drop((calls, events));
    m.master.stop().await;
}

/// `curl -i -X METHOD` of `path` with the client certificate: the status line,
/// headers and body as curl prints them.
fn curl(layout: &tls::Layout, method: &str, url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--http1.1", "-X", method, "--cacert"])
        .arg(&layout.ca_cert)
        .arg("--cert")
        .arg(&layout.client_cert)
        .arg("--key")
        .arg(&layout.client_key)
        .arg(url)
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {method} {url}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_names_the_allowed_ones() {
    let m = TlsMaster::start().await;
    let (url, layout) = (m.url.clone(), m.layout.clone());
    for (method, path, allowed) in [
        ("POST", "/api/v1/tasks", "GET,HEAD"),
        ("DELETE", "/api/v1/tasks/t1/kill", "POST"),
        ("PUT", "/", "GET,HEAD"),
    ] {
        let answer = tokio::task::block_in_place(|| curl(&layout, method, &format!("{url}{path}")));
        let lower = answer.to_ascii_lowercase();
        assert!(
            lower.starts_with("http/1.1 405"),
            "{method} {path}: {answer}"
        );
        assert!(
            lower.contains(&format!("\r\nallow: {}\r\n", allowed.to_ascii_lowercase())),
            "{method} {path}: no Allow: {allowed} header in {answer}"
        );
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let error = json_error(path, body);
        let want = format!(
            "{method} is not allowed on {path}; use {}",
            allowed.replace(',', ", ")
        );
        assert_eq!(error, want, "{method} {path}");
    }
    m.master.stop().await;
}

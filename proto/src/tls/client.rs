//! Clients of the Cella port: a tonic channel and small HTTPS/JSON helpers, both over
//! our own rustls configuration.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

use super::config::{ALPN_H2, ALPN_HTTP11};
use super::{Error, Result, error_chain};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest JSON answer the helpers accept.
const MAX_BODY: usize = 64 << 20;

/// Host (without IPv6 brackets) and port of an `https://` URL (port 443 if absent).
fn host_port(url: &str) -> Result<(Uri, String, u16)> {
    let bad = |message: &str| Error::Url {
        url: url.to_owned(),
        message: message.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(other) => {
            return Err(bad(&format!(
                "scheme {other:?} is not supported: Cella speaks only https"
            )));
        }
        None => return Err(bad("expected https://HOST:PORT")),
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    Ok((uri, host, port))
}

async fn tls_connect(
    connector: TlsConnector,
    host: &str,
    port: u16,
) -> std::io::Result<TlsStream<TcpStream>> {
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out")
        })??;
    let _ = tcp.set_nodelay(true);
    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(server_name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// Connects a tonic [`Channel`] to `endpoint_url` (`https://HOST:PORT`) over `tls` with
/// ALPN `h2`, verifying the server against the configured CA and presenting the
/// configured client certificate.
///
/// The connection is made once here (errors say why it failed, e.g. a certificate
/// problem) and re-made by tonic when it breaks.
///
/// tonic refuses `https` endpoints unless its own TLS stack is configured, so the
/// endpoint is given to tonic as `http://HOST:PORT` and TLS is done by our connector; the
/// only visible effect is the `:scheme` pseudo-header, which the server ignores.
pub async fn grpc_channel(endpoint_url: &str, tls: &ClientConfig) -> Result<Channel> {
    let (uri, host, port) = host_port(endpoint_url)?;
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .unwrap_or(&host)
        .to_owned();
    let mut config = tls.clone();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| Error::Url {
            url: endpoint_url.to_owned(),
            message: error_chain(&e),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let make = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let host = host.clone();
        async move { tls_connect(connector, &host, port).await.map(TokioIo::new) }
    });
    endpoint
        .connect_with_connector(make)
        .await
        .map_err(|e| Error::Connect {
            url: endpoint_url.to_owned(),
            message: error_chain(&e),
        })
}

/// The answer to an [`https_request`].
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

/// One HTTP/1.1 request over a fresh TLS connection (ALPN `http/1.1`). `json_body`, if
/// given, is sent with `Content-Type: application/json`. Any status is returned; only
/// transport failures are errors. Times out after 30 s.
pub async fn https_request(
    method: Method,
    url: &str,
    json_body: Option<Vec<u8>>,
    tls: &ClientConfig,
) -> Result<HttpResponse> {
    https_request_with(method, url, json_body, tls, &[]).await
}

/// [`https_request`] with extra headers (e.g. `Authorization` for a bearer token).
pub async fn https_request_with(
    method: Method,
    url: &str,
    json_body: Option<Vec<u8>>,
    tls: &ClientConfig,
    headers: &[(&str, &str)],
) -> Result<HttpResponse> {
    let (uri, host, port) = host_port(url)?;
    let connect_err = |message: String| Error::Connect {
        url: url.to_owned(),
        message,
    };
    let mut config = tls.clone();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    let connector = TlsConnector::from(Arc::new(config));

    let exchange = async {
        let stream = tls_connect(connector, &host, port)
            .await
            .map_err(|e| connect_err(error_chain(&e)))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_err(error_chain(&e)))?;
        let conn = tokio::spawn(conn);

        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let body = match json_body {
            Some(bytes) => {
                req = req.header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let req = req.body(body).map_err(|e| Error::Url {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| connect_err(error_chain(&e)))?;
        let status = resp.status();
        let body = axum::body::to_bytes(Body::new(resp.into_body()), MAX_BODY)
            .await
            .map_err(|e| connect_err(format!("reading the answer: {}", error_chain(&e))))?;
        conn.abort();
        Ok(HttpResponse { status, body })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| connect_err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())))?
}

/// Parses a 2xx answer as JSON; other statuses become [`Error::Http`] with the server's
/// `{"error": ...}` message (or body text).
fn json_answer<T: DeserializeOwned>(url: &str, resp: HttpResponse) -> Result<T> {
    if !resp.status.is_success() {
        let text = String::from_utf8_lossy(&resp.body);
        let message = serde_json::from_slice::<serde_json::Value>(&resp.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| text.trim().to_owned());
        return Err(Error::Http {
            url: url.to_owned(),
            status: resp.status.as_u16(),
            message,
        });
    }
    // An empty 2xx answer reads as JSON `null` (e.g. into `serde_json::Value`).
    let body: &[u8] = if resp.body.is_empty() {
        b"null"
    } else {
        &resp.body
    };
    serde_json::from_slice(body).map_err(|source| Error::Json {
        url: url.to_owned(),
        source,
    })
}

/// `GET url`, expecting a 2xx JSON answer.
pub async fn https_get_json<T: DeserializeOwned>(url: &str, tls: &ClientConfig) -> Result<T> {
    let resp = https_request(Method::GET, url, None, tls).await?;
    json_answer(url, resp)
}

/// `POST url` with `body` as JSON, expecting a 2xx JSON answer (use
/// `serde_json::Value` for `T` when the answer does not matter).
pub async fn https_post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
    url: &str,
    body: &B,
    tls: &ClientConfig,
) -> Result<T> {
    let bytes = serde_json::to_vec(body).map_err(|source| Error::Json {
        url: url.to_owned(),
        source,
    })?;
    let resp = https_request(Method::POST, url, Some(bytes), tls).await?;
    json_answer(url, resp)
}

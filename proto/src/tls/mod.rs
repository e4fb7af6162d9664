//! Mutual TLS for Cella: the cluster PKI, rustls configurations, the single-port server
//! and its clients.
//!
//! # One port for everything
//!
//! The master serves gRPC (agents, schedulers) and the HTTP/JSON operator API on a single
//! TLS port (default `127.0.0.1:5050`). One port means one certificate, one firewall rule
//! and one URL for people and programs alike. [`serve`] accepts TCP connections, runs
//! the TLS handshake (ALPN `h2` and `http/1.1`) and hands the connection to hyper's
//! *auto* connection builder, which speaks HTTP/1.1 and HTTP/2 on the same socket. gRPC
//! services (tonic) and JSON handlers live in one [`axum::Router`]; see [`grpc_router`].
//! Plaintext is never served: a connection that does not complete a TLS handshake is
//! closed without an HTTP answer.
//!
//! # Identities and principals
//!
//! Every peer has its own certificate from the cluster CA, and the certificate says
//! what the peer is ([`Identity`], parsed in one place, `identity.rs`): the master
//! (`CN=master`, the only certificate valid for serving the cluster port), the agent of
//! one node (`CN=agent:<node>`), or a user or scheduler (`CN=user:<name>`, groups as
//! URI SANs `urn:cella:group:<group>`). The principal string is the CN. [`serve`]
//! inserts a [`Peer`] (identity, principal and remote address) into every request's
//! extensions. Clients check the server's identity too ([`ExpectedServer`]): a stolen
//! agent key cannot pose as the master.
//!
//! # Revocation
//!
//! The CA signs a revocation list (`crl.pem`, [`CaDir::revoke`]). [`Trust`] holds the
//! CA and the list in force; the verifiers it hands to rustls consult it on every
//! handshake, and [`Trust::reload`] swaps in a changed list without a restart.
//!
//! # Why the TLS layer allows clients without a certificate
//!
//! `GET /health` must answer without authentication (load balancers, `curl -k`,
//! readiness probes). TLS client authentication is per connection, not per path, so
//! [`server_config`] verifies every certificate a client *does* present against the
//! cluster CA (a certificate from another CA fails the handshake) but also accepts
//! clients that present none. Authorization is then enforced per route: everything
//! except `/health` goes behind [`require_principal`] (JSON: `401`, gRPC:
//! `UNAUTHENTICATED`), and gRPC handlers can also call [`grpc_principal`]. Use
//! [`server_config_with`] and [`ClientAuth::Required`] where no route is public (e.g. an
//! agent API that only the master and operators reach).
//!
//! # Protocol versions
//!
//! TLS 1.3 and TLS 1.2 only (rustls supports nothing older), with the `ring` crypto
//! provider passed explicitly so the result never depends on a process-wide default.
//!
//! # Limits
//!
//! [`serve_with`] caps connections in total and per address, closes idle ones and
//! bounds HTTP/2 streams and request heads ([`Limits`]); a flood of idle anonymous
//! connections only ever displaces its own, so `GET /health` keeps answering.
//!
//! # Files
//!
//! [`init_cluster_dir`] (`cella certs init`) writes `ca.pem`, `ca-key.pem`,
//! `master.pem`, `master-key.pem` and `crl.pem`; [`CaDir`] issues per-node and per-user
//! bundles, lists and revokes. Private keys are created with mode `0600` in `0700`
//! directories, and existing files are never overwritten. [`init_dir`] lays out a
//! one-machine directory (an agent and a user certificate beside the master's) for
//! `cella dev` and tests.

mod ca_dir;
mod client;
mod config;
mod identity;
mod limits;
mod pki;
mod server;
mod trust;

use std::path::PathBuf;

use crate::path_io::PathIoError;

pub use ca_dir::{
    CaDir, CertInfo, LOCAL_NODE, LOCAL_USER, Layout, init_cluster_dir, init_dir, init_or_load_dir,
    read_crl,
};
pub use client::{
    HttpResponse, grpc_channel, https_get_json, https_post_json, https_request, https_request_with,
};
pub use config::{
    ALPN_H2, ALPN_HTTP11, ClientAuth, client_config, client_config_anonymous,
    client_config_anonymous_for, client_config_for, client_config_trusting, crypto_provider,
    load_certs, load_private_key, server_config, server_config_trusting, server_config_with,
};
pub use identity::{GROUP_URI_PREFIX, Identity, InvalidName, check_node_name, check_user_name};
pub use limits::{ConnectionStats, Limits, raise_descriptor_limit};
pub use pki::{
    CertKind, DEFAULT_LEAF_DAYS, IssuedCert, Pki, Revoked, Validity, default_master_sans,
    hex as hex_string, unhex as unhex_bytes,
};
pub use server::{
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, Peer, Principal, ServeOptions,
    grpc_principal, grpc_router, require_principal, serve, serve_with,
};
pub use trust::{ExpectedServer, FileStamp, Trust};
/// Errors of the TLS layer: files, certificates, configurations and client requests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(
        "{} already exists; refusing to overwrite it (use another directory or delete the existing files)",
        path.display()
    )]
    Exists { path: PathBuf },
    #[error("{}: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the system's random number generator failed")]
    Random,
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("invalid URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("cannot reach {url}: {message}")]
    Connect { url: String, message: String },
    #[error("{url}: HTTP {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: invalid JSON answer: {source}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads a file, the path in the error.
pub(crate) fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(PathIoError::on(path))
}

/// Formats an error with all its sources, `outer: inner: innermost` (a cause already
/// in its parent's text is not repeated), so a TLS or connection failure says what
/// went wrong.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

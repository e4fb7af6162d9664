//! Cella's wire protocol and the transport it travels on.
//!
//! * [`v1`]: the protobuf messages and gRPC services of `proto/cella/v1/cella.proto`
//!   (prost types, tonic clients and servers), generated at build time with protox, so no
//!   system `protoc` is needed.
//! * [`tls`]: the cluster PKI (a CA plus certificates whose subject names the principal),
//!   rustls configurations for mutual TLS, the single-port server that carries both gRPC
//!   and the HTTP/JSON operator API, and the matching clients.
//! * [`api`]: the JSON of the master's operator API, served by the master and read by
//!   the CLI.
//! * [`validate`]: what a task must satisfy before it is run, checked in one place.
//! * [`acl`]: who may do what — the ACL file and the one check every handler calls.
//! * [`auth`]: HTTP callers authenticated by certificate, bearer token or password.
//! * [`secrets`]: secret environment variables, kept out of logs, APIs and storage.
//! * [`perms`]: the modes of key, credential and state files, checked as ssh does.
//! * [`path_io`]: I/O errors that name their path.
//! * [`atomic_file`]: files replaced whole, never seen half written.
//! * [`reload`]: re-reading edited files on change or SIGHUP.
//! * [`config_file`]: the daemons' TOML configuration files.
//! * [`time`]: timestamps in nanoseconds and durations as people write them.
//! * [`usage`]: what a task used, the figures every crate shares.
//! * [`usage_delta`]: usage reports that carry only the figures that changed.
//! * [`signals`]: the signals that stop a daemon.
//!
//! Task states and reasons have names (`RUNNING`, `MEMORY_LIMIT`):
//! `v1::TaskState::name` / `from_name`, `v1::Reason::name` / `from_name`.

pub mod acl;
pub mod api;
pub mod atomic_file;
pub mod auth;
pub mod config_file;
pub mod exposition;
pub mod http_errors;
pub mod journal;
pub mod logging;
pub mod path_io;
pub mod perms;
pub mod reload;
pub mod secrets;
pub mod service;
pub mod signals;
mod states;
pub mod time;
pub mod tls;
pub mod usage;
pub mod usage_delta;
pub mod validate;

/// Generated protocol types and services (package `cella.v1`).
///
/// Every message also derives `serde::Serialize`; enum-typed fields are `i32` in prost
/// messages and serialize as numbers (use e.g. [`v1::TaskState::as_str_name`] for names).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    missing_docs,
    rustdoc::all
)]
pub mod v1 {
    tonic::include_proto!("cella.v1");
}

impl v1::Attribute {
    /// The wire form of `key = value` attributes, in their order.
    pub fn list(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<Self> {
        pairs
            .into_iter()
            .map(|(key, value)| Self { key, value })
            .collect()
    }
}

impl v1::Call {
    /// SUBSCRIBE: the first call of a scheduler's stream, naming its framework.
    pub fn subscribe(framework: v1::FrameworkInfo) -> Self {
        Self {
            call: Some(v1::call::Call::Subscribe(v1::call::Subscribe {
                framework: Some(framework),
            })),
        }
    }
}

//! Cella's wire protocol and the transport it travels on.
//!
//! * [`v1`]: the protobuf messages and gRPC services of `proto/cella/v1/cella.proto`
//!   (prost types, tonic clients and servers), generated at build time with protox, so no
//!   system `protoc` is needed.
//! * [`tls`]: the cluster PKI (a CA plus certificates whose subject names the principal),
//!   rustls configurations for mutual TLS, the single-port server that carries both gRPC
//!   and the HTTP/JSON operator API, and the matching clients.

mod states;
pub mod tls;

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

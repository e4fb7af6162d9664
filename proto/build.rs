//! Compiles `proto/cella/v1/cella.proto` with protox (a pure-Rust protobuf compiler, so
//! no system `protoc` is needed) and generates prost messages plus tonic clients and
//! servers with tonic-prost-build.

use std::io;

fn main() -> io::Result<()> {
    let proto = "proto/cella/v1/cella.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=build.rs");
    let fds = protox::compile([proto], ["proto"])
        .map_err(|e| io::Error::other(format!("compiling {proto}: {e:?}")))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `XClient::connect(url)` constructors: they would build channels without our
        // TLS configuration; clients use `cella_proto::tls::grpc_channel` (mutual TLS).
        .build_transport(false)
        // JSON views of protocol messages (operator API, `--json` output). Enum-typed
        // fields are `i32` in prost messages and serialize as numbers.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        // Resources are part of the operator API's JSON (`cella_proto::api`), which
        // is read back as well as written.
        .type_attribute("cella.v1.Resources", "#[derive(serde::Deserialize)]")
        // Pressure figures are part of a task's usage (`cella_proto::usage`), which the
        // operator API's JSON carries and the CLI reads back.
        .type_attribute("cella.v1.Pressure", "#[derive(serde::Deserialize)]")
        // A task's summary is kept in the master's audit log, which is read back.
        .type_attribute("cella.v1.TaskSummary", "#[derive(serde::Deserialize)]")
        // A secret's value never appears in a debug print (logs) or in JSON (APIs):
        // `Debug` is written by hand in `secrets.rs`.
        .skip_debug(["cella.v1.SecretEnv"])
        // A task's summary rides on its terminal update only: boxed, so every other
        // status (and every enum holding one) stays small.
        .boxed(".cella.v1.TaskStatus.summary")
        .boxed(".cella.v1.AgentMessage.UsageReport.node")
        .field_attribute("cella.v1.SecretEnv.value", "#[serde(skip_serializing)]")
        .compile_fds(fds)
}

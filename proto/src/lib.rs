//! Cella wire protocol (gRPC/protobuf). Filled in by the cluster work (issue 3).

//! `cella-shim`: the task's parent.

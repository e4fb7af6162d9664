//! The signals that stop Cella's daemons and `cella dev`.

/// Completes when SIGTERM or SIGINT arrives and returns its name. If the handlers
/// cannot be installed it logs that and never completes (stop with SIGKILL then).
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers for SIGTERM and SIGINT; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

//! The shutdown future servers are run with: resolves on Ctrl-C or SIGTERM.

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // No SIGTERM handler could be installed: Ctrl-C alone stops the server.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

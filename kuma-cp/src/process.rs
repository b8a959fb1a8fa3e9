//! What a control-plane process does around the control plane: waiting for the signal to stop,
//! and making room for its files.

/// Resolves on SIGINT or SIGTERM (SIGINT only where there is no SIGTERM).
pub async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Raises the soft limit of open files to the hard limit, as Go programs (Kuma among them)
/// do: every proxy stream, API client and store connection is a file. The connection caps
/// (`connections.*`) keep any one client within it.
pub fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => {
                if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    tracing::warn!(soft, hard, error = %kuma_core::errors::Chain(&e), "cannot raise the open-file limit");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %kuma_core::errors::Chain(&e), "cannot read the open-file limit")
            }
        }
    }
}

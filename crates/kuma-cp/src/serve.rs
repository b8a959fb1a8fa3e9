//! Binding the control plane's ports and serving routers on them until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::StartError;
use crate::tls::TlsListener;

/// Server tasks; dropping the set stops them, so a start that fails half-way leaves nothing
/// listening.
pub(crate) struct Servers(pub(crate) Vec<JoinHandle<()>>);

impl Drop for Servers {
    fn drop(&mut self) {
        for server in &self.0 {
            server.abort();
        }
    }
}

/// Binds ports and serves routers on them; every server stops when `stop` turns true.
pub(crate) struct Ports {
    pub(crate) servers: Servers,
    stop: watch::Receiver<bool>,
}

impl Ports {
    /// No servers yet; they stop on `stop`.
    pub(crate) fn new(stop: watch::Receiver<bool>) -> Self {
        Ports {
            servers: Servers(Vec::new()),
            stop,
        }
    }

    /// Serves `router` over plain HTTP on `interface:port`; returns where it listens.
    pub(crate) async fn http(
        &mut self,
        what: &'static str,
        interface: &str,
        port: u16,
        router: axum::Router,
    ) -> Result<SocketAddr, StartError> {
        let l = bind(what, interface, port).await?;
        let addr = local_addr(what, &l)?;
        self.servers
            .0
            .push(spawn_server(what, l, router, self.stop.clone()));
        Ok(addr)
    }

    /// Serves `router` over TLS (`tls`) on `interface:port`; returns where it listens.
    pub(crate) async fn https(
        &mut self,
        what: &'static str,
        interface: &str,
        port: u16,
        tls: Arc<ServerConfig>,
        router: axum::Router,
    ) -> Result<SocketAddr, StartError> {
        let l = bind(what, interface, port).await?;
        let addr = local_addr(what, &l)?;
        let l = TlsListener::new(l, tls).map_err(|source| StartError::Bind {
            addr: what.into(),
            source,
        })?;
        self.servers
            .0
            .push(spawn_server(what, l, router, self.stop.clone()));
        Ok(addr)
    }

    /// Keeps `task` with the servers: it stops with them and shutdown waits for it.
    pub(crate) fn add_task(&mut self, task: JoinHandle<()>) {
        self.servers.0.push(task);
    }
}

/// Binds `interface:port`.
async fn bind(
    what: &str,
    interface: &str,
    port: u16,
) -> Result<tokio::net::TcpListener, StartError> {
    let addr = format!("{interface}:{port}");
    tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: format!("{addr} ({what})"),
            source,
        })
}

fn local_addr(what: &str, l: &tokio::net::TcpListener) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|source| StartError::Bind {
        addr: what.into(),
        source,
    })
}

/// Serves `router` on `listener` until `stop` turns true, then lets open connections finish.
fn spawn_server<L>(
    what: &'static str,
    listener: L,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use axum::serve::ListenerExt;
    // `tap_io` gives the connections of any listener the peer address as connect info.
    let listener = listener.tap_io(|_| {});
    tokio::spawn(async move {
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        let graceful = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = graceful.await {
            tracing::error!(error = %e, server = what, "server failed");
        }
    })
}

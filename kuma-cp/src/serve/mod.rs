//! Binding the control plane's ports and serving routers on them until shutdown, each
//! listener within its [`Limits`] and every client within one [`ClientBudget`]. [`serve`]
//! serves any axum router that way, for programs that bind their own listeners.

mod connection;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use connection::{ClientBudget, Limits, serve};

use crate::StartError;

/// Server tasks; dropping the set stops them, so a start that fails half-way leaves nothing
/// listening.
#[derive(Default)]
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
    budget: Arc<ClientBudget>,
}

impl Ports {
    /// No servers yet; they stop on `stop`, and share the connections of each client address
    /// out of `budget`.
    pub(crate) fn new(stop: watch::Receiver<bool>, budget: Arc<ClientBudget>) -> Self {
        Ports {
            servers: Servers(Vec::new()),
            stop,
            budget,
        }
    }

    /// Serves `router` on `listener`'s address, over `tls` when given, within `limits`;
    /// returns where it listens.
    pub(crate) async fn listen(
        &mut self,
        listener: &crate::layout::Listener,
        tls: Option<Arc<ServerConfig>>,
        limits: Limits,
        router: axum::Router,
    ) -> Result<SocketAddr, StartError> {
        let at = (listener.interface.as_str(), listener.port);
        self.serve(listener.name, at, tls, limits, router).await
    }

    async fn serve(
        &mut self,
        what: &'static str,
        (interface, port): (&str, u16),
        tls: Option<Arc<ServerConfig>>,
        limits: Limits,
        router: axum::Router,
    ) -> Result<SocketAddr, StartError> {
        let l = bind(what, interface, port).await?;
        let addr = local_addr(what, &l)?;
        let server = connection::serve(
            what,
            l,
            tls,
            router,
            limits,
            self.budget.clone(),
            self.stop.clone(),
        );
        self.servers.0.push(tokio::spawn(server));
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

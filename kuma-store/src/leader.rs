//! Leader election: which control-plane instance of a zone runs the jobs that must run once
//! (default resources, and later VIP allocation and insight cleanup).
//!
//! Leadership is a `watch` channel of `bool`: jobs start when it turns `true` and stop when it
//! turns `false`. With an in-process store ([`in_process`]) the one instance always leads.
//! With PostgreSQL ([`postgres`], feature `postgres`) leadership is a session-level advisory
//! lock held on a dedicated connection: the server releases it when the leader's session ends
//! (the process died, or its connection broke), and the others, trying every
//! [`postgres::LEASE`], take over. A leader that cannot reach the database within a lease gives
//! leadership up at once, before anyone else can take it.

use tokio::sync::watch;

/// Leadership for a single-instance store: always the leader. The value never changes (its
/// sender is gone, so `changed()` reports that no change will come).
pub fn in_process() -> watch::Receiver<bool> {
    watch::channel(true).1
}

/// Leadership through a PostgreSQL advisory lock.
#[cfg(feature = "postgres")]
pub mod postgres {
    use std::time::Duration;

    use crate::config::PostgresConfig;
    use tokio::sync::watch;

    /// How often a follower tries to take the lock, and how long a leader may go without
    /// confirming its connection before it steps down.
    pub const LEASE: Duration = Duration::from_secs(1);

    /// The advisory lock key of control-plane leadership.
    pub const LOCK_KEY: i64 = 0x6b75_6d61_6c65_6164; // "kumalead"

    /// Campaigns for leadership until the returned task is aborted. The receiver reads `true`
    /// while this instance leads. The first attempt is made before this returns.
    pub async fn campaign(
        config: PostgresConfig,
    ) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let mut session = Session::default();
        session.step(&config, &tx).await;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE).await;
                session.step(&config, &tx).await;
            }
        });
        (rx, task)
    }

    #[derive(Default)]
    struct Session {
        client: Option<tokio_postgres::Client>,
    }

    impl Session {
        /// One round: (re)connect if needed, then hold or try to take the lock.
        async fn step(&mut self, config: &PostgresConfig, leader: &watch::Sender<bool>) {
            if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                self.client = None;
                leader.send_if_modified(|l| std::mem::replace(l, false));
                match connect(config).await {
                    Ok(c) => self.client = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election cannot reach PostgreSQL");
                        return;
                    }
                }
            }
            let Some(client) = &self.client else { return };
            let leading = *leader.borrow();
            let query = if leading {
                // Confirms the session (and so the lock) is still alive.
                client.query_one("SELECT true", &[])
            } else {
                client.query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
            };
            match tokio::time::timeout(LEASE, query).await {
                Ok(Ok(row)) => {
                    let now: bool = row.get(0);
                    if now != leading {
                        tracing::info!(leader = now, "control-plane leadership changed");
                    }
                    leader.send_if_modified(|l| std::mem::replace(l, now) != now);
                }
                Ok(Err(_)) | Err(_) => {
                    // Without a live session the lock is (or will be) released: step down now.
                    if leading {
                        tracing::warn!("lost the PostgreSQL session: giving up leadership");
                    }
                    self.client = None;
                    leader.send_if_modified(|l| std::mem::replace(l, false));
                }
            }
        }
    }

    async fn connect(config: &PostgresConfig) -> Result<tokio_postgres::Client, String> {
        crate::postgres::open_session(config, None)
            .await
            .map(|(client, _)| client)
    }
}

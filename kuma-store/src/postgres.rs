//! A [`ResourceStore`] in PostgreSQL, shared by every control-plane instance of a zone.
//!
//! Schema (see [`MIGRATIONS`]): one `resources` table keyed by (type, mesh, name) with the
//! resource document, its labels, version, timestamps and owner; `store_revision`, a one-row
//! counter; and `store_events`, the change log.
//!
//! Every write runs in one transaction that takes the next revision from `store_revision` (its
//! row lock orders all writers, so revisions are consecutive and commit in order), writes the
//! resource, appends one event per changed resource and sends `NOTIFY kuma_store_events`.
//! Versions are revisions, so a resource keeps its version across restarts of any instance.
//!
//! Each instance runs one event reader: on a notification (from any instance), after a local
//! write, and at least every [`RESYNC_INTERVAL`] in case a notification was lost, it reads the
//! log after the last revision it delivered and broadcasts those events in order. A reader
//! that lost its connection reconnects with backoff and catches up from the log.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio::sync::{Notify, broadcast};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, GenericClient, NoTls, Row};

use crate::config::PostgresConfig;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Version};
use kuma_core::store::{
    BackendError, EventKind, ListQuery, Page, ResourceStore, StoreError, StoreEvent,
};

use crate::common::{check_version, document, now, restore};
use crate::memory::DEFAULT_EVENT_CAPACITY;

/// The schema, one migration per version; version n is `MIGRATIONS[n - 1]`.
pub const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE resources (
    type text NOT NULL,
    mesh text NOT NULL,
    name text NOT NULL,
    version bigint NOT NULL,
    resource jsonb NOT NULL,
    labels jsonb NOT NULL DEFAULT '{}',
    creation_time timestamptz NOT NULL,
    modification_time timestamptz NOT NULL,
    owner_type text,
    owner_mesh text,
    owner_name text,
    PRIMARY KEY (type, mesh, name),
    FOREIGN KEY (owner_type, owner_mesh, owner_name)
        REFERENCES resources (type, mesh, name) ON DELETE CASCADE
);
CREATE INDEX resources_owner ON resources (owner_type, owner_mesh, owner_name);
CREATE INDEX resources_labels ON resources USING gin (labels jsonb_path_ops);
CREATE TABLE store_revision (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    value bigint NOT NULL
);
INSERT INTO store_revision VALUES (true, 0);
CREATE TABLE store_events (
    revision bigint PRIMARY KEY,
    kind smallint NOT NULL,
    type text NOT NULL,
    mesh text NOT NULL,
    name text NOT NULL,
    version bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
"#];

/// The schema version this build expects.
pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// How often the event reader looks at the log without a notification.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

/// How long events stay in the log (pruned when resources are deleted). An instance cut off
/// for longer cannot get the pruned events back: its reader logs the gap as an error, and a
/// restart of that instance resynchronises it.
pub const EVENT_RETENTION: Duration = Duration::from_secs(3600);

/// Attempts for an operation whose connection could not be obtained.
const ATTEMPTS: u32 = 4;

const CHANNEL: &str = "kuma_store_events";

/// Errors of opening or migrating the database.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// Could not connect or run a statement.
    #[error("PostgreSQL at {address}: {message}")]
    Connection {
        /// `host:port/db`.
        address: String,
        /// What failed.
        message: String,
    },
    /// The database schema is not the one this binary uses.
    #[error(
        "the database schema is at version {found}, this binary uses version {expected}: {hint}"
    )]
    SchemaMismatch {
        /// Version in the database (0: empty database).
        found: i64,
        /// Version this build expects.
        expected: i64,
        /// What to do.
        hint: &'static str,
    },
}

fn address(config: &PostgresConfig) -> String {
    format!("{}:{}/{}", config.host, config.port, config.db_name)
}

pub(crate) fn pg_config(config: &PostgresConfig) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(&config.host)
        .port(config.port)
        .user(&config.user)
        .password(&config.password)
        .dbname(&config.db_name)
        .application_name("kuma-cp")
        .connect_timeout(Duration::from_secs(u64::from(
            config.connection_timeout.max(1),
        )))
        .ssl_mode(
            if config.tls.mode == crate::config::PostgresTlsMode::Disable {
                tokio_postgres::config::SslMode::Disable
            } else {
                tokio_postgres::config::SslMode::Require
            },
        );
    c
}

async fn connect(config: &PostgresConfig) -> Result<tokio_postgres::Client, PostgresError> {
    open_session(config, None)
        .await
        .map(|(client, _)| client)
        .map_err(|message| PostgresError::Connection {
            address: address(config),
            message,
        })
}

/// One connection, TLS as configured, driven by its own task. Notifications wake `notify`;
/// the receiver learns why the connection ended.
pub(crate) async fn open_session(
    config: &PostgresConfig,
    notify: Option<Arc<Notify>>,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::sync::oneshot::Receiver<String>,
    ),
    String,
> {
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    let pg = pg_config(config);
    let client = match crate::postgres_tls::client_config(config)? {
        None => {
            let (client, connection) = pg.connect(NoTls).await.map_err(|e| describe(&e))?;
            tokio::spawn(drive(connection, notify, closed_tx));
            client
        }
        Some(tls) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
            let (client, connection) = pg.connect(tls).await.map_err(|e| describe(&e))?;
            tokio::spawn(drive(connection, notify, closed_tx));
            client
        }
    };
    Ok((client, closed))
}

/// Polls a connection until it ends, passing notifications on.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    notify: Option<Arc<Notify>>,
    closed: tokio::sync::oneshot::Sender<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => {
                if let Some(n) = &notify {
                    n.notify_one();
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let _ = closed.send(describe(&e));
                return;
            }
            None => {
                let _ = closed.send("connection closed".into());
                return;
            }
        }
    }
}

/// The database error's own message when there is one (`tokio_postgres::Error`'s display is
/// only "db error").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => kuma_core::errors::chain(e),
    }
}

async fn current_version<C: GenericClient>(client: &C) -> Result<i64, tokio_postgres::Error> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version bigint NOT NULL)")
        .await?;
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Brings the database's schema up to [`schema_version`] (what `migrate up` runs); returns the
/// versions applied. A database newer than this binary is left alone and reported.
pub async fn migrate(config: &PostgresConfig) -> Result<Vec<i64>, PostgresError> {
    let mut client = connect(config).await?;
    let err = |e: tokio_postgres::Error| PostgresError::Connection {
        address: address(config),
        message: describe(&e),
    };
    let tx = client.transaction().await.map_err(err)?;
    // One migrator at a time: instances starting together must not both apply version 1.
    tx.batch_execute("SELECT pg_advisory_xact_lock(7271)")
        .await
        .map_err(err)?;
    let found = current_version(&tx).await.map_err(err)?;
    let expected = schema_version();
    if found > expected {
        return Err(PostgresError::SchemaMismatch {
            found,
            expected,
            hint: "the database was migrated by a newer kuma-cp; run that version",
        });
    }
    let mut applied = Vec::new();
    for v in found + 1..=expected {
        let Some(sql) = usize::try_from(v - 1).ok().and_then(|i| MIGRATIONS.get(i)) else {
            break;
        };
        tx.batch_execute(sql).await.map_err(err)?;
        tx.execute("INSERT INTO schema_migrations VALUES ($1)", &[&v])
            .await
            .map_err(err)?;
        applied.push(v);
    }
    tx.commit().await.map_err(err)?;
    Ok(applied)
}

/// Resources in PostgreSQL. See the module documentation.
pub struct PostgresStore {
    pool: Pool,
    events: broadcast::Sender<StoreEvent>,
    /// Wakes the event reader after a local write.
    wrote: Arc<Notify>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PostgresStore {
    /// Connects, checks that the schema is exactly the one this binary uses (run
    /// [`migrate`] first) and starts the event reader.
    pub async fn connect(config: &PostgresConfig) -> Result<Self, PostgresError> {
        let client = connect(config).await?;
        let found = current_version(&client)
            .await
            .map_err(|e| PostgresError::Connection {
                address: address(config),
                message: describe(&e),
            })?;
        let expected = schema_version();
        if found != expected {
            return Err(PostgresError::SchemaMismatch {
                found,
                expected,
                hint: if found < expected {
                    "run `migrate up` with this binary first"
                } else {
                    "the database was migrated by a newer kuma-cp; run that version"
                },
            });
        }
        let last: i64 = client
            .query_one("SELECT value FROM store_revision", &[])
            .await
            .map_err(|e| PostgresError::Connection {
                address: address(config),
                message: describe(&e),
            })?
            .get(0);
        drop(client);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let tls = crate::postgres_tls::client_config(config).map_err(|message| {
            PostgresError::Connection {
                address: address(config),
                message,
            }
        })?;
        let manager = match tls {
            None => Manager::from_config(pg_config(config), NoTls, manager_config),
            Some(tls) => Manager::from_config(
                pg_config(config),
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config,
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(usize::try_from(config.max_open_connections.max(1)).unwrap_or(1))
            .wait_timeout(Some(Duration::from_secs(u64::from(
                config.connection_timeout.max(1),
            ))))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| PostgresError::Connection {
                address: address(config),
                message: e.to_string(),
            })?;
        let (events, _) = broadcast::channel(DEFAULT_EVENT_CAPACITY);
        let wrote = Arc::new(Notify::new());
        let reader = tokio::spawn(read_events(
            config.clone(),
            events.clone(),
            wrote.clone(),
            last,
        ));
        Ok(PostgresStore {
            pool,
            events,
            wrote,
            reader,
        })
    }

    /// Whether the store's sessions are encrypted, as the server sees them.
    pub async fn uses_tls(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .map_err(backend)
    }

    /// A pooled connection; pool and connection failures are retried with backoff, then
    /// reported as [`StoreError::Backend`].
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let mut delay = Duration::from_millis(50);
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            match self.pool.get().await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    last = Some(e);
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(delay).await;
                        delay *= 4;
                    }
                }
            }
        }
        let what = format!("no PostgreSQL connection after {ATTEMPTS} attempts");
        Err(StoreError::Backend(match last {
            Some(e) => BackendError::caused_by(what, e),
            None => BackendError::new(what),
        }))
    }
}

fn backend(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(BackendError::caused_by("PostgreSQL", e))
}

fn kind_code(kind: EventKind) -> i16 {
    match kind {
        EventKind::Create => 0,
        EventKind::Update => 1,
        EventKind::Delete => 2,
    }
}

fn kind_of(code: i16) -> EventKind {
    match code {
        0 => EventKind::Create,
        1 => EventKind::Update,
        _ => EventKind::Delete,
    }
}

/// The stored version and creation time of `key`, locked until the transaction ends.
async fn current(
    tx: &Transaction<'_>,
    key: &ResourceKey,
) -> Result<Option<(i64, DateTime<Utc>)>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT version, creation_time FROM resources \
             WHERE type = $1 AND mesh = $2 AND name = $3 FOR UPDATE",
            &[&key.rtype.name(), &key.mesh, &key.name],
        )
        .await
        .map_err(backend)?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Takes the next revision; the row lock it holds until commit orders every writer.
async fn next_revision(tx: &Transaction<'_>) -> Result<i64, StoreError> {
    tx.query_one(
        "UPDATE store_revision SET value = value + 1 RETURNING value",
        &[],
    )
    .await
    .map(|r| r.get(0))
    .map_err(backend)
}

async fn log_event(
    tx: &Transaction<'_>,
    revision: i64,
    kind: EventKind,
    key: &ResourceKey,
    version: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO store_events (revision, kind, type, mesh, name, version) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&revision, &kind_code(kind), &key.rtype.name(), &key.mesh, &key.name, &version],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

fn labels(r: &Resource) -> Value {
    Value::Object(
        r.meta
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// A resource from a row of (resource, version, creation_time, modification_time).
fn from_row(row: &Row) -> Result<Resource, StoreError> {
    restore(row.get(0), row.get(1), row.get(2), row.get(3))
}

async fn commit(tx: Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(&format!("NOTIFY {CHANNEL}"))
        .await
        .map_err(backend)?;
    tx.commit().await.map_err(|e| {
        StoreError::Backend(BackendError::caused_by(
            "commit failed, the write may or may not have been applied",
            e,
        ))
    })
}

/// How a read failed: on a session the server dropped (worth repeating on a fresh one), or
/// for good.
enum ReadError {
    Retry(StoreError),
    Fail(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        ReadError::Fail(e)
    }
}

fn dropped(client: &tokio_postgres::Client, e: tokio_postgres::Error) -> ReadError {
    if client.is_closed() {
        ReadError::Retry(backend(e))
    } else {
        ReadError::Fail(backend(e))
    }
}

impl PostgresStore {
    /// Runs a read, repeating it with backoff when its session was dropped under it (a
    /// server restart or failover). Writes are not repeated: a write whose commit was cut may
    /// have been applied, and the caller must learn that.
    async fn reading<T, F, Fut>(&self, read: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ReadError>>,
    {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match read().await {
                Ok(v) => return Ok(v),
                Err(ReadError::Retry(e)) if attempt < ATTEMPTS => {
                    tracing::debug!(error = %kuma_core::errors::Chain(&e), attempt, "read on a dropped session; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                    attempt += 1;
                }
                Err(ReadError::Retry(e) | ReadError::Fail(e)) => return Err(e),
            }
        }
    }

    async fn get_once(&self, key: &ResourceKey) -> Result<Resource, ReadError> {
        let client = self.client().await.map_err(ReadError::Fail)?;
        let row = client
            .query_opt(
                "SELECT resource, version, creation_time, modification_time FROM resources \
                 WHERE type = $1 AND mesh = $2 AND name = $3",
                &[&key.rtype.name(), &key.mesh, &key.name],
            )
            .await
            .map_err(|e| dropped(&client, e))?
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        Ok(from_row(&row)?)
    }

    async fn list_once(&self, query: &ListQuery) -> Result<Page, ReadError> {
        let client = self.client().await.map_err(ReadError::Fail)?;
        let start = query.start()?;
        // Type, mesh, name and labels filter in SQL; Dataplane tag and gateway filters need the
        // spec's semantics and run here, after SQL.
        let native = query.tags.is_empty() && query.gateway.is_none();
        const FILTER: &str = "FROM resources WHERE type = $1 AND ($2::text IS NULL OR mesh = $2) \
             AND ($3::text IS NULL OR strpos(name, $3) > 0) AND labels @> $4";
        let mut sql = format!(
            "SELECT resource, version, creation_time, modification_time, count(*) OVER () {FILTER} \
             ORDER BY mesh, name"
        );
        let rtype = query.rtype.name();
        let mesh_param: Option<&str> = query.mesh.as_deref();
        let name_param: Option<&str> = query.name_contains.as_deref();
        let label_filter = Value::Object(
            query
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        );
        if native {
            if let Some(size) = query.size {
                sql.push_str(&format!(" LIMIT {} OFFSET {start}", size.max(1)));
            } else if start > 0 {
                sql.push_str(&format!(" OFFSET {start}"));
            }
        }
        let rows = client
            .query(
                sql.as_str(),
                &[&rtype, &mesh_param, &name_param, &label_filter],
            )
            .await
            .map_err(|e| dropped(&client, e))?;
        let resources = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        if !native {
            return Ok(Page::collect(
                resources.iter().filter(|r| query.matches(r)),
                query,
            )?);
        }
        let total = match rows.first() {
            Some(r) => usize::try_from(r.get::<_, i64>(4)).unwrap_or(0),
            None if start == 0 => 0,
            None => {
                // Past the end, or exactly at it: count to tell the two apart.
                let row = client
                    .query_one(
                        format!("SELECT count(*) {FILTER}").as_str(),
                        &[&rtype, &mesh_param, &name_param, &label_filter],
                    )
                    .await
                    .map_err(|e| dropped(&client, e))?;
                usize::try_from(row.get::<_, i64>(0)).unwrap_or(0)
            }
        };
        if start > total {
            return Err(StoreError::InvalidOffset(start.to_string()).into());
        }
        let end = start + resources.len();
        Ok(Page {
            items: resources,
            total,
            next_offset: (end < total).then(|| end.to_string()),
        })
    }
}

#[async_trait]
impl ResourceStore for PostgresStore {
    async fn create(
        &self,
        mut resource: Resource,
        owner: Option<ResourceKey>,
    ) -> Result<Resource, StoreError> {
        let key = resource.key();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let revision = next_revision(&tx).await?;
        if current(&tx, &key).await?.is_some() {
            return Err(StoreError::AlreadyExists(key));
        }
        if let Some(o) = &owner
            && current(&tx, o).await?.is_none()
        {
            return Err(StoreError::OwnerNotFound(o.clone()));
        }
        let now = now();
        resource.meta.version = Version(revision.to_string());
        resource.meta.creation_time = Some(now);
        resource.meta.modification_time = Some(now);
        let (ot, om, on) = match &owner {
            Some(o) => (
                Some(o.rtype.name()),
                Some(o.mesh.as_str()),
                Some(o.name.as_str()),
            ),
            None => (None, None, None),
        };
        tx.execute(
            "INSERT INTO resources (type, mesh, name, version, resource, labels, creation_time, modification_time, owner_type, owner_mesh, owner_name) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10)",
            &[
                &key.rtype.name(),
                &key.mesh,
                &key.name,
                &revision,
                &document(&resource),
                &labels(&resource),
                &now,
                &ot,
                &om,
                &on,
            ],
        )
        .await
        .map_err(|e| match e.code() {
            Some(c) if *c == SqlState::UNIQUE_VIOLATION => StoreError::AlreadyExists(key.clone()),
            Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => {
                StoreError::OwnerNotFound(owner.clone().unwrap_or_else(|| key.clone()))
            }
            _ => backend(e),
        })?;
        log_event(&tx, revision, EventKind::Create, &key, revision).await?;
        commit(tx).await?;
        self.wrote.notify_one();
        Ok(resource)
    }

    async fn update(&self, mut resource: Resource) -> Result<Resource, StoreError> {
        let key = resource.key();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let revision = next_revision(&tx).await?;
        let (version, created) = current(&tx, &key)
            .await?
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        check_version(&key, &Version(version.to_string()), &resource.meta.version)?;
        let now = now();
        resource.meta.version = Version(revision.to_string());
        resource.meta.creation_time = Some(created);
        resource.meta.modification_time = Some(now);
        tx.execute(
            "UPDATE resources SET version = $4, resource = $5, labels = $6, modification_time = $7 \
             WHERE type = $1 AND mesh = $2 AND name = $3",
            &[
                &key.rtype.name(),
                &key.mesh,
                &key.name,
                &revision,
                &document(&resource),
                &labels(&resource),
                &now,
            ],
        )
        .await
        .map_err(backend)?;
        log_event(&tx, revision, EventKind::Update, &key, revision).await?;
        commit(tx).await?;
        self.wrote.notify_one();
        Ok(resource)
    }

    async fn delete(&self, key: &ResourceKey, version: Option<&Version>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Lock the revision first: the closure read below cannot change under us.
        let first = next_revision(&tx).await?;
        let (stored, _) = current(&tx, key)
            .await?
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        if let Some(v) = version {
            check_version(key, &Version(stored.to_string()), v)?;
        }
        // The owned closure, owner before owned.
        let doomed = tx
            .query(
                "WITH RECURSIVE closure (type, mesh, name, version, depth) AS ( \
                   SELECT type, mesh, name, version, 0 FROM resources \
                     WHERE type = $1 AND mesh = $2 AND name = $3 \
                   UNION \
                   SELECT r.type, r.mesh, r.name, r.version, c.depth + 1 FROM resources r \
                     JOIN closure c ON r.owner_type = c.type AND r.owner_mesh = c.mesh AND r.owner_name = c.name \
                 ) SELECT type, mesh, name, version, min(depth) AS d FROM closure \
                   GROUP BY type, mesh, name, version ORDER BY d, type, mesh, name",
                &[&key.rtype.name(), &key.mesh, &key.name],
            )
            .await
            .map_err(backend)?;
        let mut revision = first;
        for (i, row) in doomed.iter().enumerate() {
            let rtype: String = row.get(0);
            let Some(rtype) = ResourceType::from_name(&rtype) else {
                continue;
            };
            let k = ResourceKey::new(
                rtype,
                row.get::<_, String>(1).as_str(),
                row.get::<_, String>(2).as_str(),
            );
            if i > 0 {
                revision = next_revision(&tx).await?;
            }
            log_event(&tx, revision, EventKind::Delete, &k, row.get(3)).await?;
        }
        // The foreign key cascades to everything owned.
        tx.execute(
            "DELETE FROM resources WHERE type = $1 AND mesh = $2 AND name = $3",
            &[&key.rtype.name(), &key.mesh, &key.name],
        )
        .await
        .map_err(backend)?;
        tx.execute(
            "DELETE FROM store_events WHERE at < now() - make_interval(secs => $1)",
            &[&(EVENT_RETENTION.as_secs_f64())],
        )
        .await
        .map_err(backend)?;
        commit(tx).await?;
        self.wrote.notify_one();
        Ok(())
    }

    async fn get(&self, key: &ResourceKey) -> Result<Resource, StoreError> {
        self.reading(|| self.get_once(key)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.reading(|| self.list_once(query)).await
    }

    fn watch(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }
}

/// The event reader: delivers the log after `last`, in order, whenever told to look.
async fn read_events(
    config: PostgresConfig,
    events: broadcast::Sender<StoreEvent>,
    wrote: Arc<Notify>,
    mut last: i64,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_and_deliver(&config, &events, &wrote, &mut last).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "store event reader lost PostgreSQL; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn listen_and_deliver(
    config: &PostgresConfig,
    events: &broadcast::Sender<StoreEvent>,
    wrote: &Notify,
    last: &mut i64,
) -> Result<(), String> {
    let notified = Arc::new(Notify::new());
    let (client, mut closed) = open_session(config, Some(notified.clone())).await?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| describe(&e))?;
    loop {
        let rows = client
            .query(
                "SELECT revision, kind, type, mesh, name, version FROM store_events \
                 WHERE revision > $1 ORDER BY revision",
                &[&*last],
            )
            .await
            .map_err(|e| describe(&e))?;
        if let Some(first) = rows.first().map(|r| r.get::<_, i64>(0))
            && first > *last + 1
        {
            tracing::error!(
                missed = first - *last - 1,
                "store events were pruned before this instance read them; restart it to resynchronise"
            );
        }
        for row in rows {
            let revision: i64 = row.get(0);
            let Some(rtype) = ResourceType::from_name(row.get::<_, &str>(2)) else {
                *last = revision;
                continue;
            };
            let version: i64 = row.get(5);
            let _ = events.send(StoreEvent {
                kind: kind_of(row.get(1)),
                key: ResourceKey::new(rtype, row.get::<_, &str>(3), row.get::<_, &str>(4)),
                version: Version(version.to_string()),
                revision: u64::try_from(revision).unwrap_or(0),
            });
            *last = revision;
        }
        tokio::select! {
            _ = notified.notified() => {}
            _ = wrote.notified() => {}
            _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
            reason = &mut closed => return Err(reason.unwrap_or_else(|_| "connection task ended".into())),
        }
    }
}

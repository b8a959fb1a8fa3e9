//! A [`ResourceStore`] in an embedded SQLite file, for single-node installs that must keep
//! their state across restarts without running a database server.
//!
//! The schema follows the PostgreSQL store's ideas: one `resources` table keyed by
//! (type, mesh, name) with the resource document, version, timestamps and owner (filters
//! other than type and mesh run on the decoded documents, so labels need no column), and a
//! one-row revision counter, so versions are revisions and survive restarts. The file is
//! migrated when the store opens (one node owns it); a file written by a newer binary is
//! refused, and so is a file another store has open (`<file>.lock` is locked while a store is
//! open, and names its holder). One connection serves every operation on a blocking thread;
//! writes are transactions, and their events are broadcast in commit order while the
//! connection is held.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;
use tokio::sync::broadcast;

use kuma_core::resource::{Resource, ResourceKey, ResourceType, Version};
use kuma_core::store::{
    BackendError, EventKind, ListQuery, Page, ResourceStore, StoreError, StoreEvent,
};

use crate::common::{check_version, document, now, restore};
use crate::memory::DEFAULT_EVENT_CAPACITY;

/// The schema, one migration per version; version n is `MIGRATIONS[n - 1]`.
pub const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE resources (
    type TEXT NOT NULL,
    mesh TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    resource TEXT NOT NULL,
    creation_time TEXT NOT NULL,
    modification_time TEXT NOT NULL,
    owner_type TEXT,
    owner_mesh TEXT,
    owner_name TEXT,
    PRIMARY KEY (type, mesh, name),
    FOREIGN KEY (owner_type, owner_mesh, owner_name)
        REFERENCES resources (type, mesh, name) ON DELETE CASCADE
);
CREATE INDEX resources_owner ON resources (owner_type, owner_mesh, owner_name);
CREATE TABLE store_revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO store_revision VALUES (1, 0);
"#];

/// Errors of opening the file.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// The file could not be opened or migrated.
    #[error("SQLite store {path}: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The file was written by a newer binary.
    #[error("SQLite store {path}: schema version {found} is newer than this binary's {expected}")]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// This build's.
        expected: i64,
    },
    /// Another control plane has the file open.
    #[error(
        "SQLite store {path} is in use by another control plane ({holder}): only one control plane may use a file (several instances need PostgreSQL)"
    )]
    InUse {
        /// The file.
        path: PathBuf,
        /// Who holds it, as it wrote in the lock file (process id, host, since when).
        holder: String,
    },
}

/// Resources in an SQLite file. See the module documentation.
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    events: broadcast::Sender<StoreEvent>,
    /// `<file>.lock`, locked exclusively while the store is open (the kernel drops the lock
    /// when the process dies, however it dies).
    _lock: std::fs::File,
}

/// The lock file of the store at `path`: `kuma.db` -> `kuma.db.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock of the store at `path` and writes who holds it into the lock file; a lock
/// held elsewhere is refused, naming its holder.
fn lock(path: &Path) -> Result<std::fs::File, SqliteError> {
    use std::io::{Read, Seek, Write};
    let lock_file = lock_path(path);
    let open_err = |e: std::io::Error| SqliteError::Open {
        path: path.to_path_buf(),
        message: format!("lock file {}: {e}", lock_file.display()),
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_file)
        .map_err(open_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(SqliteError::InUse {
                path: path.to_path_buf(),
                holder: if holder.is_empty() {
                    format!("see {}", lock_file.display())
                } else {
                    holder.to_string()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(open_err(e)),
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "an unknown host".into());
    let holder = format!(
        "process {} on {host}, since {}",
        std::process::id(),
        time(&Utc::now())
    );
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(holder.as_bytes()))
        .map_err(open_err)?;
    Ok(file)
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(BackendError::caused_by("SQLite", e))
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the store at `path`.
    pub fn open(path: &Path) -> Result<Self, SqliteError> {
        let err = |e: rusqlite::Error| SqliteError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| SqliteError::Open {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        let lock = lock(path)?;
        let mut connection = Connection::open(path).map_err(err)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
            )
            .map_err(err)?;
        let found: i64 = connection
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        let expected = MIGRATIONS.len() as i64;
        if found > expected {
            return Err(SqliteError::TooNew {
                path: path.to_path_buf(),
                found,
                expected,
            });
        }
        let tx = connection.transaction().map_err(err)?;
        for v in found + 1..=expected {
            let Some(sql) = usize::try_from(v - 1).ok().and_then(|i| MIGRATIONS.get(i)) else {
                break;
            };
            tx.execute_batch(sql).map_err(err)?;
            tx.execute_batch(&format!("PRAGMA user_version = {v}"))
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        let (events, _) = broadcast::channel(DEFAULT_EVENT_CAPACITY);
        Ok(SqliteStore {
            connection: Arc::new(Mutex::new(connection)),
            events,
            _lock: lock,
        })
    }

    /// Runs `f` with the connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &broadcast::Sender<StoreEvent>) -> Result<T, StoreError>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        let connection = self.connection.clone();
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside `f` rolls its transaction back (dropped uncommitted), so a
            // poisoned lock still guards a consistent database.
            let mut c = connection.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c, &events)
        })
        .await
        .map_err(|e| StoreError::Backend(BackendError::caused_by("SQLite task", e)))?
    }
}

fn next_revision(tx: &Transaction<'_>) -> Result<i64, StoreError> {
    tx.query_row(
        "UPDATE store_revision SET value = value + 1 RETURNING value",
        [],
        |r| r.get(0),
    )
    .map_err(backend)
}

fn current(tx: &Transaction<'_>, key: &ResourceKey) -> Result<Option<(i64, String)>, StoreError> {
    tx.query_row(
        "SELECT version, creation_time FROM resources WHERE type = ?1 AND mesh = ?2 AND name = ?3",
        params![key.rtype.name(), key.mesh, key.name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(backend)
}

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            StoreError::Backend(BackendError::caused_by("a stored time does not parse", e))
        })
}

/// A resource from (resource, version, creation_time, modification_time).
fn decode(doc: &str, version: i64, created: &str, modified: &str) -> Result<Resource, StoreError> {
    let value: Value = serde_json::from_str(doc).map_err(|e| {
        StoreError::Backend(BackendError::caused_by(
            "a stored resource does not decode",
            e,
        ))
    })?;
    restore(value, version, parse_time(created)?, parse_time(modified)?)
}

fn emit(
    events: &broadcast::Sender<StoreEvent>,
    kind: EventKind,
    key: ResourceKey,
    version: i64,
    revision: i64,
) {
    let _ = events.send(StoreEvent {
        kind,
        key,
        version: Version(version.to_string()),
        revision: u64::try_from(revision).unwrap_or(0),
    });
}

#[async_trait]
impl ResourceStore for SqliteStore {
    async fn create(
        &self,
        mut resource: Resource,
        owner: Option<ResourceKey>,
    ) -> Result<Resource, StoreError> {
        self.with(move |c, events| {
            let key = resource.key();
            let tx = c.transaction().map_err(backend)?;
            if current(&tx, &key)?.is_some() {
                return Err(StoreError::AlreadyExists(key));
            }
            if let Some(o) = &owner
                && current(&tx, o)?.is_none()
            {
                return Err(StoreError::OwnerNotFound(o.clone()));
            }
            let revision = next_revision(&tx)?;
            let now = now();
            resource.meta.version = Version(revision.to_string());
            resource.meta.creation_time = Some(now);
            resource.meta.modification_time = Some(now);
            tx.execute(
                "INSERT INTO resources (type, mesh, name, version, resource, creation_time, modification_time, owner_type, owner_mesh, owner_name) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9)",
                params![
                    key.rtype.name(),
                    key.mesh,
                    key.name,
                    revision,
                    document(&resource).to_string(),
                    time(&now),
                    owner.as_ref().map(|o| o.rtype.name()),
                    owner.as_ref().map(|o| o.mesh.clone()),
                    owner.as_ref().map(|o| o.name.clone()),
                ],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            emit(events, EventKind::Create, key, revision, revision);
            Ok(resource)
        })
        .await
    }

    async fn update(&self, mut resource: Resource) -> Result<Resource, StoreError> {
        self.with(move |c, events| {
            let key = resource.key();
            let tx = c.transaction().map_err(backend)?;
            let (version, created) =
                current(&tx, &key)?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
            check_version(&key, &Version(version.to_string()), &resource.meta.version)?;
            let revision = next_revision(&tx)?;
            let now = now();
            resource.meta.version = Version(revision.to_string());
            resource.meta.creation_time = Some(parse_time(&created)?);
            resource.meta.modification_time = Some(now);
            tx.execute(
                "UPDATE resources SET version = ?4, resource = ?5, modification_time = ?6 \
                 WHERE type = ?1 AND mesh = ?2 AND name = ?3",
                params![
                    key.rtype.name(),
                    key.mesh,
                    key.name,
                    revision,
                    document(&resource).to_string(),
                    time(&now),
                ],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            emit(events, EventKind::Update, key, revision, revision);
            Ok(resource)
        })
        .await
    }

    async fn delete(&self, key: &ResourceKey, version: Option<&Version>) -> Result<(), StoreError> {
        let key = key.clone();
        let version = version.cloned();
        self.with(move |c, events| {
            let tx = c.transaction().map_err(backend)?;
            let (stored, _) =
                current(&tx, &key)?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
            if let Some(v) = &version {
                check_version(&key, &Version(stored.to_string()), v)?;
            }
            let doomed: Vec<(String, String, String, i64)> = {
                let mut stmt = tx
                    .prepare(
                        "WITH RECURSIVE closure (type, mesh, name, version, depth) AS ( \
                           SELECT type, mesh, name, version, 0 FROM resources \
                             WHERE type = ?1 AND mesh = ?2 AND name = ?3 \
                           UNION \
                           SELECT r.type, r.mesh, r.name, r.version, c.depth + 1 FROM resources r \
                             JOIN closure c ON r.owner_type = c.type AND r.owner_mesh = c.mesh AND r.owner_name = c.name \
                         ) SELECT type, mesh, name, version, min(depth) AS d FROM closure \
                           GROUP BY type, mesh, name, version ORDER BY d, type, mesh, name",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![key.rtype.name(), key.mesh, key.name], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .map_err(backend)?;
                rows.collect::<Result<_, _>>().map_err(backend)?
            };
            let mut deleted = Vec::new();
            for (rtype, mesh, name, version) in doomed {
                let Some(rtype) = ResourceType::from_name(&rtype) else {
                    continue;
                };
                let revision = next_revision(&tx)?;
                deleted.push((ResourceKey::new(rtype, &mesh, &name), version, revision));
            }
            tx.execute(
                "DELETE FROM resources WHERE type = ?1 AND mesh = ?2 AND name = ?3",
                params![key.rtype.name(), key.mesh, key.name],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            for (k, version, revision) in deleted {
                emit(events, EventKind::Delete, k, version, revision);
            }
            Ok(())
        })
        .await
    }

    async fn get(&self, key: &ResourceKey) -> Result<Resource, StoreError> {
        let key = key.clone();
        self.with(move |c, _| {
            let row: Option<(String, i64, String, String)> = c
                .query_row(
                    "SELECT resource, version, creation_time, modification_time FROM resources \
                     WHERE type = ?1 AND mesh = ?2 AND name = ?3",
                    params![key.rtype.name(), key.mesh, key.name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(backend)?;
            let (doc, version, created, modified) =
                row.ok_or_else(|| StoreError::NotFound(key.clone()))?;
            decode(&doc, version, &created, &modified)
        })
        .await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let query = query.clone();
        self.with(move |c, _| {
            // Type and mesh select in SQL (the primary key's order is the list order). Without
            // other filters SQL pages too; the others need the decoded resource.
            let native = query.name_contains.is_none()
                && query.labels.is_empty()
                && query.tags.is_empty()
                && query.gateway.is_none();
            let start = query.start()?;
            let (limit, offset) = match (native, query.size) {
                (true, Some(size)) => (i64::try_from(size.max(1)).unwrap_or(i64::MAX), start),
                (true, None) => (-1, start),
                (false, _) => (-1, 0),
            };
            let mut stmt = c
                .prepare_cached(
                    "SELECT resource, version, creation_time, modification_time FROM resources \
                     WHERE type = ?1 AND (?2 IS NULL OR mesh = ?2) ORDER BY mesh, name \
                     LIMIT ?3 OFFSET ?4",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![
                        query.rtype.name(),
                        query.mesh,
                        limit,
                        i64::try_from(offset).unwrap_or(i64::MAX)
                    ],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    },
                )
                .map_err(backend)?;
            let mut resources = Vec::new();
            for row in rows {
                let (doc, version, created, modified) = row.map_err(backend)?;
                resources.push(decode(&doc, version, &created, &modified)?);
            }
            if !native {
                return Page::collect(resources.iter().filter(|r| query.matches(r)), &query);
            }
            let total: i64 = c
                .prepare_cached(
                    "SELECT count(*) FROM resources WHERE type = ?1 AND (?2 IS NULL OR mesh = ?2)",
                )
                .and_then(|mut s| {
                    s.query_row(params![query.rtype.name(), query.mesh], |r| r.get(0))
                })
                .map_err(backend)?;
            let total = usize::try_from(total).unwrap_or(0);
            if start > total {
                return Err(StoreError::InvalidOffset(start.to_string()));
            }
            let end = start + resources.len();
            Ok(Page {
                items: resources,
                total,
                next_offset: (end < total).then(|| end.to_string()),
            })
        })
        .await
    }

    fn watch(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }
}

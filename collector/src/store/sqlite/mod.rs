//! The SQLite store: embedded, WAL, `synchronous=FULL`, one writer thread with group commit
//! (`tally_runtime::sqlite_writer`), and a small pool of read connections used from `spawn_blocking`.

mod admin;
mod agent_keys;
mod alerts;
pub mod backup;
mod incidents;
mod ingest;
mod keyrings;
mod lifecycle;
mod periods;
mod queries;
pub(super) mod schema;

use super::*;
use crate::clock::Clock;
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_runtime::sqlite_writer::{WriteFailed, Writer};

impl From<WriteFailed> for StoreError {
    fn from(e: WriteFailed) -> Self {
        StoreError::Database(e.0)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        // Busy or locked past the busy timeout: another writer holds the file; a retry can
        // succeed, so callers answer "unavailable, retry" rather than "failed".
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

/// Pool of read-only connections. A std `Mutex` is right here: it is held only to push or
/// pop a connection, never across an `.await` or a query.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn take(&self) -> StoreResult<Connection> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(Duration::from_secs(10))?;
        Ok(c)
    }

    fn put(&self, c: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Enough for every concurrent Submit's key lookup: with 8, a load of 32 agents
        // closed and reopened connections (schema parse and all) on every call, which the
        // ingest profile showed as sqlite3BtreeOpen.
        if idle.len() < MAX_IDLE_READERS {
            idle.push(c);
        }
    }
}

/// Read connections kept open between reads.
const MAX_IDLE_READERS: usize = 64;

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<ReadPool>,
    /// "Now" inside the writer (receipt and close times).
    clock: Clock,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    // The ingest path alone uses ~15 distinct statements; rusqlite's default cache of 16
    // evicted and re-parsed some on every transaction (seen as sqlite3RunParser in the
    // writer's profile).
    conn.set_prepared_statement_cache_capacity(64);
    // A 64 MiB page cache for the writer: the report table and its (agent, seq) index are
    // probed for every report, and SQLite's 2 MiB default turns a large store into disk
    // reads (see BENCHMARKS.md, ingest-scaling).
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -65536;",
    )?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations. Its
    /// clock is the system's.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        Self::open_with_clock(path, Clock::system())
    }

    /// Like [`SqliteStore::open`], with `clock` as its "now" (tests choose their date).
    pub fn open_with_clock(path: &Path, clock: Clock) -> StoreResult<SqliteStore> {
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        let writer = Writer::start(conn, "tally-sqlite-writer")
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            writer,
            readers: Arc::new(ReadPool {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
            clock,
        })
    }

    async fn read<R, F>(&self, f: F) -> StoreResult<R>
    where
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
        R: Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            // One read transaction, so multi-statement reads see one snapshot.
            conn.execute_batch("BEGIN")?;
            let r = f(&conn);
            let _ = conn.execute_batch("COMMIT");
            pool.put(conn);
            r
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }
}

fn secs(t: Instant) -> i64 {
    t.timestamp()
}

#[async_trait]
impl Store for SqliteStore {
    fn clock(&self) -> Clock {
        self.clock
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn collector_key(&self) -> StoreResult<Option<[u8; 32]>> {
        self.read(admin::collector_key).await
    }

    async fn bind_collector_key(&self, key: [u8; 32]) -> StoreResult<()> {
        self.writer
            .write(move |c| admin::bind_collector_key(c, key))
            .await
    }
}

#[async_trait]
impl Inspect for SqliteStore {
    async fn stored_reports(&self) -> StoreResult<Vec<StoredReport>> {
        self.read(queries::stored_reports).await
    }

    #[cfg(any(test, feature = "testing"))]
    fn build_schema_version(&self) -> usize {
        schema::VERSION
    }

    #[cfg(any(test, feature = "testing"))]
    async fn set_schema_version(&self, version: usize) -> StoreResult<()> {
        self.writer
            .write(move |c| Ok(c.execute_batch(&format!("PRAGMA user_version = {version}"))?))
            .await
    }

    #[cfg(any(test, feature = "testing"))]
    async fn migrate_again(&self) -> StoreResult<()> {
        let path = self.readers.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = Connection::open(&path)?;
            configure(&conn)?;
            schema::migrate(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Database(e.to_string()))?
    }

    #[cfg(any(test, feature = "testing"))]
    async fn forget_agent_keys(&self, agent_id: String) -> StoreResult<()> {
        self.writer
            .write(move |c| {
                c.execute("DELETE FROM agent_keys WHERE agent_id = ?1", [agent_id])?;
                Ok(())
            })
            .await
    }
}

/// The `status` column: [`ReportStatus::as_str`] both ways; anything else is a corrupt row.
impl rusqlite::types::FromSql for crate::rules::ReportStatus {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = v.as_str()?;
        crate::rules::ReportStatus::from_db(s).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(format!("unknown report status {s:?}").into())
        })
    }
}

impl rusqlite::types::ToSql for crate::rules::ReportStatus {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

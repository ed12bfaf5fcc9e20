//! The SQLite store: embedded, WAL, `synchronous=FULL`, one writer thread with group commit
//! (`tally_runtime::sqlite_writer`), and a small pool of read connections used from `spawn_blocking`.

mod admin;
mod alerts;
pub mod backup;
mod ingest;
mod lifecycle;
mod periods;
mod queries;
pub(super) mod schema;

use super::*;
use crate::clock::Clock;
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
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

    async fn agents_by_keys(
        &self,
        keys: Vec<[u8; 32]>,
    ) -> StoreResult<HashMap<[u8; 32], AgentKeyRecord>> {
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT id, license_id, revoked_at FROM agents WHERE key = ?1")?;
            let mut out = HashMap::new();
            for k in keys {
                if out.contains_key(&k) {
                    continue;
                }
                let row = stmt
                    .query_row([k.as_slice()], |r| {
                        Ok(AgentKeyRecord {
                            agent_id: r.get(0)?,
                            license_id: r.get(1)?,
                            revoked: r.get::<_, Option<i64>>(2)?.is_some(),
                        })
                    })
                    .optional()?;
                if let Some(row) = row {
                    out.insert(k, row);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn ingest(
        &self,
        reports: Vec<AuthenticReport>,
        received_at: Instant,
        source: Source,
    ) -> StoreResult<Vec<StoredOutcome>> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let clock = self.clock;
        self.writer
            .write(move |c| ingest::ingest_batch(c, &reports, received_at, source, clock))
            .await
    }

    async fn enroll(
        &self,
        license_id: String,
        token_hash: [u8; 32],
        agent_key: [u8; 32],
        now: Instant,
    ) -> StoreResult<(String, Vec<u8>)> {
        self.writer
            .write(move |c| admin::enroll(c, &license_id, &token_hash, &agent_key, secs(now)))
            .await
    }

    async fn add_customer(&self, name: String, now: Instant) -> StoreResult<CustomerRecord> {
        self.writer
            .write(move |c| admin::add_customer(c, &name, secs(now)))
            .await
    }

    async fn list_customers(&self, only: Option<String>) -> StoreResult<Vec<CustomerRecord>> {
        self.read(move |c| admin::list_customers(c, only.as_deref()))
            .await
    }

    async fn customer_exists(&self, id: String) -> StoreResult<bool> {
        self.read(move |c| {
            Ok(
                c.query_row("SELECT 1 FROM customers WHERE id = ?1", [id], |_| Ok(()))
                    .optional()?
                    .is_some(),
            )
        })
        .await
    }

    async fn issue_license(&self, new: NewLicense, now: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| admin::issue_license(c, &new, secs(now)))
            .await
    }

    async fn list_licenses(&self, customer: Option<String>) -> StoreResult<Vec<LicenseRecord>> {
        self.read(move |c| admin::list_licenses(c, customer.as_deref()))
            .await
    }

    async fn revoke_license(&self, id: String, now: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| admin::revoke_license(c, &id, secs(now)))
            .await
    }

    async fn add_agent(
        &self,
        license_id: String,
        key: [u8; 32],
        now: Instant,
    ) -> StoreResult<String> {
        self.writer
            .write(move |c| admin::add_agent(c, &license_id, &key, secs(now)))
            .await
    }

    async fn list_agents(&self, filter: AgentFilter) -> StoreResult<Vec<AgentRecord>> {
        self.read(move |c| admin::list_agents(c, &filter)).await
    }

    async fn revoke_agent(&self, id: String, now: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| admin::revoke_agent(c, &id, secs(now)))
            .await
    }

    async fn create_token(
        &self,
        id: String,
        hash: [u8; 32],
        role: Role,
        name: String,
        now: Instant,
    ) -> StoreResult<()> {
        self.writer
            .write(move |c| admin::create_token(c, &id, &hash, &role, &name, secs(now)))
            .await
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenListing>> {
        self.read(admin::list_tokens).await
    }

    async fn revoke_token(&self, id: String, now: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| admin::revoke_token(c, &id, secs(now)))
            .await
    }

    async fn token_by_hash(&self, hash: [u8; 32]) -> StoreResult<Option<TokenRecord>> {
        self.read(move |c| admin::token_by_hash(c, &hash)).await
    }

    async fn audit(&self, entry: AuditEntry) -> StoreResult<()> {
        self.writer.write(move |c| admin::audit(c, &entry)).await
    }

    async fn audit_repeatable(&self, entry: AuditEntry, since: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| admin::audit_repeatable(c, &entry, since))
            .await
    }

    async fn list_audit(&self, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |c| admin::list_audit(c, limit)).await
    }

    async fn hourly_usage(&self, filter: UsageFilter) -> StoreResult<Vec<HourlyUsage>> {
        self.read(move |c| queries::hourly_usage(c, &filter)).await
    }

    async fn statement(
        &self,
        customer: String,
        month_start: i64,
    ) -> StoreResult<Vec<StatementLine>> {
        self.read(move |c| queries::statement(c, &customer, month_start))
            .await
    }

    async fn anomalies(&self, customer: Option<String>) -> StoreResult<Vec<AnomalyRecord>> {
        self.read(move |c| queries::anomalies(c, customer.as_deref()))
            .await
    }

    async fn quarantine(&self, customer: Option<String>) -> StoreResult<Vec<QuarantineRecord>> {
        self.read(move |c| queries::quarantine(c, customer.as_deref()))
            .await
    }

    async fn release(&self, digest: Digest, now: Instant) -> StoreResult<bool> {
        self.writer
            .write(move |c| queries::release(c, &digest, secs(now)))
            .await
    }

    async fn discard(&self, digest: Digest, now: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| queries::discard(c, &digest, secs(now)))
            .await
    }

    async fn cancel_customer(
        &self,
        id: String,
        now: Instant,
        purge_at: Instant,
    ) -> StoreResult<Cancellation> {
        self.writer
            .write(move |c| lifecycle::cancel_customer(c, &id, secs(now), secs(purge_at)))
            .await
    }

    async fn purge_due(&self, now: Instant) -> StoreResult<Vec<Purge>> {
        let now = secs(now);
        let ids = self.read(move |c| lifecycle::purge_due_ids(c, now)).await?;
        let mut out = Vec::new();
        for id in ids {
            // One transaction per customer: a large purge does not hold up ingest for the
            // whole set, and a failure leaves the others done.
            if let Some(p) = self
                .writer
                .write(move |c| lifecycle::purge_one(c, &id, now))
                .await?
            {
                out.push(p);
            }
        }
        Ok(out)
    }

    async fn periods(&self) -> StoreResult<Vec<PeriodRecord>> {
        self.read(periods::periods).await
    }

    async fn begin_close(&self, month: i64, now: Instant) -> StoreResult<PeriodRecord> {
        let clock = self.clock;
        self.writer
            .write(move |c| periods::begin_close(c, month, now, clock))
            .await
    }

    async fn license_limits(
        &self,
        customer: String,
        month: i64,
    ) -> StoreResult<Vec<crate::rules::LicenseLimit>> {
        self.read(move |c| periods::license_limits(c, &customer, month))
            .await
    }

    async fn statement_evidence(
        &self,
        customer: String,
        month: i64,
        agent: String,
    ) -> StoreResult<Vec<EvidenceRow>> {
        self.read(move |c| periods::statement_evidence(c, &customer, month, &agent))
            .await
    }

    async fn counted_reports(
        &self,
        customer: String,
        month: i64,
        only_late: bool,
    ) -> StoreResult<Vec<CountedReport>> {
        self.read(move |c| periods::counted_reports(c, &customer, month, only_late))
            .await
    }

    async fn finish_close(
        &self,
        month: i64,
        statements: Vec<(String, Vec<u8>)>,
    ) -> StoreResult<()> {
        self.writer
            .write(move |c| periods::finish_close(c, month, &statements))
            .await
    }

    async fn closed_statement(&self, customer: String, month: i64) -> StoreResult<Option<Vec<u8>>> {
        self.read(move |c| periods::closed_statement(c, &customer, month))
            .await
    }

    async fn expire_reports(
        &self,
        closed_before: Instant,
        now: Instant,
    ) -> StoreResult<Vec<Expiry>> {
        let months = self
            .read(move |c| periods::months_to_expire(c, closed_before))
            .await?;
        let mut out = Vec::new();
        for month in months {
            // One transaction per month, so a large removal does not hold up ingest long.
            out.push(
                self.writer
                    .write(move |c| periods::expire_month(c, month, secs(now)))
                    .await?,
            );
        }
        Ok(out)
    }

    async fn retained_digests(&self, agent: Option<String>) -> StoreResult<Vec<RetainedDigest>> {
        self.read(move |c| periods::retained_digests(c, agent.as_deref()))
            .await
    }

    async fn agent_reports(
        &self,
        agent_id: String,
        before_seq: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<AgentReportRecord>> {
        self.read(move |c| queries::agent_reports(c, &agent_id, before_seq, limit))
            .await
    }

    async fn set_license_alerts(&self, license_id: String, percents: Vec<u32>) -> StoreResult<()> {
        self.writer
            .write(move |c| alerts::set_license_alerts(c, &license_id, &percents))
            .await
    }

    async fn alerts(&self, customer: Option<String>, limit: u32) -> StoreResult<Vec<AlertRecord>> {
        self.read(move |c| alerts::alerts(c, customer.as_deref(), limit))
            .await
    }

    async fn claim_due_alerts(
        &self,
        now: Instant,
        lease_until: Instant,
        limit: u32,
    ) -> StoreResult<Vec<AlertRecord>> {
        self.writer
            .write(move |c| alerts::claim_due(c, secs(now), secs(lease_until), limit))
            .await
    }

    async fn alert_attempted(
        &self,
        id: String,
        now: Instant,
        next_attempt: Option<Instant>,
    ) -> StoreResult<()> {
        self.writer
            .write(move |c| alerts::attempted(c, &id, secs(now), next_attempt.map(secs)))
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

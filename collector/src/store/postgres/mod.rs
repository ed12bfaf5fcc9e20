//! The PostgreSQL store: several collector processes share one database.
//!
//! - Connections come from a `deadpool-postgres` pool; every write is one READ COMMITTED
//!   transaction. Correctness under N collectors rests on row locks taken in a fixed
//!   order and on the database's unique constraints, not on SERIALIZABLE retries: ingest
//!   locks the rows of the agents it writes for (`FOR UPDATE`, sorted by id), so two
//!   collectors handed the same agent's reports take turns, and the second sees the
//!   first's rows. `(agent, seq)` of main reports and every digest are unique in the
//!   schema itself, a backstop should a lock ever be missed.
//! - Rollups and monthly sums are updated additively (`quantity = rollups.quantity +
//!   excluded.quantity`), never read-modify-written, so concurrent collectors cannot
//!   lose an update; rows are upserted in key order so two transactions never deadlock
//!   on them.
//! - A lost connection or a database that is restarting is [`StoreError::Unavailable`]:
//!   gRPC answers `UNAVAILABLE` (agents retry), the API answers 503. A transaction that
//!   did not commit returns an error, so no receipt is ever sent for it.

mod admin;
mod alerts;
mod ingest;
mod lifecycle;
mod periods;
mod queries;
mod schema;

use super::*;
use crate::clock::Clock;
use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use tokio_postgres::Row;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;

/// The SQL parameter type every query here takes.
pub(super) type Param<'a> = &'a (dyn ToSql + Sync);

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            // Conditions a retry can clear: the database is restarting or overloaded, or
            // this transaction lost a lock race. Nothing of the transaction was written.
            let transient = [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::LOCK_NOT_AVAILABLE,
            ];
            if [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
            ]
            .contains(code)
            {
                return StoreError::Contended(db.message().to_string());
            }
            if transient.contains(code) || code.code().starts_with("08") {
                return StoreError::Unavailable(db.message().to_string());
            }
            return StoreError::Database(format!("{}: {}", code.code(), db.message()));
        }
        // No answer from the server: the connection is closed or never opened.
        if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
        {
            return StoreError::Unavailable(e.to_string());
        }
        StoreError::Database(e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// Connections one collector keeps to the database: enough for every concurrent Submit
/// of a busy collector (each holds one for its transaction) without crowding a server
/// shared by several collectors.
const POOL_SIZE: usize = 16;

/// The PostgreSQL implementation of [`Store`].
pub struct PostgresStore {
    pool: Pool,
    /// Receipt and close times are the database server's clock (shared by every
    /// collector) plus this clock's offset, which is zero in production (see
    /// [`crate::clock`]).
    clock: Clock,
}

impl PostgresStore {
    /// Connects to the database `url` names and brings its schema up to date (safe when
    /// several collectors start at once). A database that cannot be reached is
    /// [`StoreError::Unavailable`]; the URL (which may hold a password) is never echoed.
    /// `clock` is [`Clock::system`] in production; tests shift it to choose their date.
    pub async fn connect(url: &str, clock: Clock) -> StoreResult<PostgresStore> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Invalid(format!("--database: not a valid PostgreSQL URL: {e}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("tally-collector");
        // A database host that vanishes without closing its connections (a network
        // partition, a power cut) must not leave calls hanging: keepalives find the dead
        // connection, and unacknowledged writes give up after 30 s (Linux), so callers get
        // `Unavailable` and the pool opens a new connection.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(15));
        config.tcp_user_timeout(Duration::from_secs(30));
        // Where the database is, for error messages: never the user or the password.
        let server = config
            .get_hosts()
            .iter()
            .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(h, p)| match h {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
                tokio_postgres::config::Host::Unix(d) => format!("{}:{p}", d.display()),
            })
            .collect::<Vec<_>>()
            .join(",");
        let manager_config = ManagerConfig {
            // Reuse a pooled connection after a cheap liveness check; a connection that
            // died with the server is dropped and a new one opened.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match config.get_ssl_mode() {
            SslMode::Require => Manager::from_config(config, tls_connector()?, manager_config),
            // `prefer` (the default) and `disable`: plain TCP. Ask for TLS with
            // `sslmode=require`; silently falling back to plain text is not offered.
            _ => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Invalid(format!("--database: {e}")))?;
        let store = PostgresStore { pool, clock };
        let mut client = store.client().await.map_err(|e| match e {
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("cannot reach PostgreSQL at {server}: {m}"))
            }
            other => other,
        })?;
        schema::migrate(&mut client).await?;
        Ok(store)
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }
}

/// TLS to the database with rustls (ring provider), trusting the public web roots plus
/// the CA file named by `PGSSLROOTCERT`, if set (libpq's variable for the same thing).
fn tls_connector() -> StoreResult<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = std::env::var_os("PGSSLROOTCERT") {
        let certs = CertificateDer::pem_file_iter(&path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                StoreError::Invalid(format!(
                    "PGSSLROOTCERT {}: {e}",
                    std::path::Path::new(&path).display()
                ))
            })?;
        for c in certs {
            roots.add(c).map_err(|e| {
                StoreError::Invalid(format!("PGSSLROOTCERT: not a usable CA certificate: {e}"))
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Invalid(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

// --- small helpers over prepared, cached statements --------------------------------------

pub(super) async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[Param<'_>],
) -> StoreResult<Vec<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, params).await?)
}

pub(super) async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[Param<'_>],
) -> StoreResult<Option<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&st, params).await?)
}

pub(super) async fn execute<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[Param<'_>],
) -> StoreResult<u64> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.execute(&st, params).await?)
}

/// A stored Unix time as an instant (times are written by this store, so always in range).
pub(super) fn ts(t: i64) -> Instant {
    chrono::DateTime::from_timestamp(t, 0).unwrap_or_default()
}

pub(super) fn secs(t: Instant) -> i64 {
    t.timestamp()
}

pub(super) fn digest_of(bytes: &[u8]) -> Digest {
    Digest::from_slice(bytes).unwrap_or(Digest([0; 32]))
}

/// Runs `f` in a transaction and commits it, retrying the whole transaction a few times
/// when the database reports a transient conflict (deadlock, lost lock race).
macro_rules! in_transaction {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut client = $store.client().await?;
            let result: StoreResult<_> = async {
                let $tx = client.transaction().await?;
                let out = $body;
                $tx.commit().await?;
                Ok(out)
            }
            .await;
            match result {
                Err(StoreError::Contended(_)) if attempt < 4 => {
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                other => break other,
            }
        }
    }};
}

#[async_trait]
impl Store for PostgresStore {
    fn clock(&self) -> Clock {
        self.clock
    }

    async fn ping(&self) -> StoreResult<()> {
        let c = self.client().await?;
        c.simple_query("SELECT 1").await?;
        Ok(())
    }

    async fn collector_key(&self) -> StoreResult<Option<[u8; 32]>> {
        let c = self.client().await?;
        admin::collector_key(&c).await
    }

    async fn bind_collector_key(&self, key: [u8; 32]) -> StoreResult<()> {
        let c = self.client().await?;
        admin::bind_collector_key(&c, key).await
    }

    async fn agents_by_keys(
        &self,
        keys: Vec<[u8; 32]>,
    ) -> StoreResult<HashMap<[u8; 32], AgentKeyRecord>> {
        let c = self.client().await?;
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        let rows = query(
            &c,
            "SELECT key, id, license_id, revoked_at IS NOT NULL FROM agents WHERE key = ANY($1)",
            &[&keys],
        )
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let key: Vec<u8> = r.get(0);
            if let Ok(key) = <[u8; 32]>::try_from(key) {
                out.insert(
                    key,
                    AgentKeyRecord {
                        agent_id: r.get(1),
                        license_id: r.get(2),
                        revoked: r.get(3),
                    },
                );
            }
        }
        Ok(out)
    }

    /// The receipt time comes from the database's clock, not `_received_at` (see
    /// `ingest::ingest_batch`).
    async fn ingest(
        &self,
        reports: Vec<AuthenticReport>,
        _received_at: Instant,
        source: Source,
    ) -> StoreResult<Vec<StoredOutcome>> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let offset = self.clock.offset_micros();
        in_transaction!(self, |tx| ingest::ingest_batch(
            &tx, &reports, source, offset
        )
        .await?)
    }

    async fn enroll(
        &self,
        license_id: String,
        token_hash: [u8; 32],
        agent_key: [u8; 32],
        now: Instant,
    ) -> StoreResult<(String, Vec<u8>)> {
        in_transaction!(self, |tx| {
            admin::enroll(&tx, &license_id, &token_hash, &agent_key, secs(now)).await?
        })
    }

    async fn add_customer(&self, name: String, now: Instant) -> StoreResult<CustomerRecord> {
        let c = self.client().await?;
        admin::add_customer(&c, &name, secs(now)).await
    }

    async fn list_customers(&self, only: Option<String>) -> StoreResult<Vec<CustomerRecord>> {
        let c = self.client().await?;
        admin::list_customers(&c, only.as_deref()).await
    }

    async fn customer_exists(&self, id: String) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(
            query_opt(&c, "SELECT 1 FROM customers WHERE id = $1", &[&id])
                .await?
                .is_some(),
        )
    }

    async fn issue_license(&self, new: NewLicense, now: Instant) -> StoreResult<()> {
        in_transaction!(self, |tx| admin::issue_license(&tx, &new, secs(now))
            .await?)
    }

    async fn list_licenses(&self, customer: Option<String>) -> StoreResult<Vec<LicenseRecord>> {
        let c = self.client().await?;
        admin::list_licenses(&c, customer.as_deref()).await
    }

    async fn revoke_license(&self, id: String, now: Instant) -> StoreResult<()> {
        in_transaction!(self, |tx| admin::revoke_license(&tx, &id, secs(now))
            .await?)
    }

    async fn add_agent(
        &self,
        license_id: String,
        key: [u8; 32],
        now: Instant,
    ) -> StoreResult<String> {
        in_transaction!(self, |tx| admin::add_agent(
            &tx,
            &license_id,
            &key,
            secs(now)
        )
        .await?)
    }

    async fn list_agents(&self, filter: AgentFilter) -> StoreResult<Vec<AgentRecord>> {
        let c = self.client().await?;
        admin::list_agents(&c, &filter).await
    }

    async fn revoke_agent(&self, id: String, now: Instant) -> StoreResult<()> {
        in_transaction!(self, |tx| admin::revoke_agent(&tx, &id, secs(now)).await?)
    }

    async fn create_token(
        &self,
        id: String,
        hash: [u8; 32],
        role: Role,
        name: String,
        now: Instant,
    ) -> StoreResult<()> {
        in_transaction!(self, |tx| {
            admin::create_token(&tx, &id, &hash, &role, &name, secs(now)).await?
        })
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenListing>> {
        let c = self.client().await?;
        admin::list_tokens(&c).await
    }

    async fn revoke_token(&self, id: String, now: Instant) -> StoreResult<()> {
        in_transaction!(self, |tx| admin::revoke_token(&tx, &id, secs(now)).await?)
    }

    async fn token_by_hash(&self, hash: [u8; 32]) -> StoreResult<Option<TokenRecord>> {
        let c = self.client().await?;
        admin::token_by_hash(&c, &hash).await
    }

    async fn audit(&self, entry: AuditEntry) -> StoreResult<()> {
        let c = self.client().await?;
        admin::audit(&c, &entry).await
    }

    async fn audit_repeatable(&self, entry: AuditEntry, since: Instant) -> StoreResult<()> {
        let c = self.client().await?;
        admin::audit_repeatable(&c, &entry, since).await
    }

    async fn list_audit(&self, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        let c = self.client().await?;
        admin::list_audit(&c, limit).await
    }

    async fn hourly_usage(&self, filter: UsageFilter) -> StoreResult<Vec<HourlyUsage>> {
        let c = self.client().await?;
        queries::hourly_usage(&c, &filter).await
    }

    async fn statement(
        &self,
        customer: String,
        month_start: i64,
    ) -> StoreResult<Vec<StatementLine>> {
        // One snapshot for the limits and the sums.
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let lines = queries::statement(&tx, &customer, month_start).await?;
        tx.commit().await?;
        Ok(lines)
    }

    async fn anomalies(&self, customer: Option<String>) -> StoreResult<Vec<AnomalyRecord>> {
        let c = self.client().await?;
        queries::anomalies(&c, customer.as_deref()).await
    }

    async fn quarantine(&self, customer: Option<String>) -> StoreResult<Vec<QuarantineRecord>> {
        let c = self.client().await?;
        queries::quarantine(&c, customer.as_deref()).await
    }

    async fn release(&self, digest: Digest, now: Instant) -> StoreResult<bool> {
        in_transaction!(self, |tx| queries::release(&tx, &digest, secs(now)).await?)
    }

    async fn discard(&self, digest: Digest, now: Instant) -> StoreResult<()> {
        in_transaction!(self, |tx| queries::discard(&tx, &digest, secs(now)).await?)
    }

    async fn cancel_customer(
        &self,
        id: String,
        now: Instant,
        purge_at: Instant,
    ) -> StoreResult<Cancellation> {
        in_transaction!(self, |tx| {
            lifecycle::cancel_customer(&tx, &id, secs(now), secs(purge_at)).await?
        })
    }

    async fn purge_due(&self, now: Instant) -> StoreResult<Vec<Purge>> {
        let now = secs(now);
        let ids = {
            let c = self.client().await?;
            lifecycle::purge_due_ids(&c, now).await?
        };
        let mut out = Vec::new();
        for id in ids {
            // One transaction per customer, as on SQLite. Two collectors may try the same
            // purge; the row lock makes the second find nothing left to do.
            if let Some(p) =
                in_transaction!(self, |tx| lifecycle::purge_one(&tx, &id, now).await?)?
            {
                out.push(p);
            }
        }
        Ok(out)
    }

    async fn periods(&self) -> StoreResult<Vec<PeriodRecord>> {
        let c = self.client().await?;
        periods::periods(&c).await
    }

    /// The close time comes from the database's clock, not `_now` (see
    /// `periods::begin_close`).
    async fn begin_close(&self, month: i64, _now: Instant) -> StoreResult<PeriodRecord> {
        let offset = self.clock.offset_micros();
        in_transaction!(self, |tx| periods::begin_close(&tx, month, offset).await?)
    }

    async fn license_limits(
        &self,
        customer: String,
        month: i64,
    ) -> StoreResult<Vec<crate::rules::LicenseLimit>> {
        let c = self.client().await?;
        periods::license_limits(&c, &customer, month).await
    }

    async fn statement_evidence(
        &self,
        customer: String,
        month: i64,
        agent: String,
    ) -> StoreResult<Vec<EvidenceRow>> {
        let c = self.client().await?;
        periods::statement_evidence(&c, &customer, month, &agent).await
    }

    async fn counted_reports(
        &self,
        customer: String,
        month: i64,
        only_late: bool,
    ) -> StoreResult<Vec<CountedReport>> {
        let c = self.client().await?;
        periods::counted_reports(&c, &customer, month, only_late).await
    }

    async fn finish_close(
        &self,
        month: i64,
        statements: Vec<(String, Vec<u8>)>,
    ) -> StoreResult<()> {
        in_transaction!(self, |tx| periods::finish_close(&tx, month, &statements)
            .await?)
    }

    async fn closed_statement(&self, customer: String, month: i64) -> StoreResult<Option<Vec<u8>>> {
        let c = self.client().await?;
        periods::closed_statement(&c, &customer, month).await
    }

    async fn expire_reports(
        &self,
        closed_before: Instant,
        now: Instant,
    ) -> StoreResult<Vec<Expiry>> {
        let months = {
            let c = self.client().await?;
            periods::months_to_expire(&c, closed_before).await?
        };
        let mut out = Vec::new();
        for month in months {
            out.push(in_transaction!(self, |tx| {
                periods::expire_month(&tx, month, secs(now)).await?
            })?);
        }
        Ok(out)
    }

    async fn retained_digests(&self, agent: Option<String>) -> StoreResult<Vec<RetainedDigest>> {
        let c = self.client().await?;
        periods::retained_digests(&c, agent.as_deref()).await
    }

    async fn agent_reports(
        &self,
        agent_id: String,
        before_seq: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<AgentReportRecord>> {
        let c = self.client().await?;
        queries::agent_reports(&c, &agent_id, before_seq, limit).await
    }

    async fn set_license_alerts(&self, license_id: String, percents: Vec<u32>) -> StoreResult<()> {
        in_transaction!(self, |tx| {
            alerts::set_license_alerts(&tx, &license_id, &percents).await?
        })
    }

    async fn alerts(&self, customer: Option<String>, limit: u32) -> StoreResult<Vec<AlertRecord>> {
        let c = self.client().await?;
        alerts::alerts(&c, customer.as_deref(), limit).await
    }

    async fn claim_due_alerts(
        &self,
        now: Instant,
        lease_until: Instant,
        limit: u32,
    ) -> StoreResult<Vec<AlertRecord>> {
        let c = self.client().await?;
        alerts::claim_due(&c, secs(now), secs(lease_until), limit).await
    }

    async fn alert_attempted(
        &self,
        id: String,
        now: Instant,
        next_attempt: Option<Instant>,
    ) -> StoreResult<()> {
        let c = self.client().await?;
        alerts::attempted(&c, &id, secs(now), next_attempt.map(secs)).await
    }
}

#[async_trait]
impl Inspect for PostgresStore {
    #[cfg(any(test, feature = "testing"))]
    fn build_schema_version(&self) -> usize {
        schema::MIGRATIONS.len()
    }

    #[cfg(any(test, feature = "testing"))]
    async fn set_schema_version(&self, version: usize) -> StoreResult<()> {
        let c = self.client().await?;
        let v = i32::try_from(version).unwrap_or(i32::MAX);
        execute(&c, "UPDATE tally_schema SET version = $1", &[&v]).await?;
        Ok(())
    }

    #[cfg(any(test, feature = "testing"))]
    async fn migrate_again(&self) -> StoreResult<()> {
        let mut c = self.client().await?;
        schema::migrate(&mut c).await
    }

    async fn stored_reports(&self) -> StoreResult<Vec<StoredReport>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT digest, status, bytes FROM reports ORDER BY agent_id, seq",
            &[],
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredReport {
                digest: digest_of(r.get(0)),
                status: r.get(1),
                bytes: r.get(2),
            })
            .collect())
    }
}

/// The `status` column as read ([`ReportStatus::as_str`] is what is written); anything else
/// is a corrupt row.
impl<'a> tokio_postgres::types::FromSql<'a> for crate::rules::ReportStatus {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let s = <&str as tokio_postgres::types::FromSql>::from_sql(ty, raw)?;
        crate::rules::ReportStatus::from_db(s)
            .ok_or_else(|| format!("unknown report status {s:?}").into())
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::FromSql>::accepts(ty)
    }
}

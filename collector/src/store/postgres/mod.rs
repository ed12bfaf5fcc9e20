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

// After `in_transaction!`, which they use.
mod admin;
mod agent_keys;
mod alerts;
mod incidents;
mod ingest;
mod keyrings;
mod lifecycle;
mod periods;
mod queries;
mod schema;

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

    #[cfg(any(test, feature = "testing"))]
    async fn forget_agent_keys(&self, agent_id: String) -> StoreResult<()> {
        let c = self.client().await?;
        execute(
            &c,
            "DELETE FROM agent_keys WHERE agent_id = $1",
            &[&agent_id],
        )
        .await?;
        Ok(())
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

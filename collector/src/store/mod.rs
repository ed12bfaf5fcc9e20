//! Storage: the `Store` trait and the domain records it speaks in.
//!
//! The store owns every durable fact of the collector: customers, licenses, agents,
//! tokens, reports, rollups, anomalies and the audit log. It never verifies signatures
//! (that is `ingest`'s job, done before anything reaches the store) and never formats
//! anything for a client.
//!
//! Invariant: a report is counted only inside the transaction that stores it (or that
//! releases it from quarantine), and rollups change only in those transactions.

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
pub mod fixture;
pub(crate) mod plan;
pub mod postgres;
pub(crate) mod sql;
pub mod sqlite;

use crate::datadir::{CollectorFiles, DataDir};
use std::sync::Arc;

use crate::roles::Role;
use async_trait::async_trait;
use std::collections::HashMap;
use tally_proto::Digest;
use tally_proto::license::License;
use tally_proto::reason::Reason;
use tally_proto::receipt::{Credit, Outcome};
use tally_proto::report::Report;
use tally_proto::time::Instant;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Something the caller asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored (already revoked, wrong state …).
    #[error("{0}")]
    Conflict(String),
    /// The request is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The database cannot answer right now (busy, connection lost); the same call may
    /// succeed if retried. Nothing was written.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The transaction lost a race with a concurrent one (a deadlock, a serialization
    /// failure, a sum that reached its limit meanwhile) and was rolled back: running the
    /// whole transaction again at once clears it. Stores retry it themselves a few times;
    /// past that it reaches callers like [`StoreError::Unavailable`]. Nothing was written.
    #[error("database busy: {0}")]
    Contended(String),
    /// The database failed; details are logged, not shown to clients.
    #[error("database error: {0}")]
    Database(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which store a `--database` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// The SQLite file in the data directory (no `--database`, or `sqlite:`).
    Sqlite,
    /// A PostgreSQL database shared by several collectors.
    Postgres(String),
}

/// Reads a `--database` value, refusing one this build cannot open before anything is
/// created. The value is never echoed: it may hold a password.
pub fn check_database_url(database: Option<&str>) -> StoreResult<Database> {
    match database.map(str::trim).filter(|d| !d.is_empty()) {
        None | Some("sqlite:") => Ok(Database::Sqlite),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Database::Postgres(url.to_string()))
        }
        Some(_) => Err(StoreError::Invalid(
            "--database: expected a postgres://user:pass@host:port/db URL, or nothing for \
             the SQLite file in --data"
                .into(),
        )),
    }
}

/// Opens the store a `--database` value names: none (or `sqlite:`) is the SQLite file in
/// the data directory; `postgres://…` is a PostgreSQL database (its schema is migrated at
/// open). `create`: make the SQLite file if it is missing (`init` only; elsewhere a
/// missing file is an error, never a silently empty store).
pub async fn open(
    dir: &DataDir,
    database: Option<&str>,
    create: bool,
) -> StoreResult<Arc<dyn Store>> {
    match check_database_url(database)? {
        Database::Postgres(url) => Ok(Arc::new(
            postgres::PostgresStore::connect(&url, crate::clock::Clock::system()).await?,
        )),
        Database::Sqlite => {
            if !create && !dir.db().exists() {
                return Err(StoreError::Invalid(format!(
                    "{} is not an initialized data directory: it has no database (hint: run 'tally-collector --data {} init' first)",
                    dir.path().display(),
                    dir.path().display()
                )));
            }
            Ok(Arc::new(sqlite::SqliteStore::open(&dir.db())?))
        }
    }
}

/// A statement's lines from the rows a store found (the rule is `rules::statement_lines`).
pub(crate) fn statement_from_rows(
    limits: &[crate::rules::LicenseLimit],
    used: &[crate::rules::LicenseUsage],
) -> StoreResult<Vec<StatementLine>> {
    crate::rules::statement_lines(limits, used).map_err(StoreError::Invalid)
}

/// The store error for an enrollment the rules refuse; `None` if it may proceed.
pub(crate) fn enrollment_refusal(e: &crate::rules::Enrollment) -> Option<StoreError> {
    use crate::rules::Enrollment;
    match e {
        Enrollment::AlreadyEnrolled | Enrollment::Enroll => None,
        Enrollment::NotFound(m) => Some(StoreError::NotFound(m.clone())),
        Enrollment::Conflict(m) => Some(StoreError::Conflict(m.clone())),
        Enrollment::Denied(m) => Some(StoreError::Invalid(m.clone())),
    }
}

/// The error when a database's recorded collector key is not this node's.
pub fn key_mismatch(recorded: &[u8; 32], ours: &[u8; 32]) -> StoreError {
    StoreError::Conflict(format!(
        "the database belongs to collector key {}, but this node's key file is {} \
         (hint: copy the key files of the collector that initialized the database into --data)",
        tally_proto::keys::key_id(recorded),
        tally_proto::keys::key_id(ours)
    ))
}

pub use crate::rules::agent_keys::AgentKey;

impl AgentKey {
    /// An agent key from the columns of `sql::AGENT_KEY`: key, agent id, license id,
    /// from seq, until seq, key revoked at, agent revoked at.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_columns(
        key: &[u8],
        agent_id: String,
        license_id: String,
        from_seq: i64,
        until_seq: Option<i64>,
        revoked_at: Option<i64>,
        agent_revoked_at: Option<i64>,
    ) -> StoreResult<AgentKey> {
        let key = <[u8; 32]>::try_from(key)
            .map_err(|_| StoreError::Database("an agent key is not 32 bytes".into()))?;
        Ok(AgentKey {
            key,
            agent_id,
            license_id,
            from_seq: from_seq.max(1) as u64,
            until_seq: until_seq.map(|u| u.max(0) as u64),
            revoked_at: revoked_at.map(|t| Instant::from_timestamp(t, 0).unwrap_or_default()),
            agent_revoked: agent_revoked_at.is_some(),
        })
    }
}

pub use crate::rules::Source;

/// A report whose signature verified for an enrolled key on its license.
#[derive(Debug, Clone)]
pub struct AuthenticReport {
    pub digest: Digest,
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
    pub report: Report,
    pub agent_id: String,
}

/// What the store did with one authentic report, and what its receipt must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutcome {
    pub outcome: Outcome,
    /// Why it was quarantined; `None` for accepted and duplicate reports.
    pub reason: Option<Reason>,
    pub detail: String,
    pub lease_until: Option<Instant>,
    pub credits: Vec<Credit>,
    /// The receipt time: the caller's, or later, taken where the store serializes its
    /// writes (so a month's close time is after every report billed on it, and before
    /// every report billed as a late adjustment).
    pub received_at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRecord {
    pub id: String,
    pub name: String,
    pub created_at: Instant,
    /// Set by `customers cancel`; the customer is purged later.
    pub cancelled_at: Option<Instant>,
}

/// A license as stored. Its status (`active`, `grace`, …) is `rules::license_status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseRecord {
    pub license_id: String,
    pub customer_id: String,
    pub metrics: Vec<LicenseMetricRecord>,
    pub not_before: Instant,
    pub not_after: Instant,
    pub grace_secs: u64,
    pub revoked_at: Option<Instant>,
    /// Alert thresholds, percent, ascending.
    pub alerts: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseMetricRecord {
    pub metric: String,
    pub limit: Option<u64>,
}

/// A new license and its enrollment token (hashed).
#[derive(Debug, Clone)]
pub struct NewLicense {
    pub license: License,
    pub signed: Vec<u8>,
    pub token_hash: [u8; 32],
    pub enrollments: u32,
    pub token_expires: Instant,
    /// Usage alert thresholds (percent), stored with the license.
    pub alerts: Vec<u32>,
}

/// An enrolled agent as stored. Its status (`active`, `silent`, `revoked`) is
/// `rules::agent_status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub agent_id: String,
    pub key: [u8; 32],
    pub license_id: String,
    pub customer_id: String,
    pub enrolled_at: Instant,
    pub revoked_at: Option<Instant>,
    pub last_seq: u64,
    pub last_seen: Option<Instant>,
}

/// Agent list filter.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    pub customer: Option<String>,
    pub license: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: String,
    pub role: Role,
    pub name: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenListing {
    pub id: String,
    /// The role as stored (`admin`, `billing`, `customer:<id>`).
    pub role: String,
    pub name: String,
    pub created_at: Instant,
    pub revoked: bool,
}

/// One line of the audit log. `actor` is a token id or `cli`, never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: Instant,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
}

/// An audit log row as listed: one entry, or a group of identical repeatable calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The first call (its `at`).
    pub entry: AuditEntry,
    /// How many identical calls the row stands for (1 for most).
    pub repeats: u64,
    /// When the last of them was made (`entry.at` when `repeats` is 1).
    pub last_at: Instant,
}

/// An hourly rollup row: the unit every usage query is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyUsage {
    pub customer_id: String,
    pub license_id: String,
    pub metric: String,
    /// Start of the hour, unix seconds.
    pub hour: i64,
    pub quantity: u64,
}

/// A usage query's filter, already validated. Bounds are unix seconds, hour-aligned.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub customer: Option<String>,
    pub license: Option<String>,
    pub metric: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// Usage and limit of one metric for one customer-month (totalled by the rules).
pub use crate::rules::Line as StatementLine;

/// An anomaly: an open or closed `gap`, a `fork`, or a quarantined report (kind = its
/// reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnomalyRecord {
    pub kind: String,
    pub agent_id: String,
    pub license_id: String,
    pub customer_id: String,
    pub seq_from: u64,
    pub seq_to: u64,
    pub digest: Option<Digest>,
    pub detail: String,
    pub opened_at: Instant,
    pub closed_at: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRecord {
    pub digest: Digest,
    pub agent_id: String,
    pub license_id: String,
    pub customer_id: String,
    pub seq: u64,
    pub reason: String,
    pub detail: String,
    pub received_at: Instant,
    pub window_start: Instant,
    pub window_end: Instant,
}

/// The anomaly list: the recorded anomalies (gaps, forks, …) and the quarantined reports
/// that [`crate::rules::quarantine_is_anomaly`] lists as anomalies of their own (kind: the
/// reason; open while quarantined), ordered by opening time, agent and seq.
pub(crate) fn anomaly_list(
    mut recorded: Vec<AnomalyRecord>,
    quarantined: Vec<QuarantineRecord>,
) -> Vec<AnomalyRecord> {
    recorded.extend(
        quarantined
            .into_iter()
            .filter(|q| crate::rules::quarantine_is_anomaly(&q.reason))
            .map(|q| AnomalyRecord {
                kind: q.reason,
                agent_id: q.agent_id,
                license_id: q.license_id,
                customer_id: q.customer_id,
                seq_from: q.seq,
                seq_to: q.seq,
                digest: Some(q.digest),
                detail: q.detail,
                opened_at: q.received_at,
                closed_at: None,
            }),
    );
    recorded.sort_by(|a, b| {
        (a.opened_at, &a.agent_id, a.seq_from).cmp(&(b.opened_at, &b.agent_id, b.seq_from))
    });
    recorded
}

/// A stored report, raw (for audits and tests that re-check totals by brute force).
/// One report a statement bills, as its evidence shows it.
#[derive(Debug, Clone)]
pub struct EvidenceRow {
    pub agent_id: String,
    pub agent_key: [u8; 32],
    pub seq: u64,
    pub digest: Digest,
    /// The signed bytes; empty when retention removed the body.
    pub bytes: Vec<u8>,
    /// Empty with `bytes`.
    pub signature: Vec<u8>,
}

impl EvidenceRow {
    pub(crate) fn from_columns(
        agent_id: String,
        agent_key: &[u8],
        seq: i64,
        digest: &[u8],
        bytes: Vec<u8>,
        signature: Vec<u8>,
    ) -> StoreResult<EvidenceRow> {
        Ok(EvidenceRow {
            agent_id,
            agent_key: agent_key
                .try_into()
                .map_err(|_| StoreError::Database("stored agent key is not 32 bytes".into()))?,
            seq: seq as u64,
            digest: Digest::from_slice(digest)
                .ok_or_else(|| StoreError::Database("stored digest is not 32 bytes".into()))?,
            bytes,
            signature,
        })
    }
}

#[derive(Debug, Clone)]
pub struct StoredReport {
    pub digest: Digest,
    pub status: crate::rules::ReportStatus,
    pub bytes: Vec<u8>,
}

/// The storage interface of the collector. See the module docs for its invariants.
#[async_trait]
pub trait Store:
    IngestStore
    + RegistryStore
    + AuditStore
    + BillingStore
    + PeriodStore
    + LifecycleStore
    + AlertStore
    + IncidentStore
    + KeyringStore
    + AgentKeyStore
    + Send
    + Sync
    + 'static
{
    /// The store's clock: "now" for every time that decides billing, in the store and
    /// for its callers (see [`crate::clock`]).
    fn clock(&self) -> crate::clock::Clock;

    /// Succeeds when the store can answer queries now (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;

    /// The collector (vendor) public key the database was initialized with, if recorded.
    async fn collector_key(&self) -> StoreResult<Option<[u8; 32]>>;
    /// Records `key` as the database's collector key if none is recorded yet; if another
    /// key is recorded, a `Conflict` naming both key ids (a node must not sign receipts
    /// with a key the others do not share).
    async fn bind_collector_key(&self, key: [u8; 32]) -> StoreResult<()>;
}

/// Storing reports and enrolling agents: the write path of `Ingest`.
#[async_trait]
pub trait IngestStore: Send + Sync {
    /// Looks up enrolled keys.
    async fn agents_by_keys(&self, keys: Vec<[u8; 32]>)
    -> StoreResult<HashMap<[u8; 32], AgentKey>>;
    /// Stores authentic reports (each exactly once) and counts the countable ones, in one
    /// durable transaction shared with concurrent callers. Returns one outcome per report,
    /// in order, only after the commit is durable.
    async fn ingest(
        &self,
        reports: Vec<AuthenticReport>,
        received_at: Instant,
        source: Source,
    ) -> StoreResult<Vec<StoredOutcome>>;
    /// Enrolls `agent_key` for `license_id` if `token_hash` is a live enrollment token for
    /// it. Returns the agent id and the signed license bytes. Re-enrolling the same key for
    /// the same license is idempotent and uses no enrollment.
    async fn enroll(
        &self,
        license_id: String,
        token_hash: [u8; 32],
        agent_key: [u8; 32],
        now: Instant,
    ) -> StoreResult<(String, Vec<u8>)>;
}

/// Customers, licenses, agents and API tokens.
#[async_trait]
pub trait RegistryStore: Send + Sync {
    async fn add_customer(&self, name: String, now: Instant) -> StoreResult<CustomerRecord>;
    async fn list_customers(&self, only: Option<String>) -> StoreResult<Vec<CustomerRecord>>;
    async fn customer_exists(&self, id: String) -> StoreResult<bool>;
    async fn issue_license(&self, new: NewLicense, now: Instant) -> StoreResult<()>;
    async fn list_licenses(&self, customer: Option<String>) -> StoreResult<Vec<LicenseRecord>>;
    async fn revoke_license(&self, id: String, now: Instant) -> StoreResult<()>;
    async fn add_agent(
        &self,
        license_id: String,
        key: [u8; 32],
        now: Instant,
    ) -> StoreResult<String>;
    async fn list_agents(&self, filter: AgentFilter) -> StoreResult<Vec<AgentRecord>>;
    async fn revoke_agent(&self, id: String, now: Instant) -> StoreResult<()>;
    async fn create_token(
        &self,
        id: String,
        hash: [u8; 32],
        role: Role,
        name: String,
        now: Instant,
    ) -> StoreResult<()>;
    async fn list_tokens(&self) -> StoreResult<Vec<TokenListing>>;
    async fn revoke_token(&self, id: String, now: Instant) -> StoreResult<()>;
    async fn token_by_hash(&self, hash: [u8; 32]) -> StoreResult<Option<TokenRecord>>;
}

/// The audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn audit(&self, entry: AuditEntry) -> StoreResult<()>;
    /// Audits a repeatable call (a read): if the newest row for the same actor, action,
    /// target and outcome began at or after `since`, that row counts one more call (its
    /// `repeats`, `last_at`); otherwise a new row. Which calls are repeatable, and the
    /// window, are the caller's decision ([`crate::http`]'s audit middleware).
    async fn audit_repeatable(&self, entry: AuditEntry, since: Instant) -> StoreResult<()>;
    /// The newest `limit` rows, newest first.
    async fn list_audit(&self, limit: u32) -> StoreResult<Vec<AuditRecord>>;
}

/// What billing reads (usage, open statements, anomalies, quarantine, report history) and resolving the quarantine.
#[async_trait]
pub trait BillingStore: Send + Sync {
    async fn hourly_usage(&self, filter: UsageFilter) -> StoreResult<Vec<HourlyUsage>>;
    /// Per metric for a customer's calendar month (`month` = unix seconds of its first
    /// instant): used (summed over the customer's licenses) and limit (summed, `None` if
    /// any license leaves it unlimited).
    async fn statement(
        &self,
        customer: String,
        month_start: i64,
    ) -> StoreResult<Vec<StatementLine>>;
    async fn anomalies(&self, customer: Option<String>) -> StoreResult<Vec<AnomalyRecord>>;
    async fn quarantine(&self, customer: Option<String>) -> StoreResult<Vec<QuarantineRecord>>;
    /// Counts a quarantined report. Returns `false` if it was already counted (nothing
    /// changes: releasing twice counts once).
    async fn release(&self, digest: Digest, now: Instant) -> StoreResult<bool>;
    /// Marks a quarantined report discarded (kept, never counted).
    async fn discard(&self, digest: Digest, now: Instant) -> StoreResult<()>;

    /// An agent's stored reports, newest seq first, at most `limit`, with seqs below
    /// `before_seq` when given (paging back through its history).
    async fn agent_reports(
        &self,
        agent_id: String,
        before_seq: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<AgentReportRecord>>;
}

/// Closing months, closed statements and their evidence, and retention of report bodies.
#[async_trait]
pub trait PeriodStore: Send + Sync {
    /// Every month being closed or closed, oldest first.
    async fn periods(&self) -> StoreResult<Vec<PeriodRecord>>;
    /// Starts closing `month` (at `now`, or later: the time is taken when the close is
    /// serialized). Serialized with every ingest and release: one
    /// that commits after this counts a report of `month` as an adjustment of a later month
    /// (see `rules::periods::billed_month`), one that committed before is on `month`'s
    /// statement. Idempotent: a month already being closed keeps its first close time,
    /// which is what is returned.
    async fn begin_close(&self, month: i64, now: Instant) -> StoreResult<PeriodRecord>;
    /// The per-metric limits of every license of `customer` whose term, grace included,
    /// touches `month` (candidates: `rules::statement_lines` decides which apply).
    async fn license_limits(
        &self,
        customer: String,
        month: i64,
    ) -> StoreResult<Vec<crate::rules::LicenseLimit>>;
    /// The accepted reports of `customer` billed on `month`'s statement: those whose window
    /// starts in `month` and that were counted while it was open, and the late ones of
    /// earlier months billed on it. `only_late`: just the late ones.
    async fn counted_reports(
        &self,
        customer: String,
        month: i64,
        only_late: bool,
    ) -> StoreResult<Vec<CountedReport>>;
    /// The evidence of one agent's line on a customer-month's statement: the reports of
    /// `agent` among [`Store::counted_reports`] (not only late), in seq order, with their
    /// signed bytes and signatures (empty once retention removed them). One agent at a
    /// time, so the evidence of a large customer is streamed, never held whole.
    async fn statement_evidence(
        &self,
        customer: String,
        month: i64,
        agent: String,
    ) -> StoreResult<Vec<EvidenceRow>>;
    /// Stores the closed statements of `month` (`(customer, document)`) and marks the month
    /// done, in one transaction. A statement already stored stays as it is, byte for byte.
    async fn finish_close(&self, month: i64, statements: Vec<(String, Vec<u8>)>)
    -> StoreResult<()>;
    /// The closed statement document of a customer-month, if the month is closed.
    async fn closed_statement(&self, customer: String, month: i64) -> StoreResult<Option<Vec<u8>>>;

    /// Removes the bodies (bytes and signature) of the reports billed on each closed month
    /// whose close time is at or before `closed_before` and that retention has not done
    /// yet, except reports still quarantined (under review). Their rows stay — a resent
    /// report is still a duplicate, chains and gaps still check — as do rollups and
    /// statements; per agent and month the seq range, count and Merkle root of what was
    /// removed are recorded ([`RetainedDigest`]). One transaction per month.
    async fn expire_reports(
        &self,
        closed_before: Instant,
        now: Instant,
    ) -> StoreResult<Vec<Expiry>>;
    /// What retention removed, per agent and month (all agents, or one).
    async fn retained_digests(&self, agent: Option<String>) -> StoreResult<Vec<RetainedDigest>>;
}

/// Cancelling customers and purging what they left.
#[async_trait]
pub trait LifecycleStore: Send + Sync {
    /// Cancels a customer in one transaction: revokes its licenses (and their enrollment
    /// tokens), its agents and its customer-scoped API tokens, and schedules the purge of
    /// everything it has at `purge_at`. A second cancel is a `Conflict`.
    async fn cancel_customer(
        &self,
        id: String,
        now: Instant,
        purge_at: Instant,
    ) -> StoreResult<Cancellation>;
    /// Purges every cancelled customer whose purge time is at or before `now`: its
    /// reports, rollups, monthly sums, anomalies, agents, licenses, tokens and the customer
    /// itself, each customer in its own transaction. Returns what each purge removed.
    async fn purge_due(&self, now: Instant) -> StoreResult<Vec<Purge>>;
}

/// Usage alerts: thresholds, crossings and their delivery.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Replaces a license's alert thresholds (percent of each limited metric's monthly
    /// limit; empty: none). Crossings are recorded by the transaction that counts the
    /// report (ingest or release), once per license, metric, month and threshold.
    async fn set_license_alerts(&self, license_id: String, percents: Vec<u32>) -> StoreResult<()>;
    /// The newest alerts, of one customer or all.
    async fn alerts(&self, customer: Option<String>, limit: u32) -> StoreResult<Vec<AlertRecord>>;
    /// Claims up to `limit` undelivered alerts whose next attempt is due at `now`, oldest
    /// first: their next attempt moves to `lease_until`, so another collector polling
    /// meanwhile does not take them too; if this one dies before `alert_attempted`, the
    /// claim lapses and any collector delivers them.
    async fn claim_due_alerts(
        &self,
        now: Instant,
        lease_until: Instant,
        limit: u32,
    ) -> StoreResult<Vec<AlertRecord>>;
    /// Records a delivery attempt: delivered (`next_attempt` `None`), or failed and to be
    /// tried again at `next_attempt`.
    async fn alert_attempted(
        &self,
        id: String,
        now: Instant,
        next_attempt: Option<Instant>,
    ) -> StoreResult<()>;
}

/// The status page's incident history: a component down for a while, as the collectors
/// saw it. Shared by every collector of a store, so each shows the same history.
#[async_trait]
pub trait IncidentStore: Send + Sync {
    /// Records that `component` went down or came back at `at`: the write
    /// [`crate::rules::incidents::decide`] makes of it, given the component's newest
    /// incident, in one transaction.
    async fn record_incident(
        &self,
        component: String,
        change: crate::rules::incidents::Change,
        at: Instant,
    ) -> StoreResult<()>;
    /// Every incident open at some time at or after `since` (open ones included), newest
    /// first, at most [`MAX_INCIDENTS`].
    async fn incidents_since(&self, since: Instant) -> StoreResult<Vec<Incident>>;
}

/// The deployment's keyrings (the keys that sign receipts and statements, certified by the
/// vendor key), every version kept: an agent that was offline across rotations follows
/// them one by one. The store keeps bytes; `tally_proto::keyring` decides what they mean.
#[async_trait]
pub trait KeyringStore: Send + Sync {
    /// Adds keyring `version` (an encoded `SignedKeyring`). It must be the next version
    /// (the newest + 1, or 1): two rotations racing cannot both be added (`Conflict`).
    async fn add_keyring(&self, version: u64, signed: Vec<u8>, at: Instant) -> StoreResult<()>;
    /// The keyrings after `version`, oldest first, at most [`MAX_KEYRINGS`].
    async fn keyrings_after(&self, version: u64) -> StoreResult<Vec<(u64, Vec<u8>)>>;
}

/// Agent keys and their rotations. The store reads the facts and writes what
/// `rules::agent_keys` decides.
#[async_trait]
pub trait AgentKeyStore: Send + Sync {
    /// Records a verified rotation (`signed` is the encoded `SignedAgentKeyRotation`) when
    /// `rules::agent_keys::decide_rotation` says so, deciding on facts read in the
    /// transaction that writes it (racing rotations of one agent are serialized). Returns
    /// the decision.
    async fn rotate_agent_key(
        &self,
        rotation: tally_proto::agent_key::Rotation,
        signed: Vec<u8>,
        now: Instant,
    ) -> StoreResult<crate::rules::agent_keys::RotationDecision>;
    /// Every key of an agent, in the order they held its chain.
    async fn agent_keys(&self, agent_id: String) -> StoreResult<Vec<AgentKey>>;
    /// The agent key whose key id is `key_id`, if any.
    async fn agent_key_by_id(&self, key_id: String) -> StoreResult<Option<AgentKey>>;
    /// Revokes an agent key from `at` (an earlier revocation stands).
    async fn revoke_agent_key(&self, key: [u8; 32], at: Instant) -> StoreResult<()>;
    /// The signed rotations of an agent, oldest first.
    async fn agent_rotations(&self, agent_id: String) -> StoreResult<Vec<Vec<u8>>>;
}

/// The most keyrings [`KeyringStore::keyrings_after`] returns at once.
pub const MAX_KEYRINGS: u32 = 1000;

/// The most incidents [`IncidentStore::incidents_since`] returns.
pub const MAX_INCIDENTS: u32 = 1000;

/// A recorded incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub id: i64,
    pub component: String,
    /// What was wrong (never anything about a customer).
    pub detail: String,
    pub opened_at: Instant,
    /// `None`: still open.
    pub closed_at: Option<Instant>,
}

/// One stored report of an agent, as its history lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReportRecord {
    pub seq: u64,
    pub digest: Digest,
    /// A second, different report for a taken seq.
    pub fork: bool,
    pub window_start: Instant,
    pub window_end: Instant,
    pub received_at: Instant,
    pub status: crate::rules::ReportStatus,
    /// Why it is not (or was not at first) counted; empty for a plain acceptance.
    pub reason: String,
    /// The signed report bytes (its counters are read from them); empty once retention
    /// removed the body.
    pub bytes: Vec<u8>,
}

/// A threshold crossing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    /// Derived from license, metric, month and threshold (see [`alert_id`]): the webhook's
    /// idempotency id.
    pub id: String,
    pub license_id: String,
    pub customer_id: String,
    pub metric: String,
    /// Unix seconds of the month's first instant.
    pub month: i64,
    pub percent: u32,
    /// Usage of the month right after the report that crossed.
    pub used: u64,
    pub limit: u64,
    pub crossed_at: Instant,
    pub delivered_at: Option<Instant>,
    pub attempts: u32,
}

/// The id of a crossing: the same wherever (and however often) it is computed.
pub fn alert_id(license_id: &str, metric: &str, month: i64, percent: u32) -> String {
    use sha2::{Digest as _, Sha256};
    let h = Sha256::digest(format!("{license_id}\0{metric}\0{month}\0{percent}"));
    format!("alr_{}", hex::encode(&h[..12]))
}

/// A crossing found while counting, written with the report (a second write of the same
/// crossing is ignored).
#[derive(Debug, Clone)]
pub(crate) struct NewAlert {
    pub license_id: String,
    pub customer_id: String,
    pub metric: String,
    pub month: i64,
    pub percent: u32,
    pub used: u64,
    pub limit: u64,
}

/// What the counting path needs to find crossings for one license.
#[derive(Debug, Clone, Default)]
pub(crate) struct AlertTerms {
    pub customer_id: String,
    pub percents: Vec<u32>,
    /// Limited metrics and their monthly limits.
    pub limits: HashMap<String, u64>,
}

impl AlertTerms {
    /// The crossings of `metric` going from `before` to `after` in `month`.
    pub fn crossings(
        &self,
        license_id: &str,
        metric: &str,
        month: i64,
        before: u64,
        after: u64,
    ) -> Vec<NewAlert> {
        let Some(&limit) = self.limits.get(metric) else {
            return Vec::new();
        };
        crate::rules::alerts::crossed(limit, before, after, &self.percents)
            .into_iter()
            .map(|percent| NewAlert {
                license_id: license_id.to_string(),
                customer_id: self.customer_id.clone(),
                metric: metric.to_string(),
                month,
                percent,
                used: after,
                limit,
            })
            .collect()
    }
}

/// What retention removed from one month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub month: i64,
    pub reports: u64,
    pub agents: u64,
}

/// What retention removed of one agent's reports of one month: the seq range, the count and
/// the Merkle root of the removed digests in seq order (discarded reports included), kept as
/// a record of what went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedDigest {
    pub agent_id: String,
    pub month: i64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub reports: u64,
    pub root: Digest,
}

/// The per-agent summaries of the reports retention removes from `month` (`rows`: agent,
/// seq and digest, sorted by agent, then seq).
pub(crate) fn retained_by_agent(month: i64, rows: &[(String, u64, Digest)]) -> Vec<RetainedDigest> {
    rows.chunk_by(|a, b| a.0 == b.0)
        .map(|run| {
            let digests: Vec<Digest> = run.iter().map(|r| r.2).collect();
            RetainedDigest {
                agent_id: run[0].0.clone(),
                month,
                first_seq: run[0].1,
                last_seq: run[run.len() - 1].1,
                reports: run.len() as u64,
                root: tally_proto::statement::merkle_root(&digests),
            }
        })
        .collect()
}

/// A month being closed (`done`: its statements are all stored) or closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodRecord {
    /// Unix seconds of the month's first instant.
    pub month: i64,
    /// Taken where the store serializes its writes, to the microsecond (stored as
    /// microseconds): after the receipt time of every report billed on the month.
    pub closed_at: Instant,
    pub done: bool,
}

pub use crate::rules::periods::CountedReport;

/// A counted report from its stored row (the counters are decoded from the bytes that were
/// signed).
pub(crate) fn counted_report(
    agent_id: String,
    agent_key: &[u8],
    license_id: String,
    seq: i64,
    digest: &[u8],
    bytes: &[u8],
) -> StoreResult<CountedReport> {
    let digest = Digest::from_slice(digest)
        .ok_or_else(|| StoreError::Database("stored digest is not 32 bytes".into()))?;
    let report = Report::decode(bytes)
        .map_err(|e| StoreError::Database(format!("stored report {digest}: {e}")))?;
    Ok(CountedReport {
        agent_id,
        agent_key: agent_key
            .try_into()
            .map_err(|_| StoreError::Database("stored agent key is not 32 bytes".into()))?,
        license_id,
        seq: seq as u64,
        digest,
        window_start: report.window_start.timestamp(),
        counters: report
            .counters
            .into_iter()
            .map(|c| (c.metric, c.quantity))
            .collect(),
    })
}

/// What cancelling a customer revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cancellation {
    pub licenses: u64,
    pub agents: u64,
    pub tokens: u64,
    /// When everything of the customer will be purged.
    pub purge_at: Option<Instant>,
}

/// What purging one cancelled customer removed (kept only in the audit log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purge {
    pub customer_id: String,
    /// The ids of the licenses removed (their license files are removed by the caller).
    pub license_ids: Vec<String>,
    pub reports: u64,
    pub rollup_rows: u64,
    pub anomalies: u64,
    pub agents: u64,
    pub licenses: u64,
    pub tokens: u64,
    /// Closed statements removed.
    pub statements: u64,
    /// Alerts removed.
    pub alerts: u64,
}

/// Reads for tests and offline audits that the serving path never needs: kept out of
/// [`Store`] so production code cannot lean on a full scan.
#[async_trait]
pub trait Inspect: Send + Sync + 'static {
    /// Every stored report with its status (for brute-force checks).
    async fn stored_reports(&self) -> StoreResult<Vec<StoredReport>>;
    /// The schema version this build writes.
    #[cfg(any(test, feature = "testing"))]
    fn build_schema_version(&self) -> usize;
    /// Records `version` as the database's schema version (as a newer or older build
    /// would have left it).
    #[cfg(any(test, feature = "testing"))]
    async fn set_schema_version(&self, version: usize) -> StoreResult<()>;
    /// Runs, on a new connection, what opening the store runs first: the schema check and
    /// migrations.
    #[cfg(any(test, feature = "testing"))]
    async fn migrate_again(&self) -> StoreResult<()>;
    /// Removes an agent's key rows, as an agent enrolled by a node of the version before
    /// agent keys (on a database a newer node had migrated) has none.
    #[cfg(any(test, feature = "testing"))]
    async fn forget_agent_keys(&self, agent_id: String) -> StoreResult<()>;
}

//! The store conformance suite (`tally_collector::store::conformance`) against the SQLite
//! store, each check on a fresh database file; and the suite's own test: a deliberately
//! broken store that counts a resent report twice must fail it.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;
use tally_collector::roles::Role;
use tally_collector::store::conformance::{self, Subject};
use tally_collector::store::sqlite::SqliteStore;
use tally_collector::store::*;
use tally_proto::Digest;
use tally_proto::receipt::Outcome;
use tally_proto::time::Instant;

/// A fresh SQLite store in its own temporary directory (kept alive with the store).
fn fresh_sqlite() -> Subject {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        SqliteStore::open_with_clock(&dir.path().join("collector.db"), conformance::clock())
            .expect("open"),
    );
    // The directory lives as long as the check, and is removed with it.
    Subject {
        store: store.clone(),
        inspect: store,
        keep: Some(Arc::new(dir)),
    }
}

mod sqlite {
    tally_collector::conformance_tests!(super::fresh_sqlite());
}

/// A store that answers a resent report `DUPLICATE` but counts it again (it stores a copy
/// under a sequence number nobody uses): exactly the bug the suite exists to catch.
struct CountsDuplicatesTwice(Arc<SqliteStore>);

#[async_trait]
impl Store for CountsDuplicatesTwice {
    fn clock(&self) -> tally_collector::clock::Clock {
        self.0.clock()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.0.ping().await
    }
    async fn collector_key(&self) -> StoreResult<Option<[u8; 32]>> {
        self.0.collector_key().await
    }
    async fn bind_collector_key(&self, key: [u8; 32]) -> StoreResult<()> {
        self.0.bind_collector_key(key).await
    }
}

#[async_trait]
impl IngestStore for CountsDuplicatesTwice {
    async fn ingest(
        &self,
        reports: Vec<AuthenticReport>,
        received_at: Instant,
        source: Source,
    ) -> StoreResult<Vec<StoredOutcome>> {
        let out = self.0.ingest(reports.clone(), received_at, source).await?;
        for (r, o) in reports.iter().zip(&out) {
            if o.outcome == Outcome::Duplicate {
                // Far from any other seq (so no chain or overlap rule sees a neighbour),
                // with a predecessor digest, under another digest: counted as new.
                let mut copy = r.clone();
                copy.report.seq = 1_000_000 + 10 * copy.report.seq;
                copy.report.prev_digest.get_or_insert(Digest([1; 32]));
                copy.digest.0[0] ^= 0xff;
                self.0.ingest(vec![copy], received_at, source).await?;
            }
        }
        Ok(out)
    }
    async fn agents_by_keys(
        &self,
        keys: Vec<[u8; 32]>,
    ) -> StoreResult<HashMap<[u8; 32], AgentKey>> {
        self.0.agents_by_keys(keys).await
    }
    async fn enroll(
        &self,
        license_id: String,
        token_hash: [u8; 32],
        agent_key: [u8; 32],
        now: Instant,
    ) -> StoreResult<(String, Vec<u8>)> {
        self.0.enroll(license_id, token_hash, agent_key, now).await
    }
}

#[async_trait]
impl RegistryStore for CountsDuplicatesTwice {
    async fn add_customer(&self, name: String, now: Instant) -> StoreResult<CustomerRecord> {
        self.0.add_customer(name, now).await
    }
    async fn list_customers(&self, only: Option<String>) -> StoreResult<Vec<CustomerRecord>> {
        self.0.list_customers(only).await
    }
    async fn customer_exists(&self, id: String) -> StoreResult<bool> {
        self.0.customer_exists(id).await
    }
    async fn issue_license(&self, new: NewLicense, now: Instant) -> StoreResult<()> {
        self.0.issue_license(new, now).await
    }
    async fn list_licenses(&self, customer: Option<String>) -> StoreResult<Vec<LicenseRecord>> {
        self.0.list_licenses(customer).await
    }
    async fn revoke_license(&self, id: String, now: Instant) -> StoreResult<()> {
        self.0.revoke_license(id, now).await
    }
    async fn add_agent(
        &self,
        license_id: String,
        key: [u8; 32],
        now: Instant,
    ) -> StoreResult<String> {
        self.0.add_agent(license_id, key, now).await
    }
    async fn list_agents(&self, filter: AgentFilter) -> StoreResult<Vec<AgentRecord>> {
        self.0.list_agents(filter).await
    }
    async fn revoke_agent(&self, id: String, now: Instant) -> StoreResult<()> {
        self.0.revoke_agent(id, now).await
    }
    async fn create_token(
        &self,
        id: String,
        hash: [u8; 32],
        role: Role,
        name: String,
        now: Instant,
    ) -> StoreResult<()> {
        self.0.create_token(id, hash, role, name, now).await
    }
    async fn list_tokens(&self) -> StoreResult<Vec<TokenListing>> {
        self.0.list_tokens().await
    }
    async fn revoke_token(&self, id: String, now: Instant) -> StoreResult<()> {
        self.0.revoke_token(id, now).await
    }
    async fn token_by_hash(&self, hash: [u8; 32]) -> StoreResult<Option<TokenRecord>> {
        self.0.token_by_hash(hash).await
    }
}

#[async_trait]
impl AuditStore for CountsDuplicatesTwice {
    async fn audit(&self, entry: AuditEntry) -> StoreResult<()> {
        self.0.audit(entry).await
    }
    async fn audit_repeatable(&self, entry: AuditEntry, since: Instant) -> StoreResult<()> {
        self.0.audit_repeatable(entry, since).await
    }
    async fn list_audit(&self, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        self.0.list_audit(limit).await
    }
}

#[async_trait]
impl BillingStore for CountsDuplicatesTwice {
    async fn hourly_usage(&self, filter: UsageFilter) -> StoreResult<Vec<HourlyUsage>> {
        self.0.hourly_usage(filter).await
    }
    async fn statement(
        &self,
        customer: String,
        month_start: i64,
    ) -> StoreResult<Vec<StatementLine>> {
        self.0.statement(customer, month_start).await
    }
    async fn anomalies(&self, customer: Option<String>) -> StoreResult<Vec<AnomalyRecord>> {
        self.0.anomalies(customer).await
    }
    async fn quarantine(&self, customer: Option<String>) -> StoreResult<Vec<QuarantineRecord>> {
        self.0.quarantine(customer).await
    }
    async fn release(&self, digest: Digest, now: Instant) -> StoreResult<bool> {
        self.0.release(digest, now).await
    }
    async fn discard(&self, digest: Digest, now: Instant) -> StoreResult<()> {
        self.0.discard(digest, now).await
    }
    async fn agent_reports(
        &self,
        agent_id: String,
        before_seq: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<AgentReportRecord>> {
        self.0.agent_reports(agent_id, before_seq, limit).await
    }
}

#[async_trait]
impl PeriodStore for CountsDuplicatesTwice {
    async fn periods(&self) -> StoreResult<Vec<PeriodRecord>> {
        self.0.periods().await
    }
    async fn begin_close(&self, month: i64, now: Instant) -> StoreResult<PeriodRecord> {
        self.0.begin_close(month, now).await
    }
    async fn license_limits(
        &self,
        customer: String,
        month: i64,
    ) -> StoreResult<Vec<tally_collector::rules::LicenseLimit>> {
        self.0.license_limits(customer, month).await
    }
    async fn counted_reports(
        &self,
        customer: String,
        month: i64,
        only_late: bool,
    ) -> StoreResult<Vec<CountedReport>> {
        self.0.counted_reports(customer, month, only_late).await
    }
    async fn finish_close(
        &self,
        month: i64,
        statements: Vec<(String, Vec<u8>)>,
    ) -> StoreResult<()> {
        self.0.finish_close(month, statements).await
    }
    async fn closed_statement(&self, customer: String, month: i64) -> StoreResult<Option<Vec<u8>>> {
        self.0.closed_statement(customer, month).await
    }
    async fn expire_reports(
        &self,
        closed_before: Instant,
        now: Instant,
    ) -> StoreResult<Vec<Expiry>> {
        self.0.expire_reports(closed_before, now).await
    }
    async fn retained_digests(&self, agent: Option<String>) -> StoreResult<Vec<RetainedDigest>> {
        self.0.retained_digests(agent).await
    }
    async fn statement_evidence(
        &self,
        customer: String,
        month: i64,
        agent: String,
    ) -> StoreResult<Vec<EvidenceRow>> {
        self.0.statement_evidence(customer, month, agent).await
    }
}

#[async_trait]
impl LifecycleStore for CountsDuplicatesTwice {
    async fn cancel_customer(
        &self,
        id: String,
        now: Instant,
        purge_at: Instant,
    ) -> StoreResult<Cancellation> {
        self.0.cancel_customer(id, now, purge_at).await
    }
    async fn purge_due(&self, now: Instant) -> StoreResult<Vec<Purge>> {
        self.0.purge_due(now).await
    }
}

#[async_trait]
impl AlertStore for CountsDuplicatesTwice {
    async fn set_license_alerts(&self, license_id: String, percents: Vec<u32>) -> StoreResult<()> {
        self.0.set_license_alerts(license_id, percents).await
    }
    async fn alerts(&self, customer: Option<String>, limit: u32) -> StoreResult<Vec<AlertRecord>> {
        self.0.alerts(customer, limit).await
    }
    async fn claim_due_alerts(
        &self,
        now: Instant,
        lease_until: Instant,
        limit: u32,
    ) -> StoreResult<Vec<AlertRecord>> {
        self.0.claim_due_alerts(now, lease_until, limit).await
    }
    async fn alert_attempted(
        &self,
        id: String,
        now: Instant,
        next_attempt: Option<Instant>,
    ) -> StoreResult<()> {
        self.0.alert_attempted(id, now, next_attempt).await
    }
}

#[async_trait]
impl IncidentStore for CountsDuplicatesTwice {
    async fn record_incident(
        &self,
        component: String,
        change: tally_collector::rules::incidents::Change,
        at: Instant,
    ) -> StoreResult<()> {
        self.0.record_incident(component, change, at).await
    }
    async fn incidents_since(&self, since: Instant) -> StoreResult<Vec<Incident>> {
        self.0.incidents_since(since).await
    }
}

#[async_trait]
impl KeyringStore for CountsDuplicatesTwice {
    async fn add_keyring(&self, version: u64, signed: Vec<u8>, at: Instant) -> StoreResult<()> {
        self.0.add_keyring(version, signed, at).await
    }
    async fn keyrings_after(&self, version: u64) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        self.0.keyrings_after(version).await
    }
}

#[async_trait]
impl AgentKeyStore for CountsDuplicatesTwice {
    async fn rotate_agent_key(
        &self,
        rotation: tally_proto::agent_key::Rotation,
        signed: Vec<u8>,
        now: Instant,
    ) -> StoreResult<tally_collector::rules::agent_keys::RotationDecision> {
        self.0.rotate_agent_key(rotation, signed, now).await
    }
    async fn agent_keys(&self, agent_id: String) -> StoreResult<Vec<AgentKey>> {
        self.0.agent_keys(agent_id).await
    }
    async fn agent_key_by_id(&self, key_id: String) -> StoreResult<Option<AgentKey>> {
        self.0.agent_key_by_id(key_id).await
    }
    async fn revoke_agent_key(&self, key: [u8; 32], at: Instant) -> StoreResult<()> {
        self.0.revoke_agent_key(key, at).await
    }
    async fn agent_rotations(&self, agent_id: String) -> StoreResult<Vec<Vec<u8>>> {
        self.0.agent_rotations(agent_id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_fails_a_store_that_counts_a_duplicate_twice() {
    let honest = fresh_sqlite();
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(
        SqliteStore::open_with_clock(&dir.path().join("broken.db"), conformance::clock()).unwrap(),
    );
    let broken = Subject {
        store: Arc::new(CountsDuplicatesTwice(inner.clone())),
        inspect: inner,
        keep: None,
    };
    conformance::exactly_once_under_concurrent_duplicates(honest)
        .await
        .expect("the real store passes");
    let err = conformance::exactly_once_under_concurrent_duplicates(broken)
        .await
        .expect_err("the broken store must fail the exactly-once check");
    assert!(err.contains("rollups"), "{err}");
}

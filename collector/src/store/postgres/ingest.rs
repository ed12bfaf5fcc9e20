//! Ingest on PostgreSQL: answers the plan's questions ([`plan::Facts`]) from rows read in a
//! fixed number of batched queries, and writes the plan [`plan::plan_ingest`] makes, in one
//! READ COMMITTED transaction per Submit with a fixed number of round trips, whatever the
//! batch size:
//!
//! 1. lock the batch's agents (`FOR UPDATE`, sorted by id) and read their `last_seq`: a
//!    second collector handed the same agent's reports waits here, then sees every row
//!    the first committed;
//! 2. read the licenses' terms, the stored neighbours (`seq - 1 ..= seq + 1`) of every
//!    report, the agents' open gaps and the monthly sums the batch touches ([`PgFacts`]);
//! 3. plan the batch, in memory ([`plan::plan_ingest`], the same code as SQLite's);
//! 4. write reports, anomalies, gap closures and `last_seq` with one `unnest` statement
//!    each; then, last (these rows are shared by every agent of a license, so their locks
//!    are held as briefly as possible), add to the rollups and monthly sums additively,
//!    in key order.
//!
//! Nothing here decides what is billed.

use super::super::plan::{self, Counter, Facts, IngestPlan, StoredGap};
use super::super::{AgentKey, AlertTerms, AuthenticReport, StoreError, StoreResult, StoredOutcome};
use super::*;
use super::{Param, execute, query, query_opt};
use crate::calendar::month_of;
use crate::rules::{LicenseTerms, Neighbour, Source};
use deadpool_postgres::GenericClient;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tally_proto::Digest;
use tally_proto::report::Report;
use tally_proto::time::Instant;

/// `(license, metric, period start)`.
type SumKey = (String, String, i64);
/// A stored sum row: `(license, metric, period start, shard)`.
type RowKey = (String, String, i64, i16);

/// Rollup and monthly rows are split into this many shards, by agent: every agent of a
/// license adds to the same hour and month, and one row per (license, metric, period)
/// would make all their transactions queue on its lock (held until the commit's fsync;
/// `tally-bench ingest-pg` showed most backends waiting on it, and a second collector
/// gained nothing). Readers sum the shards.
const SHARDS: u64 = 16;

/// The shard an agent's additions go to: stable, spread by a hash of the agent id.
pub(super) fn shard_of(agent_id: &str) -> i16 {
    let h = agent_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (h % SHARDS) as i16
}

/// Takes the periods lock shared (every ingest and release holds it until its commit, so a
/// close, which takes it exclusively, waits for them and they wait for it) and reads the
/// closed months, in the statement after the lock so the snapshot includes every close that
/// committed before it. Also returns the database's clock, read after the lock: every
/// collector's receipt times come from that one clock, as close times do (shifted by the
/// store clock's offset, zero in production).
pub(super) async fn lock_periods<C: GenericClient>(
    c: &C,
    clock_offset_micros: i64,
) -> StoreResult<(std::collections::BTreeSet<i64>, Instant)> {
    execute(
        c,
        "SELECT pg_advisory_xact_lock_shared($1)",
        &[&super::periods::PERIODS_LOCK],
    )
    .await?;
    let row = query_opt(
        c,
        "SELECT ARRAY(SELECT month FROM periods), (extract(epoch FROM clock_timestamp()) * 1000000)::int8 + $1",
        &[&clock_offset_micros],
    )
    .await?
    .ok_or_else(|| StoreError::Database("no row from the periods read".into()))?;
    let months: Vec<i64> = row.get(0);
    let now = Instant::from_timestamp_micros(row.get(1)).unwrap_or_default();
    Ok((months.into_iter().collect(), now))
}

/// [`Facts`] read before planning, in a few batched queries (the plan cannot wait on the
/// database). Asking for something that was not read is a bug, answered as an error rather
/// than a guess.
#[derive(Default)]
pub(super) struct PgFacts {
    licenses: HashMap<String, LicenseTerms>,
    near: HashMap<(String, i64), Vec<Neighbour>>,
    last_seq: HashMap<String, i64>,
    gaps: HashMap<String, Vec<StoredGap>>,
    monthly: HashMap<SumKey, i64>,
    closed: BTreeSet<i64>,
    alert_terms: HashMap<String, AlertTerms>,
    /// The batch's agent keys, read after the agents' rows were locked.
    keys: HashMap<[u8; 32], AgentKey>,
}

impl Facts for PgFacts {
    fn agent_key(&mut self, key: &[u8; 32]) -> StoreResult<Option<AgentKey>> {
        Ok(self.keys.get(key).cloned())
    }

    fn license(&mut self, id: &str) -> StoreResult<LicenseTerms> {
        self.licenses
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("license {id} not found")))
    }

    fn stored_near(&mut self, agent_id: &str, seq: u64) -> StoreResult<Vec<Neighbour>> {
        let seq = seq as i64;
        Ok([seq.checked_sub(1), Some(seq), seq.checked_add(1)]
            .into_iter()
            .flatten()
            .filter_map(|s| self.near.get(&(agent_id.to_string(), s)))
            .flatten()
            .cloned()
            .collect())
    }

    fn last_seq(&mut self, agent_id: &str) -> StoreResult<u64> {
        self.last_seq
            .get(agent_id)
            .map(|s| (*s).max(0) as u64)
            .ok_or_else(|| StoreError::NotFound(format!("agent {agent_id} not found")))
    }

    fn open_gaps(&mut self, agent_id: &str) -> StoreResult<Vec<StoredGap>> {
        Ok(self.gaps.get(agent_id).cloned().unwrap_or_default())
    }

    fn monthly(&mut self, license_id: &str, metric: &str, month: i64) -> StoreResult<i64> {
        self.monthly
            .get(&(license_id.to_string(), metric.to_string(), month))
            .copied()
            .ok_or_else(|| {
                StoreError::Database(format!(
                    "the monthly sum of {license_id}/{metric} was not read before planning"
                ))
            })
    }

    fn closed_months(&mut self) -> StoreResult<BTreeSet<i64>> {
        Ok(self.closed.clone())
    }

    fn alert_terms(&mut self, license_id: &str) -> StoreResult<Option<AlertTerms>> {
        Ok(self.alert_terms.get(license_id).cloned())
    }
}

impl PgFacts {
    /// Reads the monthly sums (all shards) of `keys` not read yet; a key with no row is 0.
    pub(super) async fn load_monthly<C: GenericClient>(
        &mut self,
        c: &C,
        keys: HashSet<SumKey>,
    ) -> StoreResult<()> {
        let keys: Vec<SumKey> = keys
            .into_iter()
            .filter(|k| !self.monthly.contains_key(k))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let (l, m, p) = columns(&keys);
        // A total past i64::MAX cannot be stored by additions this store checks; should it
        // ever be, the cast fails the read rather than wrap.
        let rows = query(
            c,
            "SELECT u.license_id, u.metric, u.month, SUM(u.quantity)::bigint FROM monthly_usage u
             JOIN unnest($1::text[], $2::text[], $3::int8[]) AS k(license_id, metric, month)
               ON u.license_id = k.license_id AND u.metric = k.metric AND u.month = k.month
             GROUP BY 1, 2, 3",
            &[&l, &m, &p],
        )
        .await?;
        for k in keys {
            self.monthly.insert(k, 0);
        }
        for r in rows {
            self.monthly
                .insert((r.get(0), r.get(1), r.get(2)), r.get(3));
        }
        Ok(())
    }

    /// For a release: the closed months, the license's alert terms (their lock taken) and
    /// the monthly sums the stored report's counters fall into.
    pub(super) async fn for_release<C: GenericClient>(
        c: &C,
        closed: BTreeSet<i64>,
        license_id: &str,
        bytes: &[u8],
    ) -> StoreResult<PgFacts> {
        let mut facts = PgFacts {
            closed,
            alert_terms: super::alerts::terms(c, &[license_id]).await?,
            ..PgFacts::default()
        };
        super::alerts::lock(c, &facts.alert_terms).await?;
        // What the plan will count; a body that does not decode is the plan's to refuse.
        if let Ok(report) = Report::decode(bytes) {
            let month = month_of(report.window_start.timestamp());
            let keys = report
                .counters
                .iter()
                .map(|ctr| (license_id.to_string(), ctr.metric.clone(), month))
                .collect();
            facts.load_monthly(c, keys).await?;
        }
        Ok(facts)
    }
}

/// Plans a batch of authentic reports and writes the plan, inside the caller's transaction.
pub(super) async fn ingest_batch<C: GenericClient>(
    c: &C,
    reports: &[AuthenticReport],
    source: Source,
    clock_offset_micros: i64,
) -> StoreResult<Vec<StoredOutcome>> {
    // 1. Hold off closes, then lock the agents, in id order.
    let (closed, db_now) = lock_periods(c, clock_offset_micros).await?;
    // The receipt time is the database's clock, not this node's: close times come from it
    // too, so every receipt is ordered against every close whichever collector wrote them.
    let received_at = db_now;
    let now = received_at.timestamp();
    let mut agent_ids: Vec<&str> = reports.iter().map(|r| r.agent_id.as_str()).collect();
    agent_ids.sort_unstable();
    agent_ids.dedup();
    let mut facts = PgFacts {
        closed,
        ..PgFacts::default()
    };
    facts.last_seq = query(
        c,
        "SELECT id, last_seq FROM agents WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&agent_ids],
    )
    .await?
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    if let Some(missing) = agent_ids.iter().find(|a| !facts.last_seq.contains_key(**a)) {
        return Err(StoreError::NotFound(format!("agent {missing} not found")));
    }

    // 2. Read what the plan will ask about: first the batch's keys, under the agents'
    // locks (a rotation locks its agent's row too).
    let keys: Vec<[u8; 32]> = reports.iter().map(|r| r.report.agent_key).collect();
    facts.keys = super::agent_keys::agent_keys(c, &keys).await?;
    let mut license_ids: Vec<&str> = reports
        .iter()
        .map(|r| r.report.license_id.as_str())
        .collect();
    license_ids.sort_unstable();
    license_ids.dedup();
    facts.licenses = load_licenses(c, &license_ids).await?;
    // Alerting licenses: their locks before any sum is read (see `alerts`).
    facts.alert_terms = super::alerts::terms(c, &license_ids).await?;
    super::alerts::lock(c, &facts.alert_terms).await?;
    facts.near = neighbours(c, reports).await?;
    for r in query(
        c,
        "SELECT id, agent_id, seq_from, seq_to FROM anomalies
         WHERE kind = 'gap' AND closed_at IS NULL AND agent_id = ANY($1)",
        &[&agent_ids],
    )
    .await?
    {
        facts.gaps.entry(r.get(1)).or_default().push(StoredGap {
            id: r.get(0),
            from: r.get::<_, i64>(2) as u64,
            to: r.get::<_, i64>(3) as u64,
        });
    }
    let month_now = month_of(now);
    let mut keys = HashSet::new();
    for r in reports {
        let lid = &r.report.license_id;
        let month = month_of(r.report.window_start.timestamp());
        for ctr in &r.report.counters {
            keys.insert((lid.clone(), ctr.metric.clone(), month));
        }
        for (metric, _) in &facts.licenses[lid.as_str()].metrics {
            keys.insert((lid.clone(), metric.clone(), month_now));
        }
    }
    facts.load_monthly(c, keys).await?;

    // 3. Plan.
    let plan = plan::plan_ingest(&mut facts, reports, received_at, source)?;

    // 4. Write.
    apply(c, reports, &plan, now, source).await?;
    Ok(plan.outcomes)
}

/// Writes an ingest plan.
async fn apply<C: GenericClient>(
    c: &C,
    reports: &[AuthenticReport],
    plan: &IngestPlan,
    now: i64,
    source: Source,
) -> StoreResult<()> {
    insert_reports(c, reports, plan, now, source).await?;
    insert_anomalies(c, plan, now).await?;
    if !plan.closed_gaps.is_empty() {
        execute(
            c,
            "UPDATE anomalies SET closed_at = $2 WHERE id = ANY($1)",
            &[&plan.closed_gaps, &now],
        )
        .await?;
    }
    if !plan.last_seqs.is_empty() {
        let ids: Vec<&str> = plan.last_seqs.iter().map(|(a, _)| a.as_str()).collect();
        let seqs: Vec<i64> = plan.last_seqs.iter().map(|(_, s)| *s as i64).collect();
        execute(
            c,
            "UPDATE agents SET last_seq = GREATEST(agents.last_seq, u.seq), last_seen = $3
             FROM unnest($1::text[], $2::int8[]) AS u(id, seq) WHERE agents.id = u.id",
            &[&ids, &seqs, &now],
        )
        .await?;
    }
    apply_counter(c, &plan.counter, now).await
}

/// Writes what a [`Counter`] found: its alerts, then its additions, hourly then monthly,
/// each per agent shard and in key order (every transaction locks these shared rows in the
/// same order, so none deadlock), added with `quantity = quantity + excluded.quantity` so
/// what another collector adds meanwhile is never lost. A sum that would pass `i64::MAX`
/// was refused by the plan; should a concurrent addition get there in between, the
/// database refuses it and the whole transaction is retried (`Contended`), its fresh read
/// then quarantining the report. Runs last before the commit.
pub(super) async fn apply_counter<C: GenericClient>(
    c: &C,
    counter: &Counter,
    now: i64,
) -> StoreResult<()> {
    super::alerts::insert(c, &counter.alerts, now).await?;
    let mut add_hourly: BTreeMap<RowKey, i64> = BTreeMap::new();
    let mut add_monthly: BTreeMap<RowKey, i64> = BTreeMap::new();
    for a in &counter.additions {
        let shard = shard_of(&a.agent_id);
        for (map, period) in [(&mut add_hourly, a.hour), (&mut add_monthly, a.month)] {
            let e = map
                .entry((a.license_id.clone(), a.metric.clone(), period, shard))
                .or_insert(0);
            *e = e.saturating_add(a.quantity);
        }
    }
    for (sql, adds) in [
        (
            "INSERT INTO rollups (license_id, metric, hour, shard, quantity)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int2[], $5::int8[])
             ON CONFLICT (license_id, metric, hour, shard)
             DO UPDATE SET quantity = rollups.quantity + excluded.quantity",
            &add_hourly,
        ),
        (
            "INSERT INTO monthly_usage (license_id, metric, month, shard, quantity)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int2[], $5::int8[])
             ON CONFLICT (license_id, metric, month, shard)
             DO UPDATE SET quantity = monthly_usage.quantity + excluded.quantity",
            &add_monthly,
        ),
    ] {
        if adds.is_empty() {
            continue;
        }
        let l: Vec<&str> = adds.keys().map(|k| k.0.as_str()).collect();
        let m: Vec<&str> = adds.keys().map(|k| k.1.as_str()).collect();
        let p: Vec<i64> = adds.keys().map(|k| k.2).collect();
        let sh: Vec<i16> = adds.keys().map(|k| k.3).collect();
        let q: Vec<i64> = adds.values().copied().collect();
        let st = c.prepare_cached(sql).await?;
        if let Err(e) = c.execute(&st, &[&l, &m, &p, &sh, &q]).await {
            if e.code() == Some(&tokio_postgres::error::SqlState::NUMERIC_VALUE_OUT_OF_RANGE) {
                return Err(StoreError::Contended(
                    "a usage sum reached its limit concurrently".into(),
                ));
            }
            return Err(e.into());
        }
    }
    Ok(())
}

fn columns(keys: &[SumKey]) -> (Vec<&str>, Vec<&str>, Vec<i64>) {
    (
        keys.iter().map(|k| k.0.as_str()).collect(),
        keys.iter().map(|k| k.1.as_str()).collect(),
        keys.iter().map(|k| k.2).collect(),
    )
}

async fn load_licenses<C: GenericClient>(
    c: &C,
    ids: &[&str],
) -> StoreResult<HashMap<String, LicenseTerms>> {
    let rows = query(
        c,
        "SELECT id, not_before, not_after, grace_secs, revoked_at FROM licenses WHERE id = ANY($1)",
        &[&ids],
    )
    .await?;
    let mut out: HashMap<String, LicenseTerms> = rows
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                LicenseTerms {
                    not_before: r.get(1),
                    not_after: r.get(2),
                    grace_secs: r.get(3),
                    revoked_at: r.get(4),
                    metrics: Vec::new(),
                },
            )
        })
        .collect();
    for id in ids {
        if !out.contains_key(*id) {
            return Err(StoreError::NotFound(format!("license {id} not found")));
        }
    }
    let metrics = query(
        c,
        "SELECT license_id, metric, quota FROM license_metrics WHERE license_id = ANY($1)
         ORDER BY license_id, metric",
        &[&ids],
    )
    .await?;
    for r in metrics {
        if let Some(t) = out.get_mut(r.get::<_, &str>(0)) {
            t.metrics
                .push((r.get(1), r.get::<_, Option<i64>>(2).map(|q| q as u64)));
        }
    }
    Ok(out)
}

/// Every stored report (forks included) with a seq within one of a batch report's, by
/// `(agent, seq)`: one query for the whole batch.
async fn neighbours<C: GenericClient>(
    c: &C,
    reports: &[AuthenticReport],
) -> StoreResult<HashMap<(String, i64), Vec<Neighbour>>> {
    let agent: Vec<&str> = reports.iter().map(|r| r.agent_id.as_str()).collect();
    let lo: Vec<i64> = reports
        .iter()
        .map(|r| (r.report.seq as i64).saturating_sub(1))
        .collect();
    let hi: Vec<i64> = reports
        .iter()
        .map(|r| (r.report.seq as i64).saturating_add(1))
        .collect();
    let rows = query(
        c,
        "SELECT r.agent_id, r.seq, r.fork, r.digest, r.status, r.prev_digest, r.window_start,
                r.window_end, r.reason
         FROM unnest($1::text[], $2::int8[], $3::int8[]) AS q(agent_id, lo, hi)
         JOIN reports r ON r.agent_id = q.agent_id AND r.seq BETWEEN q.lo AND q.hi",
        &[&agent, &lo, &hi],
    )
    .await?;
    let mut seen = HashSet::new();
    let mut out: HashMap<(String, i64), Vec<Neighbour>> = HashMap::new();
    for r in rows {
        let digest = super::digest_of(r.get(3));
        // Overlapping ranges of neighbouring batch reports return a row more than once.
        if !seen.insert(digest) {
            continue;
        }
        let seq: i64 = r.get(1);
        out.entry((r.get(0), seq)).or_default().push(Neighbour {
            seq: seq as u64,
            fork: r.get(2),
            digest,
            status: r.get(4),
            prev_digest: r.get::<_, Option<&[u8]>>(5).and_then(Digest::from_slice),
            window_start: r.get(6),
            window_end: r.get(7),
            reason: r.get::<_, &str>(8).parse().ok(),
        });
    }
    Ok(out)
}

async fn insert_reports<C: GenericClient>(
    c: &C,
    reports: &[AuthenticReport],
    plan: &IngestPlan,
    now: i64,
    source: Source,
) -> StoreResult<()> {
    let rows: Vec<(&AuthenticReport, &plan::NewReport)> =
        plan.rows.iter().map(|n| (&reports[n.index], n)).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let digest: Vec<&[u8]> = rows
        .iter()
        .map(|(r, _)| r.digest.as_bytes().as_slice())
        .collect();
    let agent: Vec<&str> = rows.iter().map(|(r, _)| r.agent_id.as_str()).collect();
    let seq: Vec<i64> = rows.iter().map(|(r, _)| r.report.seq as i64).collect();
    let fork: Vec<bool> = rows.iter().map(|(_, n)| n.fork).collect();
    let license: Vec<&str> = rows
        .iter()
        .map(|(r, _)| r.report.license_id.as_str())
        .collect();
    let prev: Vec<Option<&[u8]>> = rows
        .iter()
        .map(|(r, _)| r.report.prev_digest.as_ref().map(|d| d.0.as_slice()))
        .collect();
    let ws: Vec<i64> = rows
        .iter()
        .map(|(r, _)| r.report.window_start.timestamp())
        .collect();
    let we: Vec<i64> = rows
        .iter()
        .map(|(r, _)| r.report.window_end.timestamp())
        .collect();
    let status: Vec<&str> = rows.iter().map(|(_, n)| n.status.as_str()).collect();
    let reason: Vec<&str> = rows
        .iter()
        .map(|(_, n)| n.reason.map(|r| r.as_str()).unwrap_or_default())
        .collect();
    let detail: Vec<&str> = rows.iter().map(|(_, n)| n.detail.as_str()).collect();
    let bytes: Vec<&[u8]> = rows.iter().map(|(r, _)| r.bytes.as_slice()).collect();
    let sig: Vec<&[u8]> = rows.iter().map(|(r, _)| r.signature.as_slice()).collect();
    let billed: Vec<Option<i64>> = rows.iter().map(|(_, n)| n.billed_month).collect();
    let params: [Param<'_>; 16] = [
        &digest,
        &agent,
        &seq,
        &fork,
        &license,
        &prev,
        &ws,
        &we,
        &status,
        &reason,
        &detail,
        &bytes,
        &sig,
        &billed,
        &now,
        &source.as_str(),
    ];
    execute(
        c,
        "INSERT INTO reports (digest, agent_id, seq, fork, license_id, prev_digest, window_start,
            window_end, status, reason, detail, bytes, signature, billed_month, received_at, source)
         SELECT u.*, $15::int8, $16::text
         FROM unnest($1::bytea[], $2::text[], $3::int8[], $4::bool[], $5::text[], $6::bytea[],
                     $7::int8[], $8::int8[], $9::text[], $10::text[], $11::text[], $12::bytea[],
                     $13::bytea[], $14::int8[]) AS u",
        &params,
    )
    .await?;
    Ok(())
}

async fn insert_anomalies<C: GenericClient>(c: &C, plan: &IngestPlan, now: i64) -> StoreResult<()> {
    let anomalies = &plan.anomalies;
    if anomalies.is_empty() {
        return Ok(());
    }
    let kind: Vec<&str> = anomalies.iter().map(|a| a.kind.as_str()).collect();
    let agent: Vec<&str> = anomalies.iter().map(|a| a.agent_id.as_str()).collect();
    let license: Vec<&str> = anomalies.iter().map(|a| a.license_id.as_str()).collect();
    let from: Vec<i64> = anomalies.iter().map(|a| a.seq_from as i64).collect();
    let to: Vec<i64> = anomalies.iter().map(|a| a.seq_to as i64).collect();
    let digest: Vec<Option<&[u8]>> = anomalies
        .iter()
        .map(|a| a.digest.as_ref().map(|d| d.0.as_slice()))
        .collect();
    let detail: Vec<&str> = anomalies.iter().map(|a| a.detail.as_str()).collect();
    let closed: Vec<Option<i64>> = anomalies.iter().map(|a| a.closed.then_some(now)).collect();
    execute(
        c,
        "INSERT INTO anomalies (kind, agent_id, license_id, seq_from, seq_to, digest, detail,
            closed_at, opened_at)
         SELECT u.*, $9::int8
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::bytea[],
                     $7::text[], $8::int8[]) AS u",
        &[
            &kind, &agent, &license, &from, &to, &digest, &detail, &closed, &now,
        ],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl IngestStore for PostgresStore {
    async fn agents_by_keys(
        &self,
        keys: Vec<[u8; 32]>,
    ) -> StoreResult<HashMap<[u8; 32], AgentKey>> {
        let c = self.client().await?;
        super::agent_keys::agent_keys(&c, &keys).await
    }

    /// The receipt time comes from the database's clock, not `_received_at` (see
    /// `super::ingest::ingest_batch`).
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
        in_transaction!(self, |tx| super::ingest::ingest_batch(
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
            super::admin::enroll(&tx, &license_id, &token_hash, &agent_key, secs(now)).await?
        })
    }
}

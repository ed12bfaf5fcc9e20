//! Ingest on SQLite: answers the plan's questions ([`plan::Facts`]: the license's terms,
//! the stored neighbours, the agent's last seq and open gaps, monthly sums, closed months,
//! alert terms) with prepared statements inside the writer's transaction, and writes the
//! plan [`plan::plan_ingest`] makes — report rows, anomalies, `last_seq`, additive rollups,
//! alerts. Nothing here decides what is billed.
//!
//! Everything here runs in one transaction per group: a report row, its rollup update and
//! its anomalies commit together or not at all.

use super::super::plan::{self, Addition, Counter, Facts, IngestPlan, StoredGap};
use super::super::{AlertTerms, AuthenticReport, StoreError, StoreResult, StoredOutcome};
use super::*;
use crate::clock::Clock;
use crate::rules::{LicenseTerms, Neighbour, Source};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{BTreeMap, BTreeSet};
use tally_proto::Digest;
use tally_proto::time::Instant;

pub(super) fn load_license(conn: &Connection, id: &str) -> StoreResult<LicenseTerms> {
    let row = conn
        .prepare_cached(
            "SELECT not_before, not_after, grace_secs, revoked_at FROM licenses WHERE id = ?1",
        )?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("license {id} not found")))?;
    let mut stmt = conn.prepare_cached(
        "SELECT metric, quota FROM license_metrics WHERE license_id = ?1 ORDER BY metric",
    )?;
    let metrics = stmt
        .query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?.map(|q| q as u64),
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LicenseTerms {
        not_before: row.0,
        not_after: row.1,
        grace_secs: row.2,
        revoked_at: row.3,
        metrics,
    })
}

/// Every stored report of `agent_id` with a sequence number in `seq - 1 ..= seq + 1`
/// (forks included): one range scan of the `(agent_id, seq, digest)` key answers the
/// duplicate, fork and both chain-neighbour questions.
fn neighbourhood(conn: &Connection, agent_id: &str, seq: i64) -> StoreResult<Vec<Neighbour>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, fork, digest, status, prev_digest, window_start, window_end, reason FROM reports
         WHERE agent_id = ?1 AND seq BETWEEN ?2 AND ?3",
    )?;
    let rows = stmt
        // Saturating: the highest seq the protocol allows is i64::MAX.
        .query_map(
            params![agent_id, seq.saturating_sub(1), seq.saturating_add(1)],
            |r| {
                let d: Vec<u8> = r.get(2)?;
                let p: Option<Vec<u8>> = r.get(4)?;
                Ok(Neighbour {
                    seq: r.get::<_, i64>(0)? as u64,
                    fork: r.get::<_, i64>(1)? != 0,
                    digest: Digest::from_slice(&d).unwrap_or(Digest([0; 32])),
                    status: r.get(3)?,
                    // Read in place: this runs for every neighbour of every report ingested.
                    reason: r.get_ref(7)?.as_str().ok().and_then(|s| s.parse().ok()),
                    prev_digest: p.as_deref().and_then(Digest::from_slice),
                    window_start: r.get(5)?,
                    window_end: r.get(6)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// [`Facts`] read from the writer's connection, inside its transaction. The plan asks
/// each question once per batch (licenses, sums, months, terms, agents) or once per report
/// (neighbours: one range scan of the `(agent_id, seq, digest)` key).
pub(super) struct SqliteFacts<'c>(pub(super) &'c Connection);

impl Facts for SqliteFacts<'_> {
    fn license(&mut self, id: &str) -> StoreResult<LicenseTerms> {
        load_license(self.0, id)
    }

    fn stored_near(&mut self, agent_id: &str, seq: u64) -> StoreResult<Vec<Neighbour>> {
        neighbourhood(self.0, agent_id, seq as i64)
    }

    fn agent_key(&mut self, key: &[u8; 32]) -> StoreResult<Option<crate::store::AgentKey>> {
        super::agent_keys::agent_key(self.0, key)
    }

    fn last_seq(&mut self, agent_id: &str) -> StoreResult<u64> {
        let v: i64 = self
            .0
            .prepare_cached("SELECT last_seq FROM agents WHERE id = ?1")?
            .query_row([agent_id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("agent {agent_id} not found")))?;
        Ok(v.max(0) as u64)
    }

    fn open_gaps(&mut self, agent_id: &str) -> StoreResult<Vec<StoredGap>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT id, seq_from, seq_to FROM anomalies
                 WHERE kind = 'gap' AND closed_at IS NULL AND agent_id = ?1",
            )?
            .query_map([agent_id], |r| {
                Ok(StoredGap {
                    id: r.get(0)?,
                    from: r.get::<_, i64>(1)? as u64,
                    to: r.get::<_, i64>(2)? as u64,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    fn monthly(&mut self, license_id: &str, metric: &str, month: i64) -> StoreResult<i64> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT quantity FROM monthly_usage
                 WHERE license_id = ?1 AND metric = ?2 AND month = ?3",
            )?
            .query_row(params![license_id, metric, month], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    fn closed_months(&mut self) -> StoreResult<BTreeSet<i64>> {
        Ok(self
            .0
            .prepare_cached("SELECT month FROM periods")?
            .query_map([], |r| r.get::<_, i64>(0))?
            .collect::<Result<_, _>>()?)
    }

    fn alert_terms(&mut self, license_id: &str) -> StoreResult<Option<AlertTerms>> {
        super::alerts::terms(self.0, license_id)
    }
}

/// Plans a batch of authentic reports and writes the plan, in the writer's transaction.
pub(super) fn ingest_batch(
    conn: &Connection,
    reports: &[AuthenticReport],
    received_at: Instant,
    source: Source,
    clock: Clock,
) -> StoreResult<Vec<StoredOutcome>> {
    // Inside the writer: a close (also a writer transaction) is strictly before or after.
    let received_at = received_at.max(clock.now());
    let plan = plan::plan_ingest(&mut SqliteFacts(conn), reports, received_at, source)?;
    apply(conn, reports, &plan, received_at.timestamp(), source)?;
    Ok(plan.outcomes)
}

/// Writes an ingest plan.
fn apply(
    conn: &Connection,
    reports: &[AuthenticReport],
    plan: &IngestPlan,
    now: i64,
    source: Source,
) -> StoreResult<()> {
    let mut put = conn.prepare_cached(
        "INSERT INTO reports (digest, agent_id, seq, fork, license_id, prev_digest, window_start,
            window_end, received_at, source, status, reason, detail, bytes, signature, billed_month)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?;
    for row in &plan.rows {
        let r = &reports[row.index];
        let rep = &r.report;
        put.execute(params![
            r.digest.as_bytes().as_slice(),
            r.agent_id,
            rep.seq as i64,
            row.fork as i64,
            rep.license_id,
            rep.prev_digest.map(|d| d.0.to_vec()),
            rep.window_start.timestamp(),
            rep.window_end.timestamp(),
            now,
            source.as_str(),
            row.status.as_str(),
            row.reason.map(|r| r.as_str()).unwrap_or_default(),
            row.detail,
            r.bytes,
            r.signature,
            row.billed_month,
        ])?;
    }
    let mut put = conn.prepare_cached(
        "INSERT INTO anomalies (kind, agent_id, license_id, seq_from, seq_to, digest, detail,
            opened_at, closed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for a in &plan.anomalies {
        put.execute(params![
            a.kind.as_str(),
            a.agent_id,
            a.license_id,
            a.seq_from as i64,
            a.seq_to as i64,
            a.digest.map(|d| d.0.to_vec()),
            a.detail,
            now,
            a.closed.then_some(now),
        ])?;
    }
    let mut close = conn.prepare_cached("UPDATE anomalies SET closed_at = ?2 WHERE id = ?1")?;
    for id in &plan.closed_gaps {
        close.execute(params![id, now])?;
    }
    let mut seen = conn.prepare_cached(
        "UPDATE agents SET last_seq = MAX(last_seq, ?2), last_seen = ?3 WHERE id = ?1",
    )?;
    for (agent_id, seq) in &plan.last_seqs {
        seen.execute(params![agent_id, *seq as i64, now])?;
    }
    apply_counter(conn, &plan.counter, now)
}

/// Writes what a [`Counter`] found: its alerts, and its additions to the hourly rollups and
/// monthly sums (added to what is stored; the plan checked that no sum overflows, and
/// SQLite would otherwise silently turn an overflowing integer sum into a float).
pub(super) fn apply_counter(conn: &Connection, counter: &Counter, now: i64) -> StoreResult<()> {
    super::alerts::insert(conn, &counter.alerts, now)?;
    let mut hourly: BTreeMap<(&str, &str, i64), i64> = BTreeMap::new();
    let mut monthly: BTreeMap<(&str, &str, i64), i64> = BTreeMap::new();
    for Addition {
        license_id,
        metric,
        hour,
        month,
        quantity,
        ..
    } in &counter.additions
    {
        for (map, period) in [(&mut hourly, *hour), (&mut monthly, *month)] {
            let e = map
                .entry((license_id.as_str(), metric.as_str(), period))
                .or_insert(0);
            *e = e.saturating_add(*quantity);
        }
    }
    let mut put_h = conn.prepare_cached(
        "INSERT INTO rollups (license_id, metric, hour, quantity) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (license_id, metric, hour) DO UPDATE SET quantity = quantity + excluded.quantity",
    )?;
    for ((l, m, hour), q) in hourly {
        put_h.execute(params![l, m, hour, q])?;
    }
    let mut put_m = conn.prepare_cached(
        "INSERT INTO monthly_usage (license_id, metric, month, quantity) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (license_id, metric, month) DO UPDATE SET quantity = quantity + excluded.quantity",
    )?;
    for ((l, m, month), q) in monthly {
        put_m.execute(params![l, m, month, q])?;
    }
    Ok(())
}

#[async_trait]
impl IngestStore for SqliteStore {
    async fn agents_by_keys(
        &self,
        keys: Vec<[u8; 32]>,
    ) -> StoreResult<HashMap<[u8; 32], AgentKey>> {
        self.read(move |c| {
            let mut out = HashMap::new();
            for k in keys {
                if out.contains_key(&k) {
                    continue;
                }
                if let Some(row) = super::agent_keys::agent_key(c, &k)? {
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
            .write(move |c| super::ingest::ingest_batch(c, &reports, received_at, source, clock))
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
            .write(move |c| {
                super::admin::enroll(c, &license_id, &token_hash, &agent_key, secs(now))
            })
            .await
    }
}

//! Ingest on SQLite: answers the questions of `crate::rules` (the license's terms, the
//! stored neighbours, the agent's last seq) and writes what the rules decide — the report
//! row, its rollups and its anomalies — inside the writer's transaction. Nothing here
//! decides what is billed.
//!
//! Everything here runs in one transaction per group: a report row, its rollup update and
//! its anomalies commit together or not at all.

use super::super::{AuthenticReport, StoreError, StoreResult, StoredOutcome};
use crate::calendar::{hour_of, month_of};
use crate::clock::Clock;
use crate::rules::{self, Decision, LicenseTerms, Neighbour, ReportStatus, SeqChange, Source};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use tally_proto::Digest;
use tally_proto::reason::Reason;
use tally_proto::receipt::{Credit, Outcome};
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

/// Credits for a license in the calendar month of `received`, as of this transaction.
fn credits(
    conn: &Connection,
    rollups: &mut RollupCache,
    license_id: &str,
    terms: &LicenseTerms,
    received: i64,
) -> StoreResult<Vec<Credit>> {
    let month = month_of(received);
    let mut used = Vec::with_capacity(terms.metrics.len());
    for (metric, _) in &terms.metrics {
        used.push(rollups.monthly(conn, license_id, metric, month)? as u64);
    }
    Ok(rules::credits(terms, &used))
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
        .query_map(params![agent_id, seq - 1, seq + 1], |r| {
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
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Sums by license, metric and period start, looked up by `&str` without allocating (the
/// ingest profile showed a tuple-of-`String` key costing ~10 allocations and 4 SipHash
/// rounds per counter). `dirty` marks sums this transaction changed.
/// Hashed with foldhash rather than SipHash: the keys are our own license and metric
/// names, not attacker-chosen, and these lookups are on every counter's path.
#[derive(Default)]
struct Sums(FastMap<String, FastMap<String, FastMap<i64, Sum>>>);

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Clone, Copy)]
struct Sum {
    quantity: i64,
    dirty: bool,
}

impl Sums {
    fn get(&self, license_id: &str, metric: &str, period: i64) -> Option<i64> {
        Some(self.0.get(license_id)?.get(metric)?.get(&period)?.quantity)
    }

    fn set(&mut self, license_id: &str, metric: &str, period: i64, sum: Sum) {
        let by_metric = match self.0.get_mut(license_id) {
            Some(m) => m,
            None => self.0.entry(license_id.to_string()).or_default(),
        };
        let by_period = match by_metric.get_mut(metric) {
            Some(p) => p,
            None => by_metric.entry(metric.to_string()).or_default(),
        };
        by_period.insert(period, sum);
    }

    fn dirty(&self) -> impl Iterator<Item = (&str, &str, i64, i64)> {
        self.0.iter().flat_map(|(l, by_metric)| {
            by_metric.iter().flat_map(move |(m, by_period)| {
                by_period
                    .iter()
                    .filter(|(_, s)| s.dirty)
                    .map(move |(p, s)| (l.as_str(), m.as_str(), *p, s.quantity))
            })
        })
    }
}

/// The rollup rows one transaction touches, read once and written once at the end
/// (`flush`), instead of a read and a write per counter per report. Sums are checked in
/// Rust: SQLite would silently turn an overflowing integer sum into a float.
#[derive(Default)]
pub(super) struct RollupCache {
    hourly: Sums,
    monthly: Sums,
    /// The closed months, read once per transaction (inside it: a close commits before
    /// or after this transaction, never during it, as the writer runs one at a time).
    closed: Option<std::collections::BTreeSet<i64>>,
    /// Each license's alert terms (`None`: no thresholds), read once per transaction.
    alert_terms: HashMap<String, Option<crate::store::AlertTerms>>,
    /// Threshold crossings found, written by `flush`.
    new_alerts: Vec<crate::store::NewAlert>,
}

const HOURLY_SQL: &str =
    "SELECT quantity FROM rollups WHERE license_id = ?1 AND metric = ?2 AND hour = ?3";
const MONTHLY_SQL: &str =
    "SELECT quantity FROM monthly_usage WHERE license_id = ?1 AND metric = ?2 AND month = ?3";

impl RollupCache {
    fn load(
        conn: &Connection,
        sql: &str,
        sums: &mut Sums,
        license_id: &str,
        metric: &str,
        period: i64,
    ) -> StoreResult<i64> {
        if let Some(v) = sums.get(license_id, metric, period) {
            return Ok(v);
        }
        let v: i64 = conn
            .prepare_cached(sql)?
            .query_row(params![license_id, metric, period], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        sums.set(
            license_id,
            metric,
            period,
            Sum {
                quantity: v,
                dirty: false,
            },
        );
        Ok(v)
    }

    /// Usage of `metric` in the month starting at `month`, as of this transaction.
    pub(super) fn monthly(
        &mut self,
        conn: &Connection,
        license_id: &str,
        metric: &str,
        month: i64,
    ) -> StoreResult<i64> {
        Self::load(
            conn,
            MONTHLY_SQL,
            &mut self.monthly,
            license_id,
            metric,
            month,
        )
    }

    /// Adds `counters` (attributed to the hour and month of `window_start`). Returns
    /// `Err(metric)` and changes nothing if any sum would overflow.
    pub(super) fn add(
        &mut self,
        conn: &Connection,
        license_id: &str,
        window_start: i64,
        counters: &[(&str, u64)],
    ) -> StoreResult<Result<(), String>> {
        let (hour, month) = (hour_of(window_start), month_of(window_start));
        let mut updates = Vec::with_capacity(counters.len());
        for &(metric, q) in counters {
            let h = Self::load(conn, HOURLY_SQL, &mut self.hourly, license_id, metric, hour)?;
            let m = self.monthly(conn, license_id, metric, month)?;
            let q = i64::try_from(q)
                .map_err(|_| StoreError::Invalid("quantity out of range".into()))?;
            let (Some(h2), Some(m2)) = (h.checked_add(q), m.checked_add(q)) else {
                return Ok(Err(metric.to_string()));
            };
            updates.push((metric, h2, m, m2));
        }
        if !self.alert_terms.contains_key(license_id) {
            let t = super::alerts::terms(conn, license_id)?;
            self.alert_terms.insert(license_id.to_string(), t);
        }
        for (metric, h2, m, m2) in updates {
            let dirty = |quantity| Sum {
                quantity,
                dirty: true,
            };
            self.hourly.set(license_id, metric, hour, dirty(h2));
            self.monthly.set(license_id, metric, month, dirty(m2));
            if let Some(Some(terms)) = self.alert_terms.get(license_id) {
                let found = terms.crossings(license_id, metric, month, m as u64, m2 as u64);
                self.new_alerts.extend(found);
            }
        }
        Ok(Ok(()))
    }

    /// Where a report whose window starts at `window_start` is billed, as
    /// [`rules::periods::billed_month`] decides from the closed months.
    fn billed_month(&mut self, conn: &Connection, window_start: i64) -> StoreResult<Option<i64>> {
        let closed = match self.closed.take() {
            Some(c) => c,
            None => conn
                .prepare_cached("SELECT month FROM periods")?
                .query_map([], |r| r.get::<_, i64>(0))?
                .collect::<Result<_, _>>()?,
        };
        let billed = rules::periods::billed_month(month_of(window_start), &closed);
        self.closed = Some(closed);
        Ok(billed)
    }

    /// Writes every changed row and the alerts found (crossed at `now`). Must run before
    /// the transaction commits.
    pub(super) fn flush(&mut self, conn: &Connection, now: i64) -> StoreResult<()> {
        super::alerts::insert(conn, &self.new_alerts, now)?;
        let mut put_h = conn.prepare_cached(
            "INSERT INTO rollups (license_id, metric, hour, quantity) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (license_id, metric, hour) DO UPDATE SET quantity = excluded.quantity",
        )?;
        for (l, m, hour, q) in self.hourly.dirty() {
            put_h.execute(params![l, m, hour, q])?;
        }
        let mut put_m = conn.prepare_cached(
            "INSERT INTO monthly_usage (license_id, metric, month, quantity) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (license_id, metric, month) DO UPDATE SET quantity = excluded.quantity",
        )?;
        for (l, m, month, q) in self.monthly.dirty() {
            put_m.execute(params![l, m, month, q])?;
        }
        *self = RollupCache::default();
        Ok(())
    }
}

/// Applies the stored-state rules to a batch of authentic reports, in order.
pub(super) fn ingest_batch(
    conn: &Connection,
    reports: &[AuthenticReport],
    received_at: Instant,
    source: Source,
    clock: Clock,
) -> StoreResult<Vec<StoredOutcome>> {
    // Inside the writer: a close (also a writer transaction) is strictly before or after.
    let received_at = received_at.max(clock.now());
    let now = received_at.timestamp();
    let mut licenses: HashMap<String, LicenseTerms> = HashMap::new();
    let mut rollups = RollupCache::default();
    let mut sequences = SequenceCache::default();
    let mut out = Vec::with_capacity(reports.len());
    for r in reports {
        let lid = &r.report.license_id;
        if !licenses.contains_key(lid) {
            licenses.insert(lid.clone(), load_license(conn, lid)?);
        }
        let lic = &licenses[lid];
        let (outcome, reason, detail) =
            ingest_one(conn, &mut rollups, &mut sequences, r, lic, now, source)?;
        out.push(StoredOutcome {
            outcome,
            reason,
            detail,
            lease_until: rules::lease_until(lic, now),
            credits: credits(conn, &mut rollups, lid, lic, now)?,
            received_at,
        });
    }
    rollups.flush(conn, now)?;
    sequences.flush(conn, now)?;
    Ok(out)
}

/// Each agent's `last_seq`, read once per transaction and written once at its end
/// (`flush`), like [`RollupCache`].
#[derive(Default)]
struct SequenceCache(HashMap<String, i64>);

impl SequenceCache {
    fn last_seq(&mut self, conn: &Connection, agent_id: &str) -> StoreResult<i64> {
        if let Some(v) = self.0.get(agent_id) {
            return Ok(*v);
        }
        let v: i64 = conn
            .prepare_cached("SELECT last_seq FROM agents WHERE id = ?1")?
            .query_row([agent_id], |r| r.get(0))?;
        self.0.insert(agent_id.to_string(), v);
        Ok(v)
    }

    fn saw(&mut self, agent_id: &str, seq: i64) {
        if let Some(v) = self.0.get_mut(agent_id) {
            *v = (*v).max(seq);
        }
    }

    /// Writes `last_seq`/`last_seen` of every agent seen. Must run before the commit.
    fn flush(&mut self, conn: &Connection, now: i64) -> StoreResult<()> {
        let mut put = conn.prepare_cached(
            "UPDATE agents SET last_seq = MAX(last_seq, ?2), last_seen = ?3 WHERE id = ?1",
        )?;
        for (agent_id, seq) in self.0.drain() {
            put.execute(params![agent_id, seq, now])?;
        }
        Ok(())
    }
}

fn ingest_one(
    conn: &Connection,
    rollups: &mut RollupCache,
    sequences: &mut SequenceCache,
    r: &AuthenticReport,
    terms: &LicenseTerms,
    now: i64,
    source: Source,
) -> StoreResult<(Outcome, Option<Reason>, String)> {
    let rep = &r.report;
    let seq = rep.seq as i64;
    let near = neighbourhood(conn, &r.agent_id, seq)?;
    let mut billed = None;
    let (status, reason, detail) = match rules::decide(rep, r.digest, terms, &near, now, source) {
        Decision::Duplicate {
            detail,
            not_counted,
        } => return Ok((Outcome::Duplicate, not_counted, detail)),
        Decision::Fork { detail } => {
            let code = Reason::SeqConflict.as_str();
            insert_report(
                conn,
                r,
                now,
                source,
                true,
                ReportStatus::Quarantined,
                code,
                &detail,
                None,
            )?;
            conn.prepare_cached(
                    "INSERT INTO anomalies (kind, agent_id, license_id, seq_from, seq_to, digest, detail, opened_at)
                     VALUES ('fork', ?1, ?2, ?3, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![r.agent_id, rep.license_id, seq, r.digest.as_bytes().as_slice(), detail, now])?;
            return Ok((Outcome::Quarantined, Some(Reason::SeqConflict), detail));
        }
        Decision::Quarantine { reason, detail } => {
            (ReportStatus::Quarantined, Some(reason), detail)
        }
        Decision::Count => match count(conn, rollups, &rep.license_id, rep)? {
            Ok(late) => {
                billed = late;
                (ReportStatus::Accepted, None, String::new())
            }
            Err((reason, detail)) => (ReportStatus::Quarantined, Some(reason), detail),
        },
    };
    let code = reason.map(Reason::as_str).unwrap_or_default();
    insert_report(conn, r, now, source, false, status, code, &detail, billed)?;
    track_sequence(conn, sequences, &r.agent_id, &rep.license_id, seq, now)?;
    let outcome = if status == ReportStatus::Accepted {
        Outcome::Accepted
    } else {
        Outcome::Quarantined
    };
    Ok((outcome, reason, detail))
}

/// Adds a report's counters to the rollups of `license_id` (attributed to the hour and
/// month of its window start). The one counting path: ingest and quarantine release both
/// come here. A sum that would overflow changes nothing and returns the rules' verdict.
/// `Ok(Some(month))`: the report's own month is closed, so it is billed on `month`'s
/// statement as an adjustment (the caller records that on the report row).
pub(super) fn count(
    conn: &Connection,
    rollups: &mut RollupCache,
    license_id: &str,
    rep: &tally_proto::report::Report,
) -> StoreResult<Result<Option<i64>, (Reason, String)>> {
    let counters: Vec<(&str, u64)> = rep
        .counters
        .iter()
        .map(|c| (c.metric.as_str(), c.quantity))
        .collect();
    let billed = rollups.billed_month(conn, rep.window_start.timestamp())?;
    Ok(rollups
        .add(conn, license_id, rep.window_start.timestamp(), &counters)?
        .map(|()| billed)
        .map_err(|metric| rules::overflow(&metric)))
}

#[allow(clippy::too_many_arguments)]
fn insert_report(
    conn: &Connection,
    r: &AuthenticReport,
    now: i64,
    source: Source,
    fork: bool,
    status: ReportStatus,
    reason: &str,
    detail: &str,
    billed_month: Option<i64>,
) -> StoreResult<()> {
    let rep = &r.report;
    conn.prepare_cached(
        "INSERT INTO reports (digest, agent_id, seq, fork, license_id, prev_digest, window_start,
            window_end, received_at, source, status, reason, detail, bytes, signature, billed_month)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        r.digest.as_bytes().as_slice(),
        r.agent_id,
        rep.seq as i64,
        fork as i64,
        rep.license_id,
        rep.prev_digest.map(|d| d.0.to_vec()),
        rep.window_start.timestamp(),
        rep.window_end.timestamp(),
        now,
        source.as_str(),
        status.as_str(),
        reason,
        detail,
        r.bytes,
        r.signature,
        billed_month,
    ])?;
    Ok(())
}

/// Keeps `last_seq`/`last_seen` and the open gaps of an agent current, as
/// [`rules::seq_change`] and [`rules::fill_gap`] say.
fn track_sequence(
    conn: &Connection,
    sequences: &mut SequenceCache,
    agent_id: &str,
    license_id: &str,
    seq: i64,
    now: i64,
) -> StoreResult<()> {
    let last = sequences.last_seq(conn, agent_id)?;
    let open_gap = |from: u64, to: u64| -> StoreResult<()> {
        conn.prepare_cached(
            "INSERT INTO anomalies (kind, agent_id, license_id, seq_from, seq_to, detail, opened_at)
             VALUES ('gap', ?1, ?2, ?3, ?4, 'reports missing', ?5)",
        )?
        .execute(params![agent_id, license_id, from as i64, to as i64, now])?;
        Ok(())
    };
    match rules::seq_change(last as u64, seq as u64) {
        SeqChange::None => {}
        SeqChange::OpensGap { from, to } => open_gap(from, to)?,
        SeqChange::MayFill => {
            let gap: Option<(i64, i64, i64)> = conn
                .prepare_cached(
                    "SELECT id, seq_from, seq_to FROM anomalies
                     WHERE kind = 'gap' AND closed_at IS NULL AND agent_id = ?1
                       AND seq_from <= ?2 AND seq_to >= ?2",
                )?
                .query_row(params![agent_id, seq], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            if let Some((id, from, to)) = gap {
                conn.prepare_cached("UPDATE anomalies SET closed_at = ?2 WHERE id = ?1")?
                    .execute(params![id, now])?;
                for (f, t) in rules::fill_gap(from as u64, to as u64, seq as u64) {
                    open_gap(f, t)?;
                }
            }
        }
    }
    sequences.saw(agent_id, seq);
    Ok(())
}

//! Ingest on PostgreSQL: answers the questions of `crate::rules` and writes what they
//! decide, in one READ COMMITTED transaction per Submit with a fixed number of round
//! trips, whatever the batch size:
//!
//! 1. lock the batch's agents (`FOR UPDATE`, sorted by id) and read their `last_seq`: a
//!    second collector handed the same agent's reports waits here, then sees every row
//!    the first committed;
//! 2. read the licenses' terms, the stored neighbours (`seq - 1 ..= seq + 1`) of every
//!    report, the agents' open gaps and the monthly sums the batch touches;
//! 3. decide each report in order with the rules, in memory (a later report of the
//!    batch sees the earlier ones as neighbours, as on SQLite);
//! 4. write reports, anomalies, gap closures and `last_seq` with one `unnest` statement
//!    each; then, last (these rows are shared by every agent of a license, so their locks
//!    are held as briefly as possible), add to the rollups and monthly sums additively,
//!    in key order.
//!
//! Nothing here decides what is billed.

use super::super::{AuthenticReport, StoreError, StoreResult, StoredOutcome};
use super::{Param, execute, query, query_opt};
use crate::calendar::{hour_of, month_of};
use crate::rules::{self, Decision, LicenseTerms, Neighbour, ReportStatus, SeqChange, Source};
use deadpool_postgres::GenericClient;
use std::collections::{BTreeMap, HashMap, HashSet};
use tally_proto::Digest;
use tally_proto::reason::Reason;
use tally_proto::receipt::Outcome;
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

/// The monthly sums a transaction reads (to check overflow and answer credits) and the
/// hourly and monthly quantities it adds. Additions are written with
/// `quantity = quantity + excluded.quantity`, so what another collector adds meanwhile is
/// never lost; a sum that would pass `i64::MAX` is refused in Rust first and, should a
/// concurrent addition get there in between, by the database (the transaction is then
/// retried and the report quarantined as `invalid_counters`).
#[derive(Default)]
pub(super) struct Sums {
    /// Monthly totals (all shards) as read.
    base_monthly: HashMap<SumKey, i64>,
    /// What this transaction adds to monthly totals (all shards).
    added_monthly: HashMap<SumKey, i64>,
    add_hourly: BTreeMap<RowKey, i64>,
    add_monthly: BTreeMap<RowKey, i64>,
    /// The closed months, as read after [`lock_periods`].
    pub(super) closed: std::collections::BTreeSet<i64>,
    /// Alert terms of the licenses with thresholds (their locks held: see `alerts`).
    pub(super) alert_terms: HashMap<String, crate::store::AlertTerms>,
    /// Threshold crossings found, written by `flush`.
    pub(super) new_alerts: Vec<crate::store::NewAlert>,
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

impl Sums {
    /// Reads the monthly sums the counters of `reports` (on `license_id`) fall into.
    pub(super) async fn load<C: GenericClient>(
        &mut self,
        c: &C,
        reports: &[Report],
        license_id: &str,
    ) -> StoreResult<()> {
        let keys = reports
            .iter()
            .flat_map(|r| {
                let month = month_of(r.window_start.timestamp());
                r.counters
                    .iter()
                    .map(move |ctr| (license_id.to_string(), ctr.metric.clone(), month))
            })
            .collect();
        self.load_keys(c, keys).await
    }

    async fn load_keys<C: GenericClient>(
        &mut self,
        c: &C,
        keys: HashSet<SumKey>,
    ) -> StoreResult<()> {
        let keys: Vec<SumKey> = keys
            .into_iter()
            .filter(|k| !self.base_monthly.contains_key(k))
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
            self.base_monthly.insert(k, 0);
        }
        for r in rows {
            self.base_monthly
                .insert((r.get(0), r.get(1), r.get(2)), r.get(3));
        }
        Ok(())
    }

    /// Usage of `metric` in the month starting at `month`, as of this transaction.
    fn monthly(&self, license_id: &str, metric: &str, month: i64) -> i64 {
        let k = (license_id.to_string(), metric.to_string(), month);
        let base = self.base_monthly.get(&k).copied().unwrap_or(0);
        base.saturating_add(self.added_monthly.get(&k).copied().unwrap_or(0))
    }

    /// The one counting path (ingest and quarantine release): adds a report's counters to
    /// the hour and month of its window start, or changes nothing and returns the rules'
    /// verdict if a sum would overflow. `Ok(Some(month))`: its own month is closed, so it
    /// is billed on `month`'s statement as an adjustment (the caller records that).
    pub(super) fn count(
        &mut self,
        license_id: &str,
        agent_id: &str,
        rep: &Report,
    ) -> Result<Option<i64>, (Reason, String)> {
        let shard = shard_of(agent_id);
        let start = rep.window_start.timestamp();
        let (hour, month) = (hour_of(start), month_of(start));
        let mut moves = Vec::with_capacity(rep.counters.len());
        for ctr in &rep.counters {
            let before = self.monthly(license_id, &ctr.metric, month);
            let fits = i64::try_from(ctr.quantity)
                .ok()
                .and_then(|q| before.checked_add(q));
            match fits {
                None => return Err(rules::overflow(&ctr.metric)),
                Some(after) => moves.push((ctr.metric.as_str(), before, after)),
            }
        }
        if let Some(terms) = self.alert_terms.get(license_id) {
            for (metric, before, after) in moves {
                let found = terms.crossings(license_id, metric, month, before as u64, after as u64);
                self.new_alerts.extend(found);
            }
        }
        for ctr in &rep.counters {
            // In range: checked above (hourly ≤ monthly, both only ever grow together).
            let q = ctr.quantity as i64;
            for (map, period) in [(&mut self.add_hourly, hour), (&mut self.add_monthly, month)] {
                let e = map
                    .entry((license_id.to_string(), ctr.metric.clone(), period, shard))
                    .or_insert(0);
                *e = e.saturating_add(q);
            }
            let e = self
                .added_monthly
                .entry((license_id.to_string(), ctr.metric.clone(), month))
                .or_insert(0);
            *e = e.saturating_add(q);
        }
        Ok(rules::periods::billed_month(month, &self.closed))
    }

    /// Writes the additions, hourly then monthly, each in key order (every transaction
    /// locks these shared rows in the same order, so none deadlock). Runs last before the
    /// commit.
    pub(super) async fn flush<C: GenericClient>(&mut self, c: &C, now: i64) -> StoreResult<()> {
        super::alerts::insert(c, &self.new_alerts, now).await?;
        for (sql, adds) in [
            (
                "INSERT INTO rollups (license_id, metric, hour, shard, quantity)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int2[], $5::int8[])
                 ON CONFLICT (license_id, metric, hour, shard)
                 DO UPDATE SET quantity = rollups.quantity + excluded.quantity",
                &self.add_hourly,
            ),
            (
                "INSERT INTO monthly_usage (license_id, metric, month, shard, quantity)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int2[], $5::int8[])
                 ON CONFLICT (license_id, metric, month, shard)
                 DO UPDATE SET quantity = monthly_usage.quantity + excluded.quantity",
                &self.add_monthly,
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
                    // Another collector's addition got there first: retry the whole
                    // transaction, whose fresh read then quarantines the report.
                    return Err(StoreError::Contended(
                        "a usage sum reached its limit concurrently".into(),
                    ));
                }
                return Err(e.into());
            }
        }
        self.add_hourly.clear();
        self.add_monthly.clear();
        self.added_monthly.clear();
        Ok(())
    }
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

/// A gap anomaly of one agent: stored (`id`) or opened by this transaction.
struct Gap {
    id: Option<i64>,
    from: u64,
    to: u64,
    closed: bool,
}

/// What the transaction knows of one agent (its row is locked).
struct AgentState {
    last_seq: i64,
    /// A main report of this agent was stored: write `last_seq`/`last_seen`.
    touched: bool,
    gaps: Vec<Gap>,
}

/// A new anomaly row.
struct NewAnomaly {
    kind: &'static str,
    agent_id: String,
    license_id: String,
    seq_from: i64,
    seq_to: i64,
    digest: Option<Vec<u8>>,
    detail: String,
    closed: bool,
}

/// A new report row.
struct NewReport<'a> {
    r: &'a AuthenticReport,
    fork: bool,
    status: ReportStatus,
    reason: &'static str,
    detail: String,
    /// Set when counted after its own month closed: the month whose statement bills it.
    billed_month: Option<i64>,
}

/// Applies the stored-state rules to a batch of authentic reports, in order, inside the
/// caller's transaction.
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
    let mut agents: HashMap<String, AgentState> = query(
        c,
        "SELECT id, last_seq FROM agents WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&agent_ids],
    )
    .await?
    .into_iter()
    .map(|r| {
        (
            r.get(0),
            AgentState {
                last_seq: r.get(1),
                touched: false,
                gaps: Vec::new(),
            },
        )
    })
    .collect();
    if let Some(missing) = agent_ids.iter().find(|a| !agents.contains_key(**a)) {
        return Err(StoreError::NotFound(format!("agent {missing} not found")));
    }

    // 2. Read what the rules will ask about.
    let mut license_ids: Vec<&str> = reports
        .iter()
        .map(|r| r.report.license_id.as_str())
        .collect();
    license_ids.sort_unstable();
    license_ids.dedup();
    let licenses = load_licenses(c, &license_ids).await?;
    // Alerting licenses: their locks before any sum is read (see `alerts`).
    let alert_terms = super::alerts::terms(c, &license_ids).await?;
    super::alerts::lock(c, &alert_terms).await?;
    let mut near = neighbours(c, reports).await?;
    for r in query(
        c,
        "SELECT id, agent_id, seq_from, seq_to FROM anomalies
         WHERE kind = 'gap' AND closed_at IS NULL AND agent_id = ANY($1)",
        &[&agent_ids],
    )
    .await?
    {
        if let Some(a) = agents.get_mut(r.get::<_, &str>(1)) {
            a.gaps.push(Gap {
                id: Some(r.get(0)),
                from: r.get::<_, i64>(2) as u64,
                to: r.get::<_, i64>(3) as u64,
                closed: false,
            });
        }
    }
    let mut sums = Sums {
        closed,
        alert_terms,
        ..Sums::default()
    };
    let month_now = month_of(now);
    let mut keys = HashSet::new();
    for r in reports {
        let lid = &r.report.license_id;
        let month = month_of(r.report.window_start.timestamp());
        for ctr in &r.report.counters {
            keys.insert((lid.clone(), ctr.metric.clone(), month));
        }
        for (metric, _) in &licenses[lid.as_str()].metrics {
            keys.insert((lid.clone(), metric.clone(), month_now));
        }
    }
    sums.load_keys(c, keys).await?;

    // 3. Decide, in order.
    let mut rows: Vec<NewReport<'_>> = Vec::with_capacity(reports.len());
    let mut anomalies: Vec<NewAnomaly> = Vec::new();
    let mut out = Vec::with_capacity(reports.len());
    for r in reports {
        let rep = &r.report;
        let terms = &licenses[rep.license_id.as_str()];
        let seq = rep.seq as i64;
        let around: Vec<Neighbour> = [seq.checked_sub(1), Some(seq), seq.checked_add(1)]
            .into_iter()
            .flatten()
            .filter_map(|s| near.get(&(r.agent_id.clone(), s)))
            .flatten()
            .cloned()
            .collect();
        let decision = rules::decide(rep, r.digest, terms, &around, now, source);
        let (outcome, reason, detail) = match decision {
            Decision::Duplicate {
                detail,
                not_counted,
            } => (Outcome::Duplicate, not_counted, detail),
            Decision::Fork { detail } => {
                anomalies.push(NewAnomaly {
                    kind: "fork",
                    agent_id: r.agent_id.clone(),
                    license_id: rep.license_id.clone(),
                    seq_from: seq,
                    seq_to: seq,
                    digest: Some(r.digest.as_bytes().to_vec()),
                    detail: detail.clone(),
                    closed: false,
                });
                let reason = Reason::SeqConflict;
                rows.push(NewReport {
                    r,
                    fork: true,
                    status: ReportStatus::Quarantined,
                    reason: reason.as_str(),
                    detail: detail.clone(),
                    billed_month: None,
                });
                (Outcome::Quarantined, Some(reason), detail)
            }
            Decision::Quarantine { reason, detail } => {
                rows.push(NewReport {
                    r,
                    fork: false,
                    status: ReportStatus::Quarantined,
                    reason: reason.as_str(),
                    detail: detail.clone(),
                    billed_month: None,
                });
                (Outcome::Quarantined, Some(reason), detail)
            }
            Decision::Count => {
                let mut billed_month = None;
                let (outcome, reason, detail) = match sums.count(&rep.license_id, &r.agent_id, rep)
                {
                    Ok(late) => {
                        billed_month = late;
                        (Outcome::Accepted, None, String::new())
                    }
                    Err((reason, detail)) => (Outcome::Quarantined, Some(reason), detail),
                };
                rows.push(NewReport {
                    r,
                    fork: false,
                    status: if reason.is_none() {
                        ReportStatus::Accepted
                    } else {
                        ReportStatus::Quarantined
                    },
                    reason: reason.map(Reason::as_str).unwrap_or_default(),
                    detail: detail.clone(),
                    billed_month,
                });
                (outcome, reason, detail)
            }
        };
        if outcome != Outcome::Duplicate {
            let fork = rows.last().map(|n| n.fork).unwrap_or(false);
            near.entry((r.agent_id.clone(), seq))
                .or_default()
                .push(Neighbour {
                    seq: rep.seq,
                    fork,
                    digest: r.digest,
                    status: rows.last().map_or(ReportStatus::Quarantined, |n| n.status),
                    reason,
                    prev_digest: rep.prev_digest,
                    window_start: rep.window_start.timestamp(),
                    window_end: rep.window_end.timestamp(),
                });
            if !fork && let Some(a) = agents.get_mut(&r.agent_id) {
                track_sequence(a, seq);
            }
        }
        let used: Vec<u64> = terms
            .metrics
            .iter()
            .map(|(m, _)| sums.monthly(&rep.license_id, m, month_now) as u64)
            .collect();
        out.push(StoredOutcome {
            outcome,
            reason,
            detail,
            lease_until: rules::lease_until(terms, now),
            credits: rules::credits(terms, &used),
            received_at,
        });
    }

    // 4. Write.
    insert_reports(c, &rows, now, source).await?;
    let mut close_ids = Vec::new();
    for (agent_id, a) in &agents {
        for g in &a.gaps {
            match (g.id, g.closed) {
                (Some(id), true) => close_ids.push(id),
                (None, closed) => anomalies.push(NewAnomaly {
                    kind: "gap",
                    agent_id: agent_id.clone(),
                    license_id: String::new(),
                    seq_from: g.from as i64,
                    seq_to: g.to as i64,
                    digest: None,
                    detail: "reports missing".into(),
                    closed,
                }),
                _ => {}
            }
        }
    }
    insert_anomalies(c, &mut anomalies, reports, now).await?;
    if !close_ids.is_empty() {
        execute(
            c,
            "UPDATE anomalies SET closed_at = $2 WHERE id = ANY($1)",
            &[&close_ids, &now],
        )
        .await?;
    }
    let (ids, seqs): (Vec<&str>, Vec<i64>) = agents
        .iter()
        .filter(|(_, a)| a.touched)
        .map(|(id, a)| (id.as_str(), a.last_seq))
        .unzip();
    if !ids.is_empty() {
        execute(
            c,
            "UPDATE agents SET last_seq = GREATEST(agents.last_seq, u.seq), last_seen = $3
             FROM unnest($1::text[], $2::int8[]) AS u(id, seq) WHERE agents.id = u.id",
            &[&ids, &seqs, &now],
        )
        .await?;
    }
    sums.flush(c, now).await?;
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

/// Keeps `last_seq` and the open gaps of an agent current, as [`rules::seq_change`] and
/// [`rules::fill_gap`] say.
fn track_sequence(a: &mut AgentState, seq: i64) {
    match rules::seq_change(a.last_seq as u64, seq as u64) {
        SeqChange::None => {}
        SeqChange::OpensGap { from, to } => a.gaps.push(Gap {
            id: None,
            from,
            to,
            closed: false,
        }),
        SeqChange::MayFill => {
            let s = seq as u64;
            if let Some(g) = a
                .gaps
                .iter_mut()
                .find(|g| !g.closed && g.from <= s && s <= g.to)
            {
                g.closed = true;
                let (from, to) = (g.from, g.to);
                for (f, t) in rules::fill_gap(from, to, s) {
                    a.gaps.push(Gap {
                        id: None,
                        from: f,
                        to: t,
                        closed: false,
                    });
                }
            }
        }
    }
    a.last_seq = a.last_seq.max(seq);
    a.touched = true;
}

async fn insert_reports<C: GenericClient>(
    c: &C,
    rows: &[NewReport<'_>],
    now: i64,
    source: Source,
) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let digest: Vec<&[u8]> = rows
        .iter()
        .map(|n| n.r.digest.as_bytes().as_slice())
        .collect();
    let agent: Vec<&str> = rows.iter().map(|n| n.r.agent_id.as_str()).collect();
    let seq: Vec<i64> = rows.iter().map(|n| n.r.report.seq as i64).collect();
    let fork: Vec<bool> = rows.iter().map(|n| n.fork).collect();
    let license: Vec<&str> = rows
        .iter()
        .map(|n| n.r.report.license_id.as_str())
        .collect();
    let prev: Vec<Option<&[u8]>> = rows
        .iter()
        .map(|n| n.r.report.prev_digest.as_ref().map(|d| d.0.as_slice()))
        .collect();
    let ws: Vec<i64> = rows
        .iter()
        .map(|n| n.r.report.window_start.timestamp())
        .collect();
    let we: Vec<i64> = rows
        .iter()
        .map(|n| n.r.report.window_end.timestamp())
        .collect();
    let status: Vec<&str> = rows.iter().map(|n| n.status.as_str()).collect();
    let reason: Vec<&str> = rows.iter().map(|n| n.reason).collect();
    let detail: Vec<&str> = rows.iter().map(|n| n.detail.as_str()).collect();
    let bytes: Vec<&[u8]> = rows.iter().map(|n| n.r.bytes.as_slice()).collect();
    let sig: Vec<&[u8]> = rows.iter().map(|n| n.r.signature.as_slice()).collect();
    let billed: Vec<Option<i64>> = rows.iter().map(|n| n.billed_month).collect();
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

async fn insert_anomalies<C: GenericClient>(
    c: &C,
    anomalies: &mut [NewAnomaly],
    reports: &[AuthenticReport],
    now: i64,
) -> StoreResult<()> {
    if anomalies.is_empty() {
        return Ok(());
    }
    // A gap's license is its agent's.
    let license_of: HashMap<&str, &str> = reports
        .iter()
        .map(|r| (r.agent_id.as_str(), r.report.license_id.as_str()))
        .collect();
    for a in anomalies.iter_mut() {
        if a.license_id.is_empty()
            && let Some(l) = license_of.get(a.agent_id.as_str())
        {
            a.license_id = l.to_string();
        }
    }
    let kind: Vec<&str> = anomalies.iter().map(|a| a.kind).collect();
    let agent: Vec<&str> = anomalies.iter().map(|a| a.agent_id.as_str()).collect();
    let license: Vec<&str> = anomalies.iter().map(|a| a.license_id.as_str()).collect();
    let from: Vec<i64> = anomalies.iter().map(|a| a.seq_from).collect();
    let to: Vec<i64> = anomalies.iter().map(|a| a.seq_to).collect();
    let digest: Vec<Option<&[u8]>> = anomalies.iter().map(|a| a.digest.as_deref()).collect();
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

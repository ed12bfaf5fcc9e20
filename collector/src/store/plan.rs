//! The plan: what a batch of authentic reports (or a release) does to the stored state,
//! decided once for every store.
//!
//! A store answers [`Facts`] (synchronously: SQLite with prepared statements inside its
//! writer, PostgreSQL from the rows it read in a few batched queries before planning), calls
//! [`plan_ingest`] or [`plan_release`], and applies the returned plan in its transaction:
//! report rows, anomalies, gap closures, `last_seq`, additive rollup and monthly deltas,
//! alert crossings. Nothing in the plan touches a database; nothing in a store decides
//! what is billed. The per-report decision itself is [`rules::decide`]; this module runs it
//! over a batch in order, so a report sees the reports before it in the same batch as if
//! they were already stored.

use crate::calendar::{hour_of, month_of};
use crate::rules::{
    self, Decision, LicenseTerms, Neighbour, Release, ReportStatus, SeqChange, Source,
};
use crate::store::{AlertTerms, AuthenticReport, NewAlert, StoreError, StoreResult, StoredOutcome};
use std::collections::{BTreeSet, HashMap};
use tally_proto::Digest;
use tally_proto::reason::Reason;
use tally_proto::receipt::Outcome;
use tally_proto::report::Report;
use tally_proto::time::Instant;

/// An open gap as stored: its row id and the missing seqs `from..=to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGap {
    pub id: i64,
    pub from: u64,
    pub to: u64,
}

/// The questions the plan asks of the stored state, as of the store's transaction. Every
/// answer is what is stored; the plan adds what it decided itself.
pub trait Facts {
    /// A license's terms (`NotFound` if there is none).
    fn license(&mut self, id: &str) -> StoreResult<LicenseTerms>;
    /// Every stored report of `agent_id` with a seq in `seq - 1 ..= seq + 1`, forks included.
    fn stored_near(&mut self, agent_id: &str, seq: u64) -> StoreResult<Vec<Neighbour>>;
    /// The agent's highest stored seq (0: none).
    fn last_seq(&mut self, agent_id: &str) -> StoreResult<u64>;
    /// The agent's open gaps.
    fn open_gaps(&mut self, agent_id: &str) -> StoreResult<Vec<StoredGap>>;
    /// Stored usage of `metric` on `license_id` in the month starting at `month`.
    fn monthly(&mut self, license_id: &str, metric: &str, month: i64) -> StoreResult<i64>;
    /// The closed months.
    fn closed_months(&mut self) -> StoreResult<BTreeSet<i64>>;
    /// The license's alert thresholds, if it has any.
    fn alert_terms(&mut self, license_id: &str) -> StoreResult<Option<AlertTerms>>;
    /// The agent key `key` as stored now, read under the agent's lock: a rotation or a
    /// revocation that committed since the caller looked the key up is seen here.
    fn agent_key(&mut self, key: &[u8; 32]) -> StoreResult<Option<crate::store::AgentKey>>;
}

/// Quantities to add to the hour and the month of a report's window start (a store keeps
/// them per agent shard, or not: the agent is given so it can choose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addition {
    pub license_id: String,
    pub agent_id: String,
    pub metric: String,
    pub hour: i64,
    pub month: i64,
    pub quantity: i64,
}

/// `(license, metric, month start)`.
type SumKey = (String, String, i64);

/// The counting path, once (ingest and release): checks that no monthly sum overflows,
/// finds the month that bills a report (its own, or the next open one if it is closed) and
/// the alert thresholds it crosses, and collects the additions. Usage already counted in
/// this plan is seen by the reports after it.
#[derive(Default)]
pub struct Counter {
    base: HashMap<SumKey, i64>,
    added: HashMap<SumKey, i64>,
    closed: Option<BTreeSet<i64>>,
    alert_terms: HashMap<String, Option<AlertTerms>>,
    /// What to add, in the order counted.
    pub additions: Vec<Addition>,
    /// Thresholds crossed, in the order found.
    pub alerts: Vec<NewAlert>,
}

impl Counter {
    /// Usage of `metric` in the month starting at `month`: stored plus counted here.
    pub fn monthly(
        &mut self,
        facts: &mut dyn Facts,
        license_id: &str,
        metric: &str,
        month: i64,
    ) -> StoreResult<i64> {
        let k = (license_id.to_string(), metric.to_string(), month);
        let base = match self.base.get(&k) {
            Some(v) => *v,
            None => {
                let v = facts.monthly(license_id, metric, month)?;
                self.base.insert(k.clone(), v);
                v
            }
        };
        Ok(base.saturating_add(self.added.get(&k).copied().unwrap_or(0)))
    }

    /// Counts `rep` (of `agent_id`, on `license_id`), or changes nothing and returns the
    /// rules' verdict if a monthly sum would overflow (an hourly sum is part of its
    /// month's, so it cannot overflow when the month does not). `Ok(Ok(Some(month)))`: its
    /// own month is closed, so it is billed on `month`'s statement as an adjustment.
    pub fn count(
        &mut self,
        facts: &mut dyn Facts,
        license_id: &str,
        agent_id: &str,
        rep: &Report,
    ) -> StoreResult<Result<Option<i64>, (Reason, String)>> {
        let start = rep.window_start.timestamp();
        let (hour, month) = (hour_of(start), month_of(start));
        let mut moves = Vec::with_capacity(rep.counters.len());
        for ctr in &rep.counters {
            let before = self.monthly(facts, license_id, &ctr.metric, month)?;
            match i64::try_from(ctr.quantity)
                .ok()
                .and_then(|q| before.checked_add(q))
            {
                None => return Ok(Err(rules::overflow(&ctr.metric))),
                Some(after) => moves.push((ctr.metric.as_str(), before, after)),
            }
        }
        if !self.alert_terms.contains_key(license_id) {
            let t = facts.alert_terms(license_id)?;
            self.alert_terms.insert(license_id.to_string(), t);
        }
        if let Some(Some(terms)) = self.alert_terms.get(license_id) {
            for &(metric, before, after) in &moves {
                let found = terms.crossings(license_id, metric, month, before as u64, after as u64);
                self.alerts.extend(found);
            }
        }
        for (ctr, (_, before, after)) in rep.counters.iter().zip(moves) {
            let q = after - before;
            let k = (license_id.to_string(), ctr.metric.clone(), month);
            let e = self.added.entry(k).or_insert(0);
            *e = e.saturating_add(q);
            self.additions.push(Addition {
                license_id: license_id.to_string(),
                agent_id: agent_id.to_string(),
                metric: ctr.metric.clone(),
                hour,
                month,
                quantity: q,
            });
        }
        let closed = match &mut self.closed {
            Some(c) => c,
            none => none.insert(facts.closed_months()?),
        };
        Ok(Ok(rules::periods::billed_month(month, closed)))
    }
}

/// A report row to insert: `reports[index]` with what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReport {
    pub index: usize,
    /// A second, different report for a taken seq.
    pub fork: bool,
    pub status: ReportStatus,
    pub reason: Option<Reason>,
    pub detail: String,
    /// Set when counted after its own month closed: the month whose statement bills it.
    pub billed_month: Option<i64>,
}

impl NewReport {
    /// A stored, uncounted report: quarantined for `reason` (a fork when `fork`).
    fn quarantined(index: usize, fork: bool, reason: Reason, detail: String) -> NewReport {
        NewReport {
            index,
            fork,
            status: ReportStatus::Quarantined,
            reason: Some(reason),
            detail,
            billed_month: None,
        }
    }
}

/// What kind of anomaly a row is (its `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyKind {
    Fork,
    Gap,
}

impl AnomalyKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::Fork => "fork",
            AnomalyKind::Gap => "gap",
        }
    }
}

/// An anomaly row to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAnomaly {
    pub kind: AnomalyKind,
    pub agent_id: String,
    pub license_id: String,
    pub seq_from: u64,
    pub seq_to: u64,
    /// The fork's digest.
    pub digest: Option<Digest>,
    pub detail: String,
    /// A gap opened and filled within this plan: stored closed.
    pub closed: bool,
}

/// What a batch does to the stored state. Apply all of it in one transaction.
#[derive(Default)]
pub struct IngestPlan {
    pub rows: Vec<NewReport>,
    pub anomalies: Vec<NewAnomaly>,
    /// Stored gaps (their ids) that this batch filled: close them.
    pub closed_gaps: Vec<i64>,
    /// Agents whose main reports were stored, with their new highest seq (by agent id):
    /// write `last_seq` (never lower) and `last_seen`.
    pub last_seqs: Vec<(String, u64)>,
    /// Usage to add and thresholds crossed.
    pub counter: Counter,
    /// One per report, in order: what its receipt says.
    pub outcomes: Vec<StoredOutcome>,
}

/// A gap of one agent as the plan sees it: stored (`id`) or opened here.
struct Gap {
    id: Option<i64>,
    from: u64,
    to: u64,
    closed: bool,
}

/// What the plan knows of one agent.
struct AgentPlan {
    license_id: String,
    last_seq: u64,
    touched: bool,
    gaps: Vec<Gap>,
}

/// Plans a batch of authentic reports, received at `received_at` (the store's receipt
/// time), in order.
pub fn plan_ingest(
    facts: &mut dyn Facts,
    reports: &[AuthenticReport],
    received_at: Instant,
    source: Source,
) -> StoreResult<IngestPlan> {
    let now = received_at.timestamp();
    let month_now = month_of(now);
    let mut plan = IngestPlan::default();
    let mut licenses: HashMap<String, LicenseTerms> = HashMap::new();
    // Reports stored by this plan, by (agent, seq): later reports of the batch see them.
    let mut planned: HashMap<(String, u64), Vec<Neighbour>> = HashMap::new();
    let mut agents: HashMap<String, AgentPlan> = HashMap::new();
    for (index, r) in reports.iter().enumerate() {
        let rep = &r.report;
        // The key was judged when the report came in (`crate::ingest`), before this
        // transaction; judge it again on what is stored now, under the agent's lock, so a
        // rotation or revocation that committed meanwhile cannot let the key sign past it.
        let judged = match facts.agent_key(&rep.agent_key)? {
            Some(k) if k.agent_id == r.agent_id => {
                rules::agent_keys::judge_report(&k, &rep.license_id, rep.seq, received_at)
            }
            _ => Err((
                Reason::UnknownAgent,
                "the agent key is not enrolled".to_string(),
            )),
        };
        if let Err((reason, detail)) = judged {
            plan.outcomes.push(StoredOutcome {
                outcome: Outcome::Refused,
                reason: Some(reason),
                detail,
                lease_until: None,
                credits: Vec::new(),
                received_at,
            });
            continue;
        }
        if !licenses.contains_key(&rep.license_id) {
            let t = facts.license(&rep.license_id)?;
            licenses.insert(rep.license_id.clone(), t);
        }
        let terms = &licenses[&rep.license_id];
        let seq = rep.seq;
        let mut around: Vec<Neighbour> = facts
            .stored_near(&r.agent_id, seq)?
            .into_iter()
            .filter(|n| n.seq.abs_diff(seq) <= 1)
            .collect();
        for s in [seq.checked_sub(1), Some(seq), seq.checked_add(1)]
            .into_iter()
            .flatten()
        {
            if let Some(mine) = planned.get(&(r.agent_id.clone(), s)) {
                around.extend(mine.iter().cloned());
            }
        }
        let decision = rules::decide(rep, r.digest, terms, &around, now, source);
        let row = match decision {
            // Already stored: no row, only a receipt.
            Decision::Duplicate {
                detail,
                not_counted,
            } => {
                plan.outcomes.push(outcome(
                    Outcome::Duplicate,
                    not_counted,
                    detail,
                    terms,
                    rep,
                    facts,
                    &mut plan.counter,
                    month_now,
                    received_at,
                )?);
                continue;
            }
            Decision::Fork { detail } => {
                plan.anomalies.push(NewAnomaly {
                    kind: AnomalyKind::Fork,
                    agent_id: r.agent_id.clone(),
                    license_id: rep.license_id.clone(),
                    seq_from: seq,
                    seq_to: seq,
                    digest: Some(r.digest),
                    detail: detail.clone(),
                    closed: false,
                });
                NewReport::quarantined(index, true, Reason::SeqConflict, detail)
            }
            Decision::Quarantine { reason, detail } => {
                NewReport::quarantined(index, false, reason, detail)
            }
            Decision::Count => match plan
                .counter
                .count(facts, &rep.license_id, &r.agent_id, rep)?
            {
                Ok(billed_month) => NewReport {
                    index,
                    fork: false,
                    status: ReportStatus::Accepted,
                    reason: None,
                    detail: String::new(),
                    billed_month,
                },
                Err((reason, detail)) => NewReport::quarantined(index, false, reason, detail),
            },
        };
        planned
            .entry((r.agent_id.clone(), seq))
            .or_default()
            .push(Neighbour {
                seq,
                fork: row.fork,
                digest: r.digest,
                status: row.status,
                reason: row.reason,
                prev_digest: rep.prev_digest,
                window_start: rep.window_start.timestamp(),
                window_end: rep.window_end.timestamp(),
            });
        if !row.fork {
            let agent = match agents.get_mut(&r.agent_id) {
                Some(a) => a,
                None => {
                    let a = AgentPlan {
                        license_id: rep.license_id.clone(),
                        last_seq: facts.last_seq(&r.agent_id)?,
                        touched: false,
                        gaps: facts
                            .open_gaps(&r.agent_id)?
                            .into_iter()
                            .map(|g| Gap {
                                id: Some(g.id),
                                from: g.from,
                                to: g.to,
                                closed: false,
                            })
                            .collect(),
                    };
                    agents.entry(r.agent_id.clone()).or_insert(a)
                }
            };
            track_sequence(agent, seq);
        }
        let status = match row.status {
            ReportStatus::Accepted => Outcome::Accepted,
            ReportStatus::Quarantined | ReportStatus::Discarded => Outcome::Quarantined,
        };
        plan.outcomes.push(outcome(
            status,
            row.reason,
            row.detail.clone(),
            terms,
            rep,
            facts,
            &mut plan.counter,
            month_now,
            received_at,
        )?);
        plan.rows.push(row);
    }
    let mut agent_ids: Vec<&String> = agents.keys().collect();
    agent_ids.sort();
    for id in agent_ids {
        let a = &agents[id];
        for g in &a.gaps {
            match (g.id, g.closed) {
                (Some(stored), true) => plan.closed_gaps.push(stored),
                (None, closed) => plan.anomalies.push(NewAnomaly {
                    kind: AnomalyKind::Gap,
                    agent_id: id.clone(),
                    license_id: a.license_id.clone(),
                    seq_from: g.from,
                    seq_to: g.to,
                    digest: None,
                    detail: "reports missing".into(),
                    closed,
                }),
                (Some(_), false) => {}
            }
        }
        if a.touched {
            plan.last_seqs.push((id.clone(), a.last_seq));
        }
    }
    Ok(plan)
}

/// A receipt's fields for one report: its outcome, the lease, and the credits of the
/// license as of this report (usage of the current month, this plan's included).
#[allow(clippy::too_many_arguments)]
fn outcome(
    outcome: Outcome,
    reason: Option<Reason>,
    detail: String,
    terms: &LicenseTerms,
    rep: &Report,
    facts: &mut dyn Facts,
    counter: &mut Counter,
    month_now: i64,
    received_at: Instant,
) -> StoreResult<StoredOutcome> {
    let now = received_at.timestamp();
    let mut used = Vec::with_capacity(terms.metrics.len());
    for (metric, _) in &terms.metrics {
        used.push(counter.monthly(facts, &rep.license_id, metric, month_now)? as u64);
    }
    Ok(StoredOutcome {
        outcome,
        reason,
        detail,
        lease_until: rules::lease_until(terms, now),
        credits: rules::credits(terms, &used),
        received_at,
    })
}

/// Keeps `last_seq` and the open gaps of an agent current, as [`rules::seq_change`] and
/// [`rules::fill_gap`] say.
fn track_sequence(a: &mut AgentPlan, seq: u64) {
    match rules::seq_change(a.last_seq, seq) {
        SeqChange::None => {}
        SeqChange::OpensGap { from, to } => a.gaps.push(Gap {
            id: None,
            from,
            to,
            closed: false,
        }),
        SeqChange::MayFill => {
            if let Some(g) = a
                .gaps
                .iter_mut()
                .find(|g| !g.closed && g.from <= seq && seq <= g.to)
            {
                g.closed = true;
                let (from, to) = (g.from, g.to);
                for (f, t) in rules::fill_gap(from, to, seq) {
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

/// What a release of a stored report does.
pub enum ReleasePlan {
    /// Already counted: nothing changes.
    AlreadyCounted,
    /// Count it: apply the counter's additions and alerts, and mark the report accepted
    /// (billed on `billed_month` when its own month is closed).
    Count {
        billed_month: Option<i64>,
        counter: Box<Counter>,
    },
}

/// Plans the release of the report stored under `digest` with `status` and `bytes` (empty
/// once retention removed the body), of `agent_id` on `license_id`. A report that cannot
/// be released, or whose counting would overflow a sum, is a `Conflict` saying why.
pub fn plan_release(
    facts: &mut dyn Facts,
    digest: &Digest,
    status: ReportStatus,
    bytes: &[u8],
    license_id: &str,
    agent_id: &str,
) -> StoreResult<ReleasePlan> {
    let report = (!bytes.is_empty())
        .then(|| Report::decode(bytes))
        .transpose()
        .map_err(|e| StoreError::Database(format!("stored report {digest}: {e}")))?;
    match rules::release(status, report.as_ref()) {
        Release::AlreadyCounted => return Ok(ReleasePlan::AlreadyCounted),
        Release::Refuse(why) => {
            return Err(StoreError::Conflict(format!("report {digest}: {why}")));
        }
        Release::Count => {}
    }
    let Some(report) = report else {
        return Err(StoreError::Conflict(format!(
            "report {digest}: its body was removed by retention"
        )));
    };
    let mut counter = Counter::default();
    match counter.count(facts, license_id, agent_id, &report)? {
        Ok(billed_month) => Ok(ReleasePlan::Count {
            billed_month,
            counter: Box::new(counter),
        }),
        Err((_, detail)) => Err(StoreError::Conflict(format!(
            "report {digest} cannot be counted: {detail}"
        ))),
    }
}

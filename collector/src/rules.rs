//! The billing rules: what happens to an authentic report, decided once for every store.
//!
//! Pure functions over what a store tells them — the license's terms, the stored reports
//! next to the new one, the agent's highest sequence number — and nothing else: no clock
//! (the caller passes `now`), no database, no I/O. A store asks the questions these
//! functions need answered, writes what they decide, and never decides itself, so two
//! stores cannot bill differently.
//!
//! Check order for an authentic report (the first that applies wins):
//! duplicate → fork (`seq_conflict`) → `license_inactive` → `invalid_counters` →
//! `metric_not_licensed` → `bad_window` → `clock_skew` → `too_old` → `chain_mismatch` →
//! `window_overlap` → counted. (Refusals — `too_large`, `malformed`, `bad_signature`,
//! `unknown_agent`, `agent_revoked`, `license_mismatch` — are decided before a report is
//! authentic, by `crate::ingest`; the agent key's part, `agent_keys::judge_report`, is
//! asked again by the store's plan inside its transaction, and a refusal there stores
//! nothing either.)

pub mod agent_keys;
pub mod alerts;
pub mod incidents;
pub mod periods;

use tally_proto::Digest;
use tally_proto::limits::MAX_WINDOW_SECS;
use tally_proto::reason::Reason;
use tally_proto::receipt::Credit;
use tally_proto::report::Report;
use tally_proto::time::Instant;

/// How far in the future a window may end (relative to receipt) before it is clock skew.
pub const MAX_SKEW_SECS: i64 = 5 * 60;
/// How old a window may be when it arrives online.
pub const MAX_AGE_ONLINE_SECS: i64 = 35 * 86_400;
/// How old a window may be when it arrives by import.
pub const MAX_AGE_IMPORT_SECS: i64 = 400 * 86_400;

/// Where a report came from; old reports are accepted longer by import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Online,
    Import,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Online => "online",
            Source::Import => "import",
        }
    }
}

/// What the rules need to know about a license (times in Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseTerms {
    pub not_before: i64,
    pub not_after: i64,
    pub grace_secs: i64,
    pub revoked_at: Option<i64>,
    /// (metric, monthly limit), sorted by metric.
    pub metrics: Vec<(String, Option<u64>)>,
}

impl LicenseTerms {
    /// The end of the license's validity for usage: `not_after + grace`.
    pub fn usable_until(&self) -> i64 {
        self.not_after.saturating_add(self.grace_secs)
    }
}

/// What became of a stored report. Stored in the database as its [`ReportStatus::as_str`]
/// (the only place the strings appear).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    /// Counted in the rollups and billed.
    Accepted,
    /// Kept, not counted, listed for review.
    Quarantined,
    /// Reviewed and refused for good: kept, never counted.
    Discarded,
}

impl ReportStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Accepted => "accepted",
            ReportStatus::Quarantined => "quarantined",
            ReportStatus::Discarded => "discarded",
        }
    }

    /// The status a database column holds; `None` for anything else.
    pub fn from_db(s: &str) -> Option<ReportStatus> {
        [
            ReportStatus::Accepted,
            ReportStatus::Quarantined,
            ReportStatus::Discarded,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for ReportStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored report of the same agent at or next to a new report's sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub seq: u64,
    /// A second, different report for a taken seq (never counted unless released).
    pub fork: bool,
    pub digest: Digest,
    /// Shown in a duplicate's detail.
    pub status: ReportStatus,
    /// Why it was quarantined (kept after a discard), if it is not counted.
    pub reason: Option<Reason>,
    pub prev_digest: Option<Digest>,
    pub window_start: i64,
    pub window_end: i64,
}

/// What to do with an authentic report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The same bytes are already stored: answer `DUPLICATE`, write nothing. `not_counted`
    /// is the stored copy's reason when it is not counted (quarantined or discarded), so an
    /// agent whose first receipt was lost still learns that its report was not billed.
    Duplicate {
        detail: String,
        not_counted: Option<Reason>,
    },
    /// A different report under a taken (agent, seq): store it as a fork, quarantined
    /// (`seq_conflict`), and open a `fork` anomaly. Never counted unless released.
    Fork { detail: String },
    /// Store it, quarantined with this reason, uncounted.
    Quarantine { reason: Reason, detail: String },
    /// Store it and add its counters to the rollups (see [`overflow`] if a sum would
    /// overflow).
    Count,
}

/// Decides what happens to an authentic report. `near` holds every stored report of the
/// same agent with a seq in `seq - 1 ..= seq + 1`, forks included.
pub fn decide(
    report: &Report,
    digest: Digest,
    terms: &LicenseTerms,
    near: &[Neighbour],
    now: i64,
    source: Source,
) -> Decision {
    let seq = report.seq;
    // Exactly once: the same bytes are a duplicate, whatever became of them. Its bytes fix
    // its agent and seq, so a stored copy can only be in this neighbourhood.
    if let Some(same) = near.iter().find(|n| n.seq == seq && n.digest == digest) {
        return Decision::Duplicate {
            detail: format!("already stored ({})", same.status),
            not_counted: if same.status == ReportStatus::Accepted {
                None
            } else {
                same.reason
            },
        };
    }
    let main_at = |s: u64| near.iter().find(|n| n.seq == s && !n.fork);
    if let Some(main) = main_at(seq) {
        return Decision::Fork {
            detail: format!("seq {seq} is already stored with digest {}", main.digest),
        };
    }
    let pred = if seq > 1 { main_at(seq - 1) } else { None };
    let succ = seq.checked_add(1).and_then(main_at);
    match quarantine_reason(report, digest, terms, now, source, pred, succ) {
        Some((reason, detail)) => Decision::Quarantine { reason, detail },
        None => Decision::Count,
    }
}

/// The verdict when adding a counted report would overflow a 64-bit total: it is stored
/// quarantined, never wrapped and never counted.
pub fn overflow(metric: &str) -> (Reason, String) {
    (
        Reason::InvalidCounters,
        format!("usage of {metric} would overflow a 64-bit total"),
    )
}

/// Why a window is outside the license, if it is: it must lie within
/// `[not_before, not_after + grace]` and end no later than a revocation. A window that
/// straddles a bound is outside: the collector cannot tell which part of its usage
/// happened when. (The agent cuts its windows at these bounds, so its own never straddle.)
pub fn license_inactive(
    terms: &LicenseTerms,
    window_start: i64,
    window_end: i64,
) -> Option<String> {
    if let Some(rev) = terms.revoked_at
        && window_end > rev
    {
        return Some("the license was revoked before this window ended".into());
    }
    if window_start < terms.not_before {
        return Some("the window starts before the license's not_before".into());
    }
    if window_end > terms.usable_until() {
        return Some("the window ends after the license expired (and its grace)".into());
    }
    None
}

/// The first quarantine reason that applies, in the module's check order.
fn quarantine_reason(
    rep: &Report,
    digest: Digest,
    terms: &LicenseTerms,
    now: i64,
    source: Source,
    pred: Option<&Neighbour>,
    succ: Option<&Neighbour>,
) -> Option<(Reason, String)> {
    let ws = rep.window_start.timestamp();
    let we = rep.window_end.timestamp();
    if let Some(detail) = license_inactive(terms, ws, we) {
        return Some((Reason::LicenseInactive, detail));
    }
    if let Err(e) = rep.check_counters() {
        return Some((Reason::InvalidCounters, e.0));
    }
    if let Some(c) = rep
        .counters
        .iter()
        .find(|c| !terms.metrics.iter().any(|(m, _)| *m == c.metric))
    {
        return Some((
            Reason::MetricNotLicensed,
            format!("metric {} is not in the license", c.metric),
        ));
    }
    if we <= ws {
        return Some((
            Reason::BadWindow,
            "window_end is not after window_start".into(),
        ));
    }
    if we - ws > MAX_WINDOW_SECS {
        return Some((Reason::BadWindow, "window is longer than 24 h".into()));
    }
    if we > now.saturating_add(MAX_SKEW_SECS) {
        return Some((
            Reason::ClockSkew,
            format!("window ends {} s after receipt", we - now),
        ));
    }
    let max_age = match source {
        Source::Online => MAX_AGE_ONLINE_SECS,
        Source::Import => MAX_AGE_IMPORT_SECS,
    };
    if we < now.saturating_sub(max_age) {
        return Some((
            Reason::TooOld,
            format!(
                "window ended more than {} days before receipt",
                max_age / 86_400
            ),
        ));
    }
    if let Some(detail) = chain_mismatch(rep, digest, pred, succ) {
        return Some((Reason::ChainMismatch, detail));
    }
    if pred.is_some_and(|p| p.window_end > ws) || succ.is_some_and(|s| s.window_start < we) {
        return Some((
            Reason::WindowOverlap,
            "window overlaps a neighbouring report's window".into(),
        ));
    }
    None
}

/// The chain checks, in both directions: this report's `prev_digest` against the stored
/// predecessor, and (when a gap is filled late) the stored successor's `prev_digest`
/// against this report.
fn chain_mismatch(
    rep: &Report,
    digest: Digest,
    pred: Option<&Neighbour>,
    succ: Option<&Neighbour>,
) -> Option<String> {
    match (rep.seq, rep.prev_digest, pred) {
        (1, Some(_), _) => return Some("seq 1 must have an empty prev_digest".into()),
        (s, None, _) if s > 1 => return Some("prev_digest is missing".into()),
        (_, Some(p), Some(pred)) if p != pred.digest => {
            return Some(format!(
                "prev_digest differs from the stored seq {} ({})",
                rep.seq - 1,
                pred.digest
            ));
        }
        _ => {}
    }
    if let Some(s) = succ
        && s.prev_digest != Some(digest)
    {
        return Some(format!(
            "the stored seq {} does not chain to this report",
            rep.seq + 1
        ));
    }
    None
}

/// `lease_until` for a receipt: receipt time + grace, never past `not_after`; the
/// revocation time for a revoked license.
pub fn lease_until(terms: &LicenseTerms, received: i64) -> Option<Instant> {
    let t = match terms.revoked_at {
        Some(r) => r.min(received),
        None => received
            .saturating_add(terms.grace_secs)
            .min(terms.not_after),
    };
    chrono::DateTime::from_timestamp(t, 0)
}

/// A receipt's credits: every licensed metric with its limit and the usage counted so far
/// in the receipt's calendar month; `used[i]` is the usage of `terms.metrics[i]` (a missing
/// entry is 0).
pub fn credits(terms: &LicenseTerms, used: &[u64]) -> Vec<Credit> {
    terms
        .metrics
        .iter()
        .enumerate()
        .map(|(i, (metric, limit))| Credit {
            metric: metric.clone(),
            limit: *limit,
            used: used.get(i).copied().unwrap_or(0),
        })
        .collect()
}

/// What releasing a stored report from quarantine does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Count it now, through the same counting path as ingest.
    Count,
    /// Already counted: nothing changes (releasing twice counts once).
    AlreadyCounted,
    /// It cannot be counted; the message says why and what to do instead.
    Refuse(String),
}

/// Decides a release of the report stored with `status`; `report` is `None` when retention
/// removed its body.
pub fn release(status: ReportStatus, report: Option<&Report>) -> Release {
    match (status, report) {
        (ReportStatus::Accepted, _) => Release::AlreadyCounted,
        (ReportStatus::Discarded, _) => {
            Release::Refuse("it was discarded; it cannot be released".into())
        }
        (_, None) => Release::Refuse("its body was removed by retention".into()),
        (_, Some(report)) => match report.check_counters() {
            Err(e) => Release::Refuse(format!("it has invalid counters ({e}); discard it instead")),
            Ok(()) => Release::Count,
        },
    }
}

/// What discarding a stored report does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discard {
    /// Mark it discarded: kept, never counted, no longer under review.
    Discard,
    /// Already discarded: nothing changes (discarding twice is harmless).
    AlreadyDiscarded,
    /// It cannot be discarded; the message says why.
    Refuse(String),
}

/// Decides a discard of the report stored with `status`: only a quarantined report can be
/// discarded; a counted one stays counted (billing is never silently reduced).
pub fn discard(status: ReportStatus) -> Discard {
    match status {
        ReportStatus::Quarantined => Discard::Discard,
        ReportStatus::Discarded => Discard::AlreadyDiscarded,
        ReportStatus::Accepted => {
            Discard::Refuse("it is counted; only quarantined reports can be discarded".into())
        }
    }
}

/// Whether a quarantined report is listed among the anomalies as one of its own (its kind
/// is its reason). A fork (`seq_conflict`) is not: the `fork` anomaly opened when it was
/// stored already names it. An unknown reason is listed (an operator should see it).
pub fn quarantine_is_anomaly(reason: &str) -> bool {
    reason.parse::<Reason>() != Ok(Reason::SeqConflict)
}

/// One license's limit of one metric (`None`: unlimited) for a month: one that
/// [`periods::limits_in_month`] let through; whether it applies is [`statement_lines`]'
/// decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseLimit {
    pub license_id: String,
    pub metric: String,
    pub limit: Option<u64>,
}

/// Usage of one metric counted on one license in a month (stores may split a sum over
/// several rows: they add up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseUsage {
    pub license_id: String,
    pub metric: String,
    pub quantity: u64,
}

/// A statement line, as the rules total it (the store's `StatementLine` carries it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub metric: String,
    pub used: u64,
    pub limit: Option<u64>,
    /// The licenses the limit comes from, sorted (empty: unlimited because nothing limits
    /// it, or a license that leaves it unlimited counted it — see [`statement_lines`]).
    pub licenses: Vec<String>,
}

impl Line {
    /// Usage beyond the limit (0 when unlimited or within it).
    pub fn overage(&self) -> u64 {
        self.limit.map_or(0, |l| self.used.saturating_sub(l))
    }
}

/// A customer-month's statement lines from what the store found: the limits of the
/// customer's licenses whose term (grace included) touches the month, and the month's
/// usage per license. The rule (docs/operations.md, "How limits combine"):
///
/// - A license **applies** to the month when it counted usage in it (a quantity above 0 of
///   any metric). One that counted nothing — never enrolled, revoked before any usage, or
///   idle — contributes no limit: issuing a license by mistake and revoking it cannot raise
///   a customer's allowance, and an unused unlimited license cannot erase one.
/// - Per metric, over the applying licenses: unlimited if one of them leaves the metric
///   unlimited and counted usage of it; otherwise the sum of their limits of it (pooled:
///   one customer, one allowance); unlimited if none of them limits it (usage licensed by
///   no applying license, e.g. a released quarantine).
/// - `used` is the sum of the month's usage. Lines: every metric an applying license lists,
///   and every metric used; sorted by metric. `Err` names a total that would overflow.
pub fn statement_lines(
    limits: &[LicenseLimit],
    used: &[LicenseUsage],
) -> Result<Vec<Line>, String> {
    use std::collections::{BTreeMap, BTreeSet};
    let overflow = |m: &str| format!("the statement total of {m} overflows 64 bits");
    // What each license counted, per metric.
    let mut counted: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for u in used {
        let e = counted.entry((&u.license_id, &u.metric)).or_insert(0);
        *e = e
            .checked_add(u.quantity)
            .ok_or_else(|| overflow(&u.metric))?;
        let t = totals.entry(&u.metric).or_insert(0);
        *t = t
            .checked_add(u.quantity)
            .ok_or_else(|| overflow(&u.metric))?;
    }
    let applying: BTreeSet<&str> = counted
        .iter()
        .filter(|(_, q)| **q > 0)
        .map(|((l, _), _)| *l)
        .collect();
    // Per metric: the applying licenses' limits, and whether one erases them.
    let mut limited: BTreeMap<&str, (u64, BTreeSet<&str>)> = BTreeMap::new();
    let mut erased: BTreeSet<&str> = BTreeSet::new();
    let mut listed: BTreeSet<&str> = BTreeSet::new();
    for l in limits
        .iter()
        .filter(|l| applying.contains(l.license_id.as_str()))
    {
        listed.insert(&l.metric);
        match l.limit {
            Some(q) => {
                let e = limited.entry(&l.metric).or_insert((0, BTreeSet::new()));
                e.0 = e.0.checked_add(q).ok_or_else(|| overflow(&l.metric))?;
                e.1.insert(&l.license_id);
            }
            None => {
                if counted
                    .get(&(l.license_id.as_str(), l.metric.as_str()))
                    .is_some_and(|q| *q > 0)
                {
                    erased.insert(&l.metric);
                }
            }
        }
    }
    let metrics: BTreeSet<&str> = listed.into_iter().chain(totals.keys().copied()).collect();
    Ok(metrics
        .into_iter()
        .map(|m| {
            let (limit, licenses) = match limited.get(m) {
                Some((q, from)) if !erased.contains(m) => {
                    (Some(*q), from.iter().map(|l| l.to_string()).collect())
                }
                _ => (None, Vec::new()),
            };
            Line {
                metric: m.to_string(),
                used: totals.get(m).copied().unwrap_or(0),
                limit,
                licenses,
            }
        })
        .collect())
}

/// What the store found for an enrollment: the license (if it exists), the token (if one
/// has this hash) and the license the agent key is already enrolled on (if any).
#[derive(Debug, Clone)]
pub struct EnrollFacts<'a> {
    pub license_id: &'a str,
    /// `(revoked, not_after + grace)`.
    pub license: Option<(bool, i64)>,
    /// `(its license, uses left, expires at)`.
    pub token: Option<(&'a str, i64, i64)>,
    pub key_enrolled_on: Option<&'a str>,
    pub now: i64,
}

/// What an enrollment does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrollment {
    /// The key is already enrolled on this license (a retried Enroll): reuse it, use no
    /// enrollment.
    AlreadyEnrolled,
    /// Enroll the key, using one enrollment of the token.
    Enroll,
    NotFound(String),
    /// The license cannot take agents, or the key belongs to another license.
    Conflict(String),
    /// The token does not allow it (unknown, for another license, used up, expired).
    Denied(String),
}

/// Decides an enrollment, checking in this order: the license exists, is not revoked and
/// not expired; the token is this license's; a key already on this license is reused
/// (even with the token used up since), a key on another license refused; the token has a
/// use left and has not expired.
pub fn enrollment(f: &EnrollFacts<'_>) -> Enrollment {
    let id = f.license_id;
    match f.license {
        None => return Enrollment::NotFound(format!("license {id} not found")),
        Some((true, _)) => return Enrollment::Conflict(format!("license {id} is revoked")),
        Some((false, until)) if f.now >= until => {
            return Enrollment::Conflict(format!("license {id} has expired"));
        }
        Some(_) => {}
    }
    let Some((_, uses_left, expires_at)) = f.token.filter(|t| t.0 == id) else {
        return Enrollment::Denied("the enrollment token is not valid for this license".into());
    };
    match f.key_enrolled_on {
        Some(l) if l == id => return Enrollment::AlreadyEnrolled,
        Some(_) => {
            return Enrollment::Conflict("this agent key is enrolled for another license".into());
        }
        None => {}
    }
    if uses_left <= 0 {
        return Enrollment::Denied("the enrollment token has been used up".into());
    }
    if f.now >= expires_at {
        return Enrollment::Denied("the enrollment token has expired".into());
    }
    Enrollment::Enroll
}

/// How a stored (non-fork) report changes an agent's sequence bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqChange {
    /// The next expected seq, or nothing new: no gap changes.
    None,
    /// A jump past `last_seq + 1`: the seqs in between are missing (a new `gap`).
    OpensGap { from: u64, to: u64 },
    /// At or below `last_seq`: it may fill an open gap (see [`fill_gap`]).
    MayFill,
}

/// What storing `seq` does to the gaps of an agent whose highest stored seq is `last_seq`.
pub fn seq_change(last_seq: u64, seq: u64) -> SeqChange {
    if seq > last_seq.saturating_add(1) {
        SeqChange::OpensGap {
            from: last_seq + 1,
            to: seq - 1,
        }
    } else if seq <= last_seq {
        SeqChange::MayFill
    } else {
        SeqChange::None
    }
}

/// Filling `seq` inside the open gap `from..=to` closes it and leaves what is still
/// missing: up to two smaller gaps, reopened.
pub fn fill_gap(from: u64, to: u64, seq: u64) -> Vec<(u64, u64)> {
    let mut rest = Vec::with_capacity(2);
    if from < seq {
        rest.push((from, seq - 1));
    }
    if seq < to {
        rest.push((seq + 1, to));
    }
    rest
}

/// Where an enrolled agent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStatus {
    Active,
    /// No report for longer than the silence threshold (it may be down or cut off).
    Silent,
    Revoked,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Silent => "silent",
            AgentStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<AgentStatus> {
        [
            AgentStatus::Active,
            AgentStatus::Silent,
            AgentStatus::Revoked,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// `revoked` if revoked; `silent` when nothing arrived (or, before its first report, since
/// enrollment) for more than `silent_after_secs`; else `active`.
pub fn agent_status(
    revoked: bool,
    last_seen: Option<i64>,
    enrolled_at: i64,
    now: i64,
    silent_after_secs: i64,
) -> AgentStatus {
    if revoked {
        AgentStatus::Revoked
    } else if now.saturating_sub(last_seen.unwrap_or(enrolled_at)) > silent_after_secs {
        AgentStatus::Silent
    } else {
        AgentStatus::Active
    }
}

/// Where a license stands at `now`: `revoked`, `pending` (before `not_before`), `active`,
/// `grace` (after `not_after`, usage still counted) or `expired`.
pub fn license_status(
    not_before: i64,
    not_after: i64,
    grace_secs: i64,
    revoked: bool,
    now: i64,
) -> &'static str {
    if revoked {
        "revoked"
    } else if now < not_before {
        "pending"
    } else if now >= not_after.saturating_add(grace_secs) {
        "expired"
    } else if now >= not_after {
        "grace"
    } else {
        "active"
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn statement_lines_apply_the_limits_of_licenses_that_counted_usage() {
        let l = |lic: &str, m: &str, q: Option<u64>| LicenseLimit {
            license_id: lic.into(),
            metric: m.into(),
            limit: q,
        };
        let u = |lic: &str, m: &str, q: u64| LicenseUsage {
            license_id: lic.into(),
            metric: m.into(),
            quantity: q,
        };
        let line = |m: &str, used: u64, limit: Option<u64>, from: &[&str]| Line {
            metric: m.into(),
            used,
            limit,
            licenses: from.iter().map(|s| s.to_string()).collect(),
        };
        type Case = (
            &'static str,
            Vec<LicenseLimit>,
            Vec<LicenseUsage>,
            Result<Vec<Line>, ()>,
        );
        let cases: Vec<Case> = vec![
            (
                "two licenses on one metric, both counting: their limits pool",
                vec![l("A", "a", Some(10)), l("B", "a", Some(5))],
                vec![u("A", "a", 3), u("B", "a", 4), u("B", "a", 1)],
                Ok(vec![line("a", 8, Some(15), &["A", "B"])]),
            ),
            (
                "licenses issued by mistake and revoked, or never enrolled: no usage, no limit",
                vec![
                    l("A", "a", Some(10)),
                    l("B", "a", Some(10)),
                    l("C", "a", Some(10)),
                ],
                vec![u("A", "a", 12)],
                Ok(vec![line("a", 12, Some(10), &["A"])]),
            ),
            (
                "an unenrolled unlimited license does not erase a limit",
                vec![l("A", "a", Some(1000)), l("U", "a", None)],
                vec![u("A", "a", 1200)],
                Ok(vec![line("a", 1200, Some(1000), &["A"])]),
            ),
            (
                "an unlimited license that counts other metrics only does not erase it either",
                vec![
                    l("A", "a", Some(1000)),
                    l("U", "a", None),
                    l("U", "b", None),
                ],
                vec![u("A", "a", 1200), u("U", "b", 1)],
                Ok(vec![
                    line("a", 1200, Some(1000), &["A"]),
                    line("b", 1, None, &[]),
                ]),
            ),
            (
                "an unlimited license that counted the metric makes it unlimited",
                vec![l("A", "a", Some(10)), l("U", "a", None)],
                vec![u("A", "a", 20), u("U", "a", 10)],
                Ok(vec![line("a", 30, None, &[])]),
            ),
            (
                "revoked mid-month after counting, or in grace into the next month: it applies",
                vec![l("R", "a", Some(100)), l("R", "b", Some(7))],
                vec![u("R", "a", 150)],
                Ok(vec![
                    line("a", 150, Some(100), &["R"]),
                    line("b", 0, Some(7), &["R"]),
                ]),
            ),
            (
                "a month without usage has no lines",
                vec![l("A", "a", Some(10))],
                vec![],
                Ok(vec![]),
            ),
            (
                "usage licensed by no applying license: unlimited",
                vec![l("A", "a", Some(10))],
                vec![u("A", "a", 1), u("X", "c", 9)],
                Ok(vec![
                    line("a", 1, Some(10), &["A"]),
                    line("c", 9, None, &[]),
                ]),
            ),
            (
                "a usage row of 0 does not make a license apply",
                vec![l("A", "a", Some(10)), l("B", "a", Some(10))],
                vec![u("A", "a", 11), u("B", "a", 0)],
                Ok(vec![line("a", 11, Some(10), &["A"])]),
            ),
            (
                "totals past 64 bits are refused, never wrapped",
                vec![],
                vec![u("A", "a", u64::MAX), u("B", "a", 1)],
                Err(()),
            ),
            (
                "limits past 64 bits are refused",
                vec![l("A", "a", Some(u64::MAX)), l("B", "a", Some(1))],
                vec![u("A", "a", 1), u("B", "a", 1)],
                Err(()),
            ),
        ];
        for (name, limits, used, want) in cases {
            let got = statement_lines(&limits, &used).map_err(|_| ());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn enrollment_checks_in_order() {
        let base = EnrollFacts {
            license_id: "lic",
            license: Some((false, 1_000)),
            token: Some(("lic", 1, 500)),
            key_enrolled_on: None,
            now: 100,
        };
        let denied = |m: &str| Enrollment::Denied(m.into());
        let cases: Vec<(EnrollFacts<'_>, Enrollment)> = vec![
            (base.clone(), Enrollment::Enroll),
            (
                EnrollFacts {
                    license: None,
                    ..base.clone()
                },
                Enrollment::NotFound("license lic not found".into()),
            ),
            // Revoked before expired before anything about the token.
            (
                EnrollFacts {
                    license: Some((true, 0)),
                    token: None,
                    ..base.clone()
                },
                Enrollment::Conflict("license lic is revoked".into()),
            ),
            (
                EnrollFacts {
                    now: 1_000,
                    token: None,
                    ..base.clone()
                },
                Enrollment::Conflict("license lic has expired".into()),
            ),
            (
                EnrollFacts {
                    token: None,
                    ..base.clone()
                },
                denied("the enrollment token is not valid for this license"),
            ),
            (
                EnrollFacts {
                    token: Some(("other", 1, 500)),
                    ..base.clone()
                },
                denied("the enrollment token is not valid for this license"),
            ),
            // A retried Enroll of a key already on the license needs no use left.
            (
                EnrollFacts {
                    token: Some(("lic", 0, 0)),
                    key_enrolled_on: Some("lic"),
                    ..base.clone()
                },
                Enrollment::AlreadyEnrolled,
            ),
            (
                EnrollFacts {
                    key_enrolled_on: Some("other"),
                    ..base.clone()
                },
                Enrollment::Conflict("this agent key is enrolled for another license".into()),
            ),
            (
                EnrollFacts {
                    token: Some(("lic", 0, 500)),
                    ..base.clone()
                },
                denied("the enrollment token has been used up"),
            ),
            (
                EnrollFacts {
                    now: 500,
                    ..base.clone()
                },
                denied("the enrollment token has expired"),
            ),
        ];
        for (facts, want) in cases {
            assert_eq!(enrollment(&facts), want, "{facts:?}");
        }
    }
    use super::*;
    use tally_proto::report::Counter;

    const NOW: i64 = 1_800_000_000; // an hour boundary
    const H: i64 = 3600;

    fn terms() -> LicenseTerms {
        LicenseTerms {
            not_before: NOW - 100 * 86_400,
            not_after: NOW + 100 * 86_400,
            grace_secs: 7 * 86_400,
            revoked_at: None,
            metrics: vec![
                ("api.convert".into(), Some(1000)),
                ("api.render".into(), None),
            ],
        }
    }

    fn at(t: i64) -> Instant {
        chrono::DateTime::from_timestamp(t, 0).unwrap()
    }

    /// A clean report: seq 2, window the hour before NOW, chained to `pred_digest()`.
    fn report() -> Report {
        Report {
            license_id: "lic".into(),
            agent_key: [7; 32],
            seq: 2,
            prev_digest: Some(pred_digest()),
            window_start: at(NOW - H),
            window_end: at(NOW),
            counters: vec![Counter {
                metric: "api.convert".into(),
                quantity: 5,
            }],
            created_at: at(NOW),
            agent_version: "t".into(),
        }
    }

    fn pred_digest() -> Digest {
        Digest([1; 32])
    }

    fn pred() -> Neighbour {
        Neighbour {
            seq: 1,
            fork: false,
            digest: pred_digest(),
            status: ReportStatus::Accepted,
            reason: None,
            prev_digest: None,
            window_start: NOW - 2 * H,
            window_end: NOW - H,
        }
    }

    fn digest_of(r: &Report) -> Digest {
        Digest::of(&r.encode())
    }

    /// One way to break each rule, applied to a clean case.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Break {
        Duplicate,
        Fork,
        LicenseInactive,
        InvalidCounters,
        MetricNotLicensed,
        BadWindow,
        ClockSkew,
        TooOld,
        ChainMismatch,
        WindowOverlap,
    }

    /// The check order, first to last.
    const ORDER: [Break; 10] = [
        Break::Duplicate,
        Break::Fork,
        Break::LicenseInactive,
        Break::InvalidCounters,
        Break::MetricNotLicensed,
        Break::BadWindow,
        Break::ClockSkew,
        Break::TooOld,
        Break::ChainMismatch,
        Break::WindowOverlap,
    ];

    struct Case {
        report: Report,
        terms: LicenseTerms,
        near: Vec<Neighbour>,
        now: i64,
        /// Set when the stored copy must have the report's final digest (duplicate).
        duplicate: bool,
    }

    impl Case {
        fn clean() -> Case {
            Case {
                report: report(),
                terms: terms(),
                near: vec![pred()],
                now: NOW,
                duplicate: false,
            }
        }

        fn apply(&mut self, b: Break) {
            match b {
                Break::Duplicate => self.duplicate = true,
                Break::Fork => self.near.push(Neighbour {
                    seq: 2,
                    digest: Digest([9; 32]),
                    prev_digest: Some(pred_digest()),
                    window_start: NOW - H,
                    window_end: NOW,
                    ..pred()
                }),
                // Revoked before the window ended (touches no other rule).
                Break::LicenseInactive => self.terms.revoked_at = Some(NOW - 10),
                Break::InvalidCounters => self.report.counters[0].quantity = 0,
                Break::MetricNotLicensed => self.report.counters.push(Counter {
                    metric: "zz.unlicensed".into(),
                    quantity: 1,
                }),
                // 25 h long (it also overlaps the predecessor: a later rule).
                Break::BadWindow => self.report.window_start = at(NOW - 25 * H),
                // The window ends 10 min after receipt.
                Break::ClockSkew => self.report.window_end = at(NOW + 600),
                // Received 36 days after the window.
                Break::TooOld => self.now = NOW + 36 * 86_400,
                Break::ChainMismatch => self.report.prev_digest = Some(Digest([2; 32])),
                Break::WindowOverlap => self.near[0].window_end = NOW - H + 60,
            }
        }

        fn decide(&self) -> Decision {
            let digest = digest_of(&self.report);
            let mut near = self.near.clone();
            if self.duplicate {
                near.push(Neighbour {
                    seq: 2,
                    digest,
                    ..pred()
                });
            }
            decide(
                &self.report,
                digest,
                &self.terms,
                &near,
                self.now,
                Source::Online,
            )
        }
    }

    fn kind(d: &Decision) -> Break {
        match d {
            Decision::Duplicate { .. } => Break::Duplicate,
            Decision::Fork { .. } => Break::Fork,
            Decision::Quarantine { reason, .. } => match reason {
                Reason::LicenseInactive => Break::LicenseInactive,
                Reason::InvalidCounters => Break::InvalidCounters,
                Reason::MetricNotLicensed => Break::MetricNotLicensed,
                Reason::BadWindow => Break::BadWindow,
                Reason::ClockSkew => Break::ClockSkew,
                Reason::TooOld => Break::TooOld,
                Reason::ChainMismatch => Break::ChainMismatch,
                Reason::WindowOverlap => Break::WindowOverlap,
                other => panic!("a refusal reason from the rules: {other}"),
            },
            Decision::Count => panic!("counted"),
        }
    }

    #[test]
    fn a_clean_report_counts() {
        assert_eq!(Case::clean().decide(), Decision::Count);
    }

    #[test]
    fn each_break_alone_gives_its_own_reason() {
        for b in ORDER {
            let mut c = Case::clean();
            c.apply(b);
            assert_eq!(kind(&c.decide()), b, "{b:?} alone");
        }
    }

    /// Every adjacent pair of the order, except `clock_skew`/`too_old`: a window cannot
    /// both end in the future and have ended 35 days ago, so no report breaks both.
    #[test]
    fn of_two_broken_rules_the_earlier_in_the_order_wins() {
        for pair in ORDER.windows(2) {
            let (first, second) = (pair[0], pair[1]);
            if (first, second) == (Break::ClockSkew, Break::TooOld) {
                continue;
            }
            for order in [[first, second], [second, first]] {
                let mut c = Case::clean();
                c.apply(order[0]);
                c.apply(order[1]);
                assert_eq!(kind(&c.decide()), first, "{first:?} + {second:?}");
            }
        }
    }

    #[test]
    fn license_validity_table() {
        let t = LicenseTerms {
            not_before: 10_000,
            not_after: 50_000,
            grace_secs: 1_000,
            revoked_at: None,
            metrics: vec![],
        };
        let revoked = LicenseTerms {
            revoked_at: Some(30_000),
            ..t.clone()
        };
        // (terms, window start, window end, inactive?)
        let table: &[(&LicenseTerms, i64, i64, bool)] = &[
            (&t, 10_000, 13_600, false),       // starts exactly at not_before
            (&t, 9_999, 13_600, true),         // straddles not_before by a second
            (&t, 7_200, 10_800, true),         // the aligned hour around not_before
            (&t, 3_600, 7_200, true),          // wholly before the license
            (&t, 47_400, 51_000, false),       // ends exactly at not_after + grace
            (&t, 48_000, 51_001, true),        // straddles not_after + grace
            (&t, 50_500, 51_000, false),       // in the grace period
            (&t, 51_000, 54_600, true),        // wholly after not_after + grace
            (&revoked, 26_400, 30_000, false), // ends at the revocation
            (&revoked, 27_000, 30_001, true),  // straddles the revocation
        ];
        for &(terms, ws, we, inactive) in table {
            assert_eq!(
                license_inactive(terms, ws, we).is_some(),
                inactive,
                "window {ws}..{we} of {terms:?}"
            );
        }
    }

    #[test]
    fn a_window_straddling_not_before_is_license_inactive_through_decide() {
        let mut c = Case::clean();
        c.terms.not_before = NOW - H + 1560; // 26 minutes into the report's hour
        match c.decide() {
            Decision::Quarantine { reason, .. } => assert_eq!(reason, Reason::LicenseInactive),
            d => panic!("{d:?}"),
        }
        c.report.window_start = at(c.terms.not_before);
        c.near.clear(); // the predecessor no longer matters to this case
        c.report.seq = 1;
        c.report.prev_digest = None;
        assert_eq!(c.decide(), Decision::Count);
    }

    #[test]
    fn a_duplicate_of_an_uncounted_report_says_why_it_was_not_counted() {
        let r = report();
        let digest = digest_of(&r);
        let stored = |status: ReportStatus, reason: Option<Reason>| Neighbour {
            seq: 2,
            digest,
            status,
            reason,
            ..pred()
        };
        let dup = |n: Neighbour| decide(&r, digest, &terms(), &[pred(), n], NOW, Source::Online);
        for (status, reason, want) in [
            (ReportStatus::Accepted, None, None),
            // Released from quarantine: counted now, whatever its old reason.
            (ReportStatus::Accepted, Some(Reason::ClockSkew), None),
            (
                ReportStatus::Quarantined,
                Some(Reason::ClockSkew),
                Some(Reason::ClockSkew),
            ),
            (
                ReportStatus::Discarded,
                Some(Reason::TooOld),
                Some(Reason::TooOld),
            ),
        ] {
            match dup(stored(status, reason)) {
                Decision::Duplicate { not_counted, .. } => {
                    assert_eq!(not_counted, want, "{status}")
                }
                d => panic!("{d:?}"),
            }
        }
    }

    #[test]
    fn import_accepts_older_windows_than_online() {
        let mut c = Case::clean();
        c.now = NOW + 100 * 86_400;
        c.terms.not_after = NOW + 300 * 86_400;
        assert!(matches!(
            c.decide(),
            Decision::Quarantine {
                reason: Reason::TooOld,
                ..
            }
        ));
        let digest = digest_of(&c.report);
        assert_eq!(
            decide(&c.report, digest, &c.terms, &c.near, c.now, Source::Import),
            Decision::Count
        );
    }

    #[test]
    fn a_late_report_must_chain_to_its_stored_successor() {
        let mut c = Case::clean();
        let succ = Neighbour {
            seq: 3,
            digest: Digest([3; 32]),
            prev_digest: Some(Digest([4; 32])), // not this report's digest
            window_start: NOW,
            window_end: NOW + H,
            ..pred()
        };
        c.near.push(succ.clone());
        assert!(matches!(
            c.decide(),
            Decision::Quarantine {
                reason: Reason::ChainMismatch,
                ..
            }
        ));
        let digest = digest_of(&c.report);
        c.near[1].prev_digest = Some(digest);
        assert_eq!(c.decide(), Decision::Count);
    }

    #[test]
    fn every_quarantine_reason_but_a_fork_is_an_anomaly_of_its_own() {
        for r in Reason::ALL {
            assert_eq!(
                quarantine_is_anomaly(r.as_str()),
                r != Reason::SeqConflict,
                "{r:?}"
            );
        }
        assert!(quarantine_is_anomaly("some_future_reason"));
    }

    #[test]
    fn only_a_quarantined_report_can_be_discarded() {
        assert_eq!(discard(ReportStatus::Quarantined), Discard::Discard);
        assert_eq!(discard(ReportStatus::Discarded), Discard::AlreadyDiscarded);
        assert!(
            matches!(discard(ReportStatus::Accepted), Discard::Refuse(m) if m.contains("counted"))
        );
    }

    #[test]
    fn release_counts_only_a_quarantined_report_with_valid_counters() {
        let ok = report();
        let mut bad = report();
        bad.counters[0].quantity = 0;
        assert_eq!(
            release(ReportStatus::Quarantined, Some(&ok)),
            Release::Count
        );
        assert_eq!(
            release(ReportStatus::Accepted, Some(&ok)),
            Release::AlreadyCounted
        );
        assert!(matches!(
            release(ReportStatus::Discarded, Some(&ok)),
            Release::Refuse(_)
        ));
        // Retention removed the body: counted stays counted, nothing else can be released.
        assert_eq!(
            release(ReportStatus::Accepted, None),
            Release::AlreadyCounted
        );
        assert!(matches!(
            release(ReportStatus::Discarded, None),
            Release::Refuse(_)
        ));
        assert!(
            matches!(release(ReportStatus::Quarantined, None), Release::Refuse(m) if m.contains("retention"))
        );
        assert!(
            matches!(release(ReportStatus::Quarantined, Some(&bad)), Release::Refuse(m) if m.contains("discard it instead"))
        );
    }

    #[test]
    fn agent_and_license_status_tables() {
        // (revoked, last_seen, enrolled_at, now, threshold) -> status
        let agents = [
            (true, Some(100), 0, 101, 10, AgentStatus::Revoked),
            (false, Some(100), 0, 110, 10, AgentStatus::Active),
            (false, Some(100), 0, 111, 10, AgentStatus::Silent),
            (false, None, 100, 105, 10, AgentStatus::Active),
            (false, None, 100, 200, 10, AgentStatus::Silent),
        ];
        for (revoked, seen, enrolled, now, after, want) in agents {
            assert_eq!(agent_status(revoked, seen, enrolled, now, after), want);
        }
        // (not_before, not_after, grace, revoked, now) -> status
        let licenses = [
            (10, 20, 5, false, 9, "pending"),
            (10, 20, 5, false, 10, "active"),
            (10, 20, 5, false, 20, "grace"),
            (10, 20, 5, false, 25, "expired"),
            (10, 20, 5, true, 15, "revoked"),
        ];
        for (nb, na, g, revoked, now, want) in licenses {
            assert_eq!(license_status(nb, na, g, revoked, now), want);
        }
    }

    #[test]
    fn gaps_open_and_fill() {
        assert_eq!(seq_change(0, 1), SeqChange::None);
        assert_eq!(seq_change(3, 4), SeqChange::None);
        assert_eq!(seq_change(3, 7), SeqChange::OpensGap { from: 4, to: 6 });
        assert_eq!(seq_change(7, 5), SeqChange::MayFill);
        assert_eq!(fill_gap(4, 6, 5), vec![(4, 4), (6, 6)]);
        assert_eq!(fill_gap(4, 6, 4), vec![(5, 6)]);
        assert_eq!(fill_gap(4, 6, 6), vec![(4, 5)]);
        assert_eq!(fill_gap(4, 4, 4), vec![]);
    }

    #[test]
    fn lease_is_grace_after_receipt_capped_at_not_after_or_revocation() {
        let t = terms();
        assert_eq!(lease_until(&t, NOW), Some(at(NOW + 7 * 86_400)));
        let late = NOW + 99 * 86_400;
        assert_eq!(lease_until(&t, late), Some(at(t.not_after)));
        let r = LicenseTerms {
            revoked_at: Some(NOW - 5),
            ..t
        };
        assert_eq!(lease_until(&r, NOW), Some(at(NOW - 5)));
    }

    #[test]
    fn credits_list_every_licensed_metric_with_its_usage() {
        let c = credits(&terms(), &[40, 2]);
        assert_eq!(
            c,
            vec![
                Credit {
                    metric: "api.convert".into(),
                    limit: Some(1000),
                    used: 40
                },
                Credit {
                    metric: "api.render".into(),
                    limit: None,
                    used: 2
                }
            ]
        );
    }
}

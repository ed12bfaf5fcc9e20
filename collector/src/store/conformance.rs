//! The store conformance suite: every observable behaviour a `Store` must have, written once
//! against `dyn Store` and run against every implementation
//! (`collector/tests/store_conformance.rs` expands [`conformance_tests!`] per store).
//!
//! Each check gets a fresh, empty store and returns `Err(what went wrong)` instead of
//! panicking, so the suite's own test can run a check against a deliberately broken store
//! and see it fail.

use super::fixture::{Fixture, Seed};
use super::{AuditEntry, AuthenticReport, Inspect, Source, Store, UsageFilter};
use chrono::{DateTime, Duration, DurationRound, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use tally_proto::Digest;
use tally_proto::reason::Reason;
use tally_proto::receipt::Outcome;
use tally_proto::report::Report;

/// A store under test and its inspection side (the same store).
#[derive(Clone)]
pub struct Subject {
    pub store: Arc<dyn Store>,
    pub inspect: Arc<dyn Inspect>,
    /// Whatever must live as long as the check and go with it (a temporary directory
    /// holding the database, removed when the check ends).
    pub keep: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

pub type CheckResult = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn db(e: impl std::fmt::Display) -> String {
    format!("store error: {e}")
}

/// "Now" for a check: the store's clock, on a whole hour, with windows placed in the hours
/// before it. The harness gives each store a clock set to [`NOW`], so no check depends on
/// the date the suite runs on.
fn now(s: &Subject) -> DateTime<Utc> {
    let t = s.store.clock().now();
    t.duration_trunc(Duration::hours(1)).unwrap_or(t)
}

/// Where the harness sets each store's clock ([`clock`]): the middle of a month, a whole
/// hour plus a few minutes, so every check's windows (at most a few days before now) lie in
/// the same month as "now", and "last month" is a whole month in the past.
pub const NOW: &str = "2026-06-17T14:05:00Z";

/// The clock the harness gives every store under test: it reads [`NOW`] when made and
/// then runs forward (see [`crate::clock`]).
pub fn clock() -> crate::clock::Clock {
    // A typo in NOW would date every check 1970 (all too old, all failing): loud, and no
    // panic in library code.
    let at = DateTime::parse_from_rfc3339(NOW)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::UNIX_EPOCH);
    crate::clock::Clock::starting_at(at)
}

async fn seed(s: &Subject, name: &str, metrics: &[(&str, Option<u64>)]) -> Result<Fixture, String> {
    Fixture::seed(
        s.store.as_ref(),
        Seed {
            name,
            license_id: &format!("lic_{name}"),
            metrics,
            now: now(s),
        },
    )
    .await
    .map_err(db)
}

/// Usage per (license, metric) as the store's rollups answer it.
async fn rollup_totals(
    s: &Subject,
    filter: UsageFilter,
) -> Result<BTreeMap<(String, String), u64>, String> {
    let mut out = BTreeMap::new();
    for row in s.store.hourly_usage(filter).await.map_err(db)? {
        let e = out.entry((row.license_id, row.metric)).or_insert(0u64);
        *e = e.checked_add(row.quantity).ok_or("rollup sum overflows")?;
    }
    Ok(out)
}

/// The same, by brute force over every stored report whose status is `accepted`.
async fn brute_totals(s: &Subject) -> Result<BTreeMap<(String, String), u64>, String> {
    let mut out = BTreeMap::new();
    for r in s.inspect.stored_reports().await.map_err(db)? {
        if r.status != crate::rules::ReportStatus::Accepted {
            continue;
        }
        let rep = Report::decode(&r.bytes).map_err(|e| format!("stored bytes: {e}"))?;
        for c in rep.counters {
            *out.entry((rep.license_id.clone(), c.metric)).or_insert(0) += c.quantity;
        }
    }
    Ok(out)
}

fn sum_of(reports: &[AuthenticReport]) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for r in reports {
        for c in &r.report.counters {
            *out.entry((r.report.license_id.clone(), c.metric.clone()))
                .or_insert(0) += c.quantity;
        }
    }
    out
}

/// A fresh store starts empty: migrations from nothing leave every list empty.
pub async fn migrations_from_an_empty_database(s: Subject) -> CheckResult {
    ensure!(
        s.store.list_customers(None).await.map_err(db)?.is_empty(),
        "customers in a new store"
    );
    ensure!(
        s.store.list_licenses(None).await.map_err(db)?.is_empty(),
        "licenses in a new store"
    );
    ensure!(
        s.store
            .hourly_usage(UsageFilter::default())
            .await
            .map_err(db)?
            .is_empty(),
        "usage in a new store"
    );
    ensure!(
        s.store.anomalies(None).await.map_err(db)?.is_empty(),
        "anomalies in a new store"
    );
    ensure!(
        s.inspect.stored_reports().await.map_err(db)?.is_empty(),
        "reports in a new store"
    );
    Ok(())
}

/// The same reports submitted by four concurrent callers: each counted exactly once, every
/// other copy `DUPLICATE`, rollups equal to one submission.
pub async fn exactly_once_under_concurrent_duplicates(s: Subject) -> CheckResult {
    let mut f = seed(&s, "dup", &[("api.convert", None), ("api.render", None)]).await?;
    let start = now(&s) - Duration::hours(60);
    let reports: Vec<AuthenticReport> = (0..60)
        .map(|i| {
            f.next(
                start + Duration::hours(i),
                3600,
                &[("api.convert", 1 + i as u64 % 5), ("api.render", 2)],
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (store, reports) = (s.store.clone(), reports.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for chunk in reports.chunks(10) {
                let got = store
                    .ingest(chunk.to_vec(), store.clock().now(), Source::Online)
                    .await;
                out.push(got.map(|o| chunk.iter().map(|r| r.digest).zip(o).collect::<Vec<_>>()));
            }
            out
        }));
    }
    let mut accepted: BTreeMap<Digest, u32> = BTreeMap::new();
    let mut duplicates: BTreeMap<Digest, u32> = BTreeMap::new();
    for t in tasks {
        for chunk in t.await.map_err(|e| format!("task: {e}"))? {
            for (d, o) in chunk.map_err(db)? {
                match o.outcome {
                    Outcome::Accepted => *accepted.entry(d).or_default() += 1,
                    Outcome::Duplicate => *duplicates.entry(d).or_default() += 1,
                    other => return Err(format!("{d}: {other:?} {:?} {}", o.reason, o.detail)),
                }
            }
        }
    }
    for r in &reports {
        let (a, d) = (
            accepted.get(&r.digest).copied().unwrap_or(0),
            duplicates.get(&r.digest).copied().unwrap_or(0),
        );
        ensure!(
            a == 1 && d == 3,
            "seq {}: {a} accepted, {d} duplicates (want 1 and 3)",
            r.report.seq
        );
    }
    let want = sum_of(&reports);
    let rollups = rollup_totals(&s, UsageFilter::default()).await?;
    ensure!(
        rollups == want,
        "rollups {rollups:?} != one submission {want:?}"
    );
    let brute = brute_totals(&s).await?;
    ensure!(
        brute == want,
        "stored reports {brute:?} != one submission {want:?}"
    );
    Ok(())
}

/// A different report under a taken seq is a fork: stored, quarantined `seq_conflict`,
/// listed as an anomaly, never counted.
pub async fn forks_are_kept_and_never_counted(s: Subject) -> CheckResult {
    let mut f = seed(&s, "fork", &[("api.convert", None)]).await?;
    let ws = now(&s) - Duration::hours(3);
    let first = f.next(ws, 3600, &[("api.convert", 5)]);
    let clone = f.report(1, None, ws, 3600, &[("api.convert", 500)]);
    let out = s
        .store
        .ingest(vec![first.clone()], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    ensure!(out[0].outcome == Outcome::Accepted, "first: {:?}", out[0]);
    let out = s
        .store
        .ingest(vec![clone.clone()], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    ensure!(
        out[0].outcome == Outcome::Quarantined && out[0].reason == Some(Reason::SeqConflict),
        "fork: {:?}",
        out[0]
    );
    let anomalies = s.store.anomalies(None).await.map_err(db)?;
    ensure!(
        anomalies
            .iter()
            .any(|a| a.kind == "fork" && a.agent_id == f.agent_id && a.seq_from == 1),
        "no fork anomaly: {anomalies:?}"
    );
    ensure!(
        s.inspect.stored_reports().await.map_err(db)?.len() == 2,
        "the fork must be stored"
    );
    let totals = rollup_totals(&s, UsageFilter::default()).await?;
    ensure!(
        totals == sum_of(&[first]),
        "the fork was counted: {totals:?}"
    );
    Ok(())
}

/// A sequence jump opens a gap; the missing reports close it, piece by piece.
pub async fn gaps_open_and_close(s: Subject) -> CheckResult {
    let mut f = seed(&s, "gap", &[("api.convert", None)]).await?;
    let start = now(&s) - Duration::hours(10);
    let r: Vec<AuthenticReport> = (0..4)
        .map(|i| f.next(start + Duration::hours(i), 3600, &[("api.convert", 1)]))
        .collect();
    let open_gaps = |list: Vec<super::AnomalyRecord>| -> Vec<(u64, u64)> {
        let mut g: Vec<_> = list
            .into_iter()
            .filter(|a| a.kind == "gap" && a.closed_at.is_none())
            .map(|a| (a.seq_from, a.seq_to))
            .collect();
        g.sort();
        g
    };
    for (batch, want) in [
        (vec![r[0].clone(), r[3].clone()], vec![(2, 3)]),
        (vec![r[2].clone()], vec![(2, 2)]),
        (vec![r[1].clone()], vec![]),
    ] {
        let out = s
            .store
            .ingest(batch, s.store.clock().now(), Source::Online)
            .await
            .map_err(db)?;
        ensure!(
            out.iter().all(|o| o.outcome == Outcome::Accepted),
            "not accepted: {out:?}"
        );
        let gaps = open_gaps(s.store.anomalies(None).await.map_err(db)?);
        ensure!(gaps == want, "open gaps {gaps:?}, want {want:?}");
    }
    Ok(())
}

/// A quarantined report released twice is counted once.
pub async fn quarantine_release_counts_once(s: Subject) -> CheckResult {
    let mut f = seed(&s, "rel", &[("api.convert", None)]).await?;
    let ws = now(&s) - Duration::hours(2);
    let r = f.next(ws, 3600, &[("api.unlicensed", 7)]);
    let out = s
        .store
        .ingest(vec![r.clone()], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    ensure!(
        out[0].outcome == Outcome::Quarantined && out[0].reason == Some(Reason::MetricNotLicensed),
        "{:?}",
        out[0]
    );
    ensure!(
        rollup_totals(&s, UsageFilter::default()).await?.is_empty(),
        "counted while quarantined"
    );
    // A resend (its first receipt lost) is a duplicate that still says why it is not counted.
    let again = s
        .store
        .ingest(vec![r.clone()], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    ensure!(
        again[0].outcome == Outcome::Duplicate
            && again[0].reason == Some(Reason::MetricNotLicensed),
        "resent while quarantined: {:?}",
        again[0]
    );
    ensure!(
        s.store
            .release(r.digest, s.store.clock().now())
            .await
            .map_err(db)?,
        "first release must count"
    );
    ensure!(
        !s.store
            .release(r.digest, s.store.clock().now())
            .await
            .map_err(db)?,
        "second release must not"
    );
    let totals = rollup_totals(&s, UsageFilter::default()).await?;
    ensure!(
        totals == sum_of(std::slice::from_ref(&r)),
        "after two releases: {totals:?}"
    );
    let again = s
        .store
        .ingest(vec![r], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    ensure!(
        again[0].outcome == Outcome::Duplicate && again[0].reason.is_none(),
        "resent after release: {:?}",
        again[0]
    );
    ensure!(
        s.store.quarantine(None).await.map_err(db)?.is_empty(),
        "still listed in quarantine"
    );
    ensure!(
        brute_totals(&s).await? == totals,
        "rollups differ from the stored reports"
    );
    Ok(())
}

/// The collector key is recorded once; a different key is refused, naming both key ids.
pub async fn collector_key_is_bound_once(s: Subject) -> CheckResult {
    ensure!(
        s.store.collector_key().await.map_err(db)?.is_none(),
        "a new store already has a collector key"
    );
    let (k1, k2) = ([7u8; 32], [8u8; 32]);
    s.store.bind_collector_key(k1).await.map_err(db)?;
    s.store.bind_collector_key(k1).await.map_err(db)?;
    match s.store.bind_collector_key(k2).await {
        Err(super::StoreError::Conflict(m)) => {
            let (id1, id2) = (
                tally_proto::keys::key_id(&k1),
                tally_proto::keys::key_id(&k2),
            );
            ensure!(
                m.contains(&id1) && m.contains(&id2),
                "the refusal must name both key ids ({id1}, {id2}): {m}"
            );
        }
        other => return Err(format!("a second key must be refused: {other:?}")),
    }
    ensure!(
        s.store.collector_key().await.map_err(db)? == Some(k1),
        "the recorded key changed"
    );
    Ok(())
}

/// Eight concurrent releases of one quarantined report: exactly one counts it.
pub async fn concurrent_releases_count_once(s: Subject) -> CheckResult {
    let mut f = seed(&s, "relc", &[("api.convert", None)]).await?;
    let r = f.next(now(&s) - Duration::hours(2), 3600, &[("api.unlicensed", 9)]);
    s.store
        .ingest(vec![r.clone()], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = s.store.clone();
            tokio::spawn(async move { store.release(r.digest, store.clock().now()).await })
        })
        .collect();
    let mut counted = 0;
    for t in tasks {
        if t.await.map_err(|e| format!("task: {e}"))?.map_err(db)? {
            counted += 1;
        }
    }
    ensure!(counted == 1, "{counted} releases counted (want 1)");
    let totals = rollup_totals(&s, UsageFilter::default()).await?;
    ensure!(
        totals == sum_of(std::slice::from_ref(&r)),
        "after concurrent releases: {totals:?}"
    );
    Ok(())
}

/// Neighbouring reports of one agent stored by concurrent callers, one report per call,
/// in a shuffled order: every gap opened on the way is closed at the end, and `last_seq`
/// is the highest seq.
pub async fn gaps_close_under_concurrent_neighbours(s: Subject) -> CheckResult {
    let mut f = seed(&s, "gapc", &[("api.convert", None)]).await?;
    let start = now(&s) - Duration::hours(40);
    let reports: Vec<AuthenticReport> = (0..30)
        .map(|i| f.next(start + Duration::hours(i), 3600, &[("api.convert", 1)]))
        .collect();
    // A fixed shuffle (seq 1 last, so gaps open first and close as the rest arrive).
    let mut order: Vec<usize> = (1..30).rev().step_by(2).chain((2..30).step_by(2)).collect();
    order.push(0);
    let tasks: Vec<_> = order
        .into_iter()
        .map(|i| {
            let (store, r) = (s.store.clone(), reports[i].clone());
            tokio::spawn(async move {
                store
                    .ingest(vec![r], store.clock().now(), Source::Online)
                    .await
            })
        })
        .collect();
    for t in tasks {
        let out = t.await.map_err(|e| format!("task: {e}"))?.map_err(db)?;
        ensure!(out[0].outcome == Outcome::Accepted, "not accepted: {out:?}");
    }
    let open: Vec<_> = s
        .store
        .anomalies(None)
        .await
        .map_err(db)?
        .into_iter()
        .filter(|a| a.kind == "gap" && a.closed_at.is_none())
        .map(|a| (a.seq_from, a.seq_to))
        .collect();
    ensure!(open.is_empty(), "gaps left open: {open:?}");
    let agents = s.store.list_agents(Default::default()).await.map_err(db)?;
    ensure!(
        agents
            .iter()
            .any(|a| a.agent_id == f.agent_id && a.last_seq == 30),
        "last_seq: {agents:?}"
    );
    ensure!(
        rollup_totals(&s, UsageFilter::default()).await? == sum_of(&reports),
        "totals differ"
    );
    Ok(())
}

/// A sum that would pass `i64::MAX` is refused, never wrapped: the report that would push
/// a month's total over is stored quarantined (`invalid_counters`), the total stays, and
/// releasing it is refused. The two reports come from two agents of one license, so a
/// store that splits sums (by agent, by node) must still check the whole.
pub async fn sums_never_wrap(s: Subject) -> CheckResult {
    let f = seed(&s, "wrap", &[("api.convert", None)]).await?;
    let mut a = f;
    let mut b = a
        .enroll_new_agent(s.store.as_ref(), now(&s))
        .await
        .map_err(db)?;
    let ws = now(&s) - Duration::hours(3);
    let big = tally_proto::limits::MAX_QUANTITY - 5;
    let first = a.next(ws, 3600, &[("api.convert", big)]);
    let second = b.next(ws, 3600, &[("api.convert", 10)]);
    let out = s
        .store
        .ingest(vec![first.clone()], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    ensure!(out[0].outcome == Outcome::Accepted, "first: {:?}", out[0]);
    let out = s
        .store
        .ingest(vec![second.clone()], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    ensure!(
        out[0].outcome == Outcome::Quarantined && out[0].reason == Some(Reason::InvalidCounters),
        "the overflowing report: {:?}",
        out[0]
    );
    let totals = rollup_totals(&s, UsageFilter::default()).await?;
    ensure!(
        totals == sum_of(std::slice::from_ref(&first)),
        "totals after a refused overflow: {totals:?}"
    );
    ensure!(
        matches!(
            s.store.release(second.digest, s.store.clock().now()).await,
            Err(super::StoreError::Conflict(_))
        ),
        "releasing the overflowing report must be refused"
    );
    ensure!(
        rollup_totals(&s, UsageFilter::default()).await? == totals,
        "a refused release changed the totals"
    );
    Ok(())
}

/// Rollups equal a brute-force sum over the stored reports, for many agents, licenses,
/// metrics and hours; a customer-month statement equals the same sum.
pub async fn rollups_equal_a_brute_force_sum(s: Subject) -> CheckResult {
    let metrics = [
        ("api.convert", Some(1000)),
        ("api.render", None),
        ("pages.out", None),
    ];
    let a = seed(&s, "sum_a", &metrics).await?;
    let b = seed(&s, "sum_b", &metrics).await?;
    let mut agents = vec![a, b];
    agents.push(
        agents[0]
            .enroll_new_agent(s.store.as_ref(), now(&s))
            .await
            .map_err(db)?,
    );
    let start = now(&s) - Duration::hours(100);
    let mut all = Vec::new();
    for i in 0..90i64 {
        let agent = &mut agents[(i % 3) as usize];
        let q = (i as u64 * 7919) % 23 + 1;
        let counters: Vec<(&str, u64)> = metrics
            .iter()
            .take(1 + (i % 3) as usize)
            .map(|(m, _)| (*m, q))
            .collect();
        // Each agent's windows follow each other; several agents share an hour.
        all.push(agent.next(start + Duration::minutes(i * 61), 600, &counters));
    }
    for chunk in all.chunks(17) {
        let out = s
            .store
            .ingest(chunk.to_vec(), s.store.clock().now(), Source::Online)
            .await
            .map_err(db)?;
        ensure!(
            out.iter().all(|o| o.outcome == Outcome::Accepted),
            "{out:?}"
        );
    }
    let want = sum_of(&all);
    let rollups = rollup_totals(&s, UsageFilter::default()).await?;
    ensure!(rollups == want, "rollups {rollups:?} != sum {want:?}");
    ensure!(
        brute_totals(&s).await? == want,
        "stored reports differ from the sum"
    );
    // The statement of customer A for each month touched equals A's sum for that month.
    for month in all
        .iter()
        .map(|r| crate::calendar::month_of(r.report.window_start.timestamp()))
        .collect::<std::collections::BTreeSet<_>>()
    {
        let lines = s
            .store
            .statement(agents[0].customer_id.clone(), month)
            .await
            .map_err(db)?;
        let mut want_month: BTreeMap<String, u64> = BTreeMap::new();
        for r in all.iter().filter(|r| {
            r.report.license_id == agents[0].license_id
                && crate::calendar::month_of(r.report.window_start.timestamp()) == month
        }) {
            for c in &r.report.counters {
                *want_month.entry(c.metric.clone()).or_default() += c.quantity;
            }
        }
        let got: BTreeMap<String, u64> = lines
            .iter()
            .filter(|l| l.used > 0)
            .map(|l| (l.metric.clone(), l.used))
            .collect();
        ensure!(got == want_month, "statement {got:?} != {want_month:?}");
    }
    Ok(())
}

/// Every customer filter returns that customer's rows and no one else's.
pub async fn tenant_filters(s: Subject) -> CheckResult {
    let mut a = seed(&s, "ten_a", &[("api.convert", None)]).await?;
    let mut b = seed(&s, "ten_b", &[("api.convert", None)]).await?;
    let ws = now(&s) - Duration::hours(5);
    let ra = a.next(ws, 3600, &[("api.convert", 3)]);
    let rb = b.next(ws, 3600, &[("api.convert", 4)]);
    // Each gets a gap (seq 3 without 2) and a quarantined report.
    a.seq = 3;
    b.seq = 3;
    let ga = a.next(ws + Duration::hours(2), 3600, &[("api.unlicensed", 1)]);
    let gb = b.next(ws + Duration::hours(2), 3600, &[("api.unlicensed", 1)]);
    s.store
        .ingest(vec![ra, rb, ga, gb], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    for (who, other) in [(&a, &b), (&b, &a)] {
        let filter = UsageFilter {
            customer: Some(who.customer_id.clone()),
            ..UsageFilter::default()
        };
        let usage = s.store.hourly_usage(filter).await.map_err(db)?;
        ensure!(
            !usage.is_empty() && usage.iter().all(|u| u.customer_id == who.customer_id),
            "usage of {}: {usage:?}",
            who.customer_id
        );
        let anomalies = s
            .store
            .anomalies(Some(who.customer_id.clone()))
            .await
            .map_err(db)?;
        ensure!(
            !anomalies.is_empty() && anomalies.iter().all(|x| x.customer_id == who.customer_id),
            "anomalies of {}: {anomalies:?}",
            who.customer_id
        );
        let q = s
            .store
            .quarantine(Some(who.customer_id.clone()))
            .await
            .map_err(db)?;
        ensure!(
            q.len() == 1 && q[0].customer_id == who.customer_id,
            "quarantine of {}: {q:?}",
            who.customer_id
        );
        let customers = s
            .store
            .list_customers(Some(who.customer_id.clone()))
            .await
            .map_err(db)?;
        ensure!(
            customers.len() == 1 && customers[0].id != other.customer_id,
            "customers: {customers:?}"
        );
        let licenses = s
            .store
            .list_licenses(Some(who.customer_id.clone()))
            .await
            .map_err(db)?;
        ensure!(
            licenses.len() == 1 && licenses[0].license_id == who.license_id,
            "licenses: {licenses:?}"
        );
    }
    Ok(())
}

/// Receipt and close times come from the store's clock (the harness sets it to [`NOW`]),
/// never from another clock: a caller's earlier time is raised to it, and a close is
/// timed by it too.
pub async fn times_come_from_the_store_clock(s: Subject) -> CheckResult {
    let mut f = seed(&s, "clk", &[("api.convert", None)]).await?;
    let before = s.store.clock().now();
    let r = f.next(now(&s) - Duration::hours(2), 3600, &[("api.convert", 1)]);
    let out = s
        .store
        .ingest(vec![r], before - Duration::days(3), Source::Online)
        .await
        .map_err(db)?;
    let after = s.store.clock().now();
    let got = out[0].received_at;
    ensure!(
        got >= before - Duration::seconds(1) && got <= after + Duration::seconds(1),
        "receipt time {got}, the store's clock read {before} .. {after}"
    );
    let (last, _) = last_and_this_month(&s);
    let p = s
        .store
        .begin_close(last, before - Duration::days(3))
        .await
        .map_err(db)?;
    let closed = p.closed_at;
    let after = s.store.clock().now();
    ensure!(
        closed >= got && closed <= after + Duration::seconds(1),
        "close time {closed}, receipt {got}, the store's clock read {after}"
    );
    Ok(())
}

/// A closed statement's evidence is exactly what its agent lines count: the customer's
/// audit of it matches, with every signature verified, and still matches by digest once
/// retention removed the bodies; an open month has none.
pub async fn evidence_backs_the_closed_statement(s: Subject) -> CheckResult {
    let a = seed(&s, "ev", &[("api.convert", Some(5))]).await?;
    let b = a
        .enroll_new_agent(s.store.as_ref(), now(&s))
        .await
        .map_err(db)?;
    let (last, this) = last_and_this_month(&s);
    let mut reports = Vec::new();
    for (mut f, n) in [(a, 3i64), (b, 2)] {
        for i in 0..n {
            // Late in last month: within the 35 days an online report may be old.
            let mut r = f.next(
                at(this - 3 * 86_400 + i * 3600)?,
                3600,
                &[("api.convert", 2)],
            );
            r.signature = tally_proto::signing::sign(
                &f.key,
                tally_proto::signing::Domain::UsageReport,
                &r.bytes,
            )
            .to_vec();
            reports.push((f.key.verifying_key().to_bytes(), r));
        }
        // This month's report is on no closed statement.
        reports.push((
            f.key.verifying_key().to_bytes(),
            f.next(at(this + 3600)?, 60, &[]),
        ));
    }
    let customer = s.store.list_customers(None).await.map_err(db)?[0]
        .id
        .clone();
    let inventory: std::collections::BTreeSet<String> = reports
        .iter()
        .map(|(k, _)| tally_proto::keys::key_id(k))
        .collect();
    s.store
        .ingest(
            reports.into_iter().map(|(_, r)| r).collect(),
            s.store.clock().now(),
            Source::Online,
        )
        .await
        .map_err(db)?;
    ensure!(
        crate::periods::evidence(s.store.as_ref(), &customer, last)
            .await
            .map_err(db)?
            .is_none(),
        "evidence of a month not closed"
    );
    let vendor = tally_proto::keys::generate();
    crate::periods::close(s.store.as_ref(), &vendor, last, s.store.clock().now())
        .await
        .map_err(db)?;
    let doc = s
        .store
        .closed_statement(customer.clone(), last)
        .await
        .map_err(db)?
        .ok_or("no closed statement")?;
    let statement = tally_proto::statement::Statement::verify(&doc, &vendor.verifying_key())
        .map_err(|e| e.to_string())?;
    let audit = |ev: &tally_proto::statement::audit::Evidence| {
        tally_proto::statement::audit::audit(&statement, &inventory, ev)
    };
    let ev = crate::periods::evidence(s.store.as_ref(), &customer, last)
        .await
        .map_err(db)?
        .ok_or("no evidence of a closed month")?;
    let out = audit(&ev);
    ensure!(
        out.matches() && out.verified == 5 && out.removed == 0,
        "audit of the evidence: {out:?}"
    );
    // Retention removes the bodies; the evidence still backs every line by digest.
    s.store
        .expire_reports(s.store.clock().now(), s.store.clock().now())
        .await
        .map_err(db)?;
    let ev = crate::periods::evidence(s.store.as_ref(), &customer, last)
        .await
        .map_err(db)?
        .ok_or("no evidence after retention")?;
    let out = audit(&ev);
    ensure!(
        out.matches() && out.verified == 0 && out.removed == 5,
        "audit after retention: {out:?}"
    );
    Ok(())
}

/// A month's bill counts accepted reports only: a quarantined report, a discarded one
/// and a fork are in none of the counted reports or the evidence of the month, though
/// their windows start in it. The anomalies list the quarantined report under its reason
/// and the fork once, as `fork`; a discarded report is no longer listed.
pub async fn a_bill_counts_only_accepted_reports(s: Subject) -> CheckResult {
    let mut f = seed(&s, "only", &[("api.convert", None)]).await?;
    let (_, this) = last_and_this_month(&s);
    let ws = now(&s) - Duration::hours(8);
    let ok = f.next(ws, 3600, &[("api.convert", 5)]);
    let quarantined = f.next(ws + Duration::hours(1), 3600, &[("api.other", 3)]);
    let discarded = f.next(ws + Duration::hours(2), 3600, &[("api.other", 4)]);
    let fork = f.report(1, None, ws, 3600, &[("api.convert", 500)]);
    let out = s
        .store
        .ingest(
            vec![ok.clone(), quarantined.clone(), discarded.clone()],
            s.store.clock().now(),
            Source::Online,
        )
        .await
        .map_err(db)?;
    let out2 = s
        .store
        .ingest(vec![fork.clone()], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    ensure!(
        out[0].outcome == Outcome::Accepted
            && out[1].outcome == Outcome::Quarantined
            && out[2].outcome == Outcome::Quarantined
            && out2[0].reason == Some(Reason::SeqConflict),
        "outcomes: {out:?} {out2:?}"
    );
    s.store
        .discard(discarded.digest, s.store.clock().now())
        .await
        .map_err(db)?;
    let counted = s
        .store
        .counted_reports(f.customer_id.clone(), this, false)
        .await
        .map_err(db)?;
    ensure!(
        counted.len() == 1 && counted[0].digest == ok.digest,
        "counted on this month: {counted:?}"
    );
    let late = s
        .store
        .counted_reports(f.customer_id.clone(), this, true)
        .await
        .map_err(db)?;
    ensure!(late.is_empty(), "late reports of this month: {late:?}");
    let evidence = s
        .store
        .statement_evidence(f.customer_id.clone(), this, f.agent_id.clone())
        .await
        .map_err(db)?;
    ensure!(
        evidence.len() == 1 && evidence[0].digest == ok.digest,
        "evidence of this month: {:?}",
        evidence.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    let kinds: Vec<(String, u64)> = s
        .store
        .anomalies(Some(f.customer_id.clone()))
        .await
        .map_err(db)?
        .into_iter()
        .map(|a| (a.kind, a.seq_from))
        .collect();
    ensure!(
        kinds
            == vec![
                ("fork".to_string(), 1),
                ("metric_not_licensed".to_string(), 2)
            ]
            || kinds
                == vec![
                    ("metric_not_licensed".to_string(), 2),
                    ("fork".to_string(), 1)
                ],
        "anomalies: {kinds:?}"
    );
    Ok(())
}

/// A month's candidate limits are those of every license of the customer whose term,
/// grace included, touches the month: one that ended the day before the month began but
/// whose grace runs into it may still count usage then, so its limit is a candidate; one
/// whose grace ended before the month is not.
pub async fn limits_include_licenses_in_grace(s: Subject) -> CheckResult {
    let f = seed(&s, "grace", &[("api.convert", Some(7))]).await?;
    let (last, this) = last_and_this_month(&s);
    for (id, not_after, grace) in [
        ("lic_grace_in", this - 86_400, 3 * 86_400),
        ("lic_grace_out", this - 3 * 86_400, 86_400),
    ] {
        f.issue_license(
            s.store.as_ref(),
            id,
            &[("api.convert", Some(5))],
            at(last)?,
            at(not_after)?,
            grace,
            now(&s),
        )
        .await
        .map_err(db)?;
    }
    let got: Vec<(String, Option<u64>)> = s
        .store
        .license_limits(f.customer_id.clone(), this)
        .await
        .map_err(db)?
        .into_iter()
        .map(|l| (l.license_id, l.limit))
        .collect();
    ensure!(
        got == vec![
            ("lic_grace".to_string(), Some(7)),
            ("lic_grace_in".to_string(), Some(5))
        ],
        "candidate limits of this month: {got:?}"
    );
    Ok(())
}

/// Audit entries are kept, newest first, with the actor as given (a token id, never a
/// secret).
pub async fn audit_entries(s: Subject) -> CheckResult {
    for i in 0..3 {
        s.store
            .audit(AuditEntry {
                at: s.store.clock().now(),
                actor: format!("tok_{i}"),
                action: "GET /v1/usage".into(),
                target: format!("t{i}"),
                outcome: "200".into(),
            })
            .await
            .map_err(db)?;
    }
    let list = s.store.list_audit(10).await.map_err(db)?;
    let actors: Vec<&str> = list.iter().map(|e| e.entry.actor.as_str()).collect();
    ensure!(
        actors == ["tok_2", "tok_1", "tok_0"],
        "audit order: {actors:?}"
    );
    ensure!(
        list.iter().all(|e| e.entry.action == "GET /v1/usage"
            && e.entry.outcome == "200"
            && e.repeats == 1),
        "{list:?}"
    );
    ensure!(
        s.store.list_audit(2).await.map_err(db)?.len() == 2,
        "limit not applied"
    );
    Ok(())
}

/// A database whose schema is newer than the build (a newer collector migrated it) is
/// refused where the store is opened, naming both versions; at the build's own version it
/// opens.
pub async fn a_schema_newer_than_the_build_is_refused(s: Subject) -> CheckResult {
    let build = s.inspect.build_schema_version();
    s.inspect.migrate_again().await.map_err(db)?;
    s.inspect.set_schema_version(build + 1).await.map_err(db)?;
    match s.inspect.migrate_again().await {
        Err(super::StoreError::Invalid(m)) => ensure!(
            m.contains("newer")
                && m.contains(&(build + 1).to_string())
                && m.contains(&build.to_string()),
            "the refusal should name both versions: {m}"
        ),
        other => return Err(format!("a newer schema was not refused: {other:?}")),
    }
    s.inspect.set_schema_version(build).await.map_err(db)?;
    s.inspect.migrate_again().await.map_err(db)?;
    Ok(())
}

/// The highest seq the protocol allows (`i64::MAX`) is stored, and resent it is a
/// duplicate, counted once (the neighbour range around it must not wrap).
pub async fn the_highest_seq_is_deduplicated(s: Subject) -> CheckResult {
    let f = seed(&s, "maxseq", &[("api.convert", None)]).await?;
    let ws = now(&s) - Duration::hours(2);
    let prev = Some(tally_proto::Digest([7; 32]));
    let top = f.report(i64::MAX as u64, prev, ws, 3600, &[("api.convert", 7)]);
    for (attempt, want) in [(1, Outcome::Accepted), (2, Outcome::Duplicate)] {
        let out = s
            .store
            .ingest(vec![top.clone()], s.store.clock().now(), Source::Online)
            .await
            .map_err(db)?;
        ensure!(
            out[0].outcome == want,
            "attempt {attempt} at seq i64::MAX: {:?}",
            out[0]
        );
    }
    let totals = rollup_totals(&s, UsageFilter::default()).await?;
    ensure!(
        totals == sum_of(std::slice::from_ref(&top)),
        "counted once: {totals:?}"
    );
    Ok(())
}

/// Repeatable calls (reads) group: the same actor, action, target and outcome again, while
/// the newest such row began within the window, counts on that row; anything that differs,
/// or comes after the window, or after another row for the key, is a row of its own.
pub async fn repeated_reads_group_in_the_audit_log(s: Subject) -> CheckResult {
    // Whole seconds, as the log keeps them.
    let now = s.store.clock().now();
    let t0 = tally_proto::time::Instant::from_timestamp(now.timestamp(), 0).unwrap_or(now);
    let call = |actor: &str, target: &str, outcome: &str, secs: i64| AuditEntry {
        at: t0 + chrono::Duration::seconds(secs),
        actor: actor.into(),
        action: "GET /v1/summary".into(),
        target: target.into(),
        outcome: outcome.into(),
    };
    let window = |secs: i64| t0 + chrono::Duration::seconds(secs - 600);
    // Three identical reads within ten minutes of the first: one row.
    for secs in [0, 5, 599] {
        s.store
            .audit_repeatable(call("tok_a", "", "200", secs), window(secs))
            .await
            .map_err(db)?;
    }
    // Another actor, another target, another outcome: rows of their own.
    s.store
        .audit_repeatable(call("tok_b", "", "200", 600), window(600))
        .await
        .map_err(db)?;
    s.store
        .audit_repeatable(call("tok_a", "month=2026-06", "200", 601), window(601))
        .await
        .map_err(db)?;
    s.store
        .audit_repeatable(call("tok_a", "", "404", 602), window(602))
        .await
        .map_err(db)?;
    // The first group began more than ten minutes ago: a new row.
    s.store
        .audit_repeatable(call("tok_a", "", "200", 601), window(601))
        .await
        .map_err(db)?;
    let list = s.store.list_audit(10).await.map_err(db)?;
    let got: Vec<(&str, &str, &str, u64, i64, i64)> = list
        .iter()
        .map(|r| {
            (
                r.entry.actor.as_str(),
                r.entry.target.as_str(),
                r.entry.outcome.as_str(),
                r.repeats,
                (r.entry.at - t0).num_seconds(),
                (r.last_at - t0).num_seconds(),
            )
        })
        .collect();
    ensure!(
        got == [
            ("tok_a", "", "200", 1, 601, 601),
            ("tok_a", "", "404", 1, 602, 602),
            ("tok_a", "month=2026-06", "200", 1, 601, 601),
            ("tok_b", "", "200", 1, 600, 600),
            ("tok_a", "", "200", 3, 0, 599),
        ],
        "audit rows: {got:?}"
    );
    Ok(())
}

/// A receipt's credits list every licensed metric with its limit and what was counted for
/// that metric this calendar month, the report itself included.
pub async fn credits_report_each_metric_of_the_month(s: Subject) -> CheckResult {
    let mut f = seed(
        &s,
        "cred",
        &[
            ("api.convert", Some(1000)),
            ("api.render", None),
            ("pages.out", Some(7)),
        ],
    )
    .await?;
    let received = s.store.clock().now();
    let ws = received - Duration::minutes(20);
    let r = f.next(ws, 600, &[("api.convert", 5), ("api.render", 2)]);
    let out = s
        .store
        .ingest(vec![r], received, Source::Online)
        .await
        .map_err(db)?;
    // Credits are for the month of receipt; the report counts in the month of its window,
    // which the harness's clock puts in the same month.
    ensure!(
        same_month(ws, received),
        "window {ws} and receipt {received}"
    );
    let q = |n: u64| n;
    let got: Vec<(&str, Option<u64>, u64)> = out[0]
        .credits
        .iter()
        .map(|c| (c.metric.as_str(), c.limit, c.used))
        .collect();
    let want = vec![
        ("api.convert", Some(1000), q(5)),
        ("api.render", None, q(2)),
        ("pages.out", Some(7), 0),
    ];
    ensure!(got == want, "credits {got:?}, want {want:?}");
    Ok(())
}

/// Cancelling revokes the customer's licenses, agents and tokens at once and keeps its data
/// until the purge is due; the purge removes all of it and nothing of anyone else.
pub async fn cancellation_purges_one_customer_only(s: Subject) -> CheckResult {
    let mut a = seed(&s, "can_a", &[("api.convert", None)]).await?;
    let mut b = seed(&s, "can_b", &[("api.convert", None)]).await?;
    let ws = now(&s) - Duration::hours(6);
    let mut reports = Vec::new();
    for i in 0..4 {
        reports.push(a.next(ws + Duration::hours(i), 3600, &[("api.convert", 3)]));
        reports.push(b.next(ws + Duration::hours(i), 3600, &[("api.convert", 5)]));
    }
    s.store
        .ingest(reports, s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    s.store
        .create_token(
            "tok_can_a".into(),
            [42; 32],
            crate::roles::Role::Customer(a.customer_id.clone()),
            "portal".into(),
            s.store.clock().now(),
        )
        .await
        .map_err(db)?;
    let only = |c: &Fixture| UsageFilter {
        customer: Some(c.customer_id.clone()),
        ..UsageFilter::default()
    };
    let b_before = rollup_totals(&s, only(&b)).await?;
    // Both customers have a closed statement; the purge removes only a's.
    let (last, _) = last_and_this_month(&s);
    s.store
        .begin_close(last, s.store.clock().now())
        .await
        .map_err(db)?;
    s.store
        .finish_close(
            last,
            vec![
                (a.customer_id.clone(), b"a's".to_vec()),
                (b.customer_id.clone(), b"b's".to_vec()),
            ],
        )
        .await
        .map_err(db)?;
    let t0 = s.store.clock().now();
    let c = s
        .store
        .cancel_customer(a.customer_id.clone(), t0, t0 + Duration::days(30))
        .await
        .map_err(db)?;
    ensure!(
        (c.licenses, c.agents, c.tokens) == (1, 1, 1),
        "revoked {c:?}, want one license, agent and token"
    );
    ensure!(
        s.store
            .cancel_customer(a.customer_id.clone(), t0, t0)
            .await
            .is_err(),
        "a second cancel must be refused"
    );
    let keys = s
        .store
        .agents_by_keys(vec![a.key.verifying_key().to_bytes()])
        .await
        .map_err(db)?;
    ensure!(
        keys.values().all(|k| k.agent_revoked) && keys.len() == 1,
        "the agent must be revoked at once: {keys:?}"
    );
    ensure!(
        s.store
            .token_by_hash([42; 32])
            .await
            .map_err(db)?
            .is_some_and(|t| t.revoked),
        "the customer's token must be revoked at once"
    );
    // Not due yet: the data stays.
    ensure!(
        s.store.purge_due(t0).await.map_err(db)?.is_empty(),
        "purged too early"
    );
    ensure!(
        !rollup_totals(&s, only(&a)).await?.is_empty(),
        "data gone before the purge"
    );
    let purged = s
        .store
        .purge_due(t0 + Duration::days(31))
        .await
        .map_err(db)?;
    ensure!(
        purged.len() == 1 && purged[0].customer_id == a.customer_id && purged[0].reports == 4,
        "purge: {purged:?}"
    );
    ensure!(
        s.store
            .purge_due(t0 + Duration::days(32))
            .await
            .map_err(db)?
            .is_empty(),
        "purged twice"
    );
    ensure!(
        rollup_totals(&s, only(&a)).await?.is_empty(),
        "rollups left"
    );
    ensure!(
        rollup_totals(&s, only(&b)).await? == b_before,
        "another customer's usage changed"
    );
    ensure!(
        purged[0].statements == 1
            && s.store
                .closed_statement(a.customer_id.clone(), last)
                .await
                .map_err(db)?
                .is_none(),
        "the cancelled customer's statement must go: {purged:?}"
    );
    ensure!(
        s.store
            .closed_statement(b.customer_id.clone(), last)
            .await
            .map_err(db)?
            == Some(b"b's".to_vec()),
        "another customer's closed statement changed"
    );
    ensure!(
        s.store
            .list_customers(None)
            .await
            .map_err(db)?
            .iter()
            .all(|x| x.id != a.customer_id),
        "the customer is still listed"
    );
    let left = s.inspect.stored_reports().await.map_err(db)?;
    ensure!(left.len() == 4, "{} reports left, want b's 4", left.len());
    ensure!(
        s.store
            .list_licenses(Some(a.customer_id.clone()))
            .await
            .map_err(db)?
            .is_empty(),
        "licenses left"
    );
    ensure!(
        s.store.token_by_hash([42; 32]).await.map_err(db)?.is_none(),
        "token left"
    );
    Ok(())
}

fn at(t: i64) -> Result<DateTime<Utc>, String> {
    DateTime::from_timestamp(t, 0).ok_or_else(|| format!("time {t} out of range"))
}

/// The start of `hours` consecutive hourly windows that end an hour before now, all in the
/// month of now (checks that add up a month's usage). An error if the store's clock leaves
/// no room for them: the harness must set it as [`clock`] does.
fn hours_in_one_month(s: &Subject, hours: i64) -> Result<DateTime<Utc>, String> {
    let start = now(s) - Duration::hours(hours + 1);
    ensure!(
        same_month(start, now(s)),
        "the store's clock ({}) leaves no room for {hours} hours in its month",
        now(s)
    );
    Ok(start)
}

fn same_month(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    crate::calendar::month_of(a.timestamp()) == crate::calendar::month_of(b.timestamp())
}

/// The month before the current one, and the current one (unix seconds of their starts).
fn last_and_this_month(s: &Subject) -> (i64, i64) {
    let this = crate::calendar::month_of(now(s).timestamp());
    (crate::calendar::month_of(this - 1), this)
}

fn seqs(reports: &[super::CountedReport]) -> Vec<u64> {
    reports.iter().map(|r| r.seq).collect()
}

/// Closing a month: the reports counted before the close stay on its statement; one stored
/// or released after it is billed on the next open month as an adjustment; the close is
/// idempotent; a stored statement never changes; a purge removes the customer's statements.
pub async fn closing_a_month_bills_late_reports_on_the_next(s: Subject) -> CheckResult {
    let mut f = seed(&s, "close", &[("api.convert", Some(100))]).await?;
    let (last, this) = last_and_this_month(&s);
    let end = this - 10 * 3600;
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(f.next(at(end + i * 3600)?, 3600, &[("api.convert", 5)]));
    }
    s.store
        .ingest(before.clone(), s.store.clock().now(), Source::Import)
        .await
        .map_err(db)?;
    let t_close = s.store.clock().now();
    let p = s.store.begin_close(last, t_close).await.map_err(db)?;
    ensure!(p.month == last && !p.done, "begin_close: {p:?}");
    let again = s
        .store
        .begin_close(last, t_close + Duration::hours(1))
        .await
        .map_err(db)?;
    ensure!(
        again.closed_at == p.closed_at,
        "a second close must keep the first close time: {again:?} vs {p:?}"
    );
    // Late: seq 4 (last month) accepted after the close; seq 5 is this month's own.
    let late = f.next(at(end + 3 * 3600)?, 3600, &[("api.convert", 7)]);
    let own = f.next(at(this + 3600)?, 3600, &[("api.convert", 1)]);
    let out = s
        .store
        .ingest(
            vec![late.clone(), own.clone()],
            s.store.clock().now(),
            Source::Import,
        )
        .await
        .map_err(db)?;
    ensure!(
        out.iter().all(|o| o.outcome == Outcome::Accepted),
        "late and own reports must be accepted: {out:?}"
    );
    // A quarantined report of last month released after the close: billed on this month.
    let q = f.next(at(end + 4 * 3600)?, 3600, &[("api.unlicensed", 2)]);
    s.store
        .ingest(vec![q.clone()], s.store.clock().now(), Source::Import)
        .await
        .map_err(db)?;
    ensure!(
        s.store
            .release(q.digest, s.store.clock().now())
            .await
            .map_err(db)?,
        "release must count"
    );
    let cust = f.customer_id.clone();
    let on_last = s
        .store
        .counted_reports(cust.clone(), last, false)
        .await
        .map_err(db)?;
    ensure!(
        seqs(&on_last) == vec![1, 2, 3],
        "last month bills {:?}",
        seqs(&on_last)
    );
    ensure!(
        on_last
            .iter()
            .all(|r| r.counters == vec![("api.convert".to_string(), 5)]
                && r.agent_key == f.key.verifying_key().to_bytes()
                && r.license_id == f.license_id),
        "counted reports carry their counters, key and license: {on_last:?}"
    );
    let late_on_this = s
        .store
        .counted_reports(cust.clone(), this, true)
        .await
        .map_err(db)?;
    ensure!(
        seqs(&late_on_this) == vec![4, 6],
        "late reports billed this month: {:?}",
        seqs(&late_on_this)
    );
    ensure!(
        late_on_this[0].digest == late.digest && late_on_this[0].window_start == end + 3 * 3600,
        "late report as stored: {:?}",
        late_on_this[0]
    );
    let all_this = s
        .store
        .counted_reports(cust.clone(), this, false)
        .await
        .map_err(db)?;
    ensure!(
        seqs(&all_this) == vec![4, 5, 6],
        "this month bills {:?}",
        seqs(&all_this)
    );
    ensure!(
        s.store
            .license_limits(cust.clone(), last)
            .await
            .map_err(db)?
            == vec![crate::rules::LicenseLimit {
                license_id: f.license_id.clone(),
                metric: "api.convert".into(),
                limit: Some(100),
            }],
        "license limits of last month"
    );
    // Usage by hour still tells when it happened: every accepted report is in the rollups.
    ensure!(
        brute_totals(&s).await? == rollup_totals(&s, UsageFilter::default()).await?,
        "rollups differ from the stored reports"
    );
    // Statements: stored once, never replaced.
    ensure!(
        s.store
            .closed_statement(cust.clone(), last)
            .await
            .map_err(db)?
            .is_none(),
        "a statement before finish_close"
    );
    s.store
        .finish_close(last, vec![(cust.clone(), b"first".to_vec())])
        .await
        .map_err(db)?;
    s.store
        .finish_close(last, vec![(cust.clone(), b"second".to_vec())])
        .await
        .map_err(db)?;
    ensure!(
        s.store
            .closed_statement(cust.clone(), last)
            .await
            .map_err(db)?
            == Some(b"first".to_vec()),
        "a stored statement must never change"
    );
    let periods = s.store.periods().await.map_err(db)?;
    ensure!(
        periods.len() == 1 && periods[0].done && periods[0].closed_at == p.closed_at,
        "periods: {periods:?}"
    );
    // A purge removes the customer's statements too.
    s.store
        .cancel_customer(cust.clone(), s.store.clock().now(), s.store.clock().now())
        .await
        .map_err(db)?;
    let purged = s
        .store
        .purge_due(s.store.clock().now() + Duration::seconds(1))
        .await
        .map_err(db)?;
    ensure!(
        purged.len() == 1 && purged[0].statements == 1,
        "purge: {purged:?}"
    );
    ensure!(
        s.store
            .closed_statement(cust, last)
            .await
            .map_err(db)?
            .is_none(),
        "statement left after the purge"
    );
    Ok(())
}

/// A close racing many concurrent ingests: what the month bills right after `begin_close`
/// returns (what its statements are built from) never changes afterwards, and every
/// accepted report is billed on exactly one of the two months.
pub async fn close_is_serialized_with_ingest(s: Subject) -> CheckResult {
    let (last, this) = last_and_this_month(&s);
    let base = seed(&s, "race", &[("api.convert", None)]).await?;
    let mut agents = vec![base];
    for _ in 0..5 {
        let a = agents[0]
            .enroll_new_agent(s.store.as_ref(), now(&s))
            .await
            .map_err(db)?;
        agents.push(a);
    }
    let per_agent = 40i64;
    let start = this - per_agent * 3600 - 3600;
    let mut tasks = Vec::new();
    for mut a in agents {
        let store = s.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            for i in 0..per_agent {
                let ws = DateTime::from_timestamp(start + i * 3600, 0).unwrap_or_default();
                let r = a.next(ws, 3600, &[("api.convert", 1)]);
                let out = store
                    .ingest(vec![r], store.clock().now(), Source::Import)
                    .await;
                match out {
                    Ok(o) if o[0].outcome == Outcome::Accepted => n += 1,
                    other => return Err(format!("ingest: {other:?}")),
                }
            }
            Ok(n)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    s.store
        .begin_close(last, s.store.clock().now())
        .await
        .map_err(db)?;
    let customer = s.store.list_customers(None).await.map_err(db)?[0]
        .id
        .clone();
    let frozen = s
        .store
        .counted_reports(customer.clone(), last, false)
        .await
        .map_err(db)?;
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.map_err(|e| e.to_string())??;
    }
    let after = s
        .store
        .counted_reports(customer.clone(), last, false)
        .await
        .map_err(db)?;
    ensure!(
        after.len() == frozen.len(),
        "the closed month's reports changed after the close: {} then {}",
        frozen.len(),
        after.len()
    );
    let late = s
        .store
        .counted_reports(customer, this, true)
        .await
        .map_err(db)?;
    ensure!(
        frozen.len() + late.len() == accepted,
        "{} on the closed month + {} late != {accepted} accepted",
        frozen.len(),
        late.len()
    );
    Ok(())
}

/// Retention removes the bodies of a closed month's reports and nothing else: totals,
/// statements, dedup (a resend is a duplicate) and quarantined reports stay; what was removed
/// is summarized per agent; a second run removes nothing.
pub async fn retention_keeps_totals_and_dedup(s: Subject) -> CheckResult {
    let mut f = seed(&s, "ret", &[("api.convert", None)]).await?;
    let (last, this) = last_and_this_month(&s);
    let end = this - 10 * 3600;
    let mut old = Vec::new();
    for i in 0..3 {
        old.push(f.next(at(end + i * 3600)?, 3600, &[("api.convert", 2 + i as u64)]));
    }
    let held = f.next(at(end + 3 * 3600)?, 3600, &[("api.unlicensed", 1)]);
    let own = f.next(at(this + 3600)?, 3600, &[("api.convert", 1)]);
    let mut all = old.clone();
    all.extend([held.clone(), own.clone()]);
    s.store
        .ingest(all, s.store.clock().now(), Source::Import)
        .await
        .map_err(db)?;
    let t_close = s.store.clock().now();
    let p = s.store.begin_close(last, t_close).await.map_err(db)?;
    let cust = f.customer_id.clone();
    s.store
        .finish_close(last, vec![(cust.clone(), b"statement".to_vec())])
        .await
        .map_err(db)?;
    let totals = rollup_totals(&s, UsageFilter::default()).await?;
    let before = p.closed_at - Duration::seconds(1);
    ensure!(
        s.store
            .expire_reports(before, s.store.clock().now())
            .await
            .map_err(db)?
            .is_empty(),
        "a month closed after the cutoff must keep its reports"
    );
    let later = s.store.clock().now() + Duration::days(1);
    let done = s
        .store
        .expire_reports(later, s.store.clock().now())
        .await
        .map_err(db)?;
    ensure!(
        done == vec![super::Expiry {
            month: last,
            reports: 3,
            agents: 1
        }],
        "expired {done:?}"
    );
    ensure!(
        s.store
            .expire_reports(later, s.store.clock().now())
            .await
            .map_err(db)?
            .is_empty(),
        "a second run must remove nothing"
    );
    let stored = s.inspect.stored_reports().await.map_err(db)?;
    for r in &stored {
        let removed = old.iter().any(|o| o.digest == r.digest);
        ensure!(
            r.bytes.is_empty() == removed,
            "report {} ({}) bytes kept: {}",
            r.digest,
            r.status,
            !r.bytes.is_empty()
        );
    }
    ensure!(stored.len() == 5, "{} rows left, want all 5", stored.len());
    ensure!(
        rollup_totals(&s, UsageFilter::default()).await? == totals,
        "totals changed"
    );
    ensure!(
        s.store
            .closed_statement(cust.clone(), last)
            .await
            .map_err(db)?
            == Some(b"statement".to_vec()),
        "the statement changed"
    );
    let digests: Vec<Digest> = old.iter().map(|r| r.digest).collect();
    let kept = s.store.retained_digests(None).await.map_err(db)?;
    ensure!(
        kept == vec![super::RetainedDigest {
            agent_id: f.agent_id.clone(),
            month: last,
            first_seq: 1,
            last_seq: 3,
            reports: 3,
            root: tally_proto::statement::merkle_root(&digests),
        }],
        "retained digests {kept:?}"
    );
    // A resent removed report is still a duplicate, counted once.
    let again = s
        .store
        .ingest(old.clone(), s.store.clock().now(), Source::Import)
        .await
        .map_err(db)?;
    ensure!(
        again.iter().all(|o| o.outcome == Outcome::Duplicate),
        "resent after retention: {again:?}"
    );
    ensure!(
        rollup_totals(&s, UsageFilter::default()).await? == totals,
        "a resend after retention was counted"
    );
    ensure!(
        !s.store
            .release(old[0].digest, s.store.clock().now())
            .await
            .map_err(db)?,
        "releasing a counted, removed report must change nothing"
    );
    // The quarantined report kept its body and can still be released (billed this month).
    ensure!(
        s.store
            .release(held.digest, s.store.clock().now())
            .await
            .map_err(db)?,
        "the quarantined report must still be releasable"
    );
    let late = s
        .store
        .counted_reports(cust, this, true)
        .await
        .map_err(db)?;
    ensure!(seqs(&late) == vec![4], "released late: {:?}", seqs(&late));
    Ok(())
}

fn percents(alerts: &[super::AlertRecord]) -> Vec<u32> {
    let mut p: Vec<u32> = alerts.iter().map(|a| a.percent).collect();
    p.sort_unstable();
    p
}

/// A threshold fires once per license, metric and month, in the transaction that counts the
/// report (ingest or release); the outbox hands each alert out until it is delivered.
pub async fn alerts_fire_once_per_threshold(s: Subject) -> CheckResult {
    let mut f = seed(
        &s,
        "alr",
        &[("api.convert", Some(100)), ("api.render", None)],
    )
    .await?;
    s.store
        .set_license_alerts(f.license_id.clone(), vec![50, 100])
        .await
        .map_err(db)?;
    ensure!(
        s.store
            .set_license_alerts("lic_nope".into(), vec![50])
            .await
            .is_err(),
        "thresholds for a missing license must be refused"
    );
    let lic = s.store.list_licenses(None).await.map_err(db)?;
    ensure!(
        lic[0].alerts == vec![50, 100],
        "license alerts: {:?}",
        lic[0].alerts
    );
    let ws = hours_in_one_month(&s, 3)?;
    let a = f.next(ws, 3600, &[("api.convert", 30), ("api.render", 1000)]);
    let b = f.next(ws + Duration::hours(1), 3600, &[("api.convert", 30)]);
    s.store
        .ingest(vec![a, b.clone()], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    let got = s.store.alerts(None, 10).await.map_err(db)?;
    ensure!(percents(&got) == vec![50], "after 60 of 100: {got:?}");
    let al = &got[0];
    ensure!(
        al.metric == "api.convert"
            && al.used == 60
            && al.limit == 100
            && al.customer_id == f.customer_id
            && al.id == super::alert_id(&f.license_id, "api.convert", al.month, 50),
        "alert as stored: {al:?}"
    );
    // A resend counts nothing and alerts nothing.
    s.store
        .ingest(vec![b], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    ensure!(
        s.store.alerts(None, 10).await.map_err(db)?.len() == 1,
        "a resend alerted"
    );
    // A released report can cross too: 60 + 45 reaches 100.
    let q = f.next(
        ws + Duration::hours(2),
        3600,
        &[("api.convert", 45), ("api.unlicensed", 1)],
    );
    s.store
        .ingest(vec![q.clone()], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    ensure!(
        s.store.alerts(None, 10).await.map_err(db)?.len() == 1,
        "a quarantined report alerted"
    );
    s.store
        .release(q.digest, s.store.clock().now())
        .await
        .map_err(db)?;
    let got = s.store.alerts(None, 10).await.map_err(db)?;
    ensure!(
        percents(&got) == vec![50, 100],
        "after the release: {got:?}"
    );
    // Only that customer's alerts for a customer.
    ensure!(
        s.store
            .alerts(Some("cus_other".into()), 10)
            .await
            .map_err(db)?
            .is_empty(),
        "another customer's alerts"
    );
    // The outbox: both due and claimed at once (another claim gets neither until the
    // claim lapses); one fails and waits; the other is delivered and gone.
    let t = s.store.clock().now() + Duration::seconds(5);
    let lease = t + Duration::seconds(30);
    let due = s.store.claim_due_alerts(t, lease, 10).await.map_err(db)?;
    ensure!(due.len() == 2, "due: {due:?}");
    let again = s.store.claim_due_alerts(t, lease, 10).await.map_err(db)?;
    ensure!(again.is_empty(), "claimed twice: {again:?}");
    let lapsed = s
        .store
        .claim_due_alerts(lease, lease + Duration::seconds(30), 10)
        .await
        .map_err(db)?;
    ensure!(
        lapsed.len() == 2,
        "a lapsed claim must be claimable again: {lapsed:?}"
    );
    s.store
        .alert_attempted(due[0].id.clone(), t, Some(t + Duration::minutes(1)))
        .await
        .map_err(db)?;
    s.store
        .alert_attempted(due[1].id.clone(), t, None)
        .await
        .map_err(db)?;
    let now_due = s
        .store
        .claim_due_alerts(t + Duration::seconds(59), t + Duration::seconds(90), 10)
        .await
        .map_err(db)?;
    ensure!(now_due.is_empty(), "still due: {now_due:?}");
    let later = s
        .store
        .claim_due_alerts(t + Duration::minutes(2), t + Duration::minutes(3), 10)
        .await
        .map_err(db)?;
    ensure!(
        later.len() == 1 && later[0].id == due[0].id && later[0].attempts == 1,
        "retry: {later:?}"
    );
    Ok(())
}

/// Many concurrent one-unit reports on one license: every threshold crossed fires exactly
/// once — none is missed because two transactions each saw the total below it.
pub async fn alerts_under_concurrent_ingest(s: Subject) -> CheckResult {
    let base = seed(&s, "alrc", &[("api.convert", Some(100))]).await?;
    let thresholds: Vec<u32> = (1..=12).map(|k| k * 10).collect();
    s.store
        .set_license_alerts(base.license_id.clone(), thresholds.clone())
        .await
        .map_err(db)?;
    let mut agents = vec![base];
    for _ in 0..7 {
        let a = agents[0]
            .enroll_new_agent(s.store.as_ref(), now(&s))
            .await
            .map_err(db)?;
        agents.push(a);
    }
    let per_agent = 15i64; // 8 × 15 = 120: every threshold up to 120% is crossed
    let start = hours_in_one_month(&s, per_agent)?;
    let mut tasks = Vec::new();
    for mut a in agents {
        let store = s.store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_agent {
                let r = a.next(start + Duration::hours(i), 3600, &[("api.convert", 1)]);
                let o = store
                    .ingest(vec![r], store.clock().now(), Source::Online)
                    .await
                    .map_err(|e| e.to_string())?;
                if o[0].outcome != Outcome::Accepted {
                    return Err(format!("{:?}", o[0]));
                }
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let got = s.store.alerts(None, 100).await.map_err(db)?;
    ensure!(
        percents(&got) == thresholds,
        "thresholds fired: {:?}, want each of {thresholds:?} once",
        percents(&got)
    );
    Ok(())
}

/// An agent's history lists its stored reports newest first — forks and quarantined ones
/// too, with why — and pages back by seq.
pub async fn agent_history_newest_first(s: Subject) -> CheckResult {
    let mut f = seed(&s, "hist", &[("api.convert", None)]).await?;
    let ws = now(&s) - Duration::hours(5);
    let r1 = f.next(ws, 3600, &[("api.convert", 1)]);
    let r2 = f.next(ws + Duration::hours(1), 3600, &[("api.convert", 2)]);
    let fork = f.report(
        2,
        Some(r1.digest),
        ws + Duration::hours(1),
        3600,
        &[("api.convert", 9)],
    );
    let r3 = f.next(ws + Duration::hours(2), 3600, &[("api.unlicensed", 3)]);
    s.store
        .ingest(
            vec![r1, r2.clone(), fork.clone(), r3.clone()],
            s.store.clock().now(),
            Source::Online,
        )
        .await
        .map_err(db)?;
    let all = s
        .store
        .agent_reports(f.agent_id.clone(), None, 10)
        .await
        .map_err(db)?;
    let got: Vec<(u64, bool, crate::rules::ReportStatus, String)> = all
        .iter()
        .map(|r| (r.seq, r.fork, r.status, r.reason.clone()))
        .collect();
    use crate::rules::ReportStatus::{Accepted, Quarantined};
    let want = vec![
        (3, false, Quarantined, "metric_not_licensed".to_string()),
        (2, false, Accepted, String::new()),
        (2, true, Quarantined, "seq_conflict".to_string()),
        (1, false, Accepted, String::new()),
    ];
    ensure!(got == want, "history {got:?}");
    ensure!(
        all[0].digest == r3.digest && all[2].digest == fork.digest,
        "digests in the history"
    );
    ensure!(
        all[1].window_start == r2.report.window_start,
        "windows in the history"
    );
    let page = s
        .store
        .agent_reports(f.agent_id.clone(), Some(3), 2)
        .await
        .map_err(db)?;
    let seqs: Vec<(u64, bool)> = page.iter().map(|r| (r.seq, r.fork)).collect();
    ensure!(
        seqs == vec![(2, false), (2, true)],
        "page before seq 3: {seqs:?}"
    );
    ensure!(
        s.store
            .agent_reports("agt_nobody".into(), None, 10)
            .await
            .map_err(db)?
            .is_empty(),
        "an unknown agent has no history"
    );
    Ok(())
}

/// Incidents: two collectors reporting one store outage (each its own down and up) leave
/// one incident from the earliest start to the latest end; a later outage is a
/// second incident; an open one is listed; components are apart; many collectors
/// reporting one failure at the same moment open one incident; `incidents_since` lists
/// what was open at or after its time, newest first.
pub async fn incidents_fold_one_outage_seen_twice(s: Subject) -> CheckResult {
    use crate::rules::incidents::Change;
    let t0 = now(&s) - Duration::hours(2);
    let at = |m: i64| t0 + Duration::minutes(m);
    let down = || Change::Down {
        detail: "the store does not answer".into(),
    };
    let record = |component: &str, change: Change, when| {
        let (store, component) = (s.store.clone(), component.to_string());
        async move { store.record_incident(component, change, when).await }
    };
    // Collector A saw [1, 10], collector B saw [0, 12]; A's reports arrive first.
    record("store", down(), at(1)).await.map_err(db)?;
    record("store", Change::Up { since: at(1) }, at(10))
        .await
        .map_err(db)?;
    record("store", down(), at(0)).await.map_err(db)?;
    record("store", Change::Up { since: at(0) }, at(12))
        .await
        .map_err(db)?;
    // Sixteen collectors see a component fail at once, four times over: one open incident
    // for each component.
    let racing: Vec<_> = (0..64)
        .map(|i| {
            let (store, when) = (s.store.clone(), at(70 + i % 16));
            let change = down();
            tokio::spawn(async move {
                store
                    .record_incident(format!("race{}", i / 16), change, when)
                    .await
            })
        })
        .collect();
    for r in racing {
        r.await.map_err(db)?.map_err(db)?;
    }
    // A store outage only written once it was over, by a collector that saw [30, 40].
    record("store", Change::Up { since: at(30) }, at(40))
        .await
        .map_err(db)?;
    // Backups down since minute 50, not back yet.
    record("backups", down(), at(50)).await.map_err(db)?;
    record("backups", down(), at(55)).await.map_err(db)?;
    let all = s.store.incidents_since(t0).await.map_err(db)?;
    let got: Vec<(String, i64, Option<i64>)> = all
        .iter()
        .filter(|i| !i.component.starts_with("race"))
        .map(|i| {
            (
                i.component.clone(),
                (i.opened_at - t0).num_minutes(),
                i.closed_at.map(|c| (c - t0).num_minutes()),
            )
        })
        .collect();
    ensure!(
        got.len() == 3
            && got[0] == ("backups".into(), 50, None)
            && got[1] == ("store".into(), 30, Some(40))
            && got[2].0 == "store"
            && got[2].1 == 0
            && got[2].2 == Some(12),
        "incidents {got:?}"
    );
    for race in ["race0", "race1", "race2", "race3"] {
        let open: Vec<_> = all.iter().filter(|i| i.component == race).collect();
        ensure!(
            open.len() == 1 && open[0].closed_at.is_none(),
            "racing reports of one failure of {race}: {open:?}"
        );
    }
    let backups = all.iter().find(|i| i.component == "backups");
    ensure!(
        backups.is_some_and(|b| b.detail == "the store does not answer"),
        "detail {backups:?}"
    );
    // Since minute 20: the first outage (over at 12) is not listed; the open one is.
    let later = s.store.incidents_since(at(20)).await.map_err(db)?;
    ensure!(
        later.len() == 6 && later.iter().all(|i| i.opened_at >= at(30)),
        "since minute 20: {later:?}"
    );
    record("backups", Change::Up { since: at(50) }, at(60))
        .await
        .map_err(db)?;
    let closed = s.store.incidents_since(t0).await.map_err(db)?;
    let backups = closed.iter().find(|i| i.component == "backups");
    ensure!(
        backups.is_some_and(|b| b.closed_at == Some(at(60))),
        "backups closed: {backups:?}"
    );
    Ok(())
}

/// Keyrings: versions are added in order only (1, 2, …: a skipped or repeated version is a
/// `Conflict`, so two rotations racing cannot both win), kept byte for byte, and listed
/// after a version, oldest first; many adding the same next version at once: one wins.
pub async fn keyrings_are_added_in_order_once(s: Subject) -> CheckResult {
    let at = now(&s);
    ensure!(
        s.store.keyrings_after(0).await.map_err(db)?.is_empty(),
        "a new store has no keyring"
    );
    for bad in [0u64, 2] {
        ensure!(
            matches!(
                s.store.add_keyring(bad, vec![1], at).await,
                Err(super::StoreError::Conflict(_))
            ),
            "version {bad} first must be a conflict"
        );
    }
    s.store.add_keyring(1, vec![1, 1], at).await.map_err(db)?;
    let racing: Vec<_> = (0..8u8)
        .map(|i| {
            let store = s.store.clone();
            tokio::spawn(async move { store.add_keyring(2, vec![2, i], at).await })
        })
        .collect();
    let mut won = 0;
    for r in racing {
        match r.await.map_err(db)? {
            Ok(()) => won += 1,
            Err(super::StoreError::Conflict(_)) => {}
            Err(e) => return Err(db(e)),
        }
    }
    ensure!(won == 1, "{won} of 8 racing adds of version 2 won");
    s.store.add_keyring(3, vec![3], at).await.map_err(db)?;
    let all = s.store.keyrings_after(0).await.map_err(db)?;
    let versions: Vec<u64> = all.iter().map(|(v, _)| *v).collect();
    ensure!(versions == vec![1, 2, 3], "versions {versions:?}");
    ensure!(all[0].1 == vec![1, 1], "bytes kept: {:?}", all[0].1);
    let after = s.store.keyrings_after(1).await.map_err(db)?;
    ensure!(
        after.iter().map(|(v, _)| *v).collect::<Vec<_>>() == vec![2, 3],
        "after 1: {after:?}"
    );
    ensure!(
        s.store.keyrings_after(3).await.map_err(db)?.is_empty(),
        "nothing after the newest"
    );
    Ok(())
}

/// An agent key rotation hands the chain over once: of rotations racing from one key
/// exactly one is recorded, a resend is recognized, a rotation at a seq already stored is
/// refused; both keys are found with their ranges of seqs, a revocation is never moved
/// later, and a closed statement's line names both keys and its evidence audits whole.
pub async fn agent_key_rotations_hand_the_chain_over_once(s: Subject) -> CheckResult {
    use crate::rules::agent_keys::{RotationDecision, RotationRefusal};
    use tally_proto::agent_key::Rotation;
    let mut f = seed(&s, "rot", &[("api.convert", None)]).await?;
    let old = f.key.clone();
    let old_key = old.verifying_key().to_bytes();
    let (last, this) = last_and_this_month(&s);
    let sign = |f: &crate::store::fixture::Fixture, mut r: AuthenticReport| {
        r.signature =
            tally_proto::signing::sign(&f.key, tally_proto::signing::Domain::UsageReport, &r.bytes)
                .to_vec();
        r
    };
    let mut reports = Vec::new();
    for i in 0..2 {
        let r = f.next(
            at(this - 3 * 86_400 + i * 3600)?,
            3600,
            &[("api.convert", 2)],
        );
        reports.push(sign(&f, r));
    }
    s.store
        .ingest(reports, s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    let rotation = |new: &ed25519_dalek::SigningKey, from_seq| {
        let r = Rotation {
            license_id: f.license_id.clone(),
            old_key,
            new_key: new.verifying_key().to_bytes(),
            from_seq,
            created_at: now(&s),
        };
        let signed = r.sign(&old, new);
        (r, prost::Message::encode_to_vec(&signed))
    };
    // A seq the old key already signed and the store holds: refused.
    let early = tally_proto::keys::generate();
    let (r, b) = rotation(&early, 2);
    let d = s.store.rotate_agent_key(r, b, now(&s)).await.map_err(db)?;
    ensure!(
        matches!(d, RotationDecision::Refuse(RotationRefusal::Conflict(_))),
        "a rotation at a stored seq: {d:?}"
    );
    // Eight rotations race from the old key to eight new keys: one wins.
    let news: Vec<_> = (0..8).map(|_| tally_proto::keys::generate()).collect();
    let racing: Vec<_> = news
        .iter()
        .map(|n| {
            let (r, b) = rotation(n, 3);
            let store = s.store.clone();
            let t = now(&s);
            tokio::spawn(async move { store.rotate_agent_key(r, b, t).await })
        })
        .collect();
    let mut winner = None;
    for (i, r) in racing.into_iter().enumerate() {
        match r.await.map_err(db)?.map_err(db)? {
            RotationDecision::Record => {
                ensure!(winner.is_none(), "two racing rotations were recorded");
                winner = Some(i);
            }
            RotationDecision::Refuse(RotationRefusal::Conflict(_)) => {}
            other => return Err(format!("a racing rotation: {other:?}")),
        }
    }
    let new = news[winner.ok_or("no racing rotation was recorded")?].clone();
    let new_key = new.verifying_key().to_bytes();
    let (r, b) = rotation(&new, 3);
    let d = s
        .store
        .rotate_agent_key(r, b.clone(), now(&s))
        .await
        .map_err(db)?;
    ensure!(d == RotationDecision::AlreadyRecorded, "a resend: {d:?}");
    let found = s
        .store
        .agents_by_keys(vec![old_key, new_key])
        .await
        .map_err(db)?;
    let (o, n) = (
        found.get(&old_key).ok_or("the old key is gone")?,
        found.get(&new_key).ok_or("the new key is not found")?,
    );
    ensure!(
        o.agent_id == f.agent_id && n.agent_id == f.agent_id,
        "both keys are the agent's: {o:?} {n:?}"
    );
    ensure!(
        (o.from_seq, o.until_seq, n.from_seq, n.until_seq) == (1, Some(3), 3, None),
        "ranges: {o:?} {n:?}"
    );
    let keys = s.store.agent_keys(f.agent_id.clone()).await.map_err(db)?;
    ensure!(
        keys.iter().map(|k| k.key).collect::<Vec<_>>() == vec![old_key, new_key],
        "the agent's keys in order: {keys:?}"
    );
    ensure!(
        s.store
            .agent_rotations(f.agent_id.clone())
            .await
            .map_err(db)?
            == vec![b],
        "the signed rotation is kept as signed"
    );
    let by_id = s
        .store
        .agent_key_by_id(tally_proto::keys::key_id(&new_key))
        .await
        .map_err(db)?;
    ensure!(by_id.map(|k| k.key) == Some(new_key), "found by key id");
    // A report of the old key for seq 3 that was looked up before the rotation committed
    // (the store is asked directly, as the ingest path would after its lookup): the store
    // judges the key again under the agent's lock and refuses it, storing nothing.
    let before = s.inspect.stored_reports().await.map_err(db)?.len();
    let stale = f.report(
        3,
        f.prev,
        at(this - 3 * 86_400 + 2 * 3600)?,
        3600,
        &[("api.convert", 100)],
    );
    let out = s
        .store
        .ingest(vec![stale], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    ensure!(
        out.len() == 1
            && out[0].outcome == Outcome::Refused
            && out[0].reason == Some(Reason::AgentRevoked),
        "a report of the old key past the hand-over: {out:?}"
    );
    ensure!(
        s.inspect.stored_reports().await.map_err(db)?.len() == before,
        "nothing of it is stored"
    );
    // The new key signs seqs 3 and 4, chained on; the month closes with one line.
    f.key = new.clone();
    let mut reports = Vec::new();
    for i in 2..4 {
        let r = f.next(
            at(this - 3 * 86_400 + i * 3600)?,
            3600,
            &[("api.convert", 2)],
        );
        reports.push(sign(&f, r));
    }
    let stored = s
        .store
        .ingest(reports, s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    ensure!(
        stored.iter().all(|o| o.outcome == Outcome::Accepted),
        "the new key's reports continue the chain: {stored:?}"
    );
    let vendor = tally_proto::keys::generate();
    crate::periods::close(s.store.as_ref(), &vendor, last, s.store.clock().now())
        .await
        .map_err(db)?;
    let doc = s
        .store
        .closed_statement(f.customer_id.clone(), last)
        .await
        .map_err(db)?
        .ok_or("no closed statement")?;
    let statement = tally_proto::statement::Statement::verify(&doc, &vendor.verifying_key())
        .map_err(|e| e.to_string())?;
    let ids = vec![
        tally_proto::keys::key_id(&old_key),
        tally_proto::keys::key_id(&new_key),
    ];
    ensure!(
        statement.agents.len() == 1
            && statement.agents[0].key_ids == ids
            && statement.agents[0].key_id == ids[1]
            && statement.agents[0].reports == 4,
        "the line names both keys: {:?}",
        statement.agents
    );
    let ev = crate::periods::evidence(s.store.as_ref(), &f.customer_id, last)
        .await
        .map_err(db)?
        .ok_or("no evidence")?;
    let out = tally_proto::statement::audit::audit(&statement, &ids.iter().cloned().collect(), &ev);
    ensure!(
        out.matches() && out.verified == 4,
        "audit across the rotation: {out:?}"
    );
    // A revocation stands and is never moved later.
    let t = now(&s);
    s.store.revoke_agent_key(new_key, t).await.map_err(db)?;
    s.store
        .revoke_agent_key(new_key, t + Duration::hours(1))
        .await
        .map_err(db)?;
    let k = s
        .store
        .agents_by_keys(vec![new_key])
        .await
        .map_err(db)?
        .remove(&new_key)
        .ok_or("revoked key gone")?;
    ensure!(
        k.revoked_at == Some(t),
        "revoked at {:?}, not {t}",
        k.revoked_at
    );
    s.store
        .revoke_agent_key(new_key, t - Duration::hours(1))
        .await
        .map_err(db)?;
    let k = s
        .store
        .agents_by_keys(vec![new_key])
        .await
        .map_err(db)?
        .remove(&new_key)
        .ok_or("revoked key gone")?;
    ensure!(
        k.revoked_at == Some(t - Duration::hours(1)),
        "an earlier revocation replaces a later one: {:?}",
        k.revoked_at
    );
    Ok(())
}

/// An agent enrolled by a node of the version before agent keys (its database already
/// migrated by a newer node) has no key rows: its key is still found, as its enrolled key
/// from seq 1, its reports counted and billed under it, and a rotation records it first.
pub async fn an_agent_without_key_rows_is_read_from_its_enrollment(s: Subject) -> CheckResult {
    use crate::rules::agent_keys::RotationDecision;
    let mut f = seed(&s, "old", &[("api.convert", None)]).await?;
    s.inspect
        .forget_agent_keys(f.agent_id.clone())
        .await
        .map_err(db)?;
    let key = f.key.verifying_key().to_bytes();
    let found = s.store.agents_by_keys(vec![key]).await.map_err(db)?;
    let k = found.get(&key).ok_or("the enrolled key is not found")?;
    ensure!(
        (k.agent_id.as_str(), k.from_seq, k.until_seq) == (f.agent_id.as_str(), 1, None),
        "{k:?}"
    );
    let (_, this) = last_and_this_month(&s);
    let r = f.next(at(this + 3600)?, 60, &[("api.convert", 4)]);
    s.store
        .ingest(vec![r], s.store.clock().now(), Source::Online)
        .await
        .map_err(db)?;
    let ev = s
        .store
        .statement_evidence(f.customer_id.clone(), this, f.agent_id.clone())
        .await
        .map_err(db)?;
    ensure!(
        ev.len() == 1 && ev[0].agent_key == key,
        "the report is billed under the enrolled key: {} rows",
        ev.len()
    );
    let new = tally_proto::keys::generate();
    let rotation = tally_proto::agent_key::Rotation {
        license_id: f.license_id.clone(),
        old_key: key,
        new_key: new.verifying_key().to_bytes(),
        from_seq: 2,
        created_at: now(&s),
    };
    let signed = prost::Message::encode_to_vec(&rotation.sign(&f.key, &new));
    let d = s
        .store
        .rotate_agent_key(rotation, signed, now(&s))
        .await
        .map_err(db)?;
    ensure!(d == RotationDecision::Record, "{d:?}");
    let keys = s.store.agent_keys(f.agent_id.clone()).await.map_err(db)?;
    ensure!(
        keys.iter()
            .map(|k| (k.from_seq, k.until_seq))
            .collect::<Vec<_>>()
            == vec![(1, Some(2)), (2, None)],
        "the enrolled key is recorded, then handed over: {keys:?}"
    );
    // Another such agent: listed, found by key id and revoked like any other.
    let g = f
        .enroll_new_agent(s.store.as_ref(), now(&s))
        .await
        .map_err(db)?;
    s.inspect
        .forget_agent_keys(g.agent_id.clone())
        .await
        .map_err(db)?;
    let gkey = g.key.verifying_key().to_bytes();
    let listed = s.store.agent_keys(g.agent_id.clone()).await.map_err(db)?;
    ensure!(
        listed.len() == 1 && listed[0].key == gkey,
        "listed: {listed:?}"
    );
    let by_id = s
        .store
        .agent_key_by_id(tally_proto::keys::key_id(&gkey))
        .await
        .map_err(db)?;
    ensure!(by_id.map(|k| k.key) == Some(gkey), "found by key id");
    let t = now(&s);
    s.store.revoke_agent_key(gkey, t).await.map_err(db)?;
    let k = s
        .store
        .agents_by_keys(vec![gkey])
        .await
        .map_err(db)?
        .remove(&gkey)
        .ok_or("the revoked key is gone")?;
    ensure!(k.revoked_at == Some(t), "revoked: {k:?}");
    Ok(())
}

/// Expands to one `#[tokio::test]` per conformance check, each on a fresh store from
/// `$fresh` (an async expression yielding a [`Subject`]).
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:expr) => {
        $crate::conformance_tests!(@each $fresh;
            migrations_from_an_empty_database,
            exactly_once_under_concurrent_duplicates,
            forks_are_kept_and_never_counted,
            gaps_open_and_close,
            quarantine_release_counts_once,
            rollups_equal_a_brute_force_sum,
            tenant_filters,
            audit_entries,
            repeated_reads_group_in_the_audit_log,
            a_schema_newer_than_the_build_is_refused,
            the_highest_seq_is_deduplicated,
            credits_report_each_metric_of_the_month,
            cancellation_purges_one_customer_only,
            collector_key_is_bound_once,
            concurrent_releases_count_once,
            gaps_close_under_concurrent_neighbours,
            sums_never_wrap,
            closing_a_month_bills_late_reports_on_the_next,
            close_is_serialized_with_ingest,
            retention_keeps_totals_and_dedup,
            alerts_fire_once_per_threshold,
            alerts_under_concurrent_ingest,
            agent_history_newest_first,
            times_come_from_the_store_clock,
            evidence_backs_the_closed_statement,
            limits_include_licenses_in_grace,
            a_bill_counts_only_accepted_reports,
            incidents_fold_one_outage_seen_twice,
            keyrings_are_added_in_order_once,
            agent_key_rotations_hand_the_chain_over_once,
            an_agent_without_key_rows_is_read_from_its_enrollment
        );
    };
    (@each $fresh:expr; $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let subject = $fresh;
                if let Err(e) = $crate::store::conformance::$check(subject).await {
                    panic!("{}: {e}", stringify!($check));
                }
            }
        )+
    };
}

//! Closing months: which statement counts a report, which months are due for closing, and
//! what a closed statement says. Pure, like the rest of `rules`: a store answers with the
//! closed months and the counted reports; these functions decide.
//!
//! A report counts on the statement of the UTC month its window starts in while that month
//! is open. Once a month is closed, its statement is frozen; a report for it that is stored
//! (or released from quarantine) later counts on the first later month that is still open,
//! as an *adjustment* naming the month it belongs to.

use super::{LicenseLimit, LicenseUsage, ReportStatus, statement_lines};
use crate::calendar::{month_label, month_of, next_month};
use std::collections::{BTreeMap, BTreeSet};
use tally_proto::Digest;
use tally_proto::statement::{
    Adjustment, AgentLine, Line, Quantity, Statement, merkle_root, seq_ranges,
};

/// Where a report whose window starts in `window_month` is billed: `None` on its own
/// month's statement (the month is open), `Some(m)` on month `m`'s, the first later month
/// not in `closed`.
pub fn billed_month(window_month: i64, closed: &BTreeSet<i64>) -> Option<i64> {
    if !closed.contains(&window_month) {
        return None;
    }
    let mut m = next_month(window_month);
    while closed.contains(&m) {
        m = next_month(m);
    }
    Some(m)
}

/// The month whose statement counts a stored report, if any: an accepted report counts on
/// the month it was billed on when it came late (`billed_month`), else on the month its
/// window starts in; a quarantined or discarded report counts nowhere.
pub fn statement_month(
    status: ReportStatus,
    window_start: i64,
    billed_month: Option<i64>,
) -> Option<i64> {
    match status {
        ReportStatus::Accepted => Some(billed_month.unwrap_or_else(|| month_of(window_start))),
        ReportStatus::Quarantined | ReportStatus::Discarded => None,
    }
}

/// Which reports a month's statement counts, and which of them are late (billed on it
/// although their own month was closed when they were stored or released). A store fetches
/// the candidates — every report whose window starts in the month or that was billed on
/// it — and keeps those this says yes to.
pub fn counts_on(
    month: i64,
    only_late: bool,
    status: ReportStatus,
    window_start: i64,
    billed_month: Option<i64>,
) -> bool {
    statement_month(status, window_start, billed_month) == Some(month)
        && (!only_late || billed_month.is_some())
}

/// A license's limit of one metric with the license's term, as a store finds it: every
/// license of a customer is a candidate; [`limits_in_month`] decides which ones a month
/// sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermLimit {
    pub limit: LicenseLimit,
    pub not_before: i64,
    /// `not_after + grace`: the last instant the license counts usage.
    pub usable_until: i64,
}

/// The limits a month's statement may apply: those of licenses whose term, grace included,
/// touches the month (starts before the month ends and lasts until at least its first
/// instant). Whether a touching license then applies is [`statement_lines`]' decision.
pub fn limits_in_month(month: i64, candidates: Vec<TermLimit>) -> Vec<LicenseLimit> {
    let end = next_month(month);
    candidates
        .into_iter()
        .filter(|c| c.not_before < end && c.usable_until >= month)
        .map(|c| c.limit)
        .collect()
}

/// Whether `month` may be closed at `now`: only after it has ended.
pub fn closable(month: i64, now: i64) -> Result<(), String> {
    if now < next_month(month) {
        return Err(format!(
            "{} has not ended yet; a month can be closed from {} on",
            month_label(month),
            month_label(next_month(month))
        ));
    }
    Ok(())
}

/// The months to close automatically at `now`, oldest first: every month from `first` (the
/// month of the oldest customer) whose end plus `grace_secs` has passed and that is not
/// already in `closed`.
pub fn months_due(
    first: Option<i64>,
    now: i64,
    grace_secs: i64,
    closed: &BTreeSet<i64>,
) -> Vec<i64> {
    let Some(first) = first else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut m = month_of(first);
    loop {
        let end = next_month(m);
        if end <= m || end.saturating_add(grace_secs) > now {
            break;
        }
        if !closed.contains(&m) {
            out.push(m);
        }
        m = end;
    }
    out
}

/// A counted report, as a statement needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedReport {
    pub agent_id: String,
    pub agent_key: [u8; 32],
    pub license_id: String,
    pub seq: u64,
    pub digest: Digest,
    pub window_start: i64,
    pub counters: Vec<(String, u64)>,
}

/// The adjustment lines of `month`'s statement from the late reports billed on it (those
/// whose window starts in an earlier month): per metric and month of origin, sorted.
pub fn adjustments(month: i64, late: &[CountedReport]) -> Result<Vec<Adjustment>, String> {
    let mut sums: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for r in late {
        let origin = month_of(r.window_start);
        if origin >= month {
            continue;
        }
        for (metric, q) in &r.counters {
            let e = sums.entry((metric.clone(), origin)).or_insert(0);
            *e = e
                .checked_add(*q)
                .ok_or_else(|| format!("the adjustment total of {metric} overflows 64 bits"))?;
        }
    }
    Ok(sums
        .into_iter()
        .map(|((metric, origin), quantity)| Adjustment {
            metric,
            period: month_label(origin),
            quantity,
        })
        .collect())
}

/// What a closed statement needs besides the counted reports.
#[derive(Debug, Clone)]
pub struct CloseFacts<'a> {
    pub customer: &'a str,
    pub month: i64,
    /// RFC 3339.
    pub closed_at: &'a str,
    /// Key id of the vendor key that will sign.
    pub key_id: &'a str,
    pub limits: &'a [LicenseLimit],
}

/// The closed statement of a customer-month from every report billed on it (its own
/// month's and the late ones of earlier months): lines from the month's own reports,
/// adjustments from the late ones, and one line per agent over all of them. `Err` names a
/// total that would overflow.
pub fn closed_statement(
    f: &CloseFacts<'_>,
    reports: &[CountedReport],
) -> Result<Statement, String> {
    let mut own: Vec<LicenseUsage> = Vec::new();
    for r in reports
        .iter()
        .filter(|r| month_of(r.window_start) == f.month)
    {
        own.extend(r.counters.iter().map(|(metric, q)| LicenseUsage {
            license_id: r.license_id.clone(),
            metric: metric.clone(),
            quantity: *q,
        }));
    }
    let lines = statement_lines(f.limits, &own)?
        .into_iter()
        .map(|l| Line {
            overage: l.overage(),
            metric: l.metric,
            used: l.used,
            limit: l.limit,
        })
        .collect();
    let mut by_agent: BTreeMap<&str, Vec<&CountedReport>> = BTreeMap::new();
    for r in reports {
        by_agent.entry(&r.agent_id).or_default().push(r);
    }
    let mut agents = Vec::with_capacity(by_agent.len());
    for (agent_id, mut rs) in by_agent {
        rs.sort_by_key(|r| r.seq);
        agents.push(agent_line(agent_id, &rs)?);
    }
    // Sorted by key id, the order every verifier requires (the customer knows its agents
    // by key id, not by the collector's agent id).
    agents.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    Ok(Statement {
        customer: f.customer.to_string(),
        period: month_label(f.month),
        closed: true,
        closed_at: f.closed_at.to_string(),
        key_id: f.key_id.to_string(),
        lines,
        adjustments: adjustments(f.month, reports)?,
        agents,
    })
}

/// One agent's line from its counted reports, sorted by seq.
fn agent_line(agent_id: &str, rs: &[&CountedReport]) -> Result<AgentLine, String> {
    let mut quantities: BTreeMap<&str, u64> = BTreeMap::new();
    for r in rs {
        for (metric, q) in &r.counters {
            let e = quantities.entry(metric).or_insert(0);
            *e = e
                .checked_add(*q)
                .ok_or_else(|| format!("agent {agent_id}'s total of {metric} overflows 64 bits"))?;
        }
    }
    let seqs: Vec<u64> = rs.iter().map(|r| r.seq).collect();
    let digests: Vec<Digest> = rs.iter().map(|r| r.digest).collect();
    let first = rs.first().ok_or("an agent line needs a report")?;
    // The keys that signed the reports, in seq order (an agent that rotated its key within
    // the line's seqs has several): the line names them all, and its key is the newest.
    let mut key_ids: Vec<String> = Vec::new();
    for r in rs {
        let id = tally_proto::keys::key_id(&r.agent_key);
        if key_ids.last() != Some(&id) {
            key_ids.push(id);
        }
    }
    let key_id = key_ids.last().cloned().unwrap_or_default();
    if key_ids.len() < 2 {
        key_ids.clear();
    }
    Ok(AgentLine {
        agent_id: agent_id.to_string(),
        key_id,
        key_ids,
        license_id: first.license_id.clone(),
        first_seq: seqs.first().copied().unwrap_or(0),
        last_seq: seqs.last().copied().unwrap_or(0),
        reports: rs.len() as u64,
        seqs: seq_ranges(&seqs),
        quantities: quantities
            .into_iter()
            .map(|(m, q)| Quantity {
                metric: m.to_string(),
                quantity: q,
            })
            .collect(),
        root: hex::encode(merkle_root(&digests).0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z and the months after it.
    const JAN: i64 = 1_767_225_600;
    fn month(k: u32) -> i64 {
        (0..k).fold(JAN, |m, _| next_month(m))
    }

    #[test]
    fn billed_month_skips_closed_months() {
        let closed = |ms: &[i64]| ms.iter().copied().collect::<BTreeSet<i64>>();
        let cases: Vec<(i64, BTreeSet<i64>, Option<i64>)> = vec![
            // Open month: billed on its own statement.
            (month(2), closed(&[]), None),
            (month(2), closed(&[month(1)]), None),
            // Closed: the next open month.
            (month(2), closed(&[month(2)]), Some(month(3))),
            // Several closed in a row: the first open one after them.
            (
                month(2),
                closed(&[month(2), month(3), month(4)]),
                Some(month(5)),
            ),
            // Across a year end.
            (month(11), closed(&[month(11)]), Some(month(12))),
        ];
        for (m, c, want) in cases {
            assert_eq!(billed_month(m, &c), want, "month {m} closed {c:?}");
        }
    }

    #[test]
    fn which_reports_a_month_counts() {
        use ReportStatus::*;
        let mid = |k: u32| month(k) + 86_400 * 10;
        // (status, window start, billed month, counted on month(2)?, as a late report?)
        let cases: Vec<(ReportStatus, i64, Option<i64>, bool, bool)> = vec![
            // An accepted report of the month, on time.
            (Accepted, mid(2), None, true, false),
            // Its first and last second belong to it; the next month's first does not.
            (Accepted, month(2), None, true, false),
            (Accepted, month(3) - 1, None, true, false),
            (Accepted, month(3), None, false, false),
            (Accepted, month(2) - 1, None, false, false),
            // Late: an earlier month's report billed on this one counts, as late.
            (Accepted, mid(1), Some(month(2)), true, true),
            (Accepted, mid(0), Some(month(2)), true, true),
            // This month's own report billed on a later month (this one was closed) does
            // not count here.
            (Accepted, mid(2), Some(month(3)), false, false),
            // Billed on another month entirely.
            (Accepted, mid(1), Some(month(3)), false, false),
            // Quarantined and discarded reports count nowhere, billed month or not.
            (Quarantined, mid(2), None, false, false),
            (Discarded, mid(2), None, false, false),
            (Quarantined, mid(1), Some(month(2)), false, false),
            (Discarded, mid(1), Some(month(2)), false, false),
        ];
        for (status, start, billed, counted, late) in cases {
            assert_eq!(
                counts_on(month(2), false, status, start, billed),
                counted,
                "{status} window {start} billed {billed:?}"
            );
            assert_eq!(
                counts_on(month(2), true, status, start, billed),
                late,
                "late: {status} window {start} billed {billed:?}"
            );
        }
    }

    #[test]
    fn which_licenses_limits_a_month_sees() {
        let lim = |id: &str, not_before: i64, usable_until: i64| TermLimit {
            limit: LicenseLimit {
                license_id: id.into(),
                metric: "api.convert".into(),
                limit: Some(10),
            },
            not_before,
            usable_until,
        };
        // (license term, seen by month(2)?)
        let cases = vec![
            // Spans the month.
            (lim("a", month(0), month(6)), true),
            // Starts inside it, ends inside it.
            (lim("b", month(2) + 5, month(3) - 5), true),
            // Starts at its last second; starts when the next month begins.
            (lim("c", month(3) - 1, month(9)), true),
            (lim("d", month(3), month(9)), false),
            // Usable until its first instant (grace included); ended the second before.
            (lim("e", month(0), month(2)), true),
            (lim("f", month(0), month(2) - 1), false),
        ];
        for (candidate, seen) in cases {
            let id = candidate.limit.license_id.clone();
            let got = limits_in_month(month(2), vec![candidate]);
            assert_eq!(got.len() == 1, seen, "license {id}");
        }
    }

    #[test]
    fn a_month_closes_only_after_it_ends() {
        assert!(closable(month(1), month(2) - 1).is_err());
        assert!(closable(month(1), month(2)).is_ok());
        let e = closable(month(1), month(1) + 5).unwrap_err();
        assert!(e.contains("2026-02 has not ended"), "{e}");
    }

    #[test]
    fn months_due_after_their_grace() {
        let g = 3 * 86_400;
        let none = BTreeSet::new();
        type Case = (Option<i64>, i64, BTreeSet<i64>, Vec<i64>);
        let cases: Vec<Case> = vec![
            (None, month(5), none.clone(), vec![]),
            // January ends with February's start; due three days later.
            (Some(JAN + 100), month(1) + g - 1, none.clone(), vec![]),
            (Some(JAN + 100), month(1) + g, none.clone(), vec![JAN]),
            // Catches up on every month not yet closed, oldest first.
            (
                Some(JAN),
                month(3) + g,
                [month(1)].into_iter().collect(),
                vec![month(0), month(2)],
            ),
            // The current month is never due.
            (
                Some(month(4) + 5),
                month(4) + 20 * 86_400,
                none.clone(),
                vec![],
            ),
            (
                Some(month(4) + 5),
                month(5) + 2 * 86_400,
                none.clone(),
                vec![],
            ),
        ];
        for (first, now, closed, want) in cases {
            assert_eq!(
                months_due(first, now, g, &closed),
                want,
                "first {first:?} now {now}"
            );
        }
    }

    fn rep(agent: &str, seq: u64, window_start: i64, counters: &[(&str, u64)]) -> CountedReport {
        CountedReport {
            agent_id: agent.into(),
            agent_key: [agent.as_bytes()[agent.len() - 1]; 32],
            license_id: "lic_1".into(),
            seq,
            digest: Digest([seq as u8; 32]),
            window_start,
            counters: counters.iter().map(|(m, q)| (m.to_string(), *q)).collect(),
        }
    }

    #[test]
    fn closed_statement_splits_own_usage_adjustments_and_agents() {
        let oct = month(9);
        let limits = vec![LicenseLimit {
            license_id: "lic_1".into(),
            metric: "api.convert".into(),
            limit: Some(10),
        }];
        let f = CloseFacts {
            customer: "cus_a",
            month: oct,
            closed_at: "2026-11-04T00:00:00Z",
            key_id: "k",
            limits: &limits,
        };
        let reports = vec![
            rep("agt_b", 4, oct + 7200, &[("api.convert", 5)]),
            rep(
                "agt_a",
                2,
                oct + 3600,
                &[("api.convert", 7), ("api.render", 1)],
            ),
            rep("agt_a", 1, oct, &[("api.convert", 1)]),
            // Late from September: an adjustment, and on agent a's line.
            rep("agt_a", 9, month(8) + 60, &[("api.convert", 3)]),
            // A heartbeat counts on the agent line with no quantity.
            rep("agt_b", 5, oct + 10_800, &[]),
        ];
        let s = closed_statement(&f, &reports).unwrap();
        assert_eq!(s.period, "2026-10");
        assert_eq!(
            s.lines,
            vec![
                Line {
                    metric: "api.convert".into(),
                    used: 13,
                    limit: Some(10),
                    overage: 3
                },
                Line {
                    metric: "api.render".into(),
                    used: 1,
                    limit: None,
                    overage: 0
                },
            ]
        );
        assert_eq!(
            s.adjustments,
            vec![Adjustment {
                metric: "api.convert".into(),
                period: "2026-09".into(),
                quantity: 3
            }]
        );
        assert_eq!(s.agents.len(), 2);
        assert!(s.agents[0].key_id < s.agents[1].key_id, "sorted by key id");
        // What the builder makes adds up by the rules every verifier applies.
        s.check_arithmetic().unwrap();
        let by_id = |id: &str| s.agents.iter().find(|a| a.agent_id == id).unwrap();
        let a = by_id("agt_a");
        assert_eq!(
            (a.agent_id.as_str(), a.first_seq, a.last_seq, a.reports),
            ("agt_a", 1, 9, 3)
        );
        assert_eq!(a.seqs, vec![(1, 2), (9, 9)]);
        assert_eq!(
            a.quantities,
            vec![
                Quantity {
                    metric: "api.convert".into(),
                    quantity: 11
                },
                Quantity {
                    metric: "api.render".into(),
                    quantity: 1
                },
            ]
        );
        let in_order = [Digest([1; 32]), Digest([2; 32]), Digest([9; 32])];
        assert_eq!(a.root, hex::encode(merkle_root(&in_order).0));
        assert_eq!(a.key_id, tally_proto::keys::key_id(&[b'a'; 32]));
        let b = by_id("agt_b");
        assert_eq!((b.first_seq, b.last_seq, b.reports), (4, 5, 2));
        // Totals never wrap.
        let huge = vec![
            rep("agt_a", 1, oct, &[("api.convert", u64::MAX)]),
            rep("agt_a", 2, oct + 1, &[("api.convert", 1)]),
        ];
        assert!(closed_statement(&f, &huge).is_err());
    }

    #[test]
    fn adjustments_group_by_metric_and_origin() {
        let nov = month(10);
        let late = vec![
            rep("a", 1, month(8), &[("x", 2)]),
            rep("a", 2, month(9), &[("x", 3)]),
            rep("a", 3, month(9) + 1, &[("x", 4), ("y", 1)]),
        ];
        let got = adjustments(nov, &late).unwrap();
        let adj = |m: &str, p: &str, q: u64| Adjustment {
            metric: m.into(),
            period: p.into(),
            quantity: q,
        };
        assert_eq!(
            got,
            vec![
                adj("x", "2026-09", 2),
                adj("x", "2026-10", 7),
                adj("y", "2026-10", 1)
            ]
        );
    }
}

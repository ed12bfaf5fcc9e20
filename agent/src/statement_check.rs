//! Checking a closed statement's line for this agent against the reports and receipts the
//! agent holds: a pure function over plain data (no store, no clock, no network), so that
//! every rule is pinned by the table tests below. `commands::statements` loads the data and
//! prints the result.
//!
//! The rules (B: the seqs the bill counts; E: the seqs my receipts say it should count):
//! - B is the union of the line's `seqs` ranges (empty without a line).
//! - E is every report whose window starts in the period and whose receipt is `ACCEPTED`
//!   with `received_at` before `closed_at`, plus every report of B whose window starts
//!   before the period and whose receipt is `ACCEPTED` before `closed_at` (a late report,
//!   counted here as an adjustment of a month that was already closed).
//! - Each seq of B \ E is billed without an `ACCEPTED` receipt (saying what I hold for it);
//!   each seq of E \ B is receipted `ACCEPTED` but missing from the bill.
//! - Reports of the period receipted `ACCEPTED` at or after `closed_at` and not in B are a
//!   note: they belong on a later statement's adjustments.
//! - Quantities per metric (my sums over E against the line's) are always compared; the
//!   report count, first and last seq and the Merkle root only when B = E (otherwise the
//!   seq differences already imply them).

use crate::store::HeldReport;
use std::collections::BTreeMap;
use std::fmt;
use tally_proto::Digest;
use tally_proto::receipt::Outcome;
use tally_proto::statement::{AgentLine, merkle_root};

/// The statement's period and close, as Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// First second of the month (UTC).
    pub start: i64,
    /// First second of the next month: the period is `start..end`.
    pub end: i64,
    /// When the month was closed, Unix microseconds (receipt times are compared with it at
    /// that precision): receipts from then on count on a later statement.
    pub closed_at: i64,
}

impl Period {
    /// The period of a `YYYY-MM` month (UTC) closed at `closed_at`; `None` if `month` is
    /// not exactly `YYYY-MM`.
    pub fn of_month(month: &str, closed_at: i64) -> Option<Period> {
        let (y, m) = month.split_once('-')?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
        let first = |y: i32, m: u32| {
            chrono::NaiveDate::from_ymd_opt(y, m, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().timestamp())
        };
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        Some(Period {
            start: first(y, m)?,
            end: first(ny, nm)?,
            closed_at,
        })
    }
}

/// What I hold for a seq that the bill counts but that is not in my expected set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// No report with this seq (a range: none of these seqs).
    Nothing,
    /// The report, but no receipt for it.
    NoReceipt { digest: Digest },
    /// A receipt with another outcome than `ACCEPTED`.
    Outcome { digest: Digest, outcome: Outcome },
    /// Receipted `ACCEPTED`, but its window starts in a later month than the period.
    LaterMonth { digest: Digest, window_start: i64 },
    /// Receipted `ACCEPTED` at or after the close.
    AfterClose { digest: Digest, received_at: i64 },
}

/// One way the line differs from my receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// Seqs `from..=to` are counted by the vendor but never receipted `ACCEPTED` to me (for
    /// this period).
    Billed { from: u64, to: u64, held: Held },
    /// Receipted `ACCEPTED` (for this period) but missing from the bill.
    Missing {
        seq: u64,
        digest: Digest,
        received_at: i64,
    },
    /// Per metric: the bill's sum and mine (`None`: the sum overflows a u64).
    Quantity {
        metric: String,
        bill: Option<u64>,
        mine: Option<u64>,
    },
    /// The line's `reports` count against the number of reports I expect.
    Reports { bill: u64, mine: u64 },
    /// The line's `first_seq` against my first expected seq.
    FirstSeq { bill: u64, mine: u64 },
    /// The line's `last_seq` against my last expected seq.
    LastSeq { bill: u64, mine: u64 },
    /// The line's Merkle root against the one over my expected reports' digests. `alone`:
    /// nothing else differs, so the digests themselves are not those I sent.
    Root {
        bill: String,
        mine: String,
        alone: bool,
    },
    /// A `seqs` range whose start is after its end (the line is malformed).
    ReversedRange { from: u64, to: u64 },
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub differences: Vec<Difference>,
    /// The seqs I expect on the line (E), ascending.
    pub expected: Vec<u64>,
    /// Reports of the period receipted `ACCEPTED` at or after the close, not on the bill.
    pub after_close: u64,
    /// Reports of earlier months counted here as adjustments (in B and in E).
    pub adjustments: u64,
    /// The statement has no line for this agent.
    pub no_line: bool,
}

impl Check {
    pub fn matches(&self) -> bool {
        self.differences.is_empty()
    }

    /// Lines worth telling even when everything matches.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.no_line {
            notes.push("the statement has no line for this agent".to_string());
        }
        if self.adjustments > 0 {
            notes.push(format!(
                "{} counted here as adjustments (window in an earlier, already closed month)",
                plural(self.adjustments, "late report is", "late reports are")
            ));
        }
        if self.after_close > 0 {
            notes.push(format!(
                "{} after the close; they belong on a later statement's adjustments",
                plural(self.after_close, "report arrived", "reports arrived")
            ));
        }
        notes
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(tally_proto::time::rfc3339)
        .unwrap_or_else(|| format!("@{secs}"))
}

/// A receipt or close time (Unix microseconds) as RFC 3339 with microseconds.
fn rfc3339_us(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(tally_proto::time::rfc3339_micros)
        .unwrap_or_else(|| format!("@{micros}us"))
}

fn seqs(from: u64, to: u64) -> String {
    if from == to {
        format!("seq {from}")
    } else {
        format!("seqs {from}..{to}")
    }
}

fn figure(v: Option<u64>) -> String {
    v.map_or_else(|| "a sum that overflows u64".to_string(), |v| v.to_string())
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const BILLED: &str = "counted by the vendor but never receipted ACCEPTED to me";
        match self {
            Difference::Billed { from, to, held } => {
                let s = seqs(*from, *to);
                match held {
                    Held::Nothing => write!(f, "{s}: {BILLED}: I hold no such report"),
                    Held::NoReceipt { digest } => write!(
                        f,
                        "{s} (digest {digest}): {BILLED}: I hold the report but no receipt for it"
                    ),
                    Held::Outcome { digest, outcome } => {
                        let why = match outcome {
                            Outcome::Quarantined => " (the vendor released it after review?)",
                            Outcome::Duplicate => {
                                " (a resend of a report the collector had quarantined: released after review?)"
                            }
                            _ => "",
                        };
                        write!(
                            f,
                            "{s} (digest {digest}): {BILLED}: my receipt says {}{why}",
                            outcome.as_str().to_uppercase()
                        )
                    }
                    Held::LaterMonth {
                        digest,
                        window_start,
                    } => write!(
                        f,
                        "{s} (digest {digest}): {BILLED} for this period: its window starts {}, in a later month",
                        rfc3339(*window_start)
                    ),
                    Held::AfterClose {
                        digest,
                        received_at,
                    } => write!(
                        f,
                        "{s} (digest {digest}): {BILLED} before the close: my receipt is from {}, after the close",
                        rfc3339_us(*received_at)
                    ),
                }
            }
            Difference::Missing {
                seq,
                digest,
                received_at,
            } => write!(
                f,
                "seq {seq} (digest {digest}): receipted ACCEPTED at {} but missing from the bill",
                rfc3339_us(*received_at)
            ),
            Difference::Quantity { metric, bill, mine } => write!(
                f,
                "metric {metric}: the bill counts {}, my receipts count {}",
                figure(*bill),
                figure(*mine)
            ),
            Difference::Reports { bill, mine } => write!(
                f,
                "reports: the bill counts {bill}, my receipts count {mine}"
            ),
            Difference::FirstSeq { bill, mine } => {
                write!(f, "first seq: the bill says {bill}, my receipts say {mine}")
            }
            Difference::LastSeq { bill, mine } => {
                write!(f, "last seq: the bill says {bill}, my receipts say {mine}")
            }
            Difference::Root { bill, mine, alone } => {
                write!(
                    f,
                    "Merkle root: the bill has {bill}, my receipts give {mine}"
                )?;
                if *alone {
                    write!(
                        f,
                        " (the digests the bill counts are not the reports I sent)"
                    )?;
                }
                Ok(())
            }
            Difference::ReversedRange { from, to } => write!(
                f,
                "seqs [{from}, {to}]: the line lists a range whose start is after its end"
            ),
        }
    }
}

impl Held {
    /// A short, stable name for `--json`.
    pub fn kind(&self) -> String {
        match self {
            Held::Nothing => "no_report".into(),
            Held::NoReceipt { .. } => "no_receipt".into(),
            Held::Outcome { outcome, .. } => outcome.as_str().into(),
            Held::LaterMonth { .. } => "later_month".into(),
            Held::AfterClose { .. } => "after_close".into(),
        }
    }

    fn digest(&self) -> Option<Digest> {
        match self {
            Held::Nothing => None,
            Held::NoReceipt { digest }
            | Held::Outcome { digest, .. }
            | Held::LaterMonth { digest, .. }
            | Held::AfterClose { digest, .. } => Some(*digest),
        }
    }
}

impl Difference {
    /// The difference as one JSON object for `--json`: `kind`, `message` (the text line)
    /// and the fields it names.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let mut v = match self {
            Difference::Billed { from, to, held } => json!({
                "from_seq": from, "to_seq": to, "held": held.kind(),
                "digest": held.digest().map(|d| d.to_hex()),
            }),
            Difference::Missing {
                seq,
                digest,
                received_at,
            } => {
                json!({"seq": seq, "digest": digest.to_hex(), "received_at": rfc3339_us(*received_at)})
            }
            Difference::Quantity { metric, bill, mine } => {
                json!({"metric": metric, "bill": bill, "mine": mine})
            }
            Difference::Reports { bill, mine }
            | Difference::FirstSeq { bill, mine }
            | Difference::LastSeq { bill, mine } => json!({"bill": bill, "mine": mine}),
            Difference::Root { bill, mine, .. } => json!({"bill": bill, "mine": mine}),
            Difference::ReversedRange { from, to } => json!({"from_seq": from, "to_seq": to}),
        };
        v["kind"] = json!(self.kind());
        v["message"] = json!(self.to_string());
        v
    }

    /// A short, stable name for `--json`.
    pub fn kind(&self) -> &'static str {
        match self {
            Difference::Billed { .. } => "billed_without_receipt",
            Difference::Missing { .. } => "missing_from_bill",
            Difference::Quantity { .. } => "quantity",
            Difference::Reports { .. } => "reports",
            Difference::FirstSeq { .. } => "first_seq",
            Difference::LastSeq { .. } => "last_seq",
            Difference::Root { .. } => "root",
            Difference::ReversedRange { .. } => "reversed_range",
        }
    }
}

/// Sorted, merged, well-formed ranges of `line.seqs`; reversed ones are differences.
fn bill_ranges(line: Option<&AgentLine>, differences: &mut Vec<Difference>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &(from, to) in line.map_or(&[][..], |l| l.seqs.as_slice()) {
        if from > to {
            differences.push(Difference::ReversedRange { from, to });
        } else {
            ranges.push((from, to));
        }
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (from, to) in ranges {
        match merged.last_mut() {
            Some((_, last)) if from <= last.saturating_add(1) => *last = (*last).max(to),
            _ => merged.push((from, to)),
        }
    }
    merged
}

/// Whether `seq` is in the sorted, merged `ranges`.
fn in_bill(ranges: &[(u64, u64)], seq: u64) -> bool {
    let i = ranges.partition_point(|&(_, to)| to < seq);
    ranges.get(i).is_some_and(|&(from, _)| from <= seq)
}

/// Compares the statement's line for this agent (`None`: the statement has none) with the
/// reports the agent holds (`held`: at least those whose window starts in the period and
/// those whose seq the line counts; others are ignored).
pub fn check(period: Period, line: Option<&AgentLine>, held: &[HeldReport]) -> Check {
    let mut differences = Vec::new();
    let bill = bill_ranges(line, &mut differences);
    let in_period = |r: &HeldReport| period.start <= r.window_start && r.window_start < period.end;
    // A DUPLICATE receipt (its ACCEPTED one was lost) carries the time of the resend, not
    // of the acceptance: when the bill counts the report, that is expected; when it does
    // not, the report may have been accepted after the close, so it is a note, not a
    // difference (see the loop below).
    let accepted_before_close = |r: &HeldReport| {
        r.receipt.as_ref().is_some_and(|rc| {
            rc.counted
                && (rc.received_at < period.closed_at
                    || (rc.outcome == Outcome::Duplicate && in_bill(&bill, r.seq)))
        })
    };
    let by_seq: BTreeMap<u64, &HeldReport> = held.iter().map(|r| (r.seq, r)).collect();

    // E (a report of the period receipted ACCEPTED before the close, or a late report of
    // an earlier month that the bill counts and I had receipted before the close), and the
    // notes.
    let is_expected = |r: &HeldReport| {
        accepted_before_close(r)
            && (in_period(r) || r.window_start < period.start && in_bill(&bill, r.seq))
    };
    let (mut after_close, mut adjustments) = (0, 0);
    let mut expected: Vec<&HeldReport> = Vec::new();
    for r in by_seq.values().copied() {
        if is_expected(r) {
            expected.push(r);
            if !in_period(r) {
                adjustments += 1;
            }
        } else if in_period(r)
            && !in_bill(&bill, r.seq)
            && r.receipt.as_ref().is_some_and(|rc| rc.counted)
        {
            after_close += 1;
        }
    }

    // B \ E, range by range: runs of seqs I do not hold are one difference.
    for &(from, to) in &bill {
        let mut next = Some(from); // the first seq of the range not yet looked at
        for (&seq, r) in by_seq.range(from..=to) {
            if let Some(n) = next
                && n < seq
            {
                differences.push(Difference::Billed {
                    from: n,
                    to: seq - 1,
                    held: Held::Nothing,
                });
            }
            next = seq.checked_add(1).filter(|&n| n <= to);
            if is_expected(r) {
                continue;
            }
            let digest = r.digest;
            let held = match &r.receipt {
                None => Held::NoReceipt { digest },
                Some(rc) if !rc.counted => Held::Outcome {
                    digest,
                    outcome: rc.outcome,
                },
                Some(_) if r.window_start >= period.end => Held::LaterMonth {
                    digest,
                    window_start: r.window_start,
                },
                Some(rc) => Held::AfterClose {
                    digest,
                    received_at: rc.received_at,
                },
            };
            differences.push(Difference::Billed {
                from: seq,
                to: seq,
                held,
            });
        }
        if let Some(n) = next {
            differences.push(Difference::Billed {
                from: n,
                to,
                held: Held::Nothing,
            });
        }
    }

    // E \ B.
    for r in &expected {
        if !in_bill(&bill, r.seq) {
            differences.push(Difference::Missing {
                seq: r.seq,
                digest: r.digest,
                received_at: r.receipt.as_ref().map_or(0, |rc| rc.received_at),
            });
        }
    }
    let seqs_differ = !differences.is_empty();

    // Quantities, always: my sums over E against the line's (a missing metric is 0).
    let mut sums: BTreeMap<&str, (Option<u64>, Option<u64>)> = BTreeMap::new();
    let add = |slot: &mut Option<u64>, q: u64| *slot = slot.and_then(|s| s.checked_add(q));
    for q in line.map_or(&[][..], |l| l.quantities.as_slice()) {
        add(
            &mut sums.entry(&q.metric).or_insert((Some(0), Some(0))).0,
            q.quantity,
        );
    }
    for r in &expected {
        for (metric, q) in &r.counters {
            add(&mut sums.entry(metric).or_insert((Some(0), Some(0))).1, *q);
        }
    }
    for (metric, (bill, mine)) in sums {
        if bill != mine || bill.is_none() {
            differences.push(Difference::Quantity {
                metric: metric.to_string(),
                bill,
                mine,
            });
        }
    }

    // Count, first and last seq and root only when the seqs agree (else they are implied).
    if let Some(line) = line
        && !seqs_differ
    {
        let mine = expected.len() as u64;
        if line.reports != mine {
            differences.push(Difference::Reports {
                bill: line.reports,
                mine,
            });
        }
        if let (Some(first), Some(last)) = (expected.first(), expected.last()) {
            if line.first_seq != first.seq {
                differences.push(Difference::FirstSeq {
                    bill: line.first_seq,
                    mine: first.seq,
                });
            }
            if line.last_seq != last.seq {
                differences.push(Difference::LastSeq {
                    bill: line.last_seq,
                    mine: last.seq,
                });
            }
        }
        let digests: Vec<Digest> = expected.iter().map(|r| r.digest).collect();
        let mine = merkle_root(&digests).to_hex();
        if !line.root.eq_ignore_ascii_case(&mine) {
            let alone = differences.is_empty();
            differences.push(Difference::Root {
                bill: line.root.clone(),
                mine,
                alone,
            });
        }
    }

    Check {
        differences,
        expected: expected.iter().map(|r| r.seq).collect(),
        after_close,
        adjustments,
        no_line: line.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HeldReceipt;
    use tally_proto::statement::{Quantity, seq_ranges};

    const START: i64 = 1_790_812_800; // 2026-10-01T00:00:00Z
    const END: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z
    const CLOSED: i64 = END + 3 * 86_400;
    const HOUR: i64 = 3600;
    /// Receipt and close times are in microseconds.
    const US: i64 = 1_000_000;
    const PERIOD: Period = Period {
        start: START,
        end: END,
        closed_at: CLOSED * US,
    };

    fn d(seq: u64) -> Digest {
        Digest([seq as u8; 32])
    }

    /// Report `seq` with a window starting at `window_start`, `qty` of `api.convert`,
    /// receipted ACCEPTED an hour after its window.
    fn rep(seq: u64, window_start: i64, qty: u64) -> HeldReport {
        HeldReport {
            seq,
            digest: d(seq),
            window_start,
            counters: vec![("api.convert".into(), qty)],
            receipt: Some(HeldReceipt {
                outcome: Outcome::Accepted,
                received_at: (window_start + 2 * HOUR) * US,
                counted: true,
            }),
        }
    }

    /// Reports 1..=4 in October, 10 api.convert each.
    fn october() -> Vec<HeldReport> {
        (1..=4)
            .map(|s| rep(s, START + s as i64 * HOUR, 10))
            .collect()
    }

    /// The honest line over `reports` (seqs, sums, root), as the collector would make it.
    fn line_for(reports: &[HeldReport]) -> AgentLine {
        let seqs: Vec<u64> = reports.iter().map(|r| r.seq).collect();
        let mut q: BTreeMap<String, u64> = BTreeMap::new();
        for r in reports {
            for (m, n) in &r.counters {
                *q.entry(m.clone()).or_default() += n;
            }
        }
        AgentLine {
            agent_id: "agt_1".into(),
            key_id: "0011223344556677".into(),
            key_ids: Vec::new(),
            license_id: "lic_1".into(),
            first_seq: seqs.first().copied().unwrap_or(0),
            last_seq: seqs.last().copied().unwrap_or(0),
            reports: seqs.len() as u64,
            seqs: seq_ranges(&seqs),
            quantities: q
                .into_iter()
                .map(|(metric, quantity)| Quantity { metric, quantity })
                .collect(),
            root: merkle_root(&reports.iter().map(|r| r.digest).collect::<Vec<_>>()).to_hex(),
        }
    }

    fn texts(c: &Check) -> Vec<String> {
        c.differences.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn months_are_utc_calendar_months() {
        assert_eq!(Period::of_month("2026-10", CLOSED * US), Some(PERIOD));
        let dec = Period::of_month("2026-12", 0).unwrap();
        assert_eq!(dec.end - dec.start, 31 * 86_400);
        let feb = Period::of_month("2028-02", 0).unwrap();
        assert_eq!(feb.end - feb.start, 29 * 86_400);
        for bad in [
            "2026-13",
            "2026-00",
            "2026-1",
            "26-10",
            "2026-10-01",
            "+202-10",
            "",
        ] {
            assert_eq!(Period::of_month(bad, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn an_honest_line_matches() {
        let held = october();
        let c = check(PERIOD, Some(&line_for(&held)), &held);
        assert!(c.matches(), "{:?}", texts(&c));
        assert_eq!(c.expected, vec![1, 2, 3, 4]);
        assert!(c.notes().is_empty());
    }

    #[test]
    fn a_report_dropped_from_the_bill_is_named() {
        let held = october();
        let billed: Vec<HeldReport> = held.iter().filter(|r| r.seq != 3).cloned().collect();
        let c = check(PERIOD, Some(&line_for(&billed)), &held);
        assert_eq!(
            c.differences,
            vec![
                Difference::Missing {
                    seq: 3,
                    digest: d(3),
                    received_at: (START + 5 * HOUR) * US,
                },
                Difference::Quantity {
                    metric: "api.convert".into(),
                    bill: Some(30),
                    mine: Some(40),
                },
            ]
        );
        let t = texts(&c);
        assert!(
            t[0].starts_with(&format!("seq 3 (digest {}): receipted ACCEPTED", d(3)))
                && t[0].ends_with("but missing from the bill"),
            "{t:?}"
        );
        assert_eq!(
            t[1],
            "metric api.convert: the bill counts 30, my receipts count 40"
        );
    }

    #[test]
    fn a_duplicate_receipt_without_a_reason_counts_as_accepted() {
        // The first (ACCEPTED) receipt was lost; the resend was answered DUPLICATE with no
        // reason: the report is counted, and the honest bill matches.
        let mut held = october();
        held[1].receipt = Some(HeldReceipt {
            outcome: Outcome::Duplicate,
            received_at: (START + 5 * HOUR) * US,
            counted: true,
        });
        let c = check(PERIOD, Some(&line_for(&held)), &held);
        assert!(c.matches(), "{:?}", texts(&c));
        assert_eq!(c.expected, vec![1, 2, 3, 4]);
        // The resend came after the close: its time says nothing of when it was accepted.
        // On the bill: it matches; not on it: a note (it may be a later adjustment).
        held[1].receipt.as_mut().unwrap().received_at = (CLOSED + 60) * US;
        let c = check(PERIOD, Some(&line_for(&held)), &held);
        assert!(c.matches(), "{:?}", texts(&c));
        let billed: Vec<HeldReport> = held.iter().filter(|r| r.seq != 2).cloned().collect();
        let c = check(PERIOD, Some(&line_for(&billed)), &held);
        assert!(c.matches(), "{:?}", texts(&c));
        assert_eq!(c.after_close, 1);
    }

    #[test]
    fn a_billed_report_without_an_accepted_receipt_is_named_with_what_i_hold() {
        let mut held = october();
        held[1].receipt = Some(HeldReceipt {
            outcome: Outcome::Quarantined,
            received_at: (START + 4 * HOUR) * US,
            counted: false,
        });
        held[2].receipt = None;
        // Seq 5: receipted ACCEPTED, but after the close; seq 6: window in November (its
        // first second).
        let mut late = rep(5, START + 10 * HOUR, 1);
        late.receipt.as_mut().unwrap().received_at = (CLOSED + 1) * US;
        held.push(late);
        held.push(rep(6, END, 1));
        // The bill counts seqs 1..=8; I hold no 7 or 8.
        let mut bill = line_for(&held);
        bill.seqs = vec![(1, 8)];
        let c = check(PERIOD, Some(&bill), &held);
        let billed: Vec<_> = c
            .differences
            .iter()
            .filter_map(|x| match x {
                Difference::Billed { from, to, held } => Some((*from, *to, held.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            billed,
            vec![
                (
                    2,
                    2,
                    Held::Outcome {
                        digest: d(2),
                        outcome: Outcome::Quarantined
                    }
                ),
                (3, 3, Held::NoReceipt { digest: d(3) }),
                (
                    5,
                    5,
                    Held::AfterClose {
                        digest: d(5),
                        received_at: (CLOSED + 1) * US
                    }
                ),
                (
                    6,
                    6,
                    Held::LaterMonth {
                        digest: d(6),
                        window_start: END
                    }
                ),
                (7, 8, Held::Nothing),
            ]
        );
        let t = texts(&c);
        assert!(
            t[0].contains("seq 2 (digest")
                && t[0].contains("never receipted ACCEPTED to me")
                && t[0].contains("QUARANTINED (the vendor released it after review?)"),
            "{t:?}"
        );
        assert!(t[1].contains("no receipt"), "{t:?}");
        assert!(t[2].contains("after the close"), "{t:?}");
        assert!(t[3].contains("in a later month"), "{t:?}");
        assert_eq!(
            t[4],
            "seqs 7..8: counted by the vendor but never receipted ACCEPTED to me: I hold no such report"
        );
    }

    #[test]
    fn a_changed_quantity_names_the_metric_with_both_figures() {
        let held = october();
        let mut bill = line_for(&held);
        bill.quantities[0].quantity = 41;
        let c = check(PERIOD, Some(&bill), &held);
        assert_eq!(
            texts(&c),
            vec!["metric api.convert: the bill counts 41, my receipts count 40"]
        );
    }

    #[test]
    fn a_metric_only_the_bill_has_is_named_against_zero() {
        let held = october();
        let mut bill = line_for(&held);
        bill.quantities.push(Quantity {
            metric: "api.render".into(),
            quantity: 7,
        });
        let c = check(PERIOD, Some(&bill), &held);
        assert_eq!(
            texts(&c),
            vec!["metric api.render: the bill counts 7, my receipts count 0"]
        );
    }

    #[test]
    fn another_root_over_the_same_seqs_is_the_digests() {
        let held = october();
        let mut bill = line_for(&held);
        bill.root = merkle_root(&[d(9), d(2), d(3), d(4)]).to_hex();
        let c = check(PERIOD, Some(&bill), &held);
        assert_eq!(c.differences.len(), 1, "{:?}", texts(&c));
        assert!(matches!(
            c.differences[0],
            Difference::Root { alone: true, .. }
        ));
        assert!(texts(&c)[0].ends_with("(the digests the bill counts are not the reports I sent)"));
    }

    #[test]
    fn count_and_seq_bounds_are_checked_when_the_seqs_agree() {
        let held = october();
        let mut bill = line_for(&held);
        bill.reports = 5;
        bill.first_seq = 0;
        bill.last_seq = 9;
        let c = check(PERIOD, Some(&bill), &held);
        assert_eq!(
            c.differences,
            vec![
                Difference::Reports { bill: 5, mine: 4 },
                Difference::FirstSeq { bill: 0, mine: 1 },
                Difference::LastSeq { bill: 9, mine: 4 },
            ]
        );
    }

    #[test]
    fn a_late_report_adjusted_into_this_month_is_fine() {
        let mut held = october();
        // Seq 5's window is in September, it reached the collector in October, after
        // September had closed: it counts here.
        held.push(rep(5, START - 2 * HOUR, 3));
        held[4].receipt.as_mut().unwrap().received_at = (START + 20 * HOUR) * US;
        let c = check(PERIOD, Some(&line_for(&held)), &held);
        assert!(c.matches(), "{:?}", texts(&c));
        assert_eq!(c.expected, vec![1, 2, 3, 4, 5]);
        assert_eq!(c.adjustments, 1);
        // A September report the bill does not count is not mine to expect here.
        let c = check(PERIOD, Some(&line_for(&held[..4])), &held);
        assert!(c.matches(), "{:?}", texts(&c));
    }

    #[test]
    fn a_report_receipted_after_the_close_is_a_note() {
        let mut held = october();
        held[3].receipt.as_mut().unwrap().received_at = (CLOSED) * US;
        let c = check(PERIOD, Some(&line_for(&held[..3])), &held);
        assert!(c.matches(), "{:?}", texts(&c));
        assert_eq!(c.after_close, 1);
        assert_eq!(
            c.notes(),
            vec![
                "1 report arrived after the close; they belong on a later statement's adjustments"
            ]
        );
    }

    #[test]
    fn no_line_while_i_hold_accepted_reports_names_each() {
        let held = october();
        let c = check(PERIOD, None, &held);
        let missing: Vec<u64> = c
            .differences
            .iter()
            .filter_map(|x| match x {
                Difference::Missing { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(missing, vec![1, 2, 3, 4]);
        assert!(c.differences.contains(&Difference::Quantity {
            metric: "api.convert".into(),
            bill: Some(0),
            mine: Some(40),
        }));
        assert!(c.no_line);
        // No line and nothing receipted for the period: nothing to differ.
        assert!(check(PERIOD, None, &[rep(1, END, 1)]).matches());
    }

    #[test]
    fn an_overflowing_sum_is_a_difference() {
        let held = vec![rep(1, START, u64::MAX), rep(2, START + HOUR, 1)];
        let mut bill = line_for(&held[..1]);
        bill.seqs = vec![(1, 2)];
        bill.reports = 2;
        bill.last_seq = 2;
        bill.root = merkle_root(&[d(1), d(2)]).to_hex();
        let c = check(PERIOD, Some(&bill), &held);
        assert_eq!(
            c.differences,
            vec![Difference::Quantity {
                metric: "api.convert".into(),
                bill: Some(u64::MAX),
                mine: None,
            }]
        );
        assert_eq!(
            texts(&c),
            vec![
                "metric api.convert: the bill counts 18446744073709551615, my receipts count a sum that overflows u64"
            ]
        );
    }

    #[test]
    fn huge_or_odd_ranges_cost_nothing_and_are_named() {
        let held = october();
        let mut bill = line_for(&held);
        // (2, 3) lies inside (1, 4); (3, 2) is reversed; (5, MAX) is all but endless.
        bill.seqs = vec![(1, 4), (2, 3), (3, 2), (5, u64::MAX)];
        let c = check(PERIOD, Some(&bill), &held);
        assert_eq!(
            c.differences,
            vec![
                Difference::ReversedRange { from: 3, to: 2 },
                Difference::Billed {
                    from: 5,
                    to: u64::MAX,
                    held: Held::Nothing
                },
            ]
        );
    }
}

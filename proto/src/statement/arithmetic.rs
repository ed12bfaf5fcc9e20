//! A closed statement's internal consistency: what every verifier (the collector's
//! `statements verify`, the agent's `statements verify` and the customer's `statements
//! audit`) checks after the signature, so a statement the vendor edited and re-signed
//! cannot bill more than its own agent lines add up to.
//!
//! The rules (`docs/protocol.md` §10):
//! 1. `lines` are sorted by metric, one per metric; each `overage` is
//!    `max(0, used − limit)` (0 when `limit` is null).
//! 2. `adjustments` are sorted by (metric, period), one per pair, each with a quantity of at
//!    least 1 and a period (`YYYY-MM`) before the statement's own.
//! 3. `agents` are sorted by key id, one per key id. Each line's `seqs` are ascending,
//!    disjoint, non-adjacent inclusive ranges; `first_seq` and `last_seq` are their ends;
//!    `reports` is how many seqs they hold; `quantities` are sorted by metric, one per
//!    metric, each at least 1; `root` is 64 lowercase hex characters. A line's `key_ids`,
//!    when present, hold at least two ids, each once, the last being its `key_id`; no key
//!    id appears on two lines.
//! 4. For every metric: `used` (0 without a line) plus that metric's adjustments equals the
//!    sum of the agent lines' quantities of it. Every sum is checked for overflow.

use super::Statement;
use std::collections::BTreeMap;

/// Every inconsistency in `s`, each named in words; empty when it is consistent.
pub fn inconsistencies(s: &Statement) -> Vec<String> {
    let mut out = Vec::new();
    lines(s, &mut out);
    adjustments(s, &mut out);
    agents(s, &mut out);
    totals(s, &mut out);
    out
}

fn lines(s: &Statement, out: &mut Vec<String>) {
    for w in s.lines.windows(2) {
        if w[0].metric >= w[1].metric {
            out.push(format!(
                "lines are not sorted and unique by metric ({} before {})",
                w[0].metric, w[1].metric
            ));
        }
    }
    for l in &s.lines {
        let want = l.limit.map_or(0, |limit| l.used.saturating_sub(limit));
        if l.overage != want {
            out.push(format!(
                "line {}: overage {} but used {} and limit {} make {want}",
                l.metric,
                l.overage,
                l.used,
                l.limit.map_or("unlimited".to_string(), |q| q.to_string())
            ));
        }
    }
}

/// `YYYY-MM` as (year, month), if it is one.
fn month(label: &str) -> Option<(u32, u32)> {
    let (y, m) = label.split_once('-')?;
    if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m) = (y.parse().ok()?, m.parse().ok()?);
    (1..=12).contains(&m).then_some((y, m))
}

fn adjustments(s: &Statement, out: &mut Vec<String>) {
    let own = month(&s.period);
    if own.is_none() {
        out.push(format!("period {:?} is not YYYY-MM", s.period));
    }
    for w in s.adjustments.windows(2) {
        if (&w[0].metric, &w[0].period) >= (&w[1].metric, &w[1].period) {
            out.push(format!(
                "adjustments are not sorted and unique by metric and period ({} {} before {} {})",
                w[0].metric, w[0].period, w[1].metric, w[1].period
            ));
        }
    }
    for a in &s.adjustments {
        if a.quantity == 0 {
            out.push(format!(
                "adjustment {} of {}: quantity 0",
                a.metric, a.period
            ));
        }
        match (month(&a.period), own) {
            (None, _) => out.push(format!(
                "adjustment {}: period {:?} is not YYYY-MM",
                a.metric, a.period
            )),
            (Some(p), Some(own)) if p >= own => out.push(format!(
                "adjustment {} names {}, which is not before the statement's period {}",
                a.metric, a.period, s.period
            )),
            _ => {}
        }
    }
}

fn agents(s: &Statement, out: &mut Vec<String>) {
    for w in s.agents.windows(2) {
        if w[0].key_id >= w[1].key_id {
            out.push(format!(
                "agent lines are not sorted and unique by key id ({} before {})",
                w[0].key_id, w[1].key_id
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for a in &s.agents {
        let name = format!("agent line {}", a.key_id);
        if !a.key_ids.is_empty()
            && (a.key_ids.len() < 2
                || a.key_ids.last() != Some(&a.key_id)
                || a.key_ids
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    != a.key_ids.len())
        {
            out.push(format!(
                "{name}: key_ids {:?} must name two or more keys once each, ending with key_id",
                a.key_ids
            ));
        }
        for k in a.signing_key_ids() {
            if !seen.insert(k) {
                out.push(format!("key id {k} appears on two agent lines"));
            }
        }
        let mut count: u64 = 0;
        let mut prev: Option<u64> = None;
        for &(from, to) in &a.seqs {
            if from > to {
                out.push(format!("{name}: seq range [{from}, {to}] is reversed"));
            }
            if let Some(p) = prev
                && p.checked_add(1).is_none_or(|next| from <= next)
            {
                out.push(format!(
                    "{name}: seq range [{from}, {to}] overlaps or touches the one before"
                ));
            }
            prev = Some(to);
            count = count.saturating_add(to.saturating_sub(from).saturating_add(1));
        }
        match (a.seqs.first(), a.seqs.last()) {
            (Some(&(first, _)), Some(&(_, last))) => {
                if a.first_seq != first || a.last_seq != last {
                    out.push(format!(
                        "{name}: first_seq {} and last_seq {} but the ranges span {first} to {last}",
                        a.first_seq, a.last_seq
                    ));
                }
            }
            _ => out.push(format!("{name}: no seq ranges")),
        }
        if a.reports != count {
            out.push(format!(
                "{name}: {} reports but the seq ranges hold {count}",
                a.reports
            ));
        }
        for w in a.quantities.windows(2) {
            if w[0].metric >= w[1].metric {
                out.push(format!(
                    "{name}: quantities are not sorted and unique by metric ({} before {})",
                    w[0].metric, w[1].metric
                ));
            }
        }
        for q in &a.quantities {
            if q.quantity == 0 {
                out.push(format!("{name}: quantity 0 of {}", q.metric));
            }
        }
        if a.root.len() != 64
            || !a
                .root
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            out.push(format!("{name}: root is not 64 lowercase hex characters"));
        }
    }
}

/// Adds `q` to `map[metric]`; `false` on overflow.
fn add(map: &mut BTreeMap<String, u64>, metric: &str, q: u64) -> bool {
    let e = map.entry(metric.to_string()).or_insert(0);
    match e.checked_add(q) {
        Some(v) => {
            *e = v;
            true
        }
        None => false,
    }
}

fn totals(s: &Statement, out: &mut Vec<String>) {
    let mut billed: BTreeMap<String, u64> = BTreeMap::new();
    let mut adjusted: BTreeMap<String, u64> = BTreeMap::new();
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for l in &s.lines {
        if !add(&mut billed, &l.metric, l.used) {
            out.push(format!("the used total of {} overflows 64 bits", l.metric));
        }
    }
    for a in &s.adjustments {
        if !add(&mut billed, &a.metric, a.quantity) || !add(&mut adjusted, &a.metric, a.quantity) {
            out.push(format!(
                "the billed total of {} overflows 64 bits",
                a.metric
            ));
        }
    }
    for a in &s.agents {
        for q in &a.quantities {
            if !add(&mut counted, &q.metric, q.quantity) {
                out.push(format!(
                    "the agent lines' total of {} overflows 64 bits",
                    q.metric
                ));
            }
        }
    }
    let metrics: std::collections::BTreeSet<&String> =
        billed.keys().chain(counted.keys()).collect();
    for m in metrics {
        let (b, c) = (
            billed.get(m).copied().unwrap_or(0),
            counted.get(m).copied().unwrap_or(0),
        );
        if b != c {
            let used = b.saturating_sub(adjusted.get(m).copied().unwrap_or(0));
            let adj = adjusted.get(m).copied().unwrap_or(0);
            out.push(format!(
                "{m}: used {used} + adjustments {adj} = {b}, but the agent lines count {c}"
            ));
        }
    }
}

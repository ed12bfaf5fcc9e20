//! Client-facing JSON shapes that the billing API and the CLI's `--json` both print, built
//! in one place so the two never disagree. Stores and rules never format; this does.

use crate::ingest::Verdict;
use crate::rules::{self, AgentStatus};
use crate::store::{
    AgentRecord, AgentReportRecord, AlertRecord, AnomalyRecord, AuditRecord, CustomerRecord,
    LicenseRecord, QuarantineRecord, TokenListing,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tally_proto::time::Instant;

/// An import's answer: `{"counts": {outcome: n}, "receipts": [{digest, outcome, reason,
/// detail}], "rotations": [{old_key_id, new_key_id, from_seq, outcome, detail}]}`
/// (`rotations` only when the bundle carried agent key rotations).
pub fn import_summary(verdicts: &[Verdict], rotations: &[crate::ingest::RotationVerdict]) -> Value {
    let mut counts = BTreeMap::<&str, u64>::new();
    let items: Vec<Value> = verdicts
        .iter()
        .map(|v| {
            *counts.entry(v.outcome.as_str()).or_default() += 1;
            json!({
                "digest": v.digest.to_hex(),
                "outcome": v.outcome.as_str(),
                "reason": v.reason,
                "detail": v.detail,
            })
        })
        .collect();
    let mut v = json!({"counts": counts, "receipts": items});
    if !rotations.is_empty() {
        v["rotations"] = rotations
            .iter()
            .map(|r| {
                json!({
                    "old_key_id": r.old_key_id,
                    "new_key_id": r.new_key_id,
                    "from_seq": r.from_seq,
                    "outcome": r.outcome,
                    "detail": r.detail,
                })
            })
            .collect();
    }
    v
}

/// Times as RFC 3339 (UTC, seconds).
fn time(t: Instant) -> String {
    tally_proto::time::rfc3339(t)
}

pub fn customer(c: &CustomerRecord) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "created_at": time(c.created_at),
        "cancelled_at": c.cancelled_at.map(time),
    })
}

/// A license with its status at `now`.
pub fn license(l: &LicenseRecord, now: Instant) -> Value {
    let status = rules::license_status(
        l.not_before.timestamp(),
        l.not_after.timestamp(),
        i64::try_from(l.grace_secs).unwrap_or(i64::MAX),
        l.revoked_at.is_some(),
        now.timestamp(),
    );
    json!({
        "license_id": l.license_id,
        "customer_id": l.customer_id,
        "metrics": l.metrics.iter().map(|m| json!({"metric": m.metric, "limit": m.limit})).collect::<Vec<_>>(),
        "not_before": time(l.not_before),
        "not_after": time(l.not_after),
        "grace": if l.grace_secs == 0 { "0s".to_string() } else { tally_proto::time::format_duration_secs(l.grace_secs) },
        "status": status,
        "alerts": l.alerts,
    })
}

/// One report of an agent's history.
pub fn agent_report(r: &AgentReportRecord) -> Value {
    json!({
        "seq": r.seq,
        "digest": r.digest.to_hex(),
        "fork": r.fork,
        "window_start": time(r.window_start),
        "window_end": time(r.window_end),
        "received_at": time(r.received_at),
        "status": r.status,
        "reason": r.reason,
        // What the report counted, from its signed bytes; null once retention removed them.
        "counters": (!r.bytes.is_empty()).then(|| {
            tally_proto::report::Report::decode(&r.bytes)
                .map(|rep| {
                    rep.counters
                        .iter()
                        .map(|c| json!({"metric": c.metric, "quantity": c.quantity}))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }),
    })
}

/// A usage alert (a threshold crossing).
pub fn alert(a: &AlertRecord) -> Value {
    json!({
        "id": a.id,
        "customer": a.customer_id,
        "license": a.license_id,
        "metric": a.metric,
        "period": crate::calendar::month_label(a.month),
        "threshold_percent": a.percent,
        "used": a.used,
        "limit": a.limit,
        "crossed_at": time(a.crossed_at),
        "delivered_at": a.delivered_at.map(time),
    })
}

/// An agent with its status (`rules::agent_status`).
pub fn agent(a: &AgentRecord, status: AgentStatus) -> Value {
    json!({
        "agent_id": a.agent_id,
        // The id the customer knows its agent by (`tally-agent status`), as on statements.
        "key_id": tally_proto::keys::key_id(&a.key),
        "key": hex::encode(a.key),
        "license_id": a.license_id,
        "customer_id": a.customer_id,
        "status": status.as_str(),
        "last_seq": a.last_seq,
        "last_seen": a.last_seen.map(time),
    })
}

/// Agents with their status at `now`, keeping those `only` names (all when `None`).
pub fn agents_with_status(
    agents: Vec<AgentRecord>,
    now: Instant,
    silent_after_secs: i64,
    only: Option<AgentStatus>,
) -> Vec<(AgentRecord, AgentStatus)> {
    agents
        .into_iter()
        .map(|a| {
            let s = rules::agent_status(
                a.revoked_at.is_some(),
                a.last_seen.map(|t| t.timestamp()),
                a.enrolled_at.timestamp(),
                now.timestamp(),
                silent_after_secs,
            );
            (a, s)
        })
        .filter(|(_, s)| only.is_none_or(|o| o == *s))
        .collect()
}

pub fn token(t: &TokenListing) -> Value {
    json!({"id": t.id, "role": t.role, "name": t.name, "created_at": time(t.created_at), "revoked": t.revoked})
}

/// An audit row: `repeats` identical calls (reads grouped), the first `at`, the last
/// `last_at`.
pub fn audit(r: &AuditRecord) -> Value {
    let e = &r.entry;
    json!({
        "at": time(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "outcome": e.outcome,
        "repeats": r.repeats,
        "last_at": time(r.last_at),
    })
}

pub fn anomaly(a: &AnomalyRecord) -> Value {
    json!({
        "kind": a.kind,
        "agent_id": a.agent_id,
        "license_id": a.license_id,
        "customer_id": a.customer_id,
        "seq_from": a.seq_from,
        "seq_to": a.seq_to,
        "digest": a.digest.map(|d| d.to_hex()),
        "detail": a.detail,
        "opened_at": time(a.opened_at),
        "closed_at": a.closed_at.map(time),
    })
}

pub fn quarantined(q: &QuarantineRecord) -> Value {
    json!({
        "digest": q.digest.to_hex(),
        "agent_id": q.agent_id,
        "license_id": q.license_id,
        "customer_id": q.customer_id,
        "seq": q.seq,
        "reason": q.reason,
        "detail": q.detail,
        "received_at": time(q.received_at),
        "window_start": time(q.window_start),
        "window_end": time(q.window_end),
    })
}

/// A list of records as a JSON array.
pub fn list<T>(items: &[T], f: impl Fn(&T) -> Value) -> Value {
    Value::Array(items.iter().map(f).collect())
}

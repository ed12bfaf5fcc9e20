//! License status for the product: `active | grace | lapsed`, the lease, and credits.

use crate::agent::Agent;
use chrono::{DateTime, Utc};
use std::sync::atomic::Ordering;
use tally_proto::pb;
use tally_proto::receipt::Credit;

/// Whether the product may rely on its license now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LicenseState {
    /// Before `lease_until`, and the last delivery attempt succeeded.
    Active,
    /// Before `lease_until`, but the collector is unreachable.
    Grace,
    /// At or after `lease_until`, or the license expired or was revoked.
    Lapsed,
}

impl LicenseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LicenseState::Active => "active",
            LicenseState::Grace => "grace",
            LicenseState::Lapsed => "lapsed",
        }
    }
}

/// The license status, typed; each surface (HTTP JSON, gRPC, CLI) renders it itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseStatus {
    pub license_id: String,
    pub state: LicenseState,
    pub lease_until: Option<DateTime<Utc>>,
    pub credits: Vec<Credit>,
}

impl LicenseStatus {
    /// The JSON of `GET /v1/license` and `tally-agent license`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "license_id": self.license_id,
            "state": self.state.as_str(),
            "lease_until": self.lease_until.map(tally_proto::time::rfc3339),
            "credits": self.credits.iter().map(|c| serde_json::json!({
                "metric": c.metric, "limit": c.limit, "used": c.used,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The lease from the newest stored receipt, or (before any receipt) the one granted at
/// enrollment: enrollment time + grace, never past `not_after`.
pub fn lease_and_credits(agent: &Agent) -> (Option<DateTime<Utc>>, Vec<Credit>) {
    if let Ok(Some(raw)) = agent.store.meta("status_receipt")
        && let Ok(r) = <pb::Receipt as prost::Message>::decode(raw.as_slice())
        && let Ok(body) = agent.keys.verify_receipt(&r, None)
    {
        return (body.lease_until, body.credits);
    }
    let initial = agent
        .store
        .meta("initial_lease")
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|t| DateTime::from_timestamp(t, 0));
    let credits = agent
        .license
        .metrics
        .iter()
        .map(|m| Credit {
            metric: m.metric.clone(),
            limit: m.limit,
            used: 0,
        })
        .collect();
    (initial, credits)
}

/// `lapsed` at or after `lease_until` or past the license's end; `grace` before it while the
/// last delivery attempt failed; `active` otherwise.
pub fn license_status(agent: &Agent, now: DateTime<Utc>) -> LicenseStatus {
    let (lease, credits) = lease_and_credits(agent);
    let expired =
        now >= agent.license.not_after + chrono::Duration::seconds(agent.license.grace_secs as i64);
    let attempted = agent.stats.attempts.load(Ordering::Relaxed) > 0;
    let state = match lease {
        Some(l) if now < l && !expired => {
            if attempted && !agent.stats.last_attempt_ok.load(Ordering::Relaxed) {
                LicenseState::Grace
            } else {
                LicenseState::Active
            }
        }
        _ => LicenseState::Lapsed,
    };
    LicenseStatus {
        license_id: agent.license.license_id.clone(),
        state,
        lease_until: lease,
        credits,
    }
}

/// Delivery statistics of the running agent as JSON (`backoff_ms`: the waits chosen after
/// each failure since the last success, oldest first, at most the newest 32).
pub fn stats_json(agent: &Agent) -> serde_json::Value {
    let s = &agent.stats;
    serde_json::json!({
        "attempts": s.attempts.load(Ordering::Relaxed),
        "failures": s.failures.load(Ordering::Relaxed),
        "backoff_ms": s.waits_ms(),
        "delivered": s.delivered.load(Ordering::Relaxed),
        // RFC 3339 like every other time; null before the first success.
        "last_success": match s.last_success.load(Ordering::Relaxed) {
            0 => serde_json::Value::Null,
            t => chrono::DateTime::from_timestamp(t as i64, 0)
                .map(tally_proto::time::rfc3339)
                .into(),
        },
        // The error of the failing streak, if delivery is failing now (a success clears it).
        "last_error": s
            .last_error
            .lock()
            .ok()
            .filter(|e| !e.is_empty())
            .map(|e| e.clone()),
    })
}

/// `status` as JSON: the agent's key id and public key, reports per delivery state, the open window's counters, the reports
/// the collector did not count (and why), the license status, and (when `live`, from the
/// running agent) its delivery statistics.
pub fn status_json(agent: &Agent, live: bool) -> Result<serde_json::Value, StatusError> {
    use serde_json::json;
    let (states, open) = agent.store.summary()?;
    let reports = agent.store.reports_since(1)?;
    let not_counted: Vec<serde_json::Value> = reports
        .iter()
        .filter(|r| r.state.not_counted())
        .map(|r| json!({"seq": r.seq, "state": r.state.as_str(), "reason": r.reason, "detail": r.detail}))
        .collect();
    // Refused `unknown_agent`: kept, exported and sent again until the vendor enrolls the key.
    let waiting = reports
        .iter()
        .filter(|r| {
            r.state == crate::store::DeliveryState::Pending
                && r.reason == tally_proto::reason::Reason::UnknownAgent.as_str()
        })
        .count();
    let public = agent.signing_key().verifying_key().to_bytes();
    let history = agent.key_history()?;
    let earlier: Vec<String> = history
        .keys()
        .iter()
        .map(|(k, _)| tally_proto::keys::key_id(k))
        .filter(|id| *id != tally_proto::keys::key_id(&public))
        .collect();
    let mut v = json!({
        // How the customer lists its agents for `statements audit --agents`: this key,
        // and the keys it rotated from (a statement line may name them).
        "key_id": tally_proto::keys::key_id(&public),
        "earlier_key_ids": earlier,
        "public_key": hex::encode(public),
        "license": license_status(agent, chrono::Utc::now()).to_json(),
        "reports": states,
        "open_window": open.into_iter().map(|(m, q)| json!({"metric": m, "quantity": q})).collect::<Vec<_>>(),
        "not_counted": not_counted,
        "waiting_for_enrollment": waiting,
        // Receipts a key revoked since they arrived signed: fetch them again (docs:
        // "Rotation after a leak"); `reports verify` names each too.
        "receipts_to_refetch": agent
            .keys
            .receipts_no_longer_valid(&reports)
            .into_iter()
            .map(|(seq, why)| json!({"seq": seq, "why": why}))
            .collect::<Vec<_>>(),
    });
    if live {
        v["delivery"] = stats_json(agent);
    }
    Ok(v)
}

/// The agent's database could not be read for `status`.
pub type StatusError = crate::store::StoreError;

//! Commands that talk to the running agent (`record`, `flush`), and those that ask it first
//! and fall back to the database when none runs (`status`, `license`).

use super::{CmdResult, CommandError, Output, load};
use crate::datadir::DataDir;
use crate::running::RunningAgent;
use reqwest::Method;
use serde_json::{Value, json};

/// The running agent's answer to a GET, if one is running and answers.
async fn live(dir: &DataDir, path: &str) -> Option<Value> {
    RunningAgent::find(dir)
        .ok()?
        .call(Method::GET, path, None)
        .await
        .ok()
}

fn open(dir: &DataDir) -> Result<crate::agent::Agent, CommandError> {
    load(dir, 3600, Vec::new(), Default::default())
}

/// `record METRIC [QUANTITY] [--idempotency-key K]`, through the running agent.
pub async fn record(
    dir: &DataDir,
    metric: &str,
    quantity: u64,
    idempotency_key: Option<String>,
) -> CmdResult {
    let mut body = json!({"metric": metric, "quantity": quantity});
    if let Some(k) = idempotency_key {
        body["idempotency_key"] = json!(k);
    }
    let v = RunningAgent::find(dir)?
        .call(Method::POST, "/v1/events", Some(body))
        .await?;
    let text = format!(
        "recorded {}, already recorded {} (committed)\n",
        v["recorded"], v["duplicates"]
    );
    Ok(Output::new(v, text))
}

/// `flush`: the running agent closes its open window now.
pub async fn flush(dir: &DataDir) -> CmdResult {
    let v = RunningAgent::find(dir)?
        .call(Method::POST, "/v1/flush", None)
        .await?;
    Ok(Output::json_only(v))
}

/// `status`: from the running agent (with delivery statistics), else from the database.
pub async fn status(dir: &DataDir) -> CmdResult {
    let v = match live(dir, "/v1/status").await {
        Some(v) => v,
        None => crate::status::status_json(&open(dir)?, false).map_err(super::runtime)?,
    };
    let text = status_text(&v);
    Ok(Output::new(v, text))
}

/// `status` for a person (`--json` gives the document).
fn status_text(v: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(t) => t.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut t = format!(
        "agent key id {} (public key {})\n",
        s(&v["key_id"]),
        s(&v["public_key"])
    );
    for k in v["earlier_key_ids"].as_array().into_iter().flatten() {
        t += &format!("earlier agent key id {} (rotated from)\n", s(k));
    }
    t += &license_text(&v["license"]);
    let states: Vec<String> = v["reports"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| format!("{k} {n}")).collect())
        .unwrap_or_default();
    t += &format!(
        "reports: {}\n",
        if states.is_empty() {
            "none yet".into()
        } else {
            states.join(", ")
        }
    );
    for c in v["open_window"].as_array().into_iter().flatten() {
        t += &format!("open window: {} {}\n", s(&c["metric"]), c["quantity"]);
    }
    if v["waiting_for_enrollment"].as_u64().unwrap_or(0) > 0 {
        t += &format!(
            "waiting for enrollment: {} report(s) (the collector does not know this key yet)\n",
            v["waiting_for_enrollment"]
        );
    }
    for r in v["receipts_to_refetch"].as_array().into_iter().flatten() {
        t += &format!(
            "receipt to fetch again: seq {}: {}\n",
            r["seq"],
            s(&r["why"])
        );
    }
    for r in v["not_counted"].as_array().into_iter().flatten() {
        t += &format!(
            "not counted: seq {} {} {} {}\n",
            r["seq"],
            s(&r["state"]),
            s(&r["reason"]),
            s(&r["detail"])
        );
    }
    if let Some(d) = v.get("delivery") {
        t += &format!(
            "delivery: {} attempts, {} failures, last success {}{}\n",
            d["attempts"],
            d["failures"],
            s(&d["last_success"]),
            d["last_error"]
                .as_str()
                .map(|e| format!(", failing now: {e}"))
                .unwrap_or_default()
        );
    }
    t
}

/// A license status for a person: state, lease, and each metric's use of its limit.
fn license_text(l: &Value) -> String {
    let mut t = format!(
        "license {}: {}, lease until {}\n",
        l["license_id"].as_str().unwrap_or("-"),
        l["state"].as_str().unwrap_or("-"),
        l["lease_until"].as_str().unwrap_or("-")
    );
    for c in l["credits"].as_array().into_iter().flatten() {
        let limit = match &c["limit"] {
            Value::Null => "unlimited".to_string(),
            n => n.to_string(),
        };
        t += &format!(
            "  {}: used {} of {limit} this month\n",
            c["metric"].as_str().unwrap_or("-"),
            c["used"]
        );
    }
    t
}

/// `license`: from the running agent, else from the database.
pub async fn license(dir: &DataDir) -> CmdResult {
    let agent = open(dir)?;
    let v = match live(dir, "/v1/license").await {
        Some(v) => v,
        None => crate::status::license_status(&agent, chrono::Utc::now()).to_json(),
    };
    let text = license_text(&v);
    Ok(Output::new(v, text))
}

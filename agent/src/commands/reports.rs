//! `reports list|show|verify`: every report the agent sent, decoded, and the offline check
//! of the whole history (chain, signatures, receipts).

use super::{CmdResult, CommandError, Output, runtime, usage};
use crate::agent::Agent;
use serde_json::{Value, json};
use tally_proto::Digest;
use tally_proto::report::Report;

/// Decoded fields of a report: exactly those that were signed at the top level, and the
/// delivery state (digest, state, reason, receipt) under `delivery`.
pub fn report_json(r: &crate::store::StoredReport) -> Result<Value, CommandError> {
    let rep = Report::decode(&r.bytes).map_err(|e| runtime(format!("report {}: {e}", r.seq)))?;
    Ok(json!({
        "seq": rep.seq,
        "license_id": rep.license_id,
        "agent_key": hex::encode(rep.agent_key),
        "prev_digest": rep.prev_digest.map(|d| d.to_hex()),
        "window_start": tally_proto::time::rfc3339(rep.window_start),
        "window_end": tally_proto::time::rfc3339(rep.window_end),
        "counters": rep.counters.iter().map(|c| json!({"metric": c.metric, "quantity": c.quantity})).collect::<Vec<_>>(),
        "created_at": tally_proto::time::rfc3339(rep.created_at),
        "agent_version": rep.agent_version,
        // Not part of the signed report: what happened to it (kept apart, so the top level
        // is exactly the signed fields).
        "delivery": {"digest": r.digest.to_hex(), "state": r.state.as_str(), "reason": r.reason},
    }))
}

pub fn reports_list(agent: &Agent) -> CmdResult {
    let rows = agent.store.reports_since(1).map_err(runtime)?;
    let mut text = String::new();
    let mut arr = Vec::new();
    for r in &rows {
        let j = report_json(r)?;
        let n = j["counters"].as_array().map_or(0, Vec::len);
        text.push_str(&format!(
            "{}\t{}\t{} – {}\t{n} counter{}\t{}\n",
            r.seq,
            r.state.as_str(),
            j["window_start"].as_str().unwrap_or(""),
            j["window_end"].as_str().unwrap_or(""),
            if n == 1 { "" } else { "s" },
            r.digest
        ));
        arr.push(json!({"seq": r.seq, "digest": r.digest.to_hex(), "state": r.state.as_str(), "reason": r.reason}));
    }
    Ok(Output {
        json: Value::Array(arr),
        text,
    })
}

pub fn reports_show(agent: &Agent, seq: u64) -> CmdResult {
    let r = agent
        .store
        .reports_since(seq)
        .map_err(runtime)?
        .into_iter()
        .next()
        .filter(|r| r.seq == seq)
        .ok_or_else(|| usage(format!("no report with seq {seq}")))?;
    let mut j = report_json(&r)?;
    if let Some(rc) = &r.receipt
        && let Ok(b) = agent.keys.verify_receipt(rc, None)
    {
        j["delivery"]["receipt"] = json!({"outcome": b.outcome.as_str(), "reason": b.reason, "received_at": tally_proto::time::rfc3339(b.received_at)});
    }
    let text = serde_json::to_string_pretty(&j).unwrap_or_default() + "\n";
    Ok(Output { json: j, text })
}

/// Verifies the whole history offline: every signature (each by the key that held the
/// chain at its seq: the key rotations, each signed by both keys, say which), the chain of
/// digests and sequence numbers, and every receipt against the collector's keys. Every
/// report that fails is named (on stdout, or as `problems` with `--json`), not only the
/// first, so the operator knows every receipt to fetch again; the exit code is then 1.
pub fn reports_verify(agent: &Agent, json_out: bool) -> CmdResult {
    let rows = agent.store.reports_since(1).map_err(runtime)?;
    // Reading the rotations verifies both signatures of each; the history checks that
    // each is handed over by the key holding the chain, at a later seq.
    let history = agent.key_history().map_err(runtime)?;
    let mut prev: Option<Digest> = None;
    let mut receipts = 0;
    let mut problems: Vec<String> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if let Err(m) = check_report(agent, &history, i as u64 + 1, prev, r) {
            problems.push(format!("report seq {}: {m}", r.seq));
        } else if r.receipt.is_some() {
            receipts += 1;
        }
        prev = Some(r.digest);
    }
    if let Some(first) = problems.first() {
        if json_out {
            println!(
                "{}",
                json!({"ok": false, "reports": rows.len(), "problems": problems})
            );
        } else {
            for p in &problems {
                println!("{p}");
            }
        }
        let k = problems.len();
        return Err(runtime(format!(
            "{k} report{} do{} not verify; the first: {first}",
            if k == 1 { "" } else { "s" },
            if k == 1 { "es" } else { "" }
        )));
    }
    let keys = history.keys().len();
    Ok(Output {
        json: json!({"ok": true, "reports": rows.len(), "receipts": receipts, "agent_keys": keys}),
        text: format!(
            "ok: {} reports, chain and signatures intact ({keys} agent key{}), {receipts} receipts verified\n",
            rows.len(),
            if keys == 1 { "" } else { "s" }
        ),
    })
}

/// One stored report at position `expected` (its seq) after `prev`: its bytes, the key
/// holding the chain at its seq, its signature, its place in the chain, its receipt.
fn check_report(
    agent: &Agent,
    history: &tally_proto::agent_key::KeyHistory,
    expected: u64,
    prev: Option<Digest>,
    r: &crate::store::StoredReport,
) -> Result<(), String> {
    if r.seq != expected {
        return Err(format!("sequence gap: expected seq {expected}"));
    }
    if Digest::of(&r.bytes) != r.digest {
        return Err("stored bytes do not match their digest (the report was altered)".into());
    }
    let holder = history.key_at(r.seq);
    let key =
        tally_proto::signing::verifying_key(&holder).map_err(|e| format!("agent key: {e}"))?;
    tally_proto::signing::verify(
        &key,
        tally_proto::signing::Domain::UsageReport,
        &r.bytes,
        &r.signature,
    )
    .map_err(|e| format!("signature: {e}"))?;
    let rep = Report::decode(&r.bytes).map_err(|e| e.to_string())?;
    if rep.agent_key != holder {
        return Err(format!(
            "the report names agent key {}, but key {} held the chain at this seq",
            tally_proto::keys::key_id(&rep.agent_key),
            tally_proto::keys::key_id(&holder)
        ));
    }
    if rep.seq != r.seq || rep.prev_digest != prev {
        return Err(
            "the chain is broken (seq or prev_digest does not match the previous report)".into(),
        );
    }
    if let Some(rc) = &r.receipt {
        let b = agent
            .keys
            .verify_receipt(rc, None)
            .map_err(|e| format!("receipt: {e}"))?;
        if b.report_digest != r.digest {
            return Err("the receipt is for another report".into());
        }
    }
    Ok(())
}

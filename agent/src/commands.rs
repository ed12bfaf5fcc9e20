//! The agent's operator commands: `init`, `status`, `license`, `reports list|show|verify`,
//! `export`, `import-receipts`, and `record`/`flush` against a running agent.

use crate::agent::Agent;
use crate::datadir::DataDir;
use crate::store::AgentStore;
use serde_json::{Value, json};
use std::path::Path;
use tally_proto::license::{License, parse_armored};
use tally_proto::pb;
use tally_proto::receipt::ReceiptBody;
use tally_proto::report::Report;
use tally_proto::{Digest, bundle, enroll, keys};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
}

impl CommandError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Usage(_) => 2,
            CommandError::Runtime(_) => 1,
        }
    }
}

fn usage(m: impl Into<String>) -> CommandError {
    CommandError::Usage(m.into())
}
fn runtime(m: impl std::fmt::Display) -> CommandError {
    CommandError::Runtime(m.to_string())
}

pub struct Output {
    pub json: Value,
    pub text: String,
}

pub type CmdResult = Result<Output, CommandError>;

pub struct InitArgs {
    pub license_file: std::path::PathBuf,
    pub collectors: Vec<String>,
    pub token: Option<String>,
    pub offline: bool,
    pub tls: crate::tls::TlsFiles,
}

/// `init`: key (0600), license verified, enrollment (or, `--offline`, the public key to
/// enroll by hand), everything stored.
pub async fn init(dir: &DataDir, a: InitArgs) -> CmdResult {
    if dir.key().exists() {
        return Err(usage(format!(
            "{} is already initialized",
            dir.path().display()
        )));
    }
    let text = std::fs::read(&a.license_file)
        .map_err(|e| usage(format!("cannot read {}: {e}", a.license_file.display())))?;
    let signed =
        parse_armored(&text).map_err(|e| usage(format!("{}: {e}", a.license_file.display())))?;
    let (license, vendor) = License::verify(&signed, None)
        .map_err(|e| usage(format!("{}: {e}", a.license_file.display())))?;
    for c in &a.collectors {
        if !(c.starts_with("http://") || c.starts_with("https://")) {
            return Err(usage(format!(
                "--collector {c}: must be an http:// or https:// URL"
            )));
        }
    }
    if !a.offline && a.token.as_deref().is_none_or(str::is_empty) {
        return Err(usage(
            "--token is required for online enrollment (or use --offline)",
        ));
    }
    let key = keys::generate();
    let collectors = if a.collectors.is_empty() {
        vec![license.collector_endpoint.clone()]
    } else {
        a.collectors.clone()
    };
    let license_bytes = if a.offline {
        prost::Message::encode_to_vec(&signed)
    } else {
        let token = a.token.clone().unwrap_or_default();
        let proof = enroll::prove(&key, &license.license_id, &token);
        let req = pb::EnrollRequest {
            license_id: license.license_id.clone(),
            enrollment_token: token,
            agent_key: key.verifying_key().to_bytes().to_vec(),
            proof: proof.to_vec(),
        };
        let mut last = String::new();
        let mut resp = None;
        let tls = a.tls.client_config().map_err(usage)?;
        for url in &collectors {
            match enroll_at(url, req.clone(), tls.as_ref()).await {
                Ok(r) => {
                    resp = Some(r);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let resp = resp.ok_or_else(|| runtime(format!("enrollment failed: {last}")))?;
        if resp.collector_key != vendor.to_bytes() {
            return Err(runtime(
                "the collector's key is not the key that signed the license; refusing to enroll",
            ));
        }
        let l = resp
            .license
            .ok_or_else(|| runtime("the collector sent no license"))?;
        License::verify(&l, Some(&vendor))
            .map_err(|e| runtime(format!("license from the collector: {e}")))?;
        prost::Message::encode_to_vec(&l)
    };
    std::fs::create_dir_all(dir.path())
        .map_err(|e| runtime(format!("cannot create {}: {e}", dir.path().display())))?;
    keys::write_new(&dir.key(), &key).map_err(runtime)?;
    let store = AgentStore::open(&dir.db()).map_err(runtime)?;
    let now = chrono::Utc::now();
    let lease = (now + chrono::Duration::seconds(license.grace_secs as i64)).min(license.not_after);
    store
        .set_meta("license", license_bytes)
        .await
        .map_err(runtime)?;
    store
        .set_meta("collector_key", vendor.to_bytes().to_vec())
        .await
        .map_err(runtime)?;
    store
        .set_meta("collectors", collectors.join(",").into_bytes())
        .await
        .map_err(runtime)?;
    store
        .set_meta("initial_lease", lease.timestamp().to_string().into_bytes())
        .await
        .map_err(runtime)?;
    for (k, p) in [
        ("tls_ca", &a.tls.ca),
        ("tls_cert", &a.tls.cert),
        ("tls_key", &a.tls.key),
    ] {
        if let Some(p) = p {
            let abs = std::path::absolute(p).map_err(runtime)?;
            store
                .set_meta(k, abs.display().to_string().into_bytes())
                .await
                .map_err(runtime)?;
        }
    }
    let public = hex::encode(key.verifying_key().to_bytes());
    let text = if a.offline {
        format!(
            "agent key: {public}\nenroll it at the vendor with:\n  tally-collector agents add --license {} --key {public}\n",
            license.license_id
        )
    } else {
        format!(
            "enrolled for license {}\nagent key: {public}\n",
            license.license_id
        )
    };
    Ok(Output {
        json: json!({"agent_key": public, "license_id": license.license_id, "enrolled": !a.offline}),
        text,
    })
}

async fn enroll_at(
    url: &str,
    req: pb::EnrollRequest,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<pb::EnrollResponse, String> {
    let ch = crate::tls::endpoint(url, tls)?
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("{url}: cannot connect: {e}"))?;
    let mut c = pb::ingest_client::IngestClient::new(ch);
    c.enroll(req)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{url}: {}", s.message()))
}

/// The TLS files remembered by `init`.
pub fn stored_tls(store: &AgentStore) -> crate::tls::TlsFiles {
    let get = |k: &str| {
        store
            .meta(k)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .map(std::path::PathBuf::from)
    };
    crate::tls::TlsFiles {
        ca: get("tls_ca"),
        cert: get("tls_cert"),
        key: get("tls_key"),
    }
}

/// The stored collectors (from `init`).
pub fn stored_collectors(store: &AgentStore) -> Vec<String> {
    store
        .meta("collectors")
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Status as JSON: delivery states, open counters, license status, and (when `live`) the
/// running agent's delivery statistics.
pub fn status_json(agent: &Agent, live: bool) -> Result<Value, CommandError> {
    let (states, open) = agent.store.summary().map_err(runtime)?;
    let not_counted: Vec<Value> = agent
        .store
        .reports_since(1)
        .map_err(runtime)?
        .into_iter()
        .filter(|r| r.state == "quarantined" || r.state == "refused")
        .map(|r| json!({"seq": r.seq, "state": r.state, "reason": r.reason, "detail": r.detail}))
        .collect();
    let mut v = json!({
        "license": crate::status::license_status(agent, chrono::Utc::now()),
        "reports": states,
        "open_window": open.into_iter().map(|(m, q)| json!({"metric": m, "quantity": q})).collect::<Vec<_>>(),
        "not_counted": not_counted,
    });
    if live {
        v["delivery"] = crate::http::stats_json(agent);
    }
    Ok(v)
}

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
        // is exactly the signed fields, DESIGN.md §6).
        "delivery": {"digest": r.digest.to_hex(), "state": r.state, "reason": r.reason},
    }))
}

pub fn reports_list(agent: &Agent) -> CmdResult {
    let rows = agent.store.reports_since(1).map_err(runtime)?;
    let mut text = String::new();
    let mut arr = Vec::new();
    for r in &rows {
        let j = report_json(r)?;
        text.push_str(&format!(
            "{}\t{}\t{} – {}\t{} counters\t{}\n",
            r.seq,
            r.state,
            j["window_start"].as_str().unwrap_or(""),
            j["window_end"].as_str().unwrap_or(""),
            j["counters"].as_array().map_or(0, Vec::len),
            r.digest
        ));
        arr.push(json!({"seq": r.seq, "digest": r.digest.to_hex(), "state": r.state, "reason": r.reason}));
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
        && let Ok(b) = ReceiptBody::verify(rc, &agent.collector_key)
    {
        j["delivery"]["receipt"] = json!({"outcome": b.outcome.as_str(), "reason": b.reason, "received_at": tally_proto::time::rfc3339(b.received_at)});
    }
    let text = serde_json::to_string_pretty(&j).unwrap_or_default() + "\n";
    Ok(Output { json: j, text })
}

/// Verifies the whole history offline: every signature, the chain of digests and
/// sequence numbers, and every receipt against the collector key.
pub fn reports_verify(agent: &Agent) -> CmdResult {
    let rows = agent.store.reports_since(1).map_err(runtime)?;
    let key = agent.key.verifying_key();
    let mut prev: Option<Digest> = None;
    let mut receipts = 0;
    for (i, r) in rows.iter().enumerate() {
        let fail = |m: String| runtime(format!("report seq {}: {m}", r.seq));
        if r.seq != i as u64 + 1 {
            return Err(fail(format!("sequence gap: expected seq {}", i + 1)));
        }
        if Digest::of(&r.bytes) != r.digest {
            return Err(fail(
                "stored bytes do not match their digest (the report was altered)".into(),
            ));
        }
        tally_proto::signing::verify(
            &key,
            tally_proto::signing::Domain::UsageReport,
            &r.bytes,
            &r.signature,
        )
        .map_err(|e| fail(format!("signature: {e}")))?;
        let rep = Report::decode(&r.bytes).map_err(|e| fail(e.to_string()))?;
        if rep.seq != r.seq || rep.prev_digest != prev {
            return Err(fail(
                "the chain is broken (seq or prev_digest does not match the previous report)"
                    .into(),
            ));
        }
        if let Some(rc) = &r.receipt {
            let b = ReceiptBody::verify(rc, &agent.collector_key)
                .map_err(|e| fail(format!("receipt: {e}")))?;
            if b.report_digest != r.digest {
                return Err(fail("the receipt is for another report".into()));
            }
            receipts += 1;
        }
        prev = Some(r.digest);
    }
    Ok(Output {
        json: json!({"ok": true, "reports": rows.len(), "receipts": receipts}),
        text: format!(
            "ok: {} reports, chain and signatures intact, {receipts} receipts verified\n",
            rows.len()
        ),
    })
}

/// `export`: undelivered reports (or all from `--since`), as a report bundle.
pub fn export(agent: &Agent, out: &Path, since: Option<u64>) -> CmdResult {
    let rows = match since {
        Some(s) => agent.store.reports_since(s).map_err(runtime)?,
        None => agent
            .store
            .reports_since(1)
            .map_err(runtime)?
            .into_iter()
            .filter(|r| r.state == "pending")
            .collect(),
    };
    let b = pb::ReportBundle {
        reports: rows.iter().map(|r| r.signed()).collect(),
    };
    std::fs::write(out, bundle::write_reports(&b))
        .map_err(|e| runtime(format!("cannot write {}: {e}", out.display())))?;
    Ok(Output {
        json: json!({"file": out.display().to_string(), "reports": rows.len()}),
        text: format!("exported {} reports to {}\n", rows.len(), out.display()),
    })
}

/// `import-receipts`: verifies and stores receipts from the collector's import.
pub async fn import_receipts(agent: &Agent, file: &Path) -> CmdResult {
    let bytes =
        std::fs::read(file).map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
    let b = bundle::read_receipts(&bytes).map_err(|e| usage(format!("{}: {e}", file.display())))?;
    let mut verified = Vec::new();
    for (i, r) in b.receipts.into_iter().enumerate() {
        let body = ReceiptBody::verify(&r, &agent.collector_key)
            .map_err(|e| usage(format!("receipt {i}: {e}")))?;
        verified.push((body, r));
    }
    let (stored, unknown) = agent
        .store
        .store_receipts(verified)
        .await
        .map_err(runtime)?;
    Ok(Output {
        json: json!({"stored": stored, "unknown": unknown}),
        text: format!(
            "stored {stored} receipts ({unknown} for reports this agent does not have)\n"
        ),
    })
}

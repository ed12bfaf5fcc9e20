//! The agent's operator commands: `init`, `run`, `status`, `license`, `reports
//! list|show|verify`, `statements verify|audit`, `keys list|rotate`, `export`,
//! `import-receipts`, and
//! `record`/`flush` against a running agent. `main.rs` parses arguments; these functions do
//! the work and return what to print.

use crate::agent::Agent;
use crate::store::AgentStore;
use serde_json::json;
use std::path::Path;
use tally_proto::bundle;
use tally_proto::pb;
pub use tally_runtime::cli::{CmdResult, CommandError, Output};
use tally_runtime::cli::{runtime, usage};

mod audit;
mod init;
mod keys;
mod live;
mod reports;
mod run;
mod statements;

pub use audit::statements_audit;
pub use init::{InitArgs, init};
pub use keys::{keys_list, keys_rotate};
pub use live::{flush, license, record, status};
pub use reports::{report_json, reports_list, reports_show, reports_verify};
pub use run::{RunOptions, config_check, interval_secs, load, run};
pub use statements::{API_TOKEN_ENV, BillingApi, StatementSource, statements_verify};

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

/// `export`: undelivered reports (or all from `--since`), as a report bundle.
pub fn export(agent: &Agent, out: &Path, since: Option<u64>) -> CmdResult {
    let rows = match since {
        Some(s) => agent.store.reports_since(s).map_err(runtime)?,
        None => agent
            .store
            .reports_since(1)
            .map_err(runtime)?
            .into_iter()
            .filter(|r| r.state == crate::store::DeliveryState::Pending)
            .collect(),
    };
    // Every rotation travels with the reports: the collector records them (once) before
    // it reads a report signed by a rotated-to key.
    let rotations: Vec<pb::SignedAgentKeyRotation> = agent
        .store
        .rotations()
        .map_err(runtime)?
        .into_iter()
        .map(|r| r.signed)
        .collect();
    let b = pb::ReportBundle {
        reports: rows.iter().map(|r| r.signed()).collect(),
        rotations,
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
    // Follow the keyrings the bundle carries first (checked under the chain rule from this
    // agent's vendor key): the receipts may be signed by keys of a rotation it never saw.
    agent
        .keys
        .accept(&agent.store, b.keyrings)
        .await
        .map_err(|e| match e {
            crate::trusted_keys::AcceptError::Refused(m) => {
                usage(format!("{}: keyrings: {m}", file.display()))
            }
            other => runtime(other),
        })?;
    let mut verified = Vec::new();
    for (i, r) in b.receipts.into_iter().enumerate() {
        let body = agent
            .keys
            .verify_receipt(&r, Some(chrono::Utc::now()))
            .map_err(|e| usage(format!("receipt {i}: {e}")))?;
        verified.push((body, r));
    }
    let (stored, unknown) = agent
        .store
        .store_receipts(verified)
        .await
        .map_err(runtime)?;
    agent
        .store
        .rotations_recorded_by_receipts()
        .await
        .map_err(runtime)?;
    Ok(Output {
        json: json!({"stored": stored, "unknown": unknown}),
        text: format!(
            "stored {stored} receipts ({unknown} for reports this agent does not have)\n"
        ),
    })
}

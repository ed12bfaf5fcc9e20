//! `statements audit`: the customer checks a whole closed statement from one machine —
//! the vendor's signature and the arithmetic (`Statement::verify`), every agent line's key
//! against the customer's own inventory of agent key ids, and every line re-derived from
//! the signed reports the billing API serves as its evidence
//! (`tally_proto::statement::audit`).

use super::statements::{BillingApi, MAX_STATEMENT_BYTES, StatementSource, fetch, get_api};
use super::{CmdResult, CommandError, Output, runtime, usage};
use crate::agent::Agent;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use tally_proto::statement::StatementError;
use tally_proto::statement::audit::{Evidence, audit};

/// Largest evidence document read (every signed report of a customer-month).
const MAX_EVIDENCE_BYTES: usize = 512 << 20;

/// Largest inventory file read.
const MAX_INVENTORY_BYTES: u64 = 4 << 20;

/// Reads the customer's inventory: one agent key id (16 lowercase hex characters, as
/// `tally-agent status` prints `key_id`) per line; blank lines and `#` comments ignored.
pub fn read_inventory(path: &Path) -> Result<BTreeSet<String>, CommandError> {
    let bad = |m: String| usage(format!("--agents {}: {m}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.len() > MAX_INVENTORY_BYTES {
        return Err(bad(format!("larger than {MAX_INVENTORY_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.len() != 16 || !l.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad(format!(
                "line {}: {:?} is not a key id (16 lowercase hex characters, as 'tally-agent status' prints key_id)",
                i + 1,
                l.chars().take(40).collect::<String>()
            )));
        }
        out.insert(l.to_string());
    }
    if out.is_empty() {
        return Err(bad("lists no agent key id".into()));
    }
    Ok(out)
}

/// `statements audit`. The statement comes from `source`; the evidence always from the
/// billing API `api` (the token from `TALLY_API_TOKEN`).
pub async fn statements_audit(
    agent: &Agent,
    source: StatementSource,
    api: BillingApi,
    inventory_file: &Path,
    json_out: bool,
) -> CmdResult {
    let api = api.with_default_ca(agent);
    let inventory = read_inventory(inventory_file)?;
    let (bytes, origin) = match &source {
        StatementSource::File(path) => {
            let b = std::fs::read(path)
                .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
            (b, path.display().to_string())
        }
        StatementSource::Fetch(month) => fetch(agent, month, &api).await?,
    };
    if bytes.len() > MAX_STATEMENT_BYTES {
        return Err(usage(format!(
            "{origin}: larger than {MAX_STATEMENT_BYTES} bytes"
        )));
    }
    let statement = agent.verify_statement(&bytes).await.map_err(|e| match e {
        StatementError::Malformed(_) if matches!(source, StatementSource::File(_)) => {
            usage(format!("{origin}: {e}"))
        }
        e => runtime(format!("{origin}: {e}")),
    })?;
    if statement.customer != agent.license.customer_id {
        return Err(runtime(format!(
            "{origin}: the statement is for customer {}, but this agent's license is for {}",
            statement.customer, agent.license.customer_id
        )));
    }
    let path = format!(
        "/v1/statements/{}/{}/evidence",
        statement.customer, statement.period
    );
    let (body, target) = get_api(&api, &path, MAX_EVIDENCE_BYTES).await?;
    let evidence: Evidence = tally_proto::json::parse(&body)
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
        .map_err(|e| runtime(format!("{target}: not evidence: {e}")))?;
    let out = audit(&statement, &inventory, &evidence);
    let header = format!("statement {} {}", statement.customer, statement.period);
    let doc = json!({
        "matches": out.matches(),
        "customer": statement.customer,
        "period": statement.period,
        "agent_lines": statement.agents.len(),
        "verified_reports": out.verified,
        "removed_reports": out.removed,
        "differences": out.differences,
        "notes": out.notes,
    });
    let notes: String = out.notes.iter().map(|n| format!("note: {n}\n")).collect();
    if out.matches() {
        let text = format!(
            "{header}: matches: {} agent lines, all our agents' keys, {} signed reports verified\n{notes}",
            statement.agents.len(),
            out.verified
        );
        return Ok(Output::new(doc, text));
    }
    if json_out {
        println!("{doc}");
    } else {
        for d in &out.differences {
            println!("{d}");
        }
        print!("{notes}");
    }
    let k = out.differences.len();
    Err(runtime(format!(
        "{header}: the bill is not backed by our agents' signatures in {k} place{}",
        if k == 1 { "" } else { "s" }
    )))
}

//! Client-facing JSON shapes that the billing API and the CLI's `--json` both print, built
//! in one place so the two never disagree. Stores and rules never format; this does.

use crate::ingest::Verdict;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// An import's answer: `{"counts": {outcome: n}, "receipts": [{digest, outcome, reason,
/// detail}]}`.
pub fn import_summary(verdicts: &[Verdict]) -> Value {
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
    json!({"counts": counts, "receipts": items})
}

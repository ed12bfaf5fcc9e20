//! The billing team's commands: `usage`, `import`, `quarantine list | release | discard`,
//! `audit list`.

use super::{CmdResult, CommandError, Ctx, Output, usage_err};
use crate::rules::ReportStatus;
use crate::server::Collector;
use crate::usage::{self, Format};
use crate::views;
use serde_json::json;
use std::path::Path;
use tally_proto::Digest;
use tally_proto::bundle;
use tally_proto::pb;

/// `usage`: the same query as `GET /v1/usage`, answered from the local database.
pub async fn usage(ctx: &Ctx, pairs: Vec<(String, String)>, json_out: bool) -> CmdResult {
    let explicit_format = pairs.iter().any(|(k, _)| k == "format");
    let mut q = usage::parse_query(&pairs, true).map_err(|e| usage_err(format!("--{e}")))?;
    if !explicit_format {
        q.format = Format::Table;
    }
    let rows = ctx.store.hourly_usage(q.filter.clone()).await?;
    usage::check_filter(ctx.store.as_ref(), &q.filter, !rows.is_empty())
        .await
        .map_err(|e| match e {
            usage::FilterError::NotFound(m) => usage_err(m),
            usage::FilterError::Store(e) => e.into(),
        })?;
    let rows =
        usage::aggregate(&rows, q.granularity).map_err(|e| CommandError::Runtime(e.to_string()))?;
    let text = match (json_out, q.format) {
        (false, Format::Csv) => usage::to_csv(&rows),
        (false, Format::Json) => {
            serde_json::to_string_pretty(&json!({"rows": rows})).unwrap_or_default() + "\n"
        }
        _ => usage::to_table(&rows),
    };
    Ok(Output::new(json!({"rows": rows}), text))
}

/// `import FILE`: a report bundle through the normal ingest path (`too_old` at 400 days).
pub async fn import(ctx: &Ctx, file: &Path, receipts_out: Option<&Path>) -> CmdResult {
    // Refuse an oversized file before reading it into memory.
    let size = std::fs::metadata(file)
        .map_err(|e| usage_err(format!("cannot read {}: {e}", file.display())))?
        .len();
    if size > tally_proto::limits::MAX_BUNDLE_BYTES as u64 {
        return Err(usage_err(format!(
            "{}: file is larger than {} bytes",
            file.display(),
            tally_proto::limits::MAX_BUNDLE_BYTES
        )));
    }
    let bytes = std::fs::read(file)
        .map_err(|e| usage_err(format!("cannot read {}: {e}", file.display())))?;
    let b =
        bundle::read_reports(&bytes).map_err(|e| usage_err(format!("{}: {e}", file.display())))?;
    let online = std::sync::Arc::new(crate::keys::KeyHandle::new(ctx.online_keys().await?));
    let collector = Collector::with_keys(
        ctx.store.clone(),
        online,
        Some(crate::ratelimit::DEFAULT_REPORTS_PER_SEC),
    );
    let (receipts, verdicts, rotations) = collector
        .ingestor
        .import(b)
        .await
        .map_err(|e| CommandError::Runtime(e.to_string()))?;
    if let Some(out) = receipts_out {
        // The keyrings travel with the receipts: an air-gapped agent has no other way to
        // learn of a rotation.
        let keyrings = collector.ingestor.online_keys().current().signed_after(0);
        std::fs::write(
            out,
            bundle::write_receipts(&pb::ReceiptBundle { receipts, keyrings }),
        )
        .map_err(|e| CommandError::Runtime(format!("cannot write {}: {e}", out.display())))?;
    }
    let summary = crate::views::import_summary(&verdicts, &rotations);
    let counts = summary["counts"].as_object().cloned().unwrap_or_default();
    ctx.audit(
        "import",
        &file.display().to_string(),
        &serde_json::to_string(&counts).unwrap_or_default(),
    )
    .await?;
    let mut text = rotations
        .iter()
        .map(|r| {
            format!(
                "agent key rotation {} -> {} from seq {}: {}{}\n",
                r.old_key_id,
                r.new_key_id,
                r.from_seq,
                r.outcome,
                if r.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.detail)
                }
            )
        })
        .collect::<String>();
    text += &counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}\n"))
        .collect::<String>();
    Ok(Output::new(summary, text))
}

pub async fn quarantine_list(ctx: &Ctx) -> CmdResult {
    let rows = ctx.store.quarantine(None).await?;
    let text = rows
        .iter()
        .map(|q| {
            format!(
                "{}\t{}\tseq {}\t{}\t{}\n",
                q.digest, q.agent_id, q.seq, q.reason, q.detail
            )
        })
        .collect::<String>();
    let text = if text.is_empty() {
        "no report is in quarantine\n".to_string()
    } else {
        text
    };
    Ok(Output::new(views::list(&rows, views::quarantined), text))
}

fn parse_digest(s: &str) -> Result<Digest, CommandError> {
    s.parse::<Digest>().map_err(|e| usage_err(e.to_string()))
}

pub async fn quarantine_release(ctx: &Ctx, digest: &str) -> CmdResult {
    let d = parse_digest(digest)?;
    let counted = ctx.store.release(d, ctx.store.clock().now()).await?;
    let status = if counted {
        "released"
    } else {
        "already_counted"
    };
    ctx.audit("quarantine release", &d.to_hex(), status).await?;
    Ok(Output::new(
        json!({"digest": d.to_hex(), "status": status}),
        format!("{status} {d}\n"),
    ))
}

pub async fn quarantine_discard(ctx: &Ctx, digest: &str) -> CmdResult {
    let d = parse_digest(digest)?;
    ctx.store.discard(d, ctx.store.clock().now()).await?;
    ctx.audit(
        "quarantine discard",
        &d.to_hex(),
        ReportStatus::Discarded.as_str(),
    )
    .await?;
    Ok(Output::new(
        json!({"digest": d.to_hex(), "status": ReportStatus::Discarded}),
        format!("discarded {d}\n"),
    ))
}

pub async fn audit_list(ctx: &Ctx, limit: u32) -> CmdResult {
    let rows = ctx.store.list_audit(limit).await?;
    let text = rows
        .iter()
        .map(|r| {
            let e = &r.entry;
            let repeats = if r.repeats > 1 {
                format!(
                    "\t×{} until {}",
                    r.repeats,
                    tally_proto::time::rfc3339(r.last_at)
                )
            } else {
                String::new()
            };
            format!(
                "{}\t{}\t{}\t{}\t{}{repeats}\n",
                tally_proto::time::rfc3339(e.at),
                e.actor,
                e.action,
                e.target,
                e.outcome
            )
        })
        .collect::<String>();
    Ok(Output::new(views::list(&rows, views::audit), text))
}

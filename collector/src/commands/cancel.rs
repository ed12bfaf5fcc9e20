//! `customers cancel ID [--purge-after 30d | --now]`: revoke everything of a customer at
//! once, and purge all its data when the time comes (`serve` checks every minute; `--now`
//! purges before returning). Only audit entries with counts remain.

use super::{CmdResult, CommandError, Ctx, Output, check_id, usage_err};
use crate::datadir::CollectorFiles;
use serde_json::json;
use tally_proto::time::parse_duration_secs;

/// Default delay between cancelling and purging.
pub const DEFAULT_PURGE_AFTER: &str = "30d";

pub async fn customers_cancel(
    ctx: &Ctx,
    id: &str,
    purge_after: Option<&str>,
    now_flag: bool,
) -> CmdResult {
    check_id("customer", id)?;
    let now = ctx.store.clock().now();
    let delay = match (purge_after, now_flag) {
        (Some(_), true) => return Err(usage_err("--purge-after and --now exclude each other")),
        (_, true) => 0,
        (d, false) => parse_duration_secs(d.unwrap_or(DEFAULT_PURGE_AFTER))
            .map_err(|e| usage_err(format!("--purge-after: {e}")))?,
    };
    let purge_at = now + chrono::Duration::seconds(i64::try_from(delay).unwrap_or(i64::MAX));
    let c = ctx
        .store
        .cancel_customer(id.to_string(), now, purge_at)
        .await?;
    let summary = format!(
        "revoked licenses={} agents={} tokens={}; purge at {}",
        c.licenses,
        c.agents,
        c.tokens,
        tally_proto::time::rfc3339(purge_at)
    );
    ctx.audit("customers cancel", id, &summary).await?;
    let purged = if now_flag {
        crate::lifecycle::purge_due(ctx.store.as_ref(), now, "cli", Some(&ctx.dir.licenses()))
            .await
            .map_err(CommandError::from)?
            .into_iter()
            .find(|p| p.customer_id == id)
    } else {
        None
    };
    let mut text = format!("cancelled {id}: {summary}\n");
    if let Some(p) = &purged {
        text.push_str(&format!(
            "purged {id}: {} reports, {} rollup rows, {} anomalies, {} agents, {} licenses, {} tokens\n",
            p.reports, p.rollup_rows, p.anomalies, p.agents, p.licenses, p.tokens
        ));
    }
    Ok(Output::new(
        json!({
            "customer_id": id,
            "revoked": {"licenses": c.licenses, "agents": c.agents, "tokens": c.tokens},
            "purge_at": tally_proto::time::rfc3339(purge_at),
            "purged": purged.map(|p| json!({
                "reports": p.reports,
                "rollup_rows": p.rollup_rows,
                "anomalies": p.anomalies,
                "agents": p.agents,
                "licenses": p.licenses,
                "tokens": p.tokens,
            })),
        }),
        text,
    ))
}

//! `periods close YYYY-MM`, `periods list` and `statements verify FILE`: closing months by
//! hand (`serve` also closes them by itself after `--close-grace`) and checking a closed
//! statement offline.

use super::{CmdResult, CommandError, Ctx, Output, check_id, usage_err};
use crate::calendar::{month_label, parse_month};
use crate::periods::{self, CloseError};
use serde_json::json;
use std::path::Path;
use tally_proto::statement::Statement;
use tally_proto::time::rfc3339;

impl From<CloseError> for CommandError {
    fn from(e: CloseError) -> Self {
        match e {
            CloseError::Invalid(m) => usage_err(m),
            CloseError::Store(e) => e.into(),
        }
    }
}

fn month_arg(s: &str) -> Result<i64, CommandError> {
    parse_month(s).ok_or_else(|| {
        usage_err(format!(
            "{:?} is not a month (expected YYYY-MM)",
            s.chars().take(32).collect::<String>()
        ))
    })
}

pub async fn periods_close(ctx: &Ctx, month: &str) -> CmdResult {
    let m = month_arg(month)?;
    let statement_key = ctx.online_keys().await?.statement;
    let c = periods::close(
        ctx.store.as_ref(),
        &statement_key,
        m,
        ctx.store.clock().now(),
    )
    .await?;
    periods::audit_close(ctx.store.as_ref(), &c, "cli").await?;
    let text = if c.already_done {
        format!(
            "{} was already closed at {}\n",
            month_label(m),
            rfc3339(c.closed_at)
        )
    } else {
        format!(
            "closed {} at {}: {} statements signed\n",
            month_label(m),
            rfc3339(c.closed_at),
            c.statements
        )
    };
    Ok(Output::new(
        json!({
            "period": month_label(m),
            "closed_at": rfc3339(c.closed_at),
            "statements": c.statements,
            "already_closed": c.already_done,
        }),
        text,
    ))
}

pub async fn periods_list(ctx: &Ctx) -> CmdResult {
    let rows = ctx.store.periods().await?;
    let json: Vec<_> = rows
        .iter()
        .map(|p| {
            json!({
                "period": month_label(p.month),
                "closed_at": rfc3339(p.closed_at),
                "state": if p.done { "closed" } else { "closing" },
            })
        })
        .collect();
    let text = rows
        .iter()
        .map(|p| {
            let state = if p.done { "closed" } else { "closing" };
            format!(
                "{}\t{state}\t{}\n",
                month_label(p.month),
                rfc3339(p.closed_at)
            )
        })
        .collect::<String>();
    let text = if text.is_empty() {
        "no month is closed yet\n".to_string()
    } else {
        text
    };
    Ok(Output::new(json!(json), text))
}

/// Checks a closed statement document offline: against `key_hex`, the public key that
/// signed it (the statement key `keys list` shows; the vendor key for statements closed
/// before keyrings), or else against the keyring of the store in the data directory.
pub async fn statements_verify(
    file: &Path,
    key_hex: Option<&str>,
    dir: &crate::datadir::DataDir,
    database: Option<&str>,
) -> CmdResult {
    let doc = std::fs::read(file)
        .map_err(|e| usage_err(format!("cannot read {}: {e}", file.display())))?;
    let checked = match key_hex {
        Some(hex_key) => {
            let bytes = hex::decode(hex_key.trim())
                .map_err(|_| usage_err("--vendor-key: expected 64 hex characters"))?;
            let key = tally_proto::signing::verifying_key(&bytes)
                .map_err(|e| usage_err(format!("--vendor-key: {e}")))?;
            Statement::verify(&doc, &key)
        }
        None => {
            let store = crate::store::open(dir, database, false)
                .await
                .map_err(|_| {
                    usage_err(
                        "no key to check against (hint: pass --vendor-key HEX, the statement key \
                     'keys list' shows, or run this where the collector's data is)",
                    )
                })?;
            let (keyring, _) = crate::keys::verified_chain(store.as_ref())
                .await?
                .ok_or_else(|| usage_err("the store has no keyring yet (start `serve` once)"))?;
            Statement::verify_in(&doc, &keyring)
        }
    };
    let s = checked.map_err(|e| CommandError::Runtime(format!("{}: {e}", file.display())))?;
    let mut text = format!(
        "statement {} {}: signature valid (key {}), closed at {}\n",
        s.customer, s.period, s.key_id, s.closed_at
    );
    for l in &s.lines {
        let limit = l.limit.map_or("unlimited".to_string(), |q| q.to_string());
        text.push_str(&format!(
            "  {}\tused {}\tlimit {limit}\toverage {}\n",
            l.metric, l.used, l.overage
        ));
    }
    for a in &s.adjustments {
        text.push_str(&format!(
            "  adjustment {}\t{} of {}\n",
            a.metric, a.quantity, a.period
        ));
    }
    text.push_str(&format!("  {} agent lines\n", s.agents.len()));
    Ok(Output::new(
        json!({"valid": true, "customer": s.customer, "period": s.period, "key_id": s.key_id,
               "closed_at": s.closed_at, "lines": s.lines, "adjustments": s.adjustments,
               "agents": s.agents.len()}),
        text,
    ))
}

/// `retention apply [--retain-reports D]`: removes now the report bodies `serve` would remove
/// (those of months closed at least D ago; default 400 days).
/// `retention list [--agent ID]`: the per-agent, per-month summaries of removed reports.
pub async fn retention_list(ctx: &Ctx, agent: Option<String>) -> CmdResult {
    if let Some(a) = &agent {
        check_id("agent", a)?;
    }
    let rows = ctx.store.retained_digests(agent).await?;
    let json: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "agent_id": r.agent_id,
                "period": month_label(r.month),
                "first_seq": r.first_seq,
                "last_seq": r.last_seq,
                "reports": r.reports,
                "root": r.root.to_hex(),
            })
        })
        .collect();
    let text = if rows.is_empty() {
        "retention has removed no report yet\n".to_string()
    } else {
        rows.iter()
            .map(|r| {
                format!(
                    "{}\t{}\tseq {}..{}\t{} reports\troot {}\n",
                    month_label(r.month),
                    r.agent_id,
                    r.first_seq,
                    r.last_seq,
                    r.reports,
                    r.root.to_hex()
                )
            })
            .collect()
    };
    Ok(Output::new(json!(json), text))
}

pub async fn retention_apply(ctx: &Ctx, retain: Option<&str>) -> CmdResult {
    let secs = match retain {
        None => crate::lifecycle::DEFAULT_RETAIN_REPORTS_SECS,
        Some(d) => super::duration_arg("retain-reports", d)?,
    };
    let expired =
        crate::lifecycle::expire_due(ctx.store.as_ref(), secs, ctx.store.clock().now(), "cli")
            .await?;
    let text = if expired.is_empty() {
        "no closed month is due for retention\n".to_string()
    } else {
        expired
            .iter()
            .map(|e| {
                format!(
                    "{}: removed the bodies of {} reports of {} agents\n",
                    month_label(e.month),
                    e.reports,
                    e.agents
                )
            })
            .collect()
    };
    let json: Vec<_> = expired
        .iter()
        .map(|e| json!({"period": month_label(e.month), "reports": e.reports, "agents": e.agents}))
        .collect();
    Ok(Output::new(json!(json), text))
}

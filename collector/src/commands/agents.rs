//! `agents add | list | revoke`: enrolled agent keys (air-gapped enrollment by hand).

use super::{CmdResult, Ctx, Output, check_id, usage_err};
use crate::rules::AgentStatus;
use crate::server::{self};
use crate::store::AgentFilter;
use crate::views;
use serde_json::{Value, json};
use tally_proto::signing;

pub async fn agents_add(ctx: &Ctx, license: &str, key_hex: &str) -> CmdResult {
    check_id("license", license)?;
    let bytes = hex::decode(key_hex.trim())
        .map_err(|_| usage_err("--key must be 64 hexadecimal characters"))?;
    let key = signing::trusted_key(&bytes).map_err(|e| usage_err(format!("--key: {e}")))?;
    let id = ctx
        .store
        .add_agent(license.to_string(), key.to_bytes(), ctx.store.clock().now())
        .await?;
    ctx.audit("agents add", &id, "ok").await?;
    Ok(Output::new(json!({"agent_id": id}), format!("{id}\n")))
}

pub async fn agents_list(ctx: &Ctx, filter: AgentFilter, status: Option<String>) -> CmdResult {
    let only = match status.as_deref() {
        None => None,
        Some(s) => Some(
            AgentStatus::parse(s)
                .ok_or_else(|| usage_err("--status must be active, silent or revoked"))?,
        ),
    };
    let rows = ctx.store.list_agents(filter).await?;
    let rows = views::agents_with_status(
        rows,
        ctx.store.clock().now(),
        server::DEFAULT_SILENT_AFTER_SECS,
        only,
    );
    // The CLI's documented fields: agent_id, key, license_id, status, last_seq, last_seen.
    let json_rows: Vec<Value> = rows
        .iter()
        .map(|(a, s)| {
            let mut v = views::agent(a, *s);
            if let Some(o) = v.as_object_mut() {
                o.remove("customer_id");
            }
            v
        })
        .collect();
    let text = rows
        .iter()
        .map(|(a, s)| {
            format!(
                "{}\t{}\t{}\tlast_seq {}\n",
                a.agent_id,
                a.license_id,
                s.as_str(),
                a.last_seq
            )
        })
        .collect::<String>();
    Ok(Output::new(Value::Array(json_rows), text))
}

pub async fn agents_revoke(ctx: &Ctx, id: &str) -> CmdResult {
    check_id("agent", id)?;
    ctx.store
        .revoke_agent(id.to_string(), ctx.store.clock().now())
        .await?;
    ctx.audit("agents revoke", id, "ok").await?;
    Ok(Output::new(
        json!({"agent_id": id, "status": "revoked"}),
        format!("revoked {id}\n"),
    ))
}

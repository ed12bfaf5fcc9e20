//! `tokens create | list | revoke`: API tokens (stored hashed, shown once).

use super::{CmdResult, Ctx, Output, check_id, usage_err};
use crate::ids::{self, hash_secret};
use crate::roles::Role;
use crate::views;
use serde_json::json;

pub async fn tokens_create(ctx: &Ctx, role: &str, name: Option<String>) -> CmdResult {
    let role: Role = role
        .parse()
        .map_err(|e: crate::roles::RoleParseError| usage_err(format!("--role: {e}")))?;
    let name = name.unwrap_or_default();
    if name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(usage_err("--name must be at most 200 printable characters"));
    }
    let token = ids::new_secret("tally");
    let id = ids::new_id("tok");
    ctx.store
        .create_token(
            id.clone(),
            hash_secret(&token),
            role.clone(),
            name,
            ctx.store.clock().now(),
        )
        .await?;
    ctx.audit("tokens create", &id, &format!("ok role={role}"))
        .await?;
    Ok(Output::new(
        json!({"id": id, "token": token, "role": role.to_string()}),
        format!("{id}\ntoken (shown once): {token}\n"),
    ))
}

pub async fn tokens_list(ctx: &Ctx) -> CmdResult {
    let rows = ctx.store.list_tokens().await?;
    let text = rows
        .iter()
        .map(|t| {
            format!(
                "{}\t{}\t{}{}\n",
                t.id,
                t.role,
                t.name,
                if t.revoked { "\trevoked" } else { "" }
            )
        })
        .collect::<String>();
    Ok(Output::new(views::list(&rows, views::token), text))
}

pub async fn tokens_revoke(ctx: &Ctx, id: &str) -> CmdResult {
    check_id("token", id)?;
    ctx.store
        .revoke_token(id.to_string(), ctx.store.clock().now())
        .await?;
    ctx.audit("tokens revoke", id, "ok").await?;
    Ok(Output::new(
        json!({"id": id, "status": "revoked"}),
        format!("revoked {id}\n"),
    ))
}

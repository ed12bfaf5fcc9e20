//! Commands that talk to the running agent (`record`, `flush`), and those that ask it first
//! and fall back to the database when none runs (`status`, `license`).

use super::{CmdResult, CommandError, Output, load};
use crate::datadir::DataDir;
use crate::running::RunningAgent;
use reqwest::Method;
use serde_json::{Value, json};

/// The running agent's answer to a GET, if one is running and answers.
async fn live(dir: &DataDir, path: &str) -> Option<Value> {
    RunningAgent::find(dir)
        .ok()?
        .call(Method::GET, path, None)
        .await
        .ok()
}

fn open(dir: &DataDir) -> Result<crate::agent::Agent, CommandError> {
    load(dir, 3600, Vec::new(), Default::default())
}

/// `record METRIC [QUANTITY] [--idempotency-key K]`, through the running agent.
pub async fn record(
    dir: &DataDir,
    metric: &str,
    quantity: u64,
    idempotency_key: Option<String>,
) -> CmdResult {
    let mut body = json!({"metric": metric, "quantity": quantity});
    if let Some(k) = idempotency_key {
        body["idempotency_key"] = json!(k);
    }
    let v = RunningAgent::find(dir)?
        .call(Method::POST, "/v1/events", Some(body))
        .await?;
    Ok(Output::json_only(v))
}

/// `flush`: the running agent closes its open window now.
pub async fn flush(dir: &DataDir) -> CmdResult {
    let v = RunningAgent::find(dir)?
        .call(Method::POST, "/v1/flush", None)
        .await?;
    Ok(Output::json_only(v))
}

/// `status`: from the running agent (with delivery statistics), else from the database.
pub async fn status(dir: &DataDir) -> CmdResult {
    match live(dir, "/v1/status").await {
        Some(v) => Ok(Output::json_only(v)),
        None => Ok(Output::json_only(
            crate::status::status_json(&open(dir)?, false).map_err(super::runtime)?,
        )),
    }
}

/// `license`: from the running agent, else from the database.
pub async fn license(dir: &DataDir) -> CmdResult {
    let agent = open(dir)?;
    Ok(match live(dir, "/v1/license").await {
        Some(v) => Output::json_only(v),
        None => {
            Output::json_only(crate::status::license_status(&agent, chrono::Utc::now()).to_json())
        }
    })
}

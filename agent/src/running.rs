//! A client for the running agent's local HTTP API, found through its `ports.json`: what
//! `tally-agent record`, `flush`, `status` and `license` use to talk to `tally-agent run`.

use crate::datadir::DataDir;
use serde_json::Value;
use tally_runtime::cli::CommandError;

/// The running agent of a data directory.
pub struct RunningAgent {
    base: String,
}

impl RunningAgent {
    /// Finds the agent running on `dir` (from `DIR/ports.json`).
    pub fn find(dir: &DataDir) -> Result<RunningAgent, CommandError> {
        let not_running = || {
            CommandError::Runtime(format!(
                "no running agent found for {} (hint: start 'tally-agent run')",
                dir.path().display()
            ))
        };
        let bytes = tally_runtime::ports::read(dir.path()).ok_or_else(not_running)?;
        let v = tally_proto::json::parse(&bytes)
            .map_err(|e| CommandError::Runtime(format!("{}: {e}", dir.ports().display())))?;
        let listen = v["listen"]
            .as_str()
            .ok_or_else(|| CommandError::Runtime("ports.json has no \"listen\"".into()))?;
        Ok(RunningAgent {
            base: format!("http://{listen}"),
        })
    }

    /// Calls `path`; a 4xx answer is a usage error (exit 2) with the agent's message, any
    /// other failure a runtime error.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CommandError> {
        let base = &self.base;
        let mut req = reqwest::Client::new().request(method, format!("{base}{path}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            CommandError::Runtime(format!(
                "the agent at {base} does not answer: {e} (hint: is 'tally-agent run' running?)"
            ))
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CommandError::Runtime(e.to_string()))?;
        let v = tally_proto::json::parse(&bytes)
            .map_err(|e| CommandError::Runtime(format!("the agent answered: {e}")))?;
        let message = |fallback: &str| {
            v["error"]["message"]
                .as_str()
                .unwrap_or(fallback)
                .to_string()
        };
        if status.is_client_error() {
            return Err(CommandError::Usage(message("rejected")));
        }
        if !status.is_success() {
            return Err(CommandError::Runtime(message("failed")));
        }
        Ok(v)
    }
}

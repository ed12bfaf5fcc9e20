//! `run`: bind the recording port, announce it (stdout and `ports.json`), load the agent
//! with the collectors and TLS files chosen (flags, else what `init` stored) and serve
//! until a shutdown signal. `load` opens an agent directory for the other commands.

use super::{CommandError, stored_collectors, stored_tls};
use crate::agent::{Agent, AgentConfig, LoadError};
use crate::datadir::DataDir;
use crate::tls::TlsFiles;
use serde_json::json;
use std::sync::Arc;

/// `run`'s settings, already merged from flags, environment and config file.
pub struct RunOptions {
    pub listen: String,
    pub interval_secs: i64,
    /// Empty: the collectors `init` stored.
    pub collectors: Vec<String>,
    /// Empty: the TLS files `init` stored.
    pub tls: TlsFiles,
    /// Print the address as one JSON document.
    pub json: bool,
}

/// Parses `--interval` (`1s` … `24h`): a window is at most 24 h.
pub fn interval_secs(s: &str) -> Result<i64, CommandError> {
    let secs = tally_proto::time::parse_duration_secs(s)
        .map_err(|e| CommandError::Usage(format!("--interval: {e}")))?;
    if secs as i64 > tally_proto::limits::MAX_WINDOW_SECS {
        return Err(CommandError::Usage("--interval: at most 24h".into()));
    }
    Ok(secs as i64)
}

/// Opens an initialized agent directory (for commands that read it; the interval only
/// matters to `run`).
pub fn load(
    dir: &DataDir,
    interval_secs: i64,
    collectors: Vec<String>,
    tls: TlsFiles,
) -> Result<Agent, CommandError> {
    Agent::load(AgentConfig {
        dir: dir.clone(),
        interval_secs,
        collectors,
        tls,
    })
    .map_err(|e| match e {
        LoadError::NotInitialized(_) | LoadError::Tls(_) => CommandError::Usage(e.to_string()),
        other => CommandError::Runtime(other.to_string()),
    })
}

pub async fn run(dir: &DataDir, o: RunOptions) -> Result<(), CommandError> {
    // What `init` stored fills in what the command line left out (and proves `dir` is an
    // agent's directory).
    let stored = load(dir, o.interval_secs, Vec::new(), TlsFiles::default())?;
    // One running agent per data directory, held until this process ends: a second one
    // would overwrite ports.json and leave `record` and `flush` pointing at it.
    let _lock = dir
        .lock()
        .map_err(|e| CommandError::Runtime(e.to_string()))?;
    if let Some(warning) = dir.looser_than_private() {
        tracing::warn!(warning, "The data directory is not private.");
    }
    let listener = tokio::net::TcpListener::bind(&o.listen)
        .await
        .map_err(|e| CommandError::Usage(format!("--listen {}: cannot bind: {e}", o.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CommandError::Runtime(e.to_string()))?;
    let collectors = if o.collectors.is_empty() {
        stored_collectors(&stored.store)
    } else {
        o.collectors
    };
    let tls = if o.tls.is_empty() {
        stored_tls(&stored.store)
    } else {
        o.tls
    };
    drop(stored);
    let agent = Arc::new(load(dir, o.interval_secs, collectors, tls)?);
    let ports = json!({"listen": addr.to_string()});
    tally_runtime::ports::write(dir.path(), &ports)
        .map_err(|e| CommandError::Runtime(format!("cannot write ports.json: {e}")))?;
    if o.json {
        println!("{ports}");
    } else {
        println!("listening on {addr}");
    }
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "Recording API listens on a non-loopback address in plain text.");
    }
    tracing::info!(%addr, interval = %format!("{}s", o.interval_secs), collectors = ?agent.collectors, "Agent running.");
    crate::server::run(agent, listener, tally_runtime::shutdown::signal())
        .await
        .map_err(|e| CommandError::Runtime(e.to_string()))
}

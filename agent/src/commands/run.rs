//! `run`: bind the recording port, announce it (stdout and `ports.json`), load the agent
//! with the collectors and TLS files chosen (flags, else what `init` stored) and serve
//! until a shutdown signal. `load` opens an agent directory for the other commands.

use super::{CmdResult, CommandError, Output, stored_collectors, stored_tls};
use crate::agent::{Agent, AgentConfig, LoadError};
use crate::datadir::DataDir;
use crate::tls::TlsFiles;
use serde_json::json;
use std::sync::Arc;
use tally_runtime::service_manager::{self, ServiceState};

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
    // The listener is bound and the agent's database open: ready for the service manager.
    service_manager::announce(ServiceState::Ready);
    crate::server::run(agent, listener, service_manager::stop_requested())
        .await
        .map_err(|e| CommandError::Runtime(e.to_string()))
}

/// `config check`: the settings `run` would use, checked as `run` checks them (without
/// binding the port): the listen address, the interval, the agent directory (initialized:
/// key, license, database) and the TLS files, and at least one collector to deliver to.
/// Meant to run before the service starts (the systemd unit's `ExecStartPre`).
pub fn config_check(dir: &DataDir, o: &RunOptions) -> CmdResult {
    if std::net::ToSocketAddrs::to_socket_addrs(o.listen.as_str()).is_err() {
        return Err(CommandError::Usage(format!(
            "--listen: {:?} is not an address (HOST:PORT, e.g. 127.0.0.1:7071)",
            o.listen
        )));
    }
    let stored = load(dir, o.interval_secs, Vec::new(), TlsFiles::default())?;
    let collectors = if o.collectors.is_empty() {
        stored_collectors(&stored.store)
    } else {
        o.collectors.clone()
    };
    let tls = if o.tls.is_empty() {
        stored_tls(&stored.store)
    } else {
        o.tls.clone()
    };
    let license_id = stored.license.license_id.clone();
    drop(stored);
    if collectors.is_empty() {
        return Err(CommandError::Usage(
            "no collector to deliver to (hint: --collector URL, or `collectors` in the config \
             file)"
                .into(),
        ));
    }
    // Loading with the chosen TLS files reads them; each URL must make an endpoint.
    let agent = load(dir, o.interval_secs, collectors, tls)?;
    for url in &agent.collectors {
        crate::tls::endpoint(url, agent.tls.as_ref()).map_err(CommandError::Usage)?;
    }
    let warnings: Vec<String> = dir.looser_than_private().into_iter().collect();
    let json = json!({
        "ok": true,
        "data": dir.path().display().to_string(),
        "listen": o.listen,
        "interval_secs": o.interval_secs,
        "collectors": agent.collectors,
        "license_id": license_id,
        "warnings": warnings,
    });
    let mut text = format!(
        "config OK: data {}, license {license_id}, listen {}, interval {}s, collectors {}\n",
        dir.path().display(),
        o.listen,
        o.interval_secs,
        agent.collectors.join(", "),
    );
    for w in &warnings {
        text.push_str(&format!("warning: {w}\n"));
    }
    Ok(Output::new(json, text))
}

//! `tally-agent`: a thin clap front-end over the `tally_agent` library.

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use tally_agent::agent::{Agent, AgentConfig};
use tally_agent::commands::{self, CommandError, InitArgs, Output};
use tally_agent::datadir::DataDir;

#[derive(Parser)]
#[command(
    name = "tally-agent",
    version,
    about = "Tally agent: counts usage durably and delivers signed, usage-only reports"
)]
struct Cli {
    /// Data directory.
    #[arg(long, global = true, env = "TALLY_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// Configuration file (TOML); flags and TALLY_* variables take precedence.
    #[arg(long, global = true, env = "TALLY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print exactly one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the agent key, verify the license and enroll with the collector.
    Init {
        #[arg(long, value_name = "FILE")]
        license: PathBuf,
        /// Collector gRPC URL; repeat for failover (default: the license's endpoint).
        #[arg(long = "collector", value_name = "URL")]
        collectors: Vec<String>,
        /// Enrollment token from `tally-collector licenses issue`.
        #[arg(long)]
        token: Option<String>,
        /// Do not contact the collector: print the public key to enroll by hand.
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Record, close windows and deliver reports until stopped.
    Run {
        /// Recording API address (HTTP and gRPC); port 0 picks a free port.
        #[arg(long, env = "TALLY_LISTEN", value_name = "ADDR")]
        listen: Option<String>,
        /// Window length: 1s, 15m, 1h …
        #[arg(long, env = "TALLY_INTERVAL")]
        interval: Option<String>,
        /// Collector gRPC URL; repeat for failover (default: from init).
        #[arg(long = "collector", value_name = "URL")]
        collectors: Vec<String>,
        /// TLS files (default: those given to init).
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Record usage through the running agent (for scripts).
    Record {
        metric: String,
        #[arg(default_value_t = 1)]
        quantity: u64,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Delivery state, open window, license status.
    Status,
    /// Close the current window now (the running agent then delivers it).
    Flush,
    /// License status: active, grace or lapsed, lease and credits.
    License,
    /// Every report the agent sent, decoded.
    #[command(subcommand)]
    Reports(ReportsCmd),
    /// Write undelivered (or, with --since, all) signed reports to a file.
    Export {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
    },
    /// Store the receipts from the vendor's `tally-collector import`.
    ImportReceipts { file: PathBuf },
}

/// TLS towards the collector (`https://` URLs).
#[derive(clap::Args, Clone, Default)]
struct TlsArgs {
    /// The CA that signed the collector's certificate (PEM).
    #[arg(long, env = "TALLY_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The agent's certificate, for collectors that require mutual TLS (PEM).
    #[arg(long, env = "TALLY_CERT", value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The agent certificate's private key (PEM).
    #[arg(long, env = "TALLY_KEY", value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
}

impl TlsArgs {
    fn files(&self) -> tally_agent::tls::TlsFiles {
        tally_agent::tls::TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

#[derive(Subcommand)]
enum ReportsCmd {
    List,
    Show {
        seq: u64,
    },
    /// Check the chain, every signature and every receipt offline.
    Verify,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data: Option<PathBuf>,
    listen: Option<String>,
    interval: Option<String>,
    collectors: Option<Vec<String>>,
}

fn parse_cli() -> Cli {
    match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments");
            eprintln!("{first} (hint: see 'tally-agent --help')");
            std::process::exit(2);
        }
    }
}

fn main() {
    let cli = parse_cli();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let json_out = cli.json;
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(Some(out)) => {
            if json_out {
                println!("{}", out.json);
            } else {
                print!("{}", out.text);
            }
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<ConfigFile, CommandError> {
    let Some(path) = path else {
        return Ok(ConfigFile::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        CommandError::Usage(format!("cannot read config file {}: {e}", path.display()))
    })?;
    toml::from_str(&text).map_err(|e| {
        CommandError::Usage(format!("config file {}: {}", path.display(), e.message()))
    })
}

fn interval_secs(s: &str) -> Result<i64, CommandError> {
    let secs = tally_proto::time::parse_duration_secs(s)
        .map_err(|e| CommandError::Usage(format!("--interval: {e}")))?;
    if secs as i64 > tally_proto::limits::MAX_WINDOW_SECS {
        return Err(CommandError::Usage("--interval: at most 24h".into()));
    }
    Ok(secs as i64)
}

fn load_agent(
    dir: &DataDir,
    interval: i64,
    collectors: Vec<String>,
) -> Result<Agent, CommandError> {
    load_agent_tls(dir, interval, collectors, Default::default())
}

fn load_agent_tls(
    dir: &DataDir,
    interval: i64,
    collectors: Vec<String>,
    tls: tally_agent::tls::TlsFiles,
) -> Result<Agent, CommandError> {
    Agent::load(AgentConfig {
        dir: dir.clone(),
        interval_secs: interval,
        collectors,
        tls,
    })
    .map_err(|e| match e {
        tally_agent::agent::LoadError::NotInitialized(_) => CommandError::Usage(e.to_string()),
        other => CommandError::Runtime(other.to_string()),
    })
}

/// The running agent's base URL, from ports.json.
fn running_agent(dir: &DataDir) -> Result<String, CommandError> {
    let text = std::fs::read_to_string(dir.ports()).map_err(|_| {
        CommandError::Runtime(format!(
            "no running agent found for {} (hint: start 'tally-agent run')",
            dir.path().display()
        ))
    })?;
    let v: Value = tally_runtime::json::parse(text.as_bytes())
        .map_err(|e| CommandError::Runtime(format!("{}: {e}", dir.ports().display())))?;
    let listen = v["listen"]
        .as_str()
        .ok_or_else(|| CommandError::Runtime("ports.json has no \"listen\"".into()))?;
    Ok(format!("http://{listen}"))
}

async fn call_agent(
    dir: &DataDir,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CommandError> {
    let base = running_agent(dir)?;
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
    let v: Value = resp
        .json()
        .await
        .map_err(|e| CommandError::Runtime(e.to_string()))?;
    if status.is_client_error() {
        return Err(CommandError::Usage(
            v["error"]["message"]
                .as_str()
                .unwrap_or("rejected")
                .to_string(),
        ));
    }
    if !status.is_success() {
        return Err(CommandError::Runtime(
            v["error"]["message"]
                .as_str()
                .unwrap_or("failed")
                .to_string(),
        ));
    }
    Ok(v)
}

fn out(json: Value) -> Output {
    let text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
    Output { json, text }
}

async fn dispatch(cli: Cli) -> Result<Option<Output>, CommandError> {
    let config = load_config(cli.config.as_ref())?;
    let dir = DataDir::new(
        cli.data
            .or(config.data.clone())
            .unwrap_or_else(|| PathBuf::from("./tally-data")),
    );
    let default_interval = config.interval.clone().unwrap_or_else(|| "1h".into());
    Ok(Some(match cli.command {
        Command::Init {
            license,
            collectors,
            token,
            offline,
            tls,
        } => {
            let collectors = if collectors.is_empty() {
                config.collectors.clone().unwrap_or_default()
            } else {
                collectors
            };
            commands::init(
                &dir,
                InitArgs {
                    license_file: license,
                    collectors,
                    token,
                    offline,
                    tls: tls.files(),
                },
            )
            .await?
        }
        Command::Run {
            listen,
            interval,
            collectors,
            tls,
        } => {
            let interval = interval_secs(&interval.unwrap_or(default_interval))?;
            let listen = listen
                .or(config.listen)
                .unwrap_or_else(|| "127.0.0.1:7071".into());
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| CommandError::Usage(format!("--listen {listen}: cannot bind: {e}")))?;
            let addr = listener
                .local_addr()
                .map_err(|e| CommandError::Runtime(e.to_string()))?;
            let probe = load_agent(&dir, interval, Vec::new())?;
            let mut collectors = if collectors.is_empty() {
                config.collectors.unwrap_or_default()
            } else {
                collectors
            };
            if collectors.is_empty() {
                collectors = commands::stored_collectors(&probe.store);
            }
            let tls = if tls.files().is_empty() {
                commands::stored_tls(&probe.store)
            } else {
                tls.files()
            };
            drop(probe);
            let agent = Arc::new(
                load_agent_tls(&dir, interval, collectors, tls).map_err(|e| match e {
                    CommandError::Runtime(m) if m.contains("--ca") || m.contains("--cert") => {
                        CommandError::Usage(m)
                    }
                    other => other,
                })?,
            );
            let ports = json!({"listen": addr.to_string()});
            let tmp = dir.root.join("ports.json.tmp");
            std::fs::write(&tmp, ports.to_string())
                .and_then(|_| std::fs::rename(&tmp, dir.ports()))
                .map_err(|e| CommandError::Runtime(e.to_string()))?;
            if cli.json {
                println!("{ports}");
            } else {
                println!("listening on {addr}");
            }
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "Recording API listens on a non-loopback address in plain text.");
            }
            tracing::info!(%addr, interval, collectors = ?agent.collectors, "Agent running.");
            tally_agent::server::run(agent, listener, shutdown_signal())
                .await
                .map_err(|e| CommandError::Runtime(e.to_string()))?;
            return Ok(None);
        }
        Command::Record {
            metric,
            quantity,
            idempotency_key,
        } => {
            let mut body = json!({"metric": metric, "quantity": quantity});
            if let Some(k) = idempotency_key {
                body["idempotency_key"] = json!(k);
            }
            out(call_agent(&dir, reqwest::Method::POST, "/v1/events", Some(body)).await?)
        }
        Command::Flush => out(call_agent(&dir, reqwest::Method::POST, "/v1/flush", None).await?),
        Command::Status => match call_agent(&dir, reqwest::Method::GET, "/v1/status", None).await {
            Ok(v) => out(v),
            Err(_) => out(commands::status_json(
                &load_agent(&dir, 3600, Vec::new())?,
                false,
            )?),
        },
        Command::License => {
            let agent = load_agent(&dir, 3600, Vec::new())?;
            match call_agent(&dir, reqwest::Method::GET, "/v1/license", None).await {
                Ok(v) => out(v),
                Err(_) => out(serde_json::to_value(tally_agent::status::license_status(
                    &agent,
                    chrono::Utc::now(),
                ))
                .unwrap_or_default()),
            }
        }
        Command::Reports(r) => {
            let agent = load_agent(&dir, 3600, Vec::new())?;
            match r {
                ReportsCmd::List => commands::reports_list(&agent)?,
                ReportsCmd::Show { seq } => commands::reports_show(&agent, seq)?,
                ReportsCmd::Verify => commands::reports_verify(&agent)?,
            }
        }
        Command::Export { out: file, since } => {
            commands::export(&load_agent(&dir, 3600, Vec::new())?, &file, since)?
        }
        Command::ImportReceipts { file } => {
            commands::import_receipts(&load_agent(&dir, 3600, Vec::new())?, &file).await?
        }
    }))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term => {} }
}

//! `tally-agent`: a thin clap front-end over the `tally_agent` library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tally_agent::commands::{self, CommandError, InitArgs, Output};
use tally_agent::datadir::DataDir;

#[derive(Parser)]
#[command(
    name = "tally-agent",
    version,
    about = "Tally agent: counts usage durably and delivers signed, usage-only reports"
)]
struct Cli {
    #[command(flatten)]
    common: tally_runtime::cli::CommonArgs,
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
    Run(RunArgs),
    /// The configuration `run` would use.
    #[command(subcommand)]
    Config(ConfigCmd),
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
    /// Closed monthly statements from the vendor, checked against this agent's receipts.
    #[command(subcommand)]
    Statements(StatementsCmd),
    /// The agent keys that signed this agent's reports; rotating to a new one.
    #[command(subcommand)]
    Keys(KeysCmd),
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
#[derive(clap::Args)]
struct RunArgs {
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
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check the settings (flags, environment, config file) and the agent directory as
    /// `run` would, without starting: exit 0 and a summary, or exit 2 naming the problem.
    Check(RunArgs),
}

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

#[derive(Subcommand)]
enum KeysCmd {
    /// Every key, oldest first: the seqs it signs and its rotation's state.
    List,
    /// Hand the chain to a new key from the next report on (signed by the old and the new
    /// key; the old private key is removed). Works while the agent runs.
    Rotate,
}

#[derive(Subcommand)]
enum StatementsCmd {
    /// Verify a closed statement's signature and compare this agent's line with the
    /// reports and receipts it holds (exit 1 if they differ).
    ///
    /// `--fetch` reads the billing API token from TALLY_API_TOKEN only: there is no flag
    /// for it, because a command line is visible to every user of the machine.
    Verify(StatementArgs),
    /// Audit a whole closed statement as the customer: its signature and arithmetic, every
    /// agent line's key against your own list of agents (a key not in it is a phantom
    /// install), and every line re-derived from the signed reports the billing API serves
    /// as its evidence (exit 1 naming each difference). Needs the billing API (--api) even
    /// with a FILE: the evidence comes from it.
    ///
    /// The billing API token comes from TALLY_API_TOKEN only (never a flag).
    Audit {
        #[command(flatten)]
        statement: StatementArgs,
        /// Your agents: one key id per line, as 'tally-agent status' prints key_id on each
        /// of your machines ('#' starts a comment).
        #[arg(long, value_name = "FILE")]
        agents: PathBuf,
    },
}

/// Which statement, and how to reach the billing API: what `statements verify` and
/// `statements audit` share.
#[derive(clap::Args)]
struct StatementArgs {
    /// A statement document (JSON) saved from the billing API.
    #[arg(
        value_name = "FILE",
        required_unless_present = "fetch",
        conflicts_with = "fetch"
    )]
    file: Option<PathBuf>,
    /// Fetch the statement of this month (YYYY-MM) for the license's customer.
    #[arg(long, value_name = "YYYY-MM")]
    fetch: Option<String>,
    /// The collector's billing API URL, e.g. https://billing.example.com.
    #[arg(long, env = "TALLY_API_URL", value_name = "URL")]
    api: Option<String>,
    /// CA certificates (PEM) to trust for the billing API besides the public roots
    /// (default: the CA given to 'init', if any).
    #[arg(long, env = "TALLY_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
}

impl StatementArgs {
    /// The statement's source, and the billing API with the token from the environment
    /// only (a flag would show it to every user of the machine, `ps`).
    fn split(self) -> Result<(commands::StatementSource, commands::BillingApi), CommandError> {
        let source = match (self.file, self.fetch) {
            (Some(file), _) => commands::StatementSource::File(file),
            (None, Some(month)) => commands::StatementSource::Fetch(month),
            // clap already requires one of them.
            (None, None) => {
                return Err(CommandError::Usage(
                    "give a statement FILE or --fetch YYYY-MM".into(),
                ));
            }
        };
        let api = commands::BillingApi {
            url: self.api,
            token: std::env::var(commands::API_TOKEN_ENV).ok(),
            ca: self.ca,
        };
        Ok((source, api))
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data: Option<PathBuf>,
    listen: Option<String>,
    interval: Option<String>,
    collectors: Option<Vec<String>>,
}

/// `run`'s settings: each from its flag, else its `TALLY_*` variable (clap reads both), else
/// the config file, else the default.
fn run_options(
    a: RunArgs,
    config: &ConfigFile,
    default_interval: String,
    json: bool,
) -> Result<commands::RunOptions, CommandError> {
    Ok(commands::RunOptions {
        listen: a
            .listen
            .or(config.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:7071".into()),
        interval_secs: commands::interval_secs(&a.interval.unwrap_or(default_interval))?,
        collectors: if a.collectors.is_empty() {
            config.collectors.clone().unwrap_or_default()
        } else {
            a.collectors
        },
        tls: a.tls.files(),
        json,
    })
}

fn main() {
    let cli: Cli = tally_runtime::cli::parse("tally-agent");
    let json_out = cli.common.json;
    let log_format = cli.common.log_format;
    tally_runtime::cli::run_main("tally-agent", log_format, json_out, dispatch(cli))
}

/// Opens the agent directory for a command that reads it (the interval does not matter).
fn open(dir: &DataDir) -> Result<tally_agent::agent::Agent, CommandError> {
    commands::load(dir, 3600, Vec::new(), Default::default())
}

async fn dispatch(cli: Cli) -> Result<Option<Output>, CommandError> {
    let config: ConfigFile = tally_runtime::cli::load_config(cli.common.config.as_deref())?;
    let dir = DataDir::resolve(cli.common.data, config.data.clone());
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
        Command::Run(a) => {
            let options = run_options(a, &config, default_interval, cli.common.json)?;
            commands::run(&dir, options).await?;
            return Ok(None);
        }
        Command::Config(ConfigCmd::Check(a)) => {
            let options = run_options(a, &config, default_interval, cli.common.json)?;
            commands::config_check(&dir, &options)?
        }
        Command::Record {
            metric,
            quantity,
            idempotency_key,
        } => commands::record(&dir, &metric, quantity, idempotency_key).await?,
        Command::Flush => commands::flush(&dir).await?,
        // Status and license work from the database alone when no agent is running.
        Command::Status => commands::status(&dir).await?,
        Command::License => commands::license(&dir).await?,
        Command::Reports(r) => {
            let agent = open(&dir)?;
            match r {
                ReportsCmd::List => commands::reports_list(&agent)?,
                ReportsCmd::Show { seq } => commands::reports_show(&agent, seq)?,
                ReportsCmd::Verify => commands::reports_verify(&agent, cli.common.json)?,
            }
        }
        Command::Statements(StatementsCmd::Verify(args)) => {
            let (source, api) = args.split()?;
            commands::statements_verify(&open(&dir)?, source, api, cli.common.json).await?
        }
        Command::Statements(StatementsCmd::Audit { statement, agents }) => {
            let (source, api) = statement.split()?;
            commands::statements_audit(&open(&dir)?, source, api, &agents, cli.common.json).await?
        }
        Command::Keys(KeysCmd::List) => commands::keys_list(&open(&dir)?)?,
        Command::Keys(KeysCmd::Rotate) => commands::keys_rotate(&open(&dir)?).await?,
        Command::Export { out: file, since } => commands::export(&open(&dir)?, &file, since)?,
        Command::ImportReceipts { file } => commands::import_receipts(&open(&dir)?, &file).await?,
    }))
}

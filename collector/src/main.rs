//! `tally-collector`: a thin clap front-end over the `tally_collector` library.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use tally_collector::commands::{self, CommandError, Ctx, IssueArgs, Output};
use tally_collector::datadir::DataDir;
use tally_collector::store::AgentFilter;

#[derive(Parser)]
#[command(
    name = "tally-collector",
    version,
    about = "Tally collector: verified, exactly-once usage ingest and billing queries"
)]
struct Cli {
    #[command(flatten)]
    common: tally_runtime::cli::CommonArgs,
    /// The store: nothing for the SQLite file in --data, or postgres://user:pass@host:port/db.
    #[arg(long, global = true, env = "TALLY_DATABASE_URL", value_name = "URL")]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory, database, vendor key and a first admin token.
    Init,
    /// Serve gRPC ingest and the billing HTTP API.
    Serve(ServeArgs),
    /// The configuration `serve` would run with.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Customers.
    #[command(subcommand)]
    Customers(CustomersCmd),
    /// Licenses.
    #[command(subcommand)]
    Licenses(LicensesCmd),
    /// Enrolled agent keys.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// API tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Usage per customer, license, metric and period.
    Usage(UsageArgs),
    /// Import a report bundle written by `tally-agent export`.
    Import {
        file: PathBuf,
        /// Write the signed receipts here, for `tally-agent import-receipts`.
        #[arg(long, value_name = "FILE")]
        receipts_out: Option<PathBuf>,
    },
    /// Review quarantined reports.
    #[command(subcommand)]
    Quarantine(QuarantineCmd),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// A consistent copy of the live SQLite database (`--out FILE`), or check one
    /// (`backup verify FILE`).
    Backup(BackupArgs),
    /// Restore a backup into a data directory that has no database yet.
    Restore {
        file: PathBuf,
        /// The age private key file, for an encrypted (scheduled) backup.
        #[arg(long, value_name = "KEYFILE")]
        identity: Option<PathBuf>,
    },
    /// Closing months: freezes and signs every customer's statement.
    #[command(subcommand)]
    Periods(PeriodsCmd),
    /// Closed statements.
    #[command(subcommand)]
    Statements(StatementsCmd),
    /// Report bodies kept after their month closed.
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// The keyring: the vendor key and the online keys that sign receipts and statements.
    #[command(subcommand)]
    Keys(KeysCmd),
}

#[derive(Subcommand)]
enum KeysCmd {
    /// The keys of the newest keyring, with their purposes and validity.
    List,
    /// New online keys (`--collector`) or a new vendor key (`--vendor`); needs the vendor
    /// key, which signs the new keyring.
    Rotate {
        /// New receipt and statement keys; the old ones stay listed, valid for what they
        /// signed.
        #[arg(long, required_unless_present = "vendor", conflicts_with = "vendor")]
        collector: bool,
        /// A new vendor key: the new keyring is signed by the old and the new one.
        #[arg(long)]
        vendor: bool,
        /// How long the replaced keys stay valid while every node switches (default 10m).
        #[arg(long, value_name = "DURATION")]
        overlap: Option<String>,
    },
    /// Revoke an online key after a leak (needs the vendor key): what it signed claiming
    /// TIME or later is refused by agents. An agent key id instead: its reports arriving
    /// from TIME on are refused (agent_revoked).
    Revoke {
        key_id: String,
        /// From when (RFC 3339 or YYYY-MM-DD; default now).
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check the settings (flags, environment, config file) and the data directory as
    /// `serve` would, without starting: exit 0 and a summary, or exit 2 naming the problem.
    Check(ServeArgs),
}

#[derive(Subcommand)]
enum RetentionCmd {
    /// Remove now the report bodies of months closed at least --retain-reports ago.
    Apply {
        /// How long report bodies are kept after their month closed (default 400d).
        #[arg(long, value_name = "DURATION")]
        retain_reports: Option<String>,
    },
    /// What retention removed, per agent and month: the seq range, the count and the
    /// Merkle root of the removed reports' digests (what a statement's line is checked
    /// against once the bodies are gone).
    List {
        /// Only this agent's (its id).
        #[arg(long, value_name = "ID")]
        agent: Option<String>,
    },
}

#[derive(Subcommand)]
enum PeriodsCmd {
    /// Close a month that has ended (YYYY-MM): its statements are frozen and signed.
    Close { month: String },
    /// Months closed so far.
    List,
}

#[derive(Subcommand)]
enum StatementsCmd {
    /// Check a closed statement's signature offline and print what it bills.
    Verify {
        file: PathBuf,
        /// The public key that signed it, in hex (the statement key, as `init` and `keys
        /// list` show it; the vendor key for statements closed before keyrings); default:
        /// the keyring of the store in --data.
        #[arg(long, value_name = "HEX")]
        vendor_key: Option<String>,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BackupArgs {
    #[command(subcommand)]
    command: Option<BackupCmd>,
    /// Where to write the backup; it must not exist.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Check a backup file's integrity and print the totals it holds.
    Verify {
        file: PathBuf,
        /// The age private key file, for an encrypted (scheduled) backup.
        #[arg(long, value_name = "KEYFILE")]
        identity: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// gRPC ingest address (port 0 picks a free port).
    #[arg(long, env = "TALLY_GRPC_LISTEN", value_name = "ADDR")]
    grpc_listen: Option<String>,
    /// Billing HTTP API address (port 0 picks a free port).
    #[arg(long, env = "TALLY_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<String>,
    /// TLS certificate (PEM) for gRPC ingest.
    #[arg(
        long,
        env = "TALLY_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for gRPC ingest.
    #[arg(
        long,
        env = "TALLY_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Reports per second one agent key may submit online (0: unlimited; default 1000).
    #[arg(long, env = "TALLY_AGENT_RATE", value_name = "N")]
    agent_rate: Option<f64>,
    /// Require agents to present a certificate signed by this CA (mutual TLS).
    #[arg(
        long,
        env = "TALLY_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    client_ca: Option<PathBuf>,
    /// Close each month this long after it ends (e.g. 3d); `off`: only `periods close`.
    #[arg(long, env = "TALLY_CLOSE_GRACE", value_name = "DURATION")]
    close_grace: Option<String>,
    /// Remove report bodies this long after their month closed (default 400d); rollups,
    /// statements and dedup facts stay.
    #[arg(long, env = "TALLY_RETAIN_REPORTS", value_name = "DURATION")]
    retain_reports: Option<String>,
    /// Post usage alerts (threshold crossings) to this URL as signed JSON.
    #[arg(
        long,
        env = "TALLY_WEBHOOK",
        value_name = "URL",
        requires = "webhook_secret_file"
    )]
    webhook: Option<String>,
    /// The HMAC-SHA256 secret for `X-Tally-Signature` (a file, at least 16 bytes).
    #[arg(
        long,
        env = "TALLY_WEBHOOK_SECRET_FILE",
        value_name = "FILE",
        requires = "webhook"
    )]
    webhook_secret_file: Option<PathBuf>,
    /// Take an encrypted backup this often (e.g. 24h; SQLite store only); needs
    /// --backup-dir and --backup-recipient.
    #[arg(long, env = "TALLY_BACKUP_EVERY", value_name = "DURATION")]
    backup_every: Option<String>,
    /// Where scheduled backups go (an existing directory, on other storage than the data).
    #[arg(long, env = "TALLY_BACKUP_DIR", value_name = "DIR")]
    backup_dir: Option<PathBuf>,
    /// How many scheduled backups to keep; older ones are removed (default 5).
    #[arg(long, env = "TALLY_BACKUP_KEEP", value_name = "N")]
    backup_keep: Option<u64>,
    /// The age public key (a file with one `age1…` line) backups are encrypted to; its
    /// private key stays off the collector.
    #[arg(long, env = "TALLY_BACKUP_RECIPIENT", value_name = "FILE")]
    backup_recipient: Option<PathBuf>,
    /// Sign the web UI out after this long without activity (default 30m).
    #[arg(long, env = "TALLY_UI_IDLE", value_name = "DURATION")]
    ui_idle: Option<String>,
}

#[derive(Subcommand)]
enum CustomersCmd {
    /// Add a customer; prints its id.
    Add {
        /// The customer's name, as people know it.
        name: String,
    },
    /// List customers.
    List,
    /// Revoke the customer's licenses, agents and tokens now; purge all its data later.
    Cancel {
        /// The customer's id.
        id: String,
        /// How long to keep the data before purging it (default 30d).
        #[arg(long, value_name = "DURATION")]
        purge_after: Option<String>,
        /// Purge now instead (cannot be undone: needs --yes).
        #[arg(long)]
        now: bool,
        /// Confirms --now.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum LicensesCmd {
    /// Issue a license file and an enrollment token.
    Issue {
        /// The customer's id (as 'customers add' printed it).
        #[arg(long, value_name = "ID")]
        customer: String,
        /// METRIC or METRIC=LIMIT (per calendar month, UTC); repeat for several.
        #[arg(long = "metric", value_name = "METRIC[=LIMIT]", required = true)]
        metrics: Vec<String>,
        /// Last day of validity, YYYY-MM-DD (the license runs to the end of that day, UTC),
        /// or an exact RFC 3339 time.
        #[arg(long, value_name = "DATE")]
        expires: String,
        /// YYYY-MM-DD or RFC 3339; default now.
        #[arg(long, value_name = "DATE")]
        not_before: Option<String>,
        /// How long after --expires agents may still report (and reports still count),
        /// e.g. 7d; 0 for none.
        #[arg(long, default_value = "7d")]
        grace: String,
        /// How many agents may enroll with the token.
        #[arg(long, default_value_t = 1)]
        enrollments: u32,
        /// How long the enrollment token stays usable, e.g. 7d.
        #[arg(long, default_value = "7d")]
        token_ttl: String,
        /// The collector URL agents deliver to.
        #[arg(long, default_value = "http://127.0.0.1:7443")]
        endpoint: String,
        /// Where to write the license file (default DIR/licenses/ID.license).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Usage alerts: thresholds in percent of each limited metric's monthly limit.
        #[arg(long, value_name = "80%,100%")]
        alert: Option<String>,
    },
    /// List licenses (all, or one customer's).
    List {
        /// Only this customer's (its id).
        #[arg(long, value_name = "ID")]
        customer: Option<String>,
    },
    /// Revoke a license: its agents' reports stop counting, its token stops enrolling.
    Revoke {
        /// The license id.
        id: String,
    },
    /// Replace a license's usage alert thresholds (`none`: no alerts).
    Alerts {
        id: String,
        #[arg(long, value_name = "80%,100%")]
        alert: String,
    },
}

#[derive(Subcommand)]
enum AgentsCmd {
    /// Enroll an agent key by hand (air-gapped sites: `tally-agent init --offline`).
    Add {
        /// The license the key enrolls on (its id).
        #[arg(long, value_name = "ID")]
        license: String,
        /// The agent's public key in hex.
        #[arg(long)]
        key: String,
    },
    List {
        #[arg(long)]
        license: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        /// active, silent or revoked.
        #[arg(long)]
        status: Option<String>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Create an API token; its secret is printed once.
    Create {
        /// admin, billing or customer:<id>.
        #[arg(long)]
        role: String,
        /// A name for people (who holds it, what for).
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token.
    Revoke {
        /// The token's id.
        id: String,
    },
}

#[derive(Args)]
struct UsageArgs {
    #[arg(long)]
    customer: Option<String>,
    #[arg(long)]
    license: Option<String>,
    #[arg(long)]
    metric: Option<String>,
    /// Inclusive; YYYY-MM-DD or RFC 3339.
    #[arg(long)]
    from: Option<String>,
    /// Exclusive; YYYY-MM-DD or RFC 3339.
    #[arg(long)]
    to: Option<String>,
    /// hour, day or month.
    #[arg(long)]
    granularity: Option<String>,
    /// table, csv or json.
    #[arg(long)]
    format: Option<String>,
}

#[derive(Subcommand)]
enum QuarantineCmd {
    List,
    /// Count a quarantined report (once, however often this is run).
    Release {
        digest: String,
    },
    /// Keep a quarantined report but never count it.
    Discard {
        digest: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// The configuration file: the same settings as flags, lowest precedence.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data: Option<PathBuf>,
    database: Option<String>,
    grpc_listen: Option<String>,
    http_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    agent_rate: Option<f64>,
    close_grace: Option<String>,
    retain_reports: Option<String>,
    webhook: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    backup_every: Option<String>,
    backup_dir: Option<PathBuf>,
    backup_keep: Option<u64>,
    backup_recipient: Option<PathBuf>,
    ui_idle: Option<String>,
}

/// `serve`'s settings: each from its flag, else its `TALLY_*` variable (clap reads both),
/// else the config file, else the default. Pairs that only work together (certificate and
/// key, webhook URL and secret) must come whole, wherever they come from.
fn serve_options(
    a: ServeArgs,
    config: &ConfigFile,
    database: Option<&str>,
    json: bool,
) -> Result<commands::ServeOptions, CommandError> {
    let usage = |m: &str| CommandError::Usage(m.to_string());
    let cert = a.tls_cert.or(config.tls_cert.clone());
    let key = a.tls_key.or(config.tls_key.clone());
    let client_ca = a.client_ca.or(config.client_ca.clone());
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(tally_collector::tls::TlsFiles {
            cert,
            key,
            client_ca,
        }),
        (None, None) if client_ca.is_some() => {
            return Err(usage("client_ca (mutual TLS) needs tls_cert and tls_key"));
        }
        (None, None) => None,
        _ => {
            return Err(usage(
                "tls_cert and tls_key go together: give both or neither",
            ));
        }
    };
    let webhook = match (
        a.webhook.or(config.webhook.clone()),
        a.webhook_secret_file.or(config.webhook_secret_file.clone()),
    ) {
        (Some(url), Some(secret)) => Some((url, secret)),
        (None, None) => None,
        _ => {
            return Err(usage(
                "webhook and webhook_secret_file go together: give both or neither",
            ));
        }
    };
    let backup_keep = a.backup_keep.or(config.backup_keep);
    let backup = match (
        a.backup_every.or(config.backup_every.clone()),
        a.backup_dir.or(config.backup_dir.clone()),
        a.backup_recipient.or(config.backup_recipient.clone()),
    ) {
        (Some(every), Some(dir), Some(recipient)) => Some(commands::BackupOptions {
            every,
            dir,
            keep: backup_keep,
            recipient,
        }),
        (None, None, None) if backup_keep.is_none() => None,
        _ => {
            return Err(usage(
                "scheduled backups need backup_every, backup_dir and backup_recipient together \
                 (backup_keep is optional)",
            ));
        }
    };
    if backup.is_some()
        && !matches!(
            tally_collector::store::check_database_url(database)?,
            tally_collector::store::Database::Sqlite
        )
    {
        return Err(usage(
            "scheduled backups are for the SQLite store; back up PostgreSQL with \
             `pg_dump | age` (see docs/operations.md, \"Backups\")",
        ));
    }
    Ok(commands::ServeOptions {
        grpc_listen: a
            .grpc_listen
            .or(config.grpc_listen.clone())
            .unwrap_or_else(|| "127.0.0.1:7443".into()),
        http_listen: a
            .http_listen
            .or(config.http_listen.clone())
            .unwrap_or_else(|| "127.0.0.1:8080".into()),
        tls,
        agent_rate: a
            .agent_rate
            .or(config.agent_rate)
            .unwrap_or(tally_collector::ratelimit::DEFAULT_REPORTS_PER_SEC),
        close_grace: a.close_grace.or(config.close_grace.clone()),
        retain_reports: a.retain_reports.or(config.retain_reports.clone()),
        webhook,
        backup,
        ui_idle: a.ui_idle.or(config.ui_idle.clone()),
        json,
    })
}

fn main() {
    let cli: Cli = tally_runtime::cli::parse("tally-collector");
    let json_out = cli.common.json;
    let log_format = cli.common.log_format;
    tally_runtime::cli::run_main("tally-collector", log_format, json_out, dispatch(cli))
}

async fn dispatch(cli: Cli) -> Result<Option<Output>, CommandError> {
    let config: ConfigFile = tally_runtime::cli::load_config(cli.common.config.as_deref())?;
    let dir = DataDir::resolve(cli.common.data, config.data.clone());
    let database = cli.database.or(config.database.clone());
    let database = database.as_deref();
    let out = match cli.command {
        Command::Init => commands::init(dir, database).await?,
        Command::Config(ConfigCmd::Check(a)) => {
            let options = serve_options(a, &config, database, cli.common.json)?;
            commands::config_check(&dir, database, &options)?
        }
        Command::Serve(a) => {
            let options = serve_options(a, &config, database, cli.common.json)?;
            commands::serve(Ctx::open(dir, database).await?, options).await?;
            return Ok(None);
        }
        Command::Customers(c) => {
            let ctx = Ctx::open(dir, database).await?;
            match c {
                CustomersCmd::Add { name } => commands::customers_add(&ctx, &name).await?,
                CustomersCmd::List => commands::customers_list(&ctx).await?,
                CustomersCmd::Cancel {
                    id,
                    purge_after,
                    now,
                    yes,
                } => {
                    if now && !yes {
                        return Err(CommandError::Usage(format!(
                            "customers cancel {id} --now purges all of the customer's reports, \
                             usage and statements at once and cannot be undone; add --yes to \
                             confirm"
                        )));
                    }
                    commands::customers_cancel(&ctx, &id, purge_after.as_deref(), now).await?
                }
            }
        }
        Command::Licenses(c) => {
            let ctx = Ctx::open(dir, database).await?;
            match c {
                LicensesCmd::Issue {
                    customer,
                    metrics,
                    expires,
                    not_before,
                    grace,
                    enrollments,
                    token_ttl,
                    endpoint,
                    out,
                    alert,
                } => {
                    commands::licenses_issue(
                        &ctx,
                        IssueArgs {
                            customer,
                            metrics,
                            expires,
                            not_before,
                            grace,
                            enrollments,
                            token_ttl,
                            endpoint,
                            out,
                            alert,
                        },
                    )
                    .await?
                }
                LicensesCmd::List { customer } => commands::licenses_list(&ctx, customer).await?,
                LicensesCmd::Revoke { id } => commands::licenses_revoke(&ctx, &id).await?,
                LicensesCmd::Alerts { id, alert } => {
                    commands::licenses_alerts(&ctx, &id, &alert).await?
                }
            }
        }
        Command::Agents(c) => {
            let ctx = Ctx::open(dir, database).await?;
            match c {
                AgentsCmd::Add { license, key } => {
                    commands::agents_add(&ctx, &license, &key).await?
                }
                AgentsCmd::List {
                    license,
                    customer,
                    status,
                } => commands::agents_list(&ctx, AgentFilter { customer, license }, status).await?,
                AgentsCmd::Revoke { id } => commands::agents_revoke(&ctx, &id).await?,
            }
        }
        Command::Tokens(c) => {
            let ctx = Ctx::open(dir, database).await?;
            match c {
                TokensCmd::Create { role, name } => {
                    commands::tokens_create(&ctx, &role, name).await?
                }
                TokensCmd::List => commands::tokens_list(&ctx).await?,
                TokensCmd::Revoke { id } => commands::tokens_revoke(&ctx, &id).await?,
            }
        }
        Command::Usage(a) => {
            let ctx = Ctx::open(dir, database).await?;
            let pairs: Vec<(String, String)> = [
                ("customer", a.customer),
                ("license", a.license),
                ("metric", a.metric),
                ("from", a.from),
                ("to", a.to),
                ("granularity", a.granularity),
                ("format", a.format),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect();
            commands::usage(&ctx, pairs, cli.common.json).await?
        }
        Command::Import { file, receipts_out } => {
            let ctx = Ctx::open(dir, database).await?;
            commands::import(&ctx, &file, receipts_out.as_deref()).await?
        }
        Command::Quarantine(c) => {
            let ctx = Ctx::open(dir, database).await?;
            match c {
                QuarantineCmd::List => commands::quarantine_list(&ctx).await?,
                QuarantineCmd::Release { digest } => {
                    commands::quarantine_release(&ctx, &digest).await?
                }
                QuarantineCmd::Discard { digest } => {
                    commands::quarantine_discard(&ctx, &digest).await?
                }
            }
        }
        Command::Backup(BackupArgs {
            command: Some(BackupCmd::Verify { file, identity }),
            ..
        }) => commands::backup_verify(file, identity).await?,
        Command::Backup(BackupArgs { out: Some(out), .. }) => {
            commands::backup(&dir, database, out).await?
        }
        Command::Backup(BackupArgs { out: None, .. }) => {
            return Err(CommandError::Usage(
                "backup needs --out FILE (or 'backup verify FILE')".into(),
            ));
        }
        Command::Restore { file, identity } => {
            commands::restore(&dir, database, file, identity).await?
        }
        Command::Periods(c) => {
            let ctx = Ctx::open(dir, database).await?;
            match c {
                PeriodsCmd::Close { month } => commands::periods_close(&ctx, &month).await?,
                PeriodsCmd::List => commands::periods_list(&ctx).await?,
            }
        }
        Command::Keys(k) => {
            let ctx = Ctx::open(dir, database).await?;
            match k {
                KeysCmd::List => commands::keys_list(&ctx).await?,
                KeysCmd::Rotate {
                    vendor: true,
                    overlap,
                    ..
                } => commands::keys_rotate_vendor(&ctx, overlap.as_deref()).await?,
                KeysCmd::Rotate { overlap, .. } => {
                    commands::keys_rotate_collector(&ctx, overlap.as_deref()).await?
                }
                KeysCmd::Revoke { key_id, from } => {
                    commands::keys_revoke(&ctx, &key_id, from.as_deref()).await?
                }
            }
        }
        Command::Retention(RetentionCmd::Apply { retain_reports }) => {
            let ctx = Ctx::open(dir, database).await?;
            commands::retention_apply(&ctx, retain_reports.as_deref()).await?
        }
        Command::Retention(RetentionCmd::List { agent }) => {
            let ctx = Ctx::open(dir, database).await?;
            commands::retention_list(&ctx, agent).await?
        }
        Command::Statements(StatementsCmd::Verify { file, vendor_key }) => {
            commands::statements_verify(&file, vendor_key.as_deref(), &dir, database).await?
        }
        Command::Audit(AuditCmd::List { limit }) => {
            commands::audit_list(&Ctx::open(dir, database).await?, limit).await?
        }
    };
    Ok(Some(out))
}

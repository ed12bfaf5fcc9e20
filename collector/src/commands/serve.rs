//! `serve`: bind both listeners, announce the chosen addresses (stdout and `ports.json`),
//! load TLS and the vendor key, and run the collector until a shutdown signal.

use super::{CmdResult, CommandError, Ctx, Output};
use crate::backups::age_file::BackupRecipient;
use crate::datadir::CollectorFiles;
use crate::datadir::DataDir;
use crate::server::{self, Collector};
use crate::store::Database;
use crate::tls::TlsFiles;
use serde_json::json;
use tally_runtime::service_manager::{self, ServiceState};

/// `serve`'s settings, already merged from flags, environment and config file.
pub struct ServeOptions {
    pub grpc_listen: String,
    pub http_listen: String,
    pub tls: Option<TlsFiles>,
    /// Reports per second one agent key may submit online (0: unlimited).
    pub agent_rate: f64,
    /// `--close-grace`: a duration, or `off`; default 3 days.
    pub close_grace: Option<String>,
    /// `--retain-reports`: a duration; default 400 days.
    pub retain_reports: Option<String>,
    /// `--webhook URL` and `--webhook-secret-file F`: where usage alerts are posted.
    pub webhook: Option<(String, std::path::PathBuf)>,
    /// `--backup-every`, `--backup-dir`, `--backup-keep`, `--backup-recipient`.
    pub backup: Option<BackupOptions>,
    /// `--ui-idle`: sign the web UI out after this long without activity; default 30m.
    pub ui_idle: Option<String>,
    /// Print the addresses as one JSON document.
    pub json: bool,
}

/// Scheduled backups as given (SQLite store only; checked by [`ServeOptions::check`]).
pub struct BackupOptions {
    pub every: String,
    pub dir: std::path::PathBuf,
    /// Default [`crate::backups::schedule::DEFAULT_KEEP`].
    pub keep: Option<u64>,
    pub recipient: std::path::PathBuf,
}

/// Scheduled backups, checked; the database and work directory come from the data
/// directory when `serve` starts.
pub struct CheckedBackups {
    pub every_secs: i64,
    pub dir: std::path::PathBuf,
    pub keep: usize,
    pub recipient: std::sync::Arc<BackupRecipient>,
}

/// Default `--ui-idle`: 30 minutes.
pub const DEFAULT_UI_IDLE_SECS: i64 = 30 * 60;

/// [`ServeOptions`] checked: what `serve` runs with. `config check` makes the same checks
/// (everything but binding the ports and opening the store).
pub struct CheckedServe {
    /// `None`: unlimited.
    pub agent_rate: Option<f64>,
    /// `None`: months are closed only by `periods close`.
    pub close_grace_secs: Option<i64>,
    pub retain_reports_secs: i64,
    pub webhook: Option<std::sync::Arc<crate::webhook::Webhook>>,
    pub grpc_tls: Option<tonic::transport::ServerTlsConfig>,
    pub http_tls: Option<tokio_rustls::TlsAcceptor>,
    pub backups: Option<CheckedBackups>,
    pub ui_idle_secs: i64,
}

impl ServeOptions {
    /// Checks every setting that can be checked without binding or opening the store: the
    /// rate, the durations, the listen addresses, the TLS files (read and parsed) and the
    /// webhook (URL and secret file). A bad one is a usage error naming it.
    pub fn check(&self) -> Result<CheckedServe, CommandError> {
        let usage = |e: &dyn std::fmt::Display| CommandError::Usage(e.to_string());
        if !(self.agent_rate >= 0.0 && self.agent_rate.is_finite()) {
            return Err(usage(&"--agent-rate must be a number ≥ 0"));
        }
        for (flag, addr) in [
            ("grpc-listen", &self.grpc_listen),
            ("http-listen", &self.http_listen),
        ] {
            if std::net::ToSocketAddrs::to_socket_addrs(addr.as_str()).is_err() {
                return Err(usage(&format!(
                    "--{flag}: {addr:?} is not an address (HOST:PORT, e.g. 127.0.0.1:8080)"
                )));
            }
        }
        let close_grace_secs = match self.close_grace.as_deref().map(str::trim) {
            None => Some(crate::server::DEFAULT_CLOSE_GRACE_SECS),
            Some("off") => None,
            Some(d) => Some(super::duration_arg("close-grace", d)?),
        };
        let retain_reports_secs = match self.retain_reports.as_deref() {
            None => crate::lifecycle::DEFAULT_RETAIN_REPORTS_SECS,
            Some(d) => super::duration_arg("retain-reports", d)?,
        };
        let webhook = self
            .webhook
            .as_ref()
            .map(|(url, secret)| crate::webhook::Webhook::new(url, secret))
            .transpose()
            .map_err(|e| usage(&e))?
            .map(std::sync::Arc::new);
        let grpc_tls = self
            .tls
            .as_ref()
            .map(TlsFiles::server_config)
            .transpose()
            .map_err(|e| usage(&e))?;
        let http_tls = self
            .tls
            .as_ref()
            .map(TlsFiles::http_acceptor)
            .transpose()
            .map_err(|e| usage(&e))?;
        let backups = self.backup.as_ref().map(check_backups).transpose()?;
        let ui_idle_secs = match self.ui_idle.as_deref() {
            None => DEFAULT_UI_IDLE_SECS,
            Some(d) => super::duration_arg("ui-idle", d)?,
        };
        if ui_idle_secs < 1 {
            return Err(usage(&"--ui-idle must be at least 1s"));
        }
        Ok(CheckedServe {
            backups,
            ui_idle_secs,
            agent_rate: (self.agent_rate > 0.0).then_some(self.agent_rate),
            close_grace_secs,
            retain_reports_secs,
            webhook,
            grpc_tls,
            http_tls,
        })
    }
}

fn check_backups(b: &BackupOptions) -> Result<CheckedBackups, CommandError> {
    let usage = |m: String| CommandError::Usage(m);
    let every_secs = super::duration_arg("backup-every", &b.every)?;
    if every_secs < 1 {
        return Err(usage("--backup-every must be at least 1s".into()));
    }
    let keep = b
        .keep
        .unwrap_or(crate::backups::schedule::DEFAULT_KEEP as u64);
    if !(1..=10_000).contains(&keep) {
        return Err(usage(format!(
            "--backup-keep {keep}: keep between 1 and 10000 backups"
        )));
    }
    if !b.dir.is_dir() {
        return Err(usage(format!(
            "--backup-dir {}: not a directory (create it, on other storage than the data)",
            b.dir.display()
        )));
    }
    let recipient = BackupRecipient::read(&b.recipient)
        .map_err(|e| usage(format!("--backup-recipient {e}")))?;
    Ok(CheckedBackups {
        every_secs,
        dir: b.dir.clone(),
        keep: keep as usize,
        recipient: std::sync::Arc::new(recipient),
    })
}

/// The backup directory must be other storage than the data, and never inside the data
/// directory (where the plaintext copy is made).
fn backup_dir_apart(dir: &DataDir, b: &CheckedBackups) -> Result<(), CommandError> {
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (data, backups) = (canon(dir.path()), canon(&b.dir));
    if backups.starts_with(&data) {
        return Err(CommandError::Usage(format!(
            "--backup-dir {}: inside the data directory {}; put backups on other storage",
            b.dir.display(),
            dir.path().display()
        )));
    }
    Ok(())
}

pub async fn serve(ctx: Ctx, o: ServeOptions) -> Result<(), CommandError> {
    // One `serve` per data directory, held until this process ends (a second one would
    // overwrite ports.json and run its own lifecycle loops on the same files).
    let _lock = ctx
        .dir
        .lock()
        .map_err(|e| CommandError::Runtime(e.to_string()))?;
    if let Some(warning) = ctx.dir.looser_than_private() {
        tracing::warn!(warning, "The data directory is not private.");
    }
    let checked = o.check()?;
    if let Some(b) = &checked.backups {
        backup_dir_apart(&ctx.dir, b)?;
    }
    let bind = |addr: String, flag: &'static str| async move {
        tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| CommandError::Usage(format!("--{flag} {addr}: cannot bind: {e}")))
    };
    let grpc = bind(o.grpc_listen.clone(), "grpc-listen").await?;
    let http = bind(o.http_listen.clone(), "http-listen").await?;
    let runtime = |e: std::io::Error| CommandError::Runtime(e.to_string());
    let (g, h) = (
        grpc.local_addr().map_err(runtime)?,
        http.local_addr().map_err(runtime)?,
    );
    let ports = json!({"grpc": g.to_string(), "http": h.to_string()});
    tally_runtime::ports::write(ctx.dir.path(), &ports).map_err(|e| {
        CommandError::Runtime(format!(
            "cannot write {}: {e}",
            ctx.dir.path().join(tally_runtime::ports::FILE).display()
        ))
    })?;
    if o.json {
        println!("{ports}");
    } else {
        println!("grpc listening on {g}\nhttp listening on {h}");
    }
    let (tls, http_tls) = (checked.grpc_tls, checked.http_tls);
    for (addr, what, plain) in [(g, "gRPC", tls.is_none()), (h, "HTTP", http_tls.is_none())] {
        if plain && !addr.ip().is_loopback() {
            tracing::warn!(%addr, what, "Listening in plain text on a non-loopback address.");
        }
    }
    // The online keys of the store's keyring (every node of a shared database signs with
    // the same ones): a node that lacks them refuses to start, naming the file. The vendor
    // key need not be here; if it is, it must be a current root of this deployment.
    let online = ctx.online_keys().await?;
    if ctx.dir.vendor_key().exists() {
        let vendor = ctx.vendor_key("serve")?.verifying_key().to_bytes();
        let ours = online
            .keyring
            .current(tally_proto::keyring::Purpose::Vendor)
            .iter()
            .any(|k| k.public_key == vendor);
        if !ours {
            return Err(CommandError::Usage(format!(
                "{} (key {}) is not a current vendor key of this deployment's keyring: another \
                 deployment's key, or one rotated out (move it away)",
                ctx.dir.vendor_key().display(),
                tally_proto::keys::key_id(&vendor)
            )));
        }
    }
    let online = std::sync::Arc::new(crate::keys::KeyHandle::new(online));
    let mut collector = Collector::with_keys(ctx.store.clone(), online, checked.agent_rate);
    collector.data_dir = Some(ctx.dir.clone());
    collector.grpc_tls = tls;
    collector.http_tls = http_tls;
    collector.licenses_dir = Some(ctx.dir.licenses());
    collector.close_grace_secs = checked.close_grace_secs;
    collector.retain_reports_secs = checked.retain_reports_secs;
    if checked.webhook.is_some() {
        collector.status.enable(crate::status::Component::Webhook);
    }
    if checked.backups.is_some() {
        collector.status.enable(crate::status::Component::Backups);
    }
    collector.webhook = checked.webhook;
    collector.ui_idle_secs = checked.ui_idle_secs;
    collector.backups = checked.backups.map(|b| {
        std::sync::Arc::new(crate::backups::schedule::BackupSchedule {
            every: std::time::Duration::from_secs(b.every_secs as u64),
            dir: b.dir,
            keep: b.keep,
            recipient: b.recipient,
            db: ctx.dir.db(),
            work: ctx.dir.path().to_path_buf(),
        })
    });
    // Ready for the service manager once the listeners are bound (connections queue in
    // their backlog from now on) and the store answers.
    ctx.store.ping().await?;
    tracing::info!(grpc = %g, http = %h, "Collector serving.");
    service_manager::announce(ServiceState::Ready);
    server::run(collector, grpc, http, service_manager::stop_requested())
        .await
        .map_err(|e| CommandError::Runtime(e.to_string()))?;
    tracing::info!("Collector stopped.");
    Ok(())
}

/// `config check`: the settings `serve` would run with, checked as `serve` checks them
/// (without binding the ports or opening the store), and the data directory: initialized
/// (the vendor key readable; with SQLite, the database file present). Meant to run before
/// the service starts (the systemd unit's `ExecStartPre`): a bad setting fails here,
/// naming itself, not in a restart loop.
pub fn config_check(dir: &DataDir, database: Option<&str>, o: &ServeOptions) -> CmdResult {
    let checked = o.check()?;
    if let Some(b) = &checked.backups {
        backup_dir_apart(dir, b)?;
    }
    let store = crate::store::check_database_url(database)?;
    // The keys `serve` signs with: online keys in keys/ (the vendor key may be kept
    // elsewhere), or only vendor.key on a deployment made before keyrings. Which ones the
    // keyring names is checked by `serve` against the store.
    let vendor_key = dir.vendor_key();
    let online: Vec<std::path::PathBuf> = std::fs::read_dir(crate::keys::keys_dir(dir))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if !vendor_key.exists() && online.is_empty() {
        return Err(CommandError::Usage(format!(
            "{} has no keys (hint: run `tally-collector init` on a new node, or copy keys/ — \
             and vendor.key if this node issues licenses — from the node that ran it)",
            dir.path().display()
        )));
    }
    for k in online
        .iter()
        .chain(vendor_key.exists().then_some(&vendor_key))
    {
        tally_proto::keys::read(k).map_err(|e| CommandError::Usage(e.to_string()))?;
    }
    let store_name = match store {
        Database::Sqlite => {
            if !dir.db().exists() {
                return Err(CommandError::Usage(format!(
                    "{} is missing (hint: run `tally-collector init`, or `restore` a backup)",
                    dir.db().display()
                )));
            }
            "sqlite"
        }
        Database::Postgres(_) => "postgres",
    };
    let warnings: Vec<String> = dir.looser_than_private().into_iter().collect();
    let json = json!({
        "ok": true,
        "data": dir.path().display().to_string(),
        "store": store_name,
        "grpc_listen": o.grpc_listen,
        "http_listen": o.http_listen,
        "tls": checked.grpc_tls.is_some(),
        "client_ca": o.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "agent_rate": checked.agent_rate,
        "close_grace_secs": checked.close_grace_secs,
        "retain_reports_secs": checked.retain_reports_secs,
        "webhook": checked.webhook.is_some(),
        "ui_idle_secs": checked.ui_idle_secs,
        "backups": checked.backups.as_ref().map(|b| json!({
            "every_secs": b.every_secs,
            "dir": b.dir.display().to_string(),
            "keep": b.keep,
            "recipient": b.recipient.public(),
        })),
        "warnings": warnings,
    });
    let mut text = format!(
        "config OK: data {}, store {store_name}, gRPC {} ({}), HTTP {}, webhook {}, backups {}\n",
        dir.path().display(),
        o.grpc_listen,
        if checked.grpc_tls.is_some() {
            "TLS"
        } else {
            "plain text"
        },
        o.http_listen,
        if checked.webhook.is_some() {
            "on"
        } else {
            "off"
        },
        match &checked.backups {
            Some(b) => format!(
                "every {}s to {}, keep {}",
                b.every_secs,
                b.dir.display(),
                b.keep
            ),
            None => "off".into(),
        },
    );
    for w in &warnings {
        text.push_str(&format!("warning: {w}\n"));
    }
    Ok(Output::new(json, text))
}

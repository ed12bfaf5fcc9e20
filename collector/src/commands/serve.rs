//! `serve`: bind both listeners, announce the chosen addresses (stdout and `ports.json`),
//! load TLS and the vendor key, and run the collector until a shutdown signal.

use super::{CommandError, Ctx};
use crate::datadir::CollectorFiles;
use crate::server::{self, Collector};
use crate::tls::TlsFiles;
use serde_json::json;

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
    /// Print the addresses as one JSON document.
    pub json: bool,
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
    if !(o.agent_rate >= 0.0 && o.agent_rate.is_finite()) {
        return Err(CommandError::Usage(
            "--agent-rate must be a number ≥ 0".into(),
        ));
    }
    let close_grace_secs = match o.close_grace.as_deref().map(str::trim) {
        None => Some(crate::server::DEFAULT_CLOSE_GRACE_SECS),
        Some("off") => None,
        Some(d) => Some(super::duration_arg("close-grace", d)?),
    };
    let retain_reports_secs = match o.retain_reports.as_deref() {
        None => crate::lifecycle::DEFAULT_RETAIN_REPORTS_SECS,
        Some(d) => super::duration_arg("retain-reports", d)?,
    };
    let webhook = o
        .webhook
        .as_ref()
        .map(|(url, secret)| crate::webhook::Webhook::new(url, secret))
        .transpose()
        .map_err(|e| CommandError::Usage(e.to_string()))?
        .map(std::sync::Arc::new);
    let bind = |addr: String, flag: &'static str| async move {
        tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| CommandError::Usage(format!("--{flag} {addr}: cannot bind: {e}")))
    };
    let grpc = bind(o.grpc_listen, "grpc-listen").await?;
    let http = bind(o.http_listen, "http-listen").await?;
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
    let usage = |e: &dyn std::fmt::Display| CommandError::Usage(e.to_string());
    let tls = o
        .tls
        .as_ref()
        .map(TlsFiles::server_config)
        .transpose()
        .map_err(|e| usage(&e))?;
    let http_tls = o
        .tls
        .as_ref()
        .map(TlsFiles::http_acceptor)
        .transpose()
        .map_err(|e| usage(&e))?;
    for (addr, what, plain) in [(g, "gRPC", tls.is_none()), (h, "HTTP", http_tls.is_none())] {
        if plain && !addr.ip().is_loopback() {
            tracing::warn!(%addr, what, "Listening in plain text on a non-loopback address.");
        }
    }
    let key = ctx.vendor_key()?;
    // Every node of a shared database signs receipts with the same collector key; a node
    // whose key file differs refuses to start (a database made before the key was
    // recorded gets this node's key).
    ctx.store
        .bind_collector_key(key.verifying_key().to_bytes())
        .await?;
    let rate = (o.agent_rate > 0.0).then_some(o.agent_rate);
    let mut collector = Collector::with_agent_rate(ctx.store.clone(), key, rate);
    collector.grpc_tls = tls;
    collector.http_tls = http_tls;
    collector.licenses_dir = Some(ctx.dir.licenses());
    collector.close_grace_secs = close_grace_secs;
    collector.retain_reports_secs = retain_reports_secs;
    collector.webhook = webhook;
    tracing::info!(grpc = %g, http = %h, "Collector serving.");
    server::run(collector, grpc, http, tally_runtime::shutdown::signal())
        .await
        .map_err(|e| CommandError::Runtime(e.to_string()))?;
    tracing::info!("Collector stopped.");
    Ok(())
}

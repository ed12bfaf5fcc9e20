//! Serving: the gRPC ingest server and the billing HTTP server on bound listeners, until a
//! shutdown future resolves. Tests bind port 0 and run this in-process.

use crate::grpc::{IngestService, router};
use crate::http::{AppState, app};
use crate::ingest::Ingestor;
use crate::metrics::Metrics;
use crate::store::Store;
use ed25519_dalek::SigningKey;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Everything a running collector shares.
#[derive(Clone)]
pub struct Collector {
    pub store: Arc<dyn Store>,
    pub ingestor: Arc<Ingestor>,
    pub metrics: Arc<Metrics>,
    pub silent_after_secs: i64,
    /// Billing API per-call time limit.
    pub request_timeout: std::time::Duration,
    /// gRPC `Enroll`/`Submit` per-call time limit; a call over it is answered
    /// `DEADLINE_EXCEEDED` (the agent retries; a report stored meanwhile is a `DUPLICATE`).
    pub grpc_call_deadline: std::time::Duration,
    /// TLS for gRPC ingest; plain TCP when `None` (loopback development).
    pub grpc_tls: Option<tonic::transport::ServerTlsConfig>,
    /// TLS for the billing API; plain HTTP when `None` (loopback development).
    pub http_tls: Option<tokio_rustls::TlsAcceptor>,
    /// Where `licenses issue` writes license files (purges remove a customer's), if known.
    pub licenses_dir: Option<std::path::PathBuf>,
    /// Where this collector's online keys live, for picking up a rotation while serving
    /// (`None`: never reloaded, as in tests that sign with one key).
    pub data_dir: Option<crate::datadir::DataDir>,
    /// Close each month this long after it ends; `None`: only `periods close` closes.
    pub close_grace_secs: Option<i64>,
    /// Remove report bodies this long after their month closed.
    pub retain_reports_secs: i64,
    /// Where usage alerts are posted (`serve --webhook`), if anywhere.
    pub webhook: Option<Arc<crate::webhook::Webhook>>,
    /// Scheduled encrypted backups (`serve --backup-every …`; SQLite store only).
    pub backups: Option<Arc<crate::backups::schedule::BackupSchedule>>,
    /// The web UI signs out after this long without activity (`serve --ui-idle`).
    pub ui_idle_secs: i64,
    /// The public status page's state.
    pub status: Arc<crate::status::StatusBoard>,
}

/// Default: a month is closed 3 days after it ends.
pub const DEFAULT_CLOSE_GRACE_SECS: i64 = 3 * 86_400;

/// Default: an agent with no report for 3 h is `silent` (agents report hourly by default).
pub const DEFAULT_SILENT_AFTER_SECS: i64 = 3 * 3600;

impl Collector {
    /// A collector with the default per-agent rate limit.
    pub fn new(store: Arc<dyn Store>, key: SigningKey) -> Self {
        Self::with_agent_rate(store, key, Some(crate::ratelimit::DEFAULT_REPORTS_PER_SEC))
    }

    /// A collector whose online ingest allows `agent_rate` reports/s per agent key
    /// (`None`: unlimited).
    pub fn with_agent_rate(
        store: Arc<dyn Store>,
        key: SigningKey,
        agent_rate: Option<f64>,
    ) -> Self {
        let online = Arc::new(crate::keys::KeyHandle::new(
            crate::keys::OnlineKeys::single(&key),
        ));
        Self::with_keys(store, online, agent_rate)
    }

    /// A collector signing receipts and statements with the current keys of `online`.
    pub fn with_keys(
        store: Arc<dyn Store>,
        online: Arc<crate::keys::KeyHandle>,
        agent_rate: Option<f64>,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let mut ingestor = Ingestor::with_keys(store.clone(), online, metrics.clone());
        ingestor.limiter = agent_rate.map(crate::ratelimit::AgentRateLimiter::new);
        let ingestor = Arc::new(ingestor);
        Collector {
            store,
            ingestor,
            metrics,
            silent_after_secs: DEFAULT_SILENT_AFTER_SECS,
            request_timeout: crate::http::DEFAULT_REQUEST_TIMEOUT,
            grpc_call_deadline: crate::grpc::DEFAULT_CALL_DEADLINE,
            grpc_tls: None,
            http_tls: None,
            licenses_dir: None,
            data_dir: None,
            close_grace_secs: Some(DEFAULT_CLOSE_GRACE_SECS),
            retain_reports_secs: crate::lifecycle::DEFAULT_RETAIN_REPORTS_SECS,
            webhook: None,
            backups: None,
            ui_idle_secs: crate::commands::DEFAULT_UI_IDLE_SECS,
            status: Arc::new(crate::status::StatusBoard::default()),
        }
    }

    pub fn app_state(&self) -> AppState {
        AppState {
            store: self.store.clone(),
            ingestor: self.ingestor.clone(),
            metrics: self.metrics.clone(),
            silent_after_secs: self.silent_after_secs,
            request_timeout: self.request_timeout,
            status: self.status.clone(),
            deployment: self.ingestor.online_keys().current().deployment_id(),
            ui_idle_secs: self.ui_idle_secs,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("{0}")]
    Router(#[from] crate::grpc::RouterError),
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

/// Serves gRPC on `grpc` and HTTP on `http` until `shutdown` resolves, then drains both.
pub async fn run(
    collector: Collector,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let service = IngestService {
        ingestor: collector.ingestor.clone(),
        store: collector.store.clone(),
        metrics: collector.metrics.clone(),
        call_deadline: collector.grpc_call_deadline,
    };
    let grpc_server = router(service, collector.grpc_tls.clone())?.serve_with_incoming_shutdown(
        // The builder's `tcp_nodelay` does not apply to a listener passed in (tonic
        // documents this), so it is set here: with Nagle's algorithm on, the last
        // partial segment of a receipt batch waited for the client's delayed ACK.
        TcpIncoming::from(grpc).with_nodelay(Some(true)),
        wait(stop_rx.clone()),
    );
    let lifecycle = crate::lifecycle::lifecycle_loop(
        collector.store.clone(),
        collector.licenses_dir.clone(),
        collector.retain_reports_secs,
        wait(stop_rx.clone()),
    );
    let closing = async {
        match collector.close_grace_secs {
            Some(grace) => {
                crate::periods::close_loop(
                    collector.store.clone(),
                    collector.ingestor.online_keys(),
                    grace,
                    wait(stop_rx.clone()),
                )
                .await
            }
            None => wait(stop_rx.clone()).await,
        }
    };
    let http_server = tally_runtime::http_serve::serve_tls(
        http,
        app(collector.app_state()),
        collector.http_tls.clone(),
        wait(stop_rx.clone()),
    );
    let alerts = async {
        match collector.webhook.clone() {
            Some(hook) => {
                crate::webhook::delivery_loop(
                    collector.store.clone(),
                    hook,
                    collector.metrics.clone(),
                    collector.status.clone(),
                    wait(stop_rx.clone()),
                )
                .await
            }
            None => wait(stop_rx.clone()).await,
        }
    };
    let backups = async {
        match collector.backups.clone() {
            Some(schedule) => {
                crate::backups::schedule::backup_loop(
                    collector.store.clone(),
                    collector.metrics.clone(),
                    collector.status.clone(),
                    schedule,
                    wait(stop_rx.clone()),
                )
                .await
            }
            None => wait(stop_rx.clone()).await,
        }
    };
    let keys = async {
        match collector.data_dir.clone() {
            Some(dir) => {
                crate::keys::refresh_loop(
                    collector.store.clone(),
                    dir,
                    collector.ingestor.online_keys(),
                    crate::keys::REFRESH_EVERY,
                    wait(stop_rx.clone()),
                )
                .await
            }
            None => wait(stop_rx.clone()).await,
        }
    };
    let status = crate::status::check_loop(
        collector.store.clone(),
        collector.status.clone(),
        wait(stop_rx.clone()),
    );
    let (g, h, (), (), (), (), (), ()) = tokio::join!(
        grpc_server,
        http_server,
        lifecycle,
        closing,
        alerts,
        backups,
        status,
        keys
    );
    g?;
    h?;
    Ok(())
}

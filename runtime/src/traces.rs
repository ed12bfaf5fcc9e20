//! Traces over OpenTelemetry's OTLP/gRPC, for both binaries: off unless
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (then every `tracing` span at the log filter's level
//! is exported, batched, from a background thread; with the variable unset no exporter,
//! thread or connection exists). The other standard `OTEL_*` variables (headers, timeout,
//! `OTEL_SERVICE_NAME`, resource attributes) are read by the OpenTelemetry SDK itself.
//!
//! The exporter is a tonic client, so it must be made inside the tokio runtime the process
//! runs on (its connection task lives there); `cli::run_main` does so. An `https://`
//! endpoint is verified against the web PKI roots, with ring — the build's one rustls
//! crypto provider.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing_subscriber::Registry;

/// The variable that turns traces on.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The `tracing` layer that turns spans into OpenTelemetry spans.
pub type TraceLayer = tracing_opentelemetry::OpenTelemetryLayer<Registry, Tracer>;

/// A running exporter; [`Traces::shutdown`] sends what is buffered before the process
/// exits.
pub struct Traces {
    provider: SdkTracerProvider,
}

/// Why traces could not be set up (the endpoint is not a URL, the TLS roots failed).
#[derive(Debug, thiserror::Error)]
#[error("{ENDPOINT_VAR}: {0}")]
pub struct TracesError(String);

/// The layer and its exporter when [`ENDPOINT_VAR`] is set; `None` when it is not (or is
/// empty). `service` names the process in the traces unless `OTEL_SERVICE_NAME` does.
pub fn from_env(service: &'static str) -> Result<Option<(TraceLayer, Traces)>, TracesError> {
    let endpoint = match std::env::var(ENDPOINT_VAR) {
        Ok(e) if !e.trim().is_empty() => e.trim().to_string(),
        _ => return Ok(None),
    };
    let mut builder = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone());
    if endpoint.starts_with("https://") {
        builder = builder.with_tls_config(
            opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new().with_webpki_roots(),
        );
    }
    let exporter = builder.build().map_err(|e| TracesError(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let resource = resource.build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    Ok(Some((layer, Traces { provider })))
}

impl Traces {
    /// Exports what is buffered and stops the exporter (blocks until it has, or the
    /// export timeout passed). A failure is printed: logging may be gone by now.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: flushing traces at exit: {e}");
        }
    }
}

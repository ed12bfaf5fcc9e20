//! The billing HTTP API (axum). `app(state)` builds the router so tests can drive it with
//! `oneshot`; `crate::server` serves it.
//!
//! Every `/v1` call passes the `auth` middleware: it resolves the bearer token (by hash),
//! refuses missing, unknown and revoked tokens, and writes one audit entry per call (actor
//! = token id, never the token).

mod auth;
mod error;
mod handlers;
#[cfg(test)]
mod openapi_check;
mod web;

pub use crate::calendar::parse_month;
pub use auth::Caller;
pub use error::ApiError;

use crate::ingest::Ingestor;
use crate::metrics::Metrics;
use crate::store::Store;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::sync::Arc;

/// Largest import body.
pub const MAX_IMPORT_BODY: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub ingestor: Arc<Ingestor>,
    pub metrics: Arc<Metrics>,
    /// An agent with no report for this long is listed as `silent`.
    pub silent_after_secs: i64,
    /// How long one API call (reading its body included) may take.
    pub request_timeout: std::time::Duration,
    /// The public status page's state.
    pub status: Arc<crate::status::StatusBoard>,
    /// Names this deployment on the status feed (the collector key id).
    pub deployment: String,
    /// The web UI signs out after this long without activity.
    pub ui_idle_secs: i64,
}

/// Default for [`AppState::request_timeout`]: long enough for a 64 MiB import.
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

pub fn app(state: AppState) -> Router {
    use crate::metrics::Query;
    use axum::middleware::Next;
    let timed = |query: Query| {
        let metrics = state.metrics.clone();
        axum::middleware::from_fn(move |req: axum::extract::Request, next: Next| {
            let metrics = metrics.clone();
            async move {
                let started = std::time::Instant::now();
                let span = tracing::info_span!("billing_query", query = query.label());
                let response = tracing::Instrument::instrument(next.run(req), span).await;
                // Until the response head (a streamed body goes on after it).
                metrics.query_duration(query, started.elapsed());
                response
            }
        })
    };
    let v1 = Router::new()
        .route("/v1/usage", get(handlers::usage).layer(timed(Query::Usage)))
        .route(
            "/v1/statements/{customer}/{month}",
            get(handlers::statement).layer(timed(Query::Statement)),
        )
        .route(
            "/v1/statements/{customer}/{month}/evidence",
            get(handlers::statement_evidence).layer(timed(Query::Evidence)),
        )
        .route("/v1/customers", get(handlers::customers))
        .route("/v1/licenses", get(handlers::licenses))
        .route("/v1/agents", get(handlers::agents))
        .route("/v1/agents/{agent}/reports", get(handlers::agent_reports))
        .route("/v1/anomalies", get(handlers::anomalies))
        .route("/v1/quarantine", get(handlers::quarantine))
        .route("/v1/quarantine/{digest}/release", post(handlers::release))
        .route("/v1/quarantine/{digest}/discard", post(handlers::discard))
        .route("/v1/whoami", get(handlers::whoami))
        .route("/v1/audit", get(handlers::audit))
        .route("/v1/alerts", get(handlers::alerts))
        .route("/v1/summary", get(handlers::summary))
        .route(
            "/v1/reports:import",
            post(handlers::import).layer(DefaultBodyLimit::max(MAX_IMPORT_BODY)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::auth_and_audit,
        ));
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(handlers::openapi))
        .route("/status", get(web::status_page))
        .route("/status.atom", get(web::status_feed))
        .route("/", get(web::page))
        .route("/assets/{name}", get(web::asset))
        .merge(v1)
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::no_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::request_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::count_responses,
        ))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

//! The agent's local HTTP API: `POST /v1/events`, `GET /v1/license`, `POST /v1/flush`,
//! `GET /v1/status`, `GET /metrics`. Bodies are checked strictly: unknown fields are errors, so a body can
//! never smuggle anything else in.

use crate::agent::{Agent, RecordError};
use crate::store::Event;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Largest request body.
pub const MAX_BODY: usize = 1024 * 1024;

pub enum ApiError {
    BadRequest(String),
    TooLarge(String),
    Unavailable(String),
    NotFound(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (s, code, m) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "invalid_request", m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
        };
        (s, Json(json!({"error": {"code": code, "message": m}}))).into_response()
    }
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Invalid(m) => ApiError::BadRequest(m),
            RecordError::Storage(m) => {
                tracing::error!(error = %m, "Events could not be committed.");
                ApiError::Unavailable(
                    "the agent could not commit the events; nothing was counted, retry".into(),
                )
            }
        }
    }
}

pub fn app(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/events", post(events))
        .route("/v1/license", get(license))
        .route("/v1/flush", post(flush))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::NotFound(format!("no route for {}", uri.path()))
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(agent)
}

/// `GET /metrics`: the agent's metrics, the outbox read from the database now.
async fn metrics(
    State(agent): State<Arc<Agent>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let reader = agent.clone();
    let (depth, oldest) = tokio::task::spawn_blocking(move || reader.store.outbox())
        .await
        .map_err(|e| ApiError::Unavailable(format!("reading the outbox: {e}")))?
        .map_err(|e| {
            tracing::error!(error = %e, "Reading the outbox for /metrics failed.");
            ApiError::Unavailable("the agent could not read its outbox".into())
        })?;
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (content_type, body) =
        agent
            .metrics
            .render(accept, depth, oldest, chrono::Utc::now().timestamp());
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Parses one event object, strictly.
fn event(v: &Value, at: &str) -> Result<Event, ApiError> {
    let bad = |m: String| ApiError::BadRequest(format!("{at}: {m}"));
    let o: &Map<String, Value> = v
        .as_object()
        .ok_or_else(|| bad("an event must be a JSON object".into()))?;
    for k in o.keys() {
        if !["metric", "quantity", "idempotency_key"].contains(&k.as_str()) {
            return Err(bad(format!(
                "unknown field {k:?} (allowed: metric, quantity, idempotency_key)"
            )));
        }
    }
    let metric = o
        .get("metric")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("\"metric\" (a string) is required".into()))?;
    let quantity = match o.get("quantity") {
        None => 1,
        Some(q) => q
            .as_u64()
            .ok_or_else(|| bad("\"quantity\" must be a positive integer".into()))?,
    };
    let idempotency_key = match o.get("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("\"idempotency_key\" must be a string".into())),
    };
    Ok(Event {
        metric: metric.to_string(),
        quantity,
        idempotency_key,
    })
}

/// Parses `{"metric", …}` or `{"events": [ … ]}`. A repeated key anywhere is malformed.
pub fn parse_events(body: &[u8]) -> Result<Vec<Event>, ApiError> {
    let v: Value = tally_proto::json::parse(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    let o = v
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("body must be a JSON object".into()))?;
    match o.get("events") {
        Some(list) => {
            if o.len() != 1 {
                return Err(ApiError::BadRequest(
                    "a batch body has only the field \"events\"".into(),
                ));
            }
            let arr = list
                .as_array()
                .ok_or_else(|| ApiError::BadRequest("\"events\" must be an array".into()))?;
            arr.iter()
                .enumerate()
                .map(|(i, e)| event(e, &format!("events[{i}]")))
                .collect()
        }
        None => Ok(vec![event(&v, "event")?]),
    }
}

/// The body, or the JSON error for one that could not be read (over [`MAX_BODY`]: 413).
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("the body is larger than {MAX_BODY} bytes"))
        } else {
            ApiError::BadRequest(format!(
                "the body could not be read: {}",
                rejection.body_text()
            ))
        }
    })
}

async fn events(
    State(agent): State<Arc<Agent>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let evs = parse_events(&read_body(body)?)?;
    let r = agent.record(evs).await?;
    Ok(Json(
        json!({"recorded": r.recorded, "duplicates": r.duplicates}),
    ))
}

async fn license(State(agent): State<Arc<Agent>>) -> Json<Value> {
    Json(crate::status::license_status(&agent, chrono::Utc::now()).to_json())
}

async fn flush(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    let n = agent
        .close_windows(true)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({"reports": n})))
}

async fn status(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        crate::status::status_json(&agent, true)
            .map_err(|e| ApiError::Unavailable(e.to_string()))?,
    ))
}

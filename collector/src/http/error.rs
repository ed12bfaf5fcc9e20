//! The billing API's one error type. Every failure becomes
//! `{"error": {"code": "…", "message": "…"}}` with the right status; internal details are
//! logged, never sent.

use crate::store::StoreError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Marks a response whose request tried to reach another customer's data; the audit
/// middleware records it.
#[derive(Debug, Clone, Copy)]
pub struct CrossTenantAttempt;

#[derive(Debug)]
pub enum ApiError {
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    /// A customer token asked for another customer's data: answered exactly like a
    /// missing resource, and audited.
    CrossTenant(String),
    BadRequest {
        code: &'static str,
        message: String,
    },
    Conflict(String),
    /// The request body is over the endpoint's limit.
    TooLarge(String),
    Unavailable,
}

impl ApiError {
    pub fn bad_param(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: "invalid_parameter",
            message: message.into(),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge("the request body is over this endpoint's size limit".into())
        } else {
            ApiError::BadRequest {
                code: "invalid_request",
                message: format!("the body could not be read: {}", r.body_text()),
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Invalid(m) => ApiError::BadRequest {
                code: "invalid_request",
                message: m,
            },
            StoreError::Unavailable(m) | StoreError::Contended(m) | StoreError::Database(m) => {
                tracing::error!(error = %m, "Store failed during an API call.");
                ApiError::Unavailable
            }
        }
    }
}

impl From<crate::periods::CloseError> for ApiError {
    fn from(e: crate::periods::CloseError) -> Self {
        match e {
            crate::periods::CloseError::Store(e) => e.into(),
            // A statement total that would not fit in 64 bits.
            crate::periods::CloseError::Invalid(m) => ApiError::BadRequest {
                code: "overflow",
                message: m,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let cross = matches!(self, ApiError::CrossTenant(_));
        let (status, code, message) = match self {
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ApiError::NotFound(m) | ApiError::CrossTenant(m) => {
                (StatusCode::NOT_FOUND, "not_found", m)
            }
            ApiError::BadRequest { code, message } => (StatusCode::BAD_REQUEST, code, message),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the collector's storage is unavailable; retry later".to_string(),
            ),
        };
        let body = Json(serde_json::json!({"error": {"code": code, "message": message}}));
        let mut resp = (status, body).into_response();
        if cross {
            resp.extensions_mut().insert(CrossTenantAttempt);
        }
        resp
    }
}

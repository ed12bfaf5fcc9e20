//! Bearer-token authentication and the audit trail of API calls.

use super::AppState;
use super::error::{ApiError, CrossTenantAttempt};
use crate::ids::hash_secret;
use crate::roles::Role;
use crate::store::AuditEntry;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Who is calling: the token's id (safe to log) and its role.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    /// The name given at `tokens create --name` (empty if none): for people reading the
    /// audit log.
    pub token_name: String,
    pub role: Role,
}

impl Caller {
    /// The customer this call may see: a customer token is confined to its own customer
    /// (asking for another is answered as not found and audited); other roles see what
    /// they ask for.
    pub fn scope(&self, requested: Option<&str>) -> Result<Option<String>, ApiError> {
        match (&self.role, requested) {
            (Role::Customer(own), Some(asked)) if asked != own => {
                tracing::warn!(token_id = %self.token_id, "Cross-tenant request denied.");
                Err(ApiError::CrossTenant(format!("customer {asked} not found")))
            }
            (Role::Customer(own), _) => Ok(Some(own.clone())),
            (_, asked) => Ok(asked.map(str::to_string)),
        }
    }

    /// Releasing and discarding quarantined reports change what is billed: admin only (a
    /// billing token sees the quarantine but cannot act on it).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            _ => Err(ApiError::Forbidden("this call needs an admin token".into())),
        }
    }

    pub fn require_staff(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin | Role::Billing => Ok(()),
            Role::Customer(_) => Err(ApiError::Forbidden(
                "this call needs an admin or billing token".into(),
            )),
        }
    }
}

async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(
            "missing 'Authorization: Bearer <token>' header".into(),
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must be 'Bearer <token>'".into())
        })?;
    let record = state.store.token_by_hash(hash_secret(token)).await?;
    match record {
        None => Err(ApiError::Unauthorized("unknown token".into())),
        Some(r) if r.revoked => Err(ApiError::Unauthorized("this token has been revoked".into())),
        Some(r) => Ok(Caller {
            token_id: r.id,
            token_name: r.name,
            role: r.role,
        }),
    }
}

/// How long a group of identical reads may run in the audit log: a row stands for the
/// calls of up to this long after its first.
pub const AUDIT_GROUP_WINDOW: chrono::Duration = chrono::Duration::minutes(10);

/// Whether a call's audit entry may join a group of identical calls: successful reads
/// only. A page of the dashboard makes several reads and is reloaded often; grouping them
/// keeps every call in the log (as a count) without a row per call. Writes, refusals (401,
/// 403, 404 — a cross-tenant attempt among them) and errors always get a row of their own.
pub fn repeatable(method: &axum::http::Method, status: u16) -> bool {
    matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD)
        && (200..300).contains(&status)
}

/// Authenticates `/v1` calls and audits every call: one row per call, except that
/// identical successful reads by the same token within [`AUDIT_GROUP_WINDOW`] count on one
/// row ([`repeatable`]).
pub async fn auth_and_audit(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let action = format!("{} {}", req.method(), req.uri().path());
    let target: String = req.uri().query().unwrap_or("").chars().take(512).collect();
    let (actor, resp) = match authenticate(&state, req.headers()).await {
        Err(e) => ("anonymous".to_string(), e.into_response()),
        Ok(caller) => {
            // The token's id (never the token), with its name when it has one.
            let actor = if caller.token_name.is_empty() {
                caller.token_id.clone()
            } else {
                format!("{} ({})", caller.token_id, caller.token_name)
            };
            req.extensions_mut().insert(caller);
            (actor, next.run(req).await)
        }
    };
    let status = resp.status().as_u16();
    let cross_tenant = resp.extensions().get::<CrossTenantAttempt>().is_some();
    let mut outcome = status.to_string();
    if cross_tenant {
        outcome.push_str(" cross_tenant_denied");
    }
    let at = state.store.clock().now();
    let entry = AuditEntry {
        at,
        actor,
        action,
        target,
        outcome,
    };
    let written = if repeatable(&method, status) && !cross_tenant {
        state
            .store
            .audit_repeatable(entry, at - AUDIT_GROUP_WINDOW)
            .await
    } else {
        state.store.audit(entry).await
    };
    if let Err(e) = written {
        tracing::error!(error = %e, "Audit entry could not be written.");
    }
    resp
}

/// Counts responses by status class for `/metrics`.
pub async fn count_responses(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    state.metrics.http_response(resp.status().as_u16());
    resp
}

/// Ends calls that take longer than `AppState::request_timeout` (a slow body upload, a stuck
/// query) with a JSON 408, so one client cannot hold a connection's resources forever.
pub async fn request_timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({"error": {"code": "timeout", "message": "the request took too long"}})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::repeatable;
    use axum::http::Method;

    #[test]
    fn only_successful_reads_group() {
        for (method, status, groups) in [
            (Method::GET, 200, true),
            (Method::HEAD, 204, true),
            (Method::GET, 304, false),
            (Method::GET, 400, false),
            (Method::GET, 401, false),
            (Method::GET, 404, false),
            (Method::GET, 500, false),
            (Method::POST, 200, false),
            (Method::POST, 201, false),
            (Method::DELETE, 200, false),
            (Method::PUT, 200, false),
        ] {
            assert_eq!(repeatable(&method, status), groups, "{method} {status}");
        }
    }
}

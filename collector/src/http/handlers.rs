//! Billing API handlers. Each validates its input, confines it to the caller's scope, asks
//! the store and shapes the answer.

use super::{AppState, Caller, error::ApiError};
use crate::calendar::parse_month;
use crate::ids::is_valid_id;
use crate::periods::StatementView;
use crate::rules::AgentStatus;
use crate::store::{AgentFilter, StoreError};
use crate::usage::{self, Format};
use crate::views;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State, rejection::PathRejection};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tally_proto::bundle;
use tally_proto::pb;

/// Parses a query string into pairs; invalid percent-encoded UTF-8 is an error.
fn pairs(raw: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.unwrap_or_default();
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        if k.contains('\u{FFFD}') || v.contains('\u{FFFD}') {
            return Err(ApiError::bad_param("the query string is not valid UTF-8"));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

/// Accepts only the named parameters, each at most once.
fn only<'a>(
    pairs: &'a [(String, String)],
    allowed: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, ApiError> {
    let mut seen = Vec::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_param(format!(
                "unknown parameter {k:?} (allowed: {})",
                allowed.join(", ")
            )));
        }
        if seen.iter().any(|(s, _)| *s == k.as_str()) {
            return Err(ApiError::bad_param(format!("{k}: given more than once")));
        }
        seen.push((k.as_str(), v.as_str()));
    }
    Ok(seen)
}

fn id_param<'a>(params: &[(&str, &'a str)], name: &str) -> Result<Option<&'a str>, ApiError> {
    match params.iter().find(|(k, _)| *k == name) {
        None => Ok(None),
        Some((_, v)) if is_valid_id(v) => Ok(Some(v)),
        Some(_) => Err(ApiError::bad_param(format!("{name}: not a valid id"))),
    }
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(st): State<AppState>) -> Response {
    match st.store.ping().await {
        Ok(_) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Readiness check failed.");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable"})),
            )
                .into_response()
        }
    }
}

pub async fn metrics(State(st): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = st.metrics.render(accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

pub async fn no_method(method: Method, uri: Uri) -> Response {
    let e = json!({"error": {"code": "method_not_allowed", "message": format!("{method} is not allowed on {}", uri.path())}});
    (StatusCode::METHOD_NOT_ALLOWED, Json(e)).into_response()
}

pub async fn usage(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut q =
        usage::parse_query(&pairs(raw)?, false).map_err(|e| ApiError::bad_param(e.to_string()))?;
    q.filter.customer = caller.scope(q.filter.customer.as_deref())?;
    let rows = st.store.hourly_usage(q.filter.clone()).await?;
    usage::check_filter(st.store.as_ref(), &q.filter, !rows.is_empty())
        .await
        .map_err(|e| match e {
            usage::FilterError::NotFound(m) => ApiError::NotFound(m),
            usage::FilterError::Store(e) => e.into(),
        })?;
    let rows = usage::aggregate(&rows, q.granularity).map_err(|e| ApiError::BadRequest {
        code: "overflow",
        message: e.to_string(),
    })?;
    Ok(match q.format {
        Format::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            usage::to_csv(&rows),
        )
            .into_response(),
        _ => Json(json!({"rows": rows})).into_response(),
    })
}

pub async fn statement(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path((customer, period)) = path.map_err(|e| ApiError::bad_param(e.body_text()))?;
    if !is_valid_id(&customer) {
        return Err(ApiError::bad_param("customer: not a valid id"));
    }
    let p = pairs(raw)?;
    let params = only(&p, &["format"])?;
    let csv = match params.iter().find(|(k, _)| *k == "format").map(|(_, v)| *v) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::bad_param("format: must be json or csv")),
    };
    let month = parse_month(&period).ok_or_else(|| {
        ApiError::bad_param(format!(
            "period: {:?} is not YYYY-MM",
            period.chars().take(32).collect::<String>()
        ))
    })?;
    let customer = caller.scope(Some(&customer))?.unwrap_or(customer);
    if !st.store.customer_exists(customer.clone()).await? {
        return Err(ApiError::NotFound(format!("customer {customer} not found")));
    }
    not_in_the_future(&st, &period, month)?;
    let view = crate::periods::statement(st.store.as_ref(), &customer, month).await?;
    if csv {
        let (_, lines, adjustments) = view_lines(view)?;
        let name = st
            .store
            .list_customers(Some(customer.clone()))
            .await?
            .into_iter()
            .next()
            .map(|c| c.name)
            .unwrap_or_default();
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            statement_csv(&customer, &name, &period, &lines, &adjustments),
        )
            .into_response());
    }
    Ok(match view {
        // The frozen document, byte for byte: its signature covers it.
        StatementView::Closed(doc) => {
            ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
        }
        StatementView::ClosedEmpty { closed_at } => Json(json!({
            "customer": customer,
            "period": period,
            "closed": true,
            "closed_at": tally_proto::time::rfc3339(closed_at),
            "lines": [],
            "adjustments": [],
            "note": "nothing was billed to this customer in this closed month, so there is no signed statement",
        }))
        .into_response(),
        open @ StatementView::Open { .. } => {
            let (_, lines, adjustments) = view_lines(open)?;
            Json(json!({
                "customer": customer,
                "period": period,
                "closed": false,
                "lines": lines,
                "adjustments": adjustments,
            }))
            .into_response()
        }
    })
}

/// `GET /v1/statements/{customer}/{month}/evidence`: what each agent line of a closed
/// statement counts, report by report, with the agent's public key and signatures (or the
/// digest alone where retention removed the body), so the customer can re-derive the whole
/// bill from signatures (`tally-agent statements audit`). Scoped like the statement:
/// another customer's is 404, and audited. Only closed months have evidence.
///
/// Streamed one agent line at a time (a customer with thousands of agents has hundreds of
/// megabytes of evidence): the collector holds one agent's month of reports, never the
/// whole answer. Errors found before the first byte are JSON errors as elsewhere; a store
/// error after it cuts the response short (an ERROR log here), which a client sees as a
/// truncated JSON document, never as a complete but partial one.
pub async fn statement_evidence(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path((customer, period)) = path.map_err(|e| ApiError::bad_param(e.body_text()))?;
    if !is_valid_id(&customer) {
        return Err(ApiError::bad_param("customer: not a valid id"));
    }
    only(&pairs(raw)?, &[])?;
    let month = parse_month(&period).ok_or_else(|| {
        ApiError::bad_param(format!(
            "period: {:?} is not YYYY-MM",
            period.chars().take(32).collect::<String>()
        ))
    })?;
    let customer = caller.scope(Some(&customer))?.unwrap_or(customer);
    if !st.store.customer_exists(customer.clone()).await? {
        return Err(ApiError::NotFound(format!("customer {customer} not found")));
    }
    let Some(lines) = crate::periods::evidence_lines(st.store.as_ref(), &customer, month).await?
    else {
        return Err(ApiError::NotFound(format!(
            "{period} has no closed statement for {customer}: only a closed statement has evidence"
        )));
    };
    // Two chunks in flight at most: the producer waits for the client.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let head = format!(
        "{{\"customer\":{},\"period\":{},\"agents\":[",
        json!(customer),
        json!(crate::calendar::month_label(month))
    );
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(head))).await.is_err() {
            return;
        }
        for (i, (agent_id, _)) in lines.iter().enumerate() {
            let chunk =
                crate::periods::agent_evidence(st.store.as_ref(), &customer, month, agent_id)
                    .await
                    .and_then(|ev| {
                        serde_json::to_vec(&ev).map_err(|e| StoreError::Database(e.to_string()))
                    });
            let chunk = match chunk {
                Ok(mut body) => {
                    if i > 0 {
                        body.insert(0, b',');
                    }
                    Ok(Bytes::from(body))
                }
                Err(e) => {
                    tracing::error!(error = %e, customer = %customer, period = %crate::calendar::month_label(month), "evidence cut short");
                    Err(std::io::Error::other("evidence cut short"))
                }
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(b"]}"))).await;
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response())
}

pub async fn customers(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = pairs(raw)?;
    only(&p, &[])?;
    let rows = st.store.list_customers(caller.scope(None)?).await?;
    Ok(Json(
        json!({"customers": views::list(&rows, views::customer)}),
    ))
}

pub async fn licenses(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = pairs(raw)?;
    let params = only(&p, &["customer"])?;
    let scope = caller.scope(id_param(&params, "customer")?)?;
    let rows = st.store.list_licenses(scope).await?;
    let now = st.store.clock().now();
    Ok(Json(
        json!({"licenses": views::list(&rows, |l| views::license(l, now))}),
    ))
}

pub async fn agents(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = pairs(raw)?;
    let params = only(&p, &["customer", "license", "status"])?;
    let only = match params.iter().find(|(k, _)| *k == "status") {
        None => None,
        Some((_, s)) => Some(
            AgentStatus::parse(s)
                .ok_or_else(|| ApiError::bad_param("status: must be active, silent or revoked"))?,
        ),
    };
    let filter = AgentFilter {
        customer: caller.scope(id_param(&params, "customer")?)?,
        license: id_param(&params, "license")?.map(str::to_string),
    };
    let rows = views::agents_with_status(
        st.store.list_agents(filter).await?,
        st.store.clock().now(),
        st.silent_after_secs,
        only,
    );
    let agents: Vec<Value> = rows.iter().map(|(a, s)| views::agent(a, *s)).collect();
    Ok(Json(json!({ "agents": agents })))
}

pub async fn anomalies(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = pairs(raw)?;
    let params = only(&p, &["customer"])?;
    let scope = caller.scope(id_param(&params, "customer")?)?;
    let rows = st.store.anomalies(scope).await?;
    Ok(Json(
        json!({"anomalies": views::list(&rows, views::anomaly)}),
    ))
}

pub async fn quarantine(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = pairs(raw)?;
    let params = only(&p, &["customer"])?;
    let scope = caller.scope(id_param(&params, "customer")?)?;
    let rows = st.store.quarantine(scope).await?;
    Ok(Json(
        json!({"reports": views::list(&rows, views::quarantined)}),
    ))
}

/// `POST /v1/reports:import`: a report bundle (as written by `tally-agent export`) in the
/// body. Answers a JSON summary, or with `?format=bundle` the signed receipt bundle for
/// `tally-agent import-receipts`.
pub async fn import(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let body = body?;
    let p = pairs(raw)?;
    let params = only(&p, &["format"])?;
    let as_bundle = match params.first() {
        None | Some((_, "json")) => false,
        Some((_, "bundle")) => true,
        Some(_) => return Err(ApiError::bad_param("format: must be json or bundle")),
    };
    let b = bundle::read_reports(&body).map_err(|e| ApiError::BadRequest {
        code: "invalid_bundle",
        message: e.to_string(),
    })?;
    let (receipts, verdicts, rotations) = st.ingestor.import(b).await?;
    if as_bundle {
        let keyrings = st.ingestor.online_keys().current().signed_after(0);
        let bytes = bundle::write_receipts(&pb::ReceiptBundle { receipts, keyrings });
        return Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response());
    }
    Ok(Json(crate::views::import_summary(&verdicts, &rotations)).into_response())
}

/// `GET /v1/whoami`: the calling token's id and role (the web UI picks its views by it).
pub async fn whoami(Extension(caller): Extension<Caller>) -> Json<Value> {
    let customer = match &caller.role {
        crate::roles::Role::Customer(c) => Some(c.clone()),
        _ => None,
    };
    let role = match &caller.role {
        crate::roles::Role::Admin => "admin",
        crate::roles::Role::Billing => "billing",
        crate::roles::Role::Customer(_) => "customer",
    };
    Json(json!({"token_id": caller.token_id, "role": role, "customer": customer}))
}

/// `GET /v1/audit?limit=N` (staff only): the newest audit entries first.
pub async fn audit(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    caller.require_staff()?;
    let p = pairs(raw)?;
    let params = only(&p, &["limit"])?;
    let limit = match params.iter().find(|(k, _)| *k == "limit") {
        None => 100,
        Some((_, v)) => parse_limit(v)
            .ok_or_else(|| ApiError::bad_param("limit: a whole number from 1 to 1000"))?,
    };
    let rows = st.store.list_audit(limit).await?;
    Ok(Json(json!({"entries": views::list(&rows, views::audit)})))
}

/// An audit `limit`: 1 to 1000, written plainly (digits, no sign, no leading zero).
pub(crate) fn parse_limit(v: &str) -> Option<u32> {
    let plain = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0');
    v.parse::<u32>()
        .ok()
        .filter(|n| plain && (1..=1000).contains(n))
}

/// A report digest in a path: exactly 64 hex characters.
pub(crate) fn parse_digest(d: &str) -> Option<tally_proto::Digest> {
    if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    d.parse().ok()
}

fn digest_param(d: &str) -> Result<tally_proto::Digest, ApiError> {
    parse_digest(d).ok_or_else(|| ApiError::bad_param("digest: expected 64 hex characters"))
}

/// `POST /v1/quarantine/{digest}/release` (admin only): counts a quarantined report once.
pub async fn release(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(digest): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let d = digest_param(&digest)?;
    let counted = st.store.release(d, st.store.clock().now()).await?;
    Ok(Json(json!({"digest": d.to_hex(), "counted": counted})))
}

/// `POST /v1/quarantine/{digest}/discard` (admin only): keeps it, never counted.
pub async fn discard(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(digest): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let d = digest_param(&digest)?;
    st.store.discard(d, st.store.clock().now()).await?;
    Ok(Json(json!({"digest": d.to_hex(), "discarded": true})))
}

/// `GET /v1/alerts?customer=&limit=`: the newest usage alerts (a customer token: its own).
pub async fn alerts(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = pairs(raw)?;
    let params = only(&p, &["customer", "limit"])?;
    let scope = caller.scope(id_param(&params, "customer")?)?;
    let limit = match params.iter().find(|(k, _)| *k == "limit") {
        None => 100,
        Some((_, v)) => parse_limit(v)
            .ok_or_else(|| ApiError::bad_param("limit: a whole number from 1 to 1000"))?,
    };
    let rows = st.store.alerts(scope, limit).await?;
    Ok(Json(json!({"alerts": views::list(&rows, views::alert)})))
}

/// A `before_seq`: a seq written plainly (1 to 19 digits, no leading zero).
pub(crate) fn parse_seq(v: &str) -> Option<u64> {
    let plain = !v.is_empty()
        && v.len() <= 19
        && v.bytes().all(|b| b.is_ascii_digit())
        && !v.starts_with('0');
    v.parse::<u64>().ok().filter(|_| plain)
}

/// `GET /v1/agents/{agent}/reports?before_seq=&limit=`: an agent's reports, newest first,
/// with its gaps (a customer token: only its own agents).
pub async fn agent_reports(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let Path(agent) = path.map_err(|e| ApiError::bad_param(e.body_text()))?;
    if !is_valid_id(&agent) {
        return Err(ApiError::bad_param("agent: not a valid id"));
    }
    let p = pairs(raw)?;
    let params = only(&p, &["before_seq", "limit"])?;
    let limit = match params.iter().find(|(k, _)| *k == "limit") {
        None => 100,
        Some((_, v)) => parse_limit(v)
            .ok_or_else(|| ApiError::bad_param("limit: a whole number from 1 to 1000"))?,
    };
    let before = match params.iter().find(|(k, _)| *k == "before_seq") {
        None => None,
        Some((_, v)) => Some(
            parse_seq(v)
                .ok_or_else(|| ApiError::bad_param("before_seq: a positive whole number"))?,
        ),
    };
    let scope = caller.scope(None)?;
    let filter = AgentFilter {
        customer: scope.clone(),
        license: None,
    };
    let rows = views::agents_with_status(
        st.store.list_agents(filter).await?,
        st.store.clock().now(),
        st.silent_after_secs,
        None,
    );
    let Some((a, status)) = rows.into_iter().find(|(a, _)| a.agent_id == agent) else {
        // Another customer's agent is answered exactly like a missing one, and audited.
        let anywhere = scope.is_some()
            && st
                .store
                .list_agents(AgentFilter::default())
                .await?
                .iter()
                .any(|a| a.agent_id == agent);
        let m = format!("agent {agent} not found");
        return Err(if anywhere {
            ApiError::CrossTenant(m)
        } else {
            ApiError::NotFound(m)
        });
    };
    let reports = st.store.agent_reports(agent.clone(), before, limit).await?;
    let gaps: Vec<Value> = st
        .store
        .anomalies(Some(a.customer_id.clone()))
        .await?
        .iter()
        .filter(|x| x.agent_id == agent && x.kind == "gap")
        .map(views::anomaly)
        .collect();
    Ok(Json(json!({
        "agent": views::agent(&a, status),
        "reports": views::list(&reports, views::agent_report),
        "gaps": gaps,
    })))
}

/// The lines of a statement view as the API shows them, and whether it is closed.
fn view_lines(view: StatementView) -> Result<(bool, Value, Value), ApiError> {
    Ok(match view {
        StatementView::Closed(doc) => {
            let v: Value = serde_json::from_slice(&doc).map_err(|e| {
                tracing::error!(error = %e, "A stored statement does not parse.");
                ApiError::Unavailable
            })?;
            (true, v["lines"].clone(), v["adjustments"].clone())
        }
        StatementView::ClosedEmpty { .. } => (true, json!([]), json!([])),
        StatementView::Open { lines, adjustments } => {
            let lines: Vec<Value> = lines
                .into_iter()
                .map(|l| json!({"metric": l.metric, "used": l.used, "limit": l.limit, "overage": l.overage(), "licenses": l.licenses}))
                .collect();
            (false, Value::Array(lines), json!(adjustments))
        }
    })
}

/// A month after the current one (by the store's clock) has no statement yet: 400, not an
/// empty one that looks like a bill.
fn not_in_the_future(st: &AppState, period: &str, month: i64) -> Result<(), ApiError> {
    let this = crate::calendar::month_of(st.store.clock().now().timestamp());
    if month > this {
        return Err(ApiError::bad_param(format!(
            "period: {period} has not begun (this month is {})",
            crate::calendar::month_label(this)
        )));
    }
    Ok(())
}

/// `GET /v1/summary?period=YYYY-MM` (default: this month): every visible customer's
/// statement lines of the month in one call (the dashboard's overview); a customer token
/// sees its own.
pub async fn summary(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = pairs(raw)?;
    let params = only(&p, &["period"])?;
    let (period, month) = match params.iter().find(|(k, _)| *k == "period") {
        Some((_, v)) => (
            v.to_string(),
            parse_month(v).ok_or_else(|| ApiError::bad_param("period: not YYYY-MM"))?,
        ),
        None => {
            let now = st.store.clock().now().timestamp();
            (
                crate::calendar::month_label(now),
                crate::calendar::month_of(now),
            )
        }
    };
    not_in_the_future(&st, &period, month)?;
    let scope = caller.scope(None)?;
    let mut out = Vec::new();
    for c in st.store.list_customers(scope).await? {
        let view = crate::periods::statement(st.store.as_ref(), &c.id, month).await?;
        let (closed, lines, adjustments) = view_lines(view)?;
        out.push(json!({"id": c.id, "name": c.name, "closed": closed, "lines": lines, "adjustments": adjustments}));
    }
    Ok(Json(json!({"period": period, "customers": out})))
}

/// A statement as CSV: `kind,metric,period,quantity,limit,overage`, one `usage` row per line
/// (the statement's month) and one `adjustment` row per late usage of a closed month.
/// Numbers are written as the JSON has them (exact integers; metric names hold no comma).
fn statement_csv(
    customer: &str,
    name: &str,
    period: &str,
    lines: &Value,
    adjustments: &Value,
) -> String {
    let num = |v: &Value| match v {
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let usage = lines.as_array().into_iter().flatten().map(|l| {
        [
            customer.to_string(),
            name.to_string(),
            "usage".into(),
            text(&l["metric"]),
            period.to_string(),
            num(&l["used"]),
            num(&l["limit"]),
            num(&l["overage"]),
        ]
    });
    let late = adjustments.as_array().into_iter().flatten().map(|a| {
        [
            customer.to_string(),
            name.to_string(),
            "adjustment".into(),
            text(&a["metric"]),
            text(&a["period"]),
            num(&a["quantity"]),
            String::new(),
            String::new(),
        ]
    });
    usage::csv_text(
        [
            "customer",
            "customer_name",
            "kind",
            "metric",
            "period",
            "quantity",
            "limit",
            "overage",
        ],
        usage.chain(late),
    )
}

//! The billing HTTP API over real HTTP on loopback: authentication, tenant isolation and
//! its audit trail, bad query parameters, unknown routes, statements and import.

use serde_json::Value;
use tally_collector::store::{AuditStore, Inspect, RegistryStore};
use tally_proto::pb;
use tally_tests::InProcessCollector;

async fn get(c: &InProcessCollector, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(c.http_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not a JSON error: {v}"))
}

async fn state(c: &InProcessCollector) -> (usize, usize, usize) {
    let s = c.store();
    (
        s.stored_reports().await.unwrap().len(),
        s.list_customers(None).await.unwrap().len(),
        s.list_tokens().await.unwrap().len(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_missing_invalid_revoked_are_401() {
    let c = InProcessCollector::start().await;
    let (s, v) = get(&c, "/v1/customers", None).await;
    assert_eq!((s, error_code(&v)), (401, "unauthorized"));
    let (s, v) = get(&c, "/v1/customers", Some("tally_not_a_real_token")).await;
    assert_eq!((s, error_code(&v)), (401, "unauthorized"));
    let resp = reqwest::Client::new()
        .get(c.http_url("/v1/customers"))
        .header("Authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let out = tally_collector::commands::tokens_create(&c.ctx, "billing", None)
        .await
        .unwrap();
    let (id, token) = (
        out.json["id"].as_str().unwrap().to_string(),
        out.json["token"].as_str().unwrap().to_string(),
    );
    assert_eq!(get(&c, "/v1/customers", Some(&token)).await.0, 200);
    tally_collector::commands::tokens_revoke(&c.ctx, &id)
        .await
        .unwrap();
    let (s, v) = get(&c, "/v1/customers", Some(&token)).await;
    assert_eq!((s, error_code(&v)), (401, "unauthorized"));
    assert!(v["error"]["message"].as_str().unwrap().contains("revoked"));
    // Unauthenticated attempts are audited as anonymous.
    let audit = c.store().list_audit(100).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.entry.actor == "anonymous" && e.entry.outcome == "401")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_methods_are_json_errors() {
    let c = InProcessCollector::start().await;
    let (s, v) = get(&c, "/v2/nothing", Some(&c.admin_token)).await;
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    let (s, v) = get(&c, "/../../etc/passwd", None).await;
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    let resp = reqwest::Client::new()
        .delete(c.http_url("/v1/usage"))
        .bearer_auth(&c.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&v), "method_not_allowed");
    let (s, v) = get(&c, "/healthz", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    assert_eq!(get(&c, "/readyz", None).await.0, 200);
    let (s, v) = get(&c, "/openapi.json", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["openapi"], "3.0.3");
    assert!(v["paths"]["/v1/usage"].is_object());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_query_parameters_are_400_and_change_nothing() {
    let c = InProcessCollector::start().await;
    let customer = c.add_customer("Acme").await;
    let t = c.admin_token.clone();
    let before = state(&c).await;
    for path in [
        "/v1/usage?granularity=week",
        "/v1/usage?format=xml",
        "/v1/usage?from=yesterday",
        "/v1/usage?from=2026-01-01T00:30:00Z",
        "/v1/usage?from=2026-02-01&to=2026-01-01",
        "/v1/usage?customer=x%27%20OR%201%3D1%20--",
        "/v1/usage?metric=Api.Convert",
        "/v1/usage?metric=a&metric=b",
        "/v1/usage?colour=red",
        "/v1/usage?customer=%FF%FE",
        "/v1/agents?status=sleepy",
        "/v1/licenses?customer=../../etc",
        "/v1/customers?x=1",
        "/v1/anomalies?customer=%00",
        "/v1/statements/cus_x/2026-13",
        "/v1/statements/cus_x/last-month",
        "/v1/statements/bad%20id/2026-01",
    ] {
        let (s, v) = get(&c, path, Some(&t)).await;
        assert_eq!(s, 400, "{path}: {v}");
        assert_eq!(error_code(&v), "invalid_parameter", "{path}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let (s, v) = get(&c, "/v1/statements/cus_doesnotexist/2026-01", Some(&t)).await;
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    assert_eq!(state(&c).await, before);
    let (s, _) = get(&c, &format!("/v1/statements/{customer}/2026-01"), Some(&t)).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn customer_tokens_are_isolated_and_attempts_audited() {
    let c = InProcessCollector::start().await;
    let a = c.add_customer("A").await;
    let b = c.add_customer("B").await;
    let (la, ta) = c.issue_license(&a, &["api.convert"]).await;
    let (lb, tb) = c.issue_license(&b, &["api.convert"]).await;
    let mut agent_a = c.enroll(&la, &ta).await;
    let mut agent_b = c.enroll(&lb, &tb).await;
    let reports = vec![
        agent_a.next(&[("api.convert", 3)]).1,
        agent_b.next(&[("api.convert", 5)]).1,
    ];
    c.client()
        .await
        .submit(pb::SubmitRequest { reports })
        .await
        .unwrap();

    let token_a = c.token(&format!("customer:{a}")).await;
    let month = c.now().format("%Y-%m").to_string();
    // Own data: visible, and only its own.
    let (s, v) = get(&c, "/v1/usage?granularity=month", Some(&token_a)).await;
    assert_eq!(s, 200);
    let rows = v["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["customer"] == a.as_str()), "{v}");
    assert!(!rows.is_empty());
    let (s, v) = get(&c, "/v1/agents", Some(&token_a)).await;
    assert_eq!(s, 200);
    assert_eq!(v["agents"].as_array().unwrap().len(), 1);
    let (s, v) = get(&c, "/v1/customers", Some(&token_a)).await;
    assert_eq!((s, v["customers"].as_array().unwrap().len()), (200, 1));
    // The summary: its own customer only, with the statement's numbers.
    let (s, v) = get(&c, "/v1/summary", Some(&token_a)).await;
    assert_eq!(s, 200, "{v}");
    let cs = v["customers"].as_array().unwrap();
    assert_eq!(cs.len(), 1, "{v}");
    assert_eq!(cs[0]["id"], a.as_str());
    assert_eq!(cs[0]["lines"][0]["used"], 3);
    let (s, v) = get(&c, "/v1/summary", Some(&c.admin_token)).await;
    assert_eq!(
        (s, v["customers"].as_array().unwrap().len()),
        (200, 2),
        "{v}"
    );
    let (s, v) = get(&c, "/v1/summary?period=2026-13", Some(&c.admin_token)).await;
    assert_eq!((s, error_code(&v)), (400, "invalid_parameter"));
    // Its own agent's history; no audit log, no quarantine actions.
    let a_agent = agent_of(&c, &a).await;
    let (s, v) = get(&c, &format!("/v1/agents/{a_agent}/reports"), Some(&token_a)).await;
    assert_eq!((s, v["reports"].as_array().unwrap().len()), (200, 1), "{v}");
    let (s, v) = get(&c, "/v1/audit", Some(&token_a)).await;
    assert_eq!((s, error_code(&v)), (403, "forbidden"));

    // Another customer's data: 404, as if it did not exist.
    let b_agent = agent_of(&c, &b).await;
    for path in [
        format!("/v1/usage?customer={b}"),
        format!("/v1/statements/{b}/{month}"),
        format!("/v1/agents?customer={b}"),
        format!("/v1/licenses?customer={b}"),
        format!("/v1/alerts?customer={b}"),
        format!("/v1/agents/{b_agent}/reports"),
    ] {
        let (s, v) = get(&c, &path, Some(&token_a)).await;
        assert_eq!((s, error_code(&v)), (404, "not_found"), "{path}");
    }
    // Staff-only import.
    let resp = reqwest::Client::new()
        .post(c.http_url("/v1/reports:import"))
        .bearer_auth(&token_a)
        .body(vec![1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    let audit = c.store().list_audit(200).await.unwrap();
    let token_a_id = c
        .store()
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.role == format!("customer:{a}"))
        .unwrap()
        .id;
    let denied: Vec<_> = audit
        .iter()
        .filter(|e| e.entry.outcome == "404 cross_tenant_denied")
        .collect();
    assert_eq!(denied.len(), 6, "{audit:#?}");
    assert!(denied.iter().all(|e| e.entry.actor == token_a_id));
    assert!(
        denied.iter().all(|e| e.repeats == 1),
        "refusals never group"
    );
    assert!(
        audit
            .iter()
            .all(|e| !e.entry.actor.contains(&token_a) && !e.entry.target.contains(&token_a))
    );

    // Statement for A: used 3 of unlimited.
    let (s, v) = get(&c, &format!("/v1/statements/{a}/{month}"), Some(&token_a)).await;
    assert_eq!(s, 200);
    assert_eq!(v["lines"][0]["metric"], "api.convert");
    assert_eq!(v["lines"][0]["used"], 3);
    assert_eq!(v["lines"][0]["limit"], Value::Null);
    assert_eq!(v["lines"][0]["overage"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_show_limits_and_overage() {
    let c = InProcessCollector::start().await;
    let a = c.add_customer("A").await;
    let (l, t) = c.issue_license(&a, &["api.convert=10", "api.render"]).await;
    let mut agent = c.enroll(&l, &t).await;
    // Windows in the current month.
    let now = c.now();
    let month_start =
        chrono::DateTime::from_timestamp(tally_collector::calendar::month_of(now.timestamp()), 0)
            .unwrap();
    agent.cursor = (now - chrono::Duration::minutes(30)).max(month_start);
    let reports: Vec<_> = (0..3)
        .map(|_| agent.next(&[("api.convert", 6), ("api.render", 1)]).1)
        .collect();
    c.client()
        .await
        .submit(pb::SubmitRequest { reports })
        .await
        .unwrap();
    let month = c.now().format("%Y-%m").to_string();
    let (s, v) = get(
        &c,
        &format!("/v1/statements/{a}/{month}"),
        Some(&c.admin_token),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let lines = v["lines"].as_array().unwrap();
    let convert = lines.iter().find(|l| l["metric"] == "api.convert").unwrap();
    assert_eq!(
        (
            convert["used"].as_u64(),
            convert["limit"].as_u64(),
            convert["overage"].as_u64()
        ),
        (Some(18), Some(10), Some(8))
    );
    let render = lines.iter().find(|l| l["metric"] == "api.render").unwrap();
    assert_eq!(
        (
            render["used"].as_u64(),
            render["limit"].clone(),
            render["overage"].as_u64()
        ),
        (Some(3), Value::Null, Some(0))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_import_counts_once_and_rejects_garbage() {
    let c = InProcessCollector::start().await;
    let a = c.add_customer("A").await;
    let (l, t) = c.issue_license(&a, &["api.convert"]).await;
    let mut agent = c.enroll(&l, &t).await;
    let reports: Vec<_> = (0..5)
        .map(|_| agent.next(&[("api.convert", 2)]).1)
        .collect();
    // Two of them also arrive online.
    c.client()
        .await
        .submit(pb::SubmitRequest {
            reports: reports[..2].to_vec(),
        })
        .await
        .unwrap();
    let body = tally_proto::bundle::write_reports(&pb::ReportBundle {
        reports,
        rotations: Vec::new(),
    });
    let post = |body: Vec<u8>, q: &'static str| {
        let url = c.http_url(&format!("/v1/reports:import{q}"));
        let token = c.admin_token.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let resp = post(body.clone(), "").await;
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["counts"]["accepted"], 3);
    assert_eq!(v["counts"]["duplicate"], 2);
    // The receipt bundle form verifies against the collector key.
    let resp = post(body, "?format=bundle").await;
    let bytes = resp.bytes().await.unwrap();
    let receipts = tally_proto::bundle::read_receipts(&bytes).unwrap();
    assert_eq!(receipts.receipts.len(), 5);
    for r in &receipts.receipts {
        tally_proto::receipt::ReceiptBody::verify(r, &c.collector.ingestor.collector_key())
            .unwrap();
    }
    let total: u64 = tally_tests::brute_force_totals(c.store().as_ref())
        .await
        .values()
        .sum();
    assert_eq!(total, 10);
    // Garbage, truncated and oversized bodies change nothing.
    let before = state(&c).await;
    let resp = post(b"hello".to_vec(), "").await;
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&v), "invalid_bundle");
    let mut truncated = tally_proto::bundle::write_reports(&pb::ReportBundle {
        reports: vec![agent.next(&[("api.convert", 1)]).1],
        rotations: Vec::new(),
    });
    truncated.truncate(truncated.len() - 4);
    assert_eq!(post(truncated, "").await.status().as_u16(), 400);
    assert_eq!(state(&c).await, before);
    // A large bundle (over the default 64 KiB body limit, over one 500-report chunk).
    let many: Vec<_> = (0..600)
        .map(|_| agent.next(&[("api.convert", 1)]).1)
        .collect();
    let resp = post(
        tally_proto::bundle::write_reports(&pb::ReportBundle {
            reports: many,
            rotations: Vec::new(),
        }),
        "",
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    // The truncated bundle's report was never stored, so its seq is now a gap, not an error.
    assert_eq!(v["counts"]["accepted"], 600, "{}", v["counts"]);
    let before = state(&c).await;
    let huge = vec![0u8; tally_collector::http::MAX_IMPORT_BODY + 1];
    let resp = post(huge, "").await;
    assert_eq!(resp.status().as_u16(), 413);
    let v: Value = resp.json().await.expect("the 413 is a JSON error too");
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    assert_eq!(state(&c).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_exposed() {
    let c = InProcessCollector::start().await;
    let a = c.add_customer("A").await;
    let (l, t) = c.issue_license(&a, &["api.convert"]).await;
    let mut agent = c.enroll(&l, &t).await;
    let (_, s) = agent.next(&[("api.convert", 1)]);
    c.client()
        .await
        .submit(pb::SubmitRequest {
            reports: vec![s.clone(), s],
        })
        .await
        .unwrap();
    let text = reqwest::get(c.http_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("tally_reports_total{outcome=\"accepted\",reason=\"\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tally_reports_total{outcome=\"duplicate\",reason=\"\"} 1"),
        "{text}"
    );
    assert!(text.contains("tally_enrollments_total 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_by_status() {
    let c = InProcessCollector::start().await;
    let a = c.add_customer("A").await;
    let (l, t) = c.issue_license(&a, &["api.convert"]).await;
    let mut fresh = c.enroll(&l, &t).await;
    let _never_reported = c.enroll(&l, &t).await;
    let gone = c.enroll(&l, &t).await;
    let (_, s) = fresh.next(&[("api.convert", 1)]);
    c.client()
        .await
        .submit(pb::SubmitRequest { reports: vec![s] })
        .await
        .unwrap();
    let id_of = |v: &Value, key: [u8; 32]| {
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["key"] == hex::encode(key))
            .map(|x| x["agent_id"].as_str().unwrap().to_string())
    };
    let (_, all) = get(&c, "/v1/agents", Some(&c.admin_token)).await;
    assert_eq!(all["agents"].as_array().unwrap().len(), 3);
    tally_collector::commands::agents_revoke(&c.ctx, &id_of(&all, gone.key_bytes()).unwrap())
        .await
        .unwrap();
    let (_, revoked) = get(&c, "/v1/agents?status=revoked", Some(&c.admin_token)).await;
    assert_eq!(revoked["agents"].as_array().unwrap().len(), 1);
    assert!(id_of(&revoked, gone.key_bytes()).is_some());
    let (_, active) = get(&c, "/v1/agents?status=active", Some(&c.admin_token)).await;
    assert_eq!(active["agents"].as_array().unwrap().len(), 2);
    let row = active["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["key"] == hex::encode(fresh.key_bytes()))
        .unwrap()
        .clone();
    assert_eq!(row["last_seq"], 1);
    assert!(row["last_seen"].is_string());
    let (_, silent) = get(&c, "/v1/agents?status=silent", Some(&c.admin_token)).await;
    assert!(silent["agents"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = InProcessCollector::start().await;
    let mut s = tokio::net::TcpStream::connect(c.http).await.unwrap();
    // Half a request, then silence.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(
        r.is_ok(),
        "the server kept a silent half-request open for 30 s"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(text.is_empty() || text.contains("408"), "{text}");
    println!("slow client cut off after {:?}", started.elapsed());
    // Meanwhile normal clients are served.
    let (status, _) = get(&c, "/healthz", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_body_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = InProcessCollector::start_with(|col| {
        col.request_timeout = std::time::Duration::from_secs(1)
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(c.http).await.unwrap();
    // Headers complete, body promised but never sent.
    let head = format!(
        "POST /v1/reports:import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\n\r\nTALLY",
        c.admin_token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"timeout\""), "{text}");
}

/// The id of a customer's (one) agent.
async fn agent_of(c: &InProcessCollector, customer: &str) -> String {
    c.store()
        .list_agents(tally_collector::store::AgentFilter {
            customer: Some(customer.to_string()),
            license: None,
        })
        .await
        .unwrap()[0]
        .agent_id
        .clone()
}

/// Issues a license for `customer` through the operator command, from 60 days before the
/// collector's now to `expires`, with `grace`; returns its id.
async fn issue(
    c: &InProcessCollector,
    customer: &str,
    metrics: &[&str],
    expires: chrono::DateTime<chrono::Utc>,
    grace: &str,
) -> String {
    let out = tally_collector::commands::licenses_issue(
        &c.ctx,
        tally_collector::commands::IssueArgs {
            customer: customer.into(),
            metrics: metrics.iter().map(|m| m.to_string()).collect(),
            expires: tally_proto::time::rfc3339(expires),
            not_before: Some(tally_proto::time::rfc3339(
                c.now() - chrono::Duration::days(60),
            )),
            grace: grace.into(),
            enrollments: 10,
            token_ttl: "7d".into(),
            endpoint: format!("http://{}", c.grpc),
            out: None,
            alert: None,
        },
    )
    .await
    .unwrap();
    out.json["license_id"].as_str().unwrap().to_string()
}

/// The limit of a month comes from the licenses that counted usage in it: licenses issued
/// by mistake and revoked, or never enrolled (an unlimited one included), change nothing.
/// (A license counting in its grace after its end: the store conformance suite checks its
/// limit is a candidate, the rules' table tests that it applies.)
#[tokio::test(flavor = "multi_thread")]
async fn a_months_limit_comes_from_the_licenses_that_counted_usage() {
    let c = InProcessCollector::start().await;
    let month = c.now().format("%Y-%m").to_string();
    let a = c.add_customer("A").await;
    let (lic, tok) = c.issue_license(&a, &["api.convert=10"]).await;
    let mut agent = c.enroll(&lic, &tok).await;
    let reports = vec![agent.next(&[("api.convert", 12)]).1];
    c.client()
        .await
        .submit(pb::SubmitRequest { reports })
        .await
        .unwrap();
    // Two more licenses of 10, revoked seconds later, and an unlimited one, never enrolled.
    let far = c.now() + chrono::Duration::days(365);
    for _ in 0..2 {
        let mistake = issue(&c, &a, &["api.convert=10"], far, "7d").await;
        tally_collector::commands::licenses_revoke(&c.ctx, &mistake)
            .await
            .unwrap();
    }
    issue(&c, &a, &["api.convert"], far, "7d").await;
    let (s, v) = get(
        &c,
        &format!("/v1/statements/{a}/{month}"),
        Some(&c.admin_token),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["lines"],
        serde_json::json!([{"metric": "api.convert", "used": 12, "limit": 10, "overage": 2,
                            "licenses": [lic]}]),
        "{v}"
    );
}

/// A closed month is closed for every customer: one with nothing billed in it reads closed
/// (no signed statement, and says why), not open; a month that has not begun is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_month_reads_closed_for_everyone_and_future_months_are_refused() {
    let c = InProcessCollector::start().await;
    let a = c.add_customer("A").await;
    let this = tally_collector::calendar::month_of(c.now().timestamp());
    let last = tally_collector::calendar::month_of(this - 1);
    let label = tally_collector::calendar::month_label;
    let vendor = tally_proto::keys::read(&c.dir.path().join("data").join("vendor.key")).unwrap();
    let closed = tally_collector::periods::close(c.ctx.store.as_ref(), &vendor, last, c.now())
        .await
        .unwrap();
    assert_eq!(closed.statements, 0, "nothing billed, nothing signed");
    let (s, v) = get(
        &c,
        &format!("/v1/statements/{a}/{}", label(last)),
        Some(&c.admin_token),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["closed"], true, "{v}");
    assert!(
        v["closed_at"].is_string() && v["signature"].is_null(),
        "{v}"
    );
    assert_eq!(
        (v["lines"].clone(), v["adjustments"].clone()),
        (serde_json::json!([]), serde_json::json!([]))
    );
    assert!(
        v["note"].as_str().unwrap().contains("no signed statement"),
        "{v}"
    );
    let (_, v) = get(
        &c,
        &format!("/v1/summary?period={}", label(last)),
        Some(&c.admin_token),
    )
    .await;
    assert_eq!(v["customers"][0]["closed"], true, "{v}");
    // This month is open; next month has not begun.
    let (_, v) = get(
        &c,
        &format!("/v1/statements/{a}/{}", label(this)),
        Some(&c.admin_token),
    )
    .await;
    assert_eq!(v["closed"], false, "{v}");
    let next = label(tally_collector::calendar::next_month(this));
    for path in [
        format!("/v1/statements/{a}/{next}"),
        format!("/v1/summary?period={next}"),
    ] {
        let (s, v) = get(&c, &path, Some(&c.admin_token)).await;
        assert_eq!(
            (s, error_code(&v)),
            (400, "invalid_parameter"),
            "{path}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("has not begun"),
            "{v}"
        );
    }
}

/// A filter that names nothing that exists is an error, not an empty success: a typo in a
/// customer, license or metric must not read as "no usage" (API: 404; CLI: exit 2).
#[tokio::test(flavor = "multi_thread")]
async fn usage_filters_that_name_nothing_are_errors() {
    let c = InProcessCollector::start().await;
    let a = c.add_customer("A").await;
    let (lic, _) = c.issue_license(&a, &["api.convert", "api.render"]).await;
    let admin = Some(c.admin_token.as_str());
    for (query, needle) in [
        (
            "customer=cus_nope".to_string(),
            "customer cus_nope not found",
        ),
        ("customer=Example".to_string(), "customer Example not found"),
        ("license=lic_nope".to_string(), "license lic_nope not found"),
        (
            format!("customer={a}&license=lic_nope"),
            "license lic_nope not found for customer",
        ),
        (
            "metric=api.nope".to_string(),
            "metric api.nope is in no license",
        ),
        (
            format!("license={lic}&metric=api.nope"),
            "metric api.nope is in no license",
        ),
    ] {
        let (s, v) = get(&c, &format!("/v1/usage?{query}"), admin).await;
        assert_eq!((s, error_code(&v)), (404, "not_found"), "{query}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{query}: {v}"
        );
    }
    // Real names with no usage: an empty answer, as before.
    for query in [
        format!("customer={a}"),
        format!("license={lic}"),
        format!("customer={a}&license={lic}&metric=api.render"),
    ] {
        let (s, v) = get(&c, &format!("/v1/usage?{query}"), admin).await;
        assert_eq!(s, 200, "{query}: {v}");
        assert_eq!(v["rows"], serde_json::json!([]), "{query}");
    }
    // The command line says the same, as bad input.
    let e = tally_collector::commands::usage(
        &c.ctx,
        vec![("customer".into(), "Example".into())],
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(e.to_string().contains("customer Example not found"), "{e}");
}

/// Online enrollment is in the audit log (granted and refused), by the agent key's id:
/// never the enrollment token.
#[tokio::test(flavor = "multi_thread")]
async fn enrollment_is_audited() {
    let c = InProcessCollector::start().await;
    let a = c.add_customer("A").await;
    let (lic, tok) = c.issue_license(&a, &["api.convert"]).await;
    let agent = c.enroll(&lic, &tok).await;
    let key_id = tally_proto::keys::key_id(&agent.key_bytes());
    // A second key with a token that is not the license's: refused, and audited too.
    let other = tally_tests::TestAgent::at(&lic, c.now());
    let proof = tally_proto::enroll::prove(&other.key, &lic, "enr_wrong");
    let err = c
        .client()
        .await
        .enroll(pb::EnrollRequest {
            license_id: lic.clone(),
            enrollment_token: "enr_wrong".into(),
            agent_key: other.key_bytes().to_vec(),
            proof: proof.to_vec(),
        })
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    let (s, v) = get(&c, "/v1/audit?limit=20", Some(&c.admin_token)).await;
    assert_eq!(s, 200, "{v}");
    let entries = v["entries"].as_array().unwrap();
    let enrolls: Vec<&Value> = entries.iter().filter(|e| e["action"] == "Enroll").collect();
    assert_eq!(enrolls.len(), 2, "{v}");
    assert!(
        enrolls
            .iter()
            .any(|e| e["actor"] == format!("agent key {key_id}").as_str()
                && e["target"] == lic.as_str()
                && e["outcome"].as_str().unwrap().starts_with("ok agt_")),
        "{v}"
    );
    assert!(
        enrolls
            .iter()
            .any(|e| e["outcome"].as_str().unwrap().starts_with("refused")),
        "{v}"
    );
    assert!(
        !v.to_string().contains(&tok) && !v.to_string().contains("enr_wrong"),
        "{v}"
    );
}

/// The audit log names the caller by its token id and, when the token has one, its name.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_names_tokens_by_id_and_name() {
    let c = InProcessCollector::start().await;
    let out =
        tally_collector::commands::tokens_create(&c.ctx, "billing", Some("finance team".into()))
            .await
            .unwrap();
    let (id, token) = (
        out.json["id"].as_str().unwrap().to_string(),
        out.json["token"].as_str().unwrap().to_string(),
    );
    let (s, _) = get(&c, "/v1/customers", Some(&token)).await;
    assert_eq!(s, 200);
    let (_, v) = get(&c, "/v1/audit?limit=5", Some(&c.admin_token)).await;
    let entries = v["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == format!("{id} (finance team)").as_str()
                && e["action"] == "GET /v1/customers"),
        "{v}"
    );
    assert!(!v.to_string().contains(&token), "{v}");
}

/// Every API call is in the audit log, and a dashboard's repeated reads do not flood it:
/// identical successful reads by one token share a row that counts them; anything else
/// (another path or query, a refusal, a write) is a row of its own. The log is read back
/// over the API, as the dashboard reads it.
#[tokio::test(flavor = "multi_thread")]
async fn identical_reads_share_an_audit_row_and_everything_else_has_its_own() {
    let c = InProcessCollector::start().await;
    let admin = c.admin_token.clone();
    for _ in 0..3 {
        assert_eq!(get(&c, "/v1/customers", Some(&admin)).await.0, 200);
    }
    assert_eq!(get(&c, "/v1/licenses", Some(&admin)).await.0, 200);
    for _ in 0..2 {
        assert_eq!(get(&c, "/v1/customers?nope=1", Some(&admin)).await.0, 400);
    }
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let r = http
            .post(c.http_url("/v1/reports:import"))
            .bearer_auth(&admin)
            .body("not a bundle")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
    }
    let (s, log) = get(&c, "/v1/audit?limit=20", Some(&admin)).await;
    assert_eq!(s, 200);
    // (Older rows are `init`'s, by the command line.)
    let rows: Vec<(String, String, String, u64)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().contains(" /v1/"))
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["target"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
                e["repeats"].as_u64().unwrap(),
            )
        })
        .collect();
    let row = |a: &str, t: &str, o: &str, n: u64| (a.to_string(), t.to_string(), o.to_string(), n);
    assert_eq!(
        rows,
        vec![
            row("POST /v1/reports:import", "", "400", 1),
            row("POST /v1/reports:import", "", "400", 1),
            row("GET /v1/customers", "nope=1", "400", 1),
            row("GET /v1/customers", "nope=1", "400", 1),
            row("GET /v1/licenses", "", "200", 1),
            row("GET /v1/customers", "", "200", 3),
        ],
        "{log}"
    );
    let group = &log["entries"][5];
    assert!(group["last_at"].as_str() >= group["at"].as_str(), "{group}");
}

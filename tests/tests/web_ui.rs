//! The web UI in a real headless Chromium against a real `tally-collector` process with
//! reports ingested over gRPC: sign in as admin, billing and two customers; the numbers the
//! pages show equal the API's; an admin releases a quarantined report from the page and the
//! total moves; a billing token sees the quarantine but cannot act; a customer sees only
//! its own customer (the other's name and numbers appear nowhere in the DOM, and a
//! hand-typed URL for it says "not found"); the usage CSV download is the API's
//! `format=csv`. Every view, for every role, prints no "null" or "undefined" and logs no
//! browser error (no missing favicon); usage per day and per month is drawn as bars; the
//! audit log fits a 1400 px window; empty tables say so; quantities above 2^53 are shown
//! exactly. Alerts name their customer (by name) and license, say "not delivered" rather
//! than "pending" to staff and show no webhook at all in the portal, whose header names the
//! customer; the alerts (per license) and the statement (licenses pooled, named per line)
//! say which is which. Screenshots of each view go to the folder printed at the start.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use std::path::PathBuf;
use tally_proto::pb;
use tally_tests::browser::{Browser, downloaded};
use tally_tests::{CollectorProcess, TestAgent, collector_json, connect};

struct Api {
    base: String,
}

impl Api {
    async fn get(&self, path: &str, token: &str) -> (u16, String) {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
    async fn json(&self, path: &str, token: &str) -> Value {
        let (s, t) = self.get(path, token).await;
        assert_eq!(s, 200, "{path}: {t}");
        serde_json::from_str(&t).unwrap()
    }
}

fn month() -> String {
    Utc::now().format("%Y-%m").to_string()
}

/// Windows start at the later of an hour ago and this month's first instant, so every
/// report falls in the current month.
fn agent_on(license: &str) -> TestAgent {
    let now = Utc::now();
    let month_start = DateTime::parse_from_rfc3339(&format!("{}-01T00:00:00Z", month()))
        .unwrap()
        .with_timezone(&Utc);
    let mut a = TestAgent::new(license);
    let start = (now - Duration::hours(1)).max(month_start);
    a.cursor = DateTime::from_timestamp(start.timestamp() - start.timestamp() % 60, 0).unwrap();
    a
}

async fn submit(grpc: std::net::SocketAddr, reports: Vec<pb::SignedReport>) -> Vec<i32> {
    let mut c = connect(grpc).await;
    let resp = c
        .submit(pb::SubmitRequest { reports })
        .await
        .unwrap()
        .into_inner();
    resp.receipts
        .iter()
        .map(|r| {
            let body: pb::ReceiptBody = prost::Message::decode(r.body.as_slice()).unwrap();
            body.outcome
        })
        .collect()
}

async fn sign_in(b: &mut Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/")).await;
    b.wait_for("document.getElementById('signin')").await;
    let t = serde_json::to_string(token).unwrap();
    b.eval(&format!(
        "document.getElementById('token').value = {t}; document.getElementById('signin').requestSubmit(); true"
    ))
    .await;
}

async fn sign_out(b: &mut Browser) {
    b.eval("document.getElementById('signout').click(); true")
        .await;
    b.wait_for("document.getElementById('signin')").await;
}

/// `used` of `metric` on the statement of `customer` this month, as the API says.
async fn api_used(api: &Api, token: &str, customer: &str, metric: &str) -> u64 {
    let s = api
        .json(&format!("/v1/statements/{customer}/{}", month()), token)
        .await;
    s["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["metric"] == metric)
        .map(|l| l["used"].as_u64().unwrap())
        .unwrap_or(0)
}

/// Goes to `hash` and waits until `ready` (a JavaScript condition true only once the new view
/// is drawn).
async fn visit(b: &mut Browser, hash: &str, ready: &str) {
    let h = serde_json::to_string(hash).unwrap();
    b.eval(&format!("location.hash = {h}; true")).await;
    b.wait_for(ready).await;
}

/// The page as drawn shows no "null" or "undefined" (a missing value printed as text, such as
/// "nullnullnull"), and the browser logged no error since the last check: no failed or 4xx
/// request (a missing favicon among them), no console error, no uncaught exception.
async fn check_clean(b: &mut Browser, view: &str) {
    let text = b.eval("document.body.innerText").await;
    let text = text.as_str().unwrap();
    let printed: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| {
            let w = w.to_ascii_lowercase();
            w.starts_with("null") || w.starts_with("undefined")
        })
        .collect();
    assert!(
        printed.is_empty(),
        "{view}: the page prints {printed:?}:\n{text}"
    );
    let errors = b.errors().await;
    assert!(errors.is_empty(), "{view}: the browser logged {errors:#?}");
}

/// The admin's and billing's views beside the ones the test drives: each clean.
async fn check_staff_views(b: &mut Browser, role: &str) {
    for view in ["agents", "anomalies", "quarantine", "audit", "overview"] {
        let hash = if view == "overview" {
            "#/"
        } else {
            &format!("#/{view}")
        };
        visit(
            b,
            hash,
            &format!("document.querySelector('main[data-view={view}]')"),
        )
        .await;
        check_clean(b, &format!("{role}, {view}")).await;
    }
}

/// The chart of the customer view at `granularity`, once drawn: its path style.
async fn chart_style(b: &mut Browser, customer: &str, granularity: &str) -> Value {
    visit(
        b,
        &format!("#/customers/{customer}?granularity={granularity}"),
        &format!(
            "document.getElementById('granularity')?.value === '{granularity}' && document.querySelector('#chart[data-chart-ready] canvas')"
        ),
    )
    .await;
    b.eval("document.getElementById('chart').getAttribute('data-chart-style')")
        .await
}

/// The cells of the customer's alert row that name a field (`data-field`), by field (one row:
/// these customers cross one threshold at most).
async fn alert_cells(b: &mut Browser, customer: &str) -> Value {
    b.eval(&format!(
        "Object.fromEntries(Array.from(document.querySelectorAll('#alerts tr[data-customer=\"{customer}\"] [data-field]')) \
         .map(e => [e.dataset.field, e.textContent]))"
    ))
    .await
}

fn number(s: &str) -> u64 {
    s.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_portal_show_the_apis_numbers_to_each_role() {
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    println!("screenshots: {}", shots.display());

    let tmp = tempfile::tempdir().unwrap();
    let cdata = tmp.path().join("collector");
    let init = collector_json(&cdata, &["init"]);
    let admin = init["admin_token"].as_str().unwrap().to_string();
    let id = |v: Value| v["id"].as_str().unwrap().to_string();
    let acme = id(collector_json(
        &cdata,
        &["customers", "add", "Acme Rockets"],
    ));
    let globex = id(collector_json(
        &cdata,
        &["customers", "add", "Globex Shipping"],
    ));
    let collector = CollectorProcess::spawn(&cdata);
    let base = format!("http://{}", collector.http);
    let api = Api { base: base.clone() };
    let nb = tally_proto::time::rfc3339(Utc::now() - Duration::days(40));
    let license = |customer: &str, limit: &str| {
        collector_json(
            &cdata,
            &[
                "licenses",
                "issue",
                "--customer",
                customer,
                "--metric",
                limit,
                "--expires",
                "2099-01-01",
                "--not-before",
                &nb,
            ],
        )["license_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (la, lg) = (
        license(&acme, "api.convert=1000"),
        license(&globex, "api.convert=500"),
    );
    // Acme alerts at 30% of its limit: its 350 crosses it.
    collector_json(&cdata, &["licenses", "alerts", &la, "--alert", "30%"]);
    let token = |role: &str| {
        collector_json(&cdata, &["tokens", "create", "--role", role])["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let billing = token("billing");
    let acme_token = token(&format!("customer:{acme}"));
    let globex_token = token(&format!("customer:{globex}"));
    let (mut a, mut g) = (agent_on(&la), agent_on(&lg));
    for (agent, lic) in [(&a, &la), (&g, &lg)] {
        collector_json(
            &cdata,
            &[
                "agents",
                "add",
                "--license",
                lic,
                "--key",
                &hex::encode(agent.key_bytes()),
            ],
        );
    }
    // Acme: 350 counted; Globex: 42 counted, then two reports quarantined for an unlicensed
    // metric next to 70 and 9 of api.convert (windows in this month, whatever the date).
    let mut ra = Vec::new();
    for q in [100, 200, 50] {
        ra.push(a.next(&[("api.convert", q)]).1);
    }
    let mut rg = Vec::new();
    for q in [40, 2] {
        rg.push(g.next(&[("api.convert", q)]).1);
    }
    let mut held = Vec::new();
    for q in [70, 9] {
        held.push(g.next(&[("api.convert", q), ("api.unlicensed", 1)]).1);
    }
    rg.extend(held.iter().cloned());
    assert!(
        submit(collector.grpc, ra)
            .await
            .iter()
            .all(|o| *o == pb::Outcome::Accepted as i32)
    );
    let out = submit(collector.grpc, rg).await;
    assert_eq!(out[..2], [pb::Outcome::Accepted as i32; 2]);
    assert_eq!(out[2..], [pb::Outcome::Quarantined as i32; 2]);

    // The page itself: strict CSP, nosniff, hashed immutable assets.
    let r = reqwest::get(format!("{base}/")).await.unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let page = r.text().await.unwrap();
    let asset = page
        .split('"')
        .find(|s| s.starts_with("/assets/app."))
        .expect("app.js by its hash")
        .to_string();
    let r = reqwest::get(format!("{base}{asset}")).await.unwrap();
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );

    let mut b = Browser::start().await;
    b.watch_errors().await;
    let downloads = tmp.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    b.allow_downloads(&downloads).await;

    // An unknown token is shown as such.
    sign_in(&mut b, &base, "tally_not_a_real_token").await;
    b.wait_for("document.getElementById('signin-error')").await;
    let e = b.text("#signin-error").await.unwrap();
    assert!(e.contains("not valid"), "{e}");
    // Its 401 from /v1/whoami is the point; nothing else failed (the browser asks for the
    // favicon once, on this first load).
    let errors = b.errors().await;
    let unexpected: Vec<&String> = errors
        .iter()
        .filter(|e| !e.contains("/v1/whoami"))
        .collect();
    assert!(
        unexpected.is_empty() && !errors.is_empty(),
        "sign-in page: the browser logged {errors:#?}"
    );

    // Admin: the overview's numbers are the API's.
    sign_in(&mut b, &base, &admin).await;
    b.wait_for("document.querySelector('main[data-view=overview]')")
        .await;
    for (c, expect) in [(&acme, 350u64), (&globex, 42u64)] {
        let shown = b
            .text(&format!(
                "tr[data-customer='{c}'][data-metric='api.convert'] [data-field=used]"
            ))
            .await
            .unwrap();
        assert_eq!(number(&shown), expect);
        assert_eq!(api_used(&api, &admin, c, "api.convert").await, expect);
    }
    let alert_rows = b
        .eval(&format!(
            "Array.from(document.querySelectorAll('#alerts tr[data-customer=\"{acme}\"] [data-field=threshold]')).map(e => e.textContent)"
        ))
        .await;
    assert_eq!(alert_rows, serde_json::json!(["30%"]));
    let api_alerts = api.json("/v1/alerts", &admin).await;
    assert_eq!(api_alerts["alerts"].as_array().unwrap().len(), 1);
    // The alert names its customer as /v1/customers does and its license as the alert does;
    // undelivered, its webhook cell says so (not "pending": the API cannot tell whether a
    // webhook is configured at all). The table says what an alert compares.
    let api_alert = &api_alerts["alerts"][0];
    assert!(api_alert["delivered_at"].is_null(), "{api_alert}");
    let names = api.json("/v1/customers", &admin).await;
    let acme_name = names["customers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == acme.as_str())
        .unwrap()["name"]
        .clone();
    assert_eq!(acme_name, "Acme Rockets");
    let shown = alert_cells(&mut b, &acme).await;
    assert_eq!(
        shown["customer"], acme_name,
        "the alert's customer: {shown}"
    );
    assert_eq!(
        shown["license"], api_alert["license"],
        "the alert's license: {shown}"
    );
    assert_eq!(api_alert["license"], la.as_str());
    assert_eq!(
        shown["webhook"], "not delivered",
        "the alert's webhook: {shown}"
    );
    let caption = b.text("#alerts-caption").await.unwrap_or_default();
    assert!(
        caption.contains("per license") && caption.contains("that license's monthly limit"),
        "the alerts' caption: {caption:?}"
    );
    b.eval("document.getElementById('alerts').scrollIntoView(); true")
        .await;
    b.screenshot(&shots.join("alerts-admin.png")).await;
    b.eval("window.scrollTo(0, 0); true").await;
    b.screenshot(&shots.join("overview.png")).await;
    check_clean(&mut b, "admin, overview").await;

    // A customer's usage chart, statement and agents; the CSV download is the API's CSV.
    b.eval(&format!(
        "location.hash = '#/customers/{acme}?granularity=hour'; true"
    ))
    .await;
    b.wait_for("document.querySelector('#chart[data-chart-ready]')")
        .await;
    let total = b
        .eval("document.getElementById('usage-total').getAttribute('data-value')")
        .await;
    assert_eq!(total.as_str(), Some("350"));
    let used = b
        .text("#statement-lines tr[data-metric='api.convert'] [data-field=used]")
        .await
        .unwrap();
    assert_eq!(number(&used), 350);
    // The open statement pools every license that counted usage this month, and names them:
    // each line's "limit from" licenses are the API's.
    let caption = b.text("#statement-caption").await.unwrap_or_default();
    assert!(
        caption.contains("all licenses that counted usage") && caption.contains("pooled"),
        "the statement's caption: {caption:?}"
    );
    let statement_json = api
        .json(&format!("/v1/statements/{acme}/{}", month()), &admin)
        .await;
    let want: Vec<Value> = statement_json["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| serde_json::json!([l["metric"], l["licenses"]]))
        .collect();
    assert_eq!(want, [serde_json::json!(["api.convert", [la]])]);
    let shown = b
        .eval(
            "Array.from(document.querySelectorAll('#statement-lines tbody tr')).map(r => [r.dataset.metric, \
             (r.querySelector('[data-field=licenses]')?.innerText ?? '').split(', ').filter(Boolean)])",
        )
        .await;
    assert_eq!(shown, Value::Array(want), "the statement's licenses");
    let seq = b
        .text("#customer-agents tr [data-field=last_seq]")
        .await
        .unwrap();
    let agents = api
        .json(&format!("/v1/agents?customer={acme}"), &admin)
        .await;
    assert_eq!(seq, agents["agents"][0]["last_seq"].to_string());
    // Each agent's key id, as `tally-agent status` shows it and statements name it.
    let key_id = b
        .text("#customer-agents tr [data-field=key_id]")
        .await
        .unwrap();
    assert_eq!(
        Some(key_id.as_str()),
        agents["agents"][0]["key_id"].as_str()
    );
    assert_eq!(key_id.len(), 16, "{key_id}");
    b.screenshot(&shots.join("usage.png")).await;
    check_clean(&mut b, "admin, customer, hourly usage").await;
    b.eval("document.getElementById('usage-csv').click(); true")
        .await;
    let file = downloaded(&downloads, "usage-").await;
    let from = b.eval("document.getElementById('from').value").await;
    let to = b.eval("document.getElementById('to').value").await;
    let (_, csv) = api
        .get(
            &format!(
                "/v1/usage?customer={acme}&metric=api.convert&granularity=hour&from={}&to={}&format=csv",
                from.as_str().unwrap(),
                to.as_str().unwrap()
            ),
            &admin,
        )
        .await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), csv);
    assert!(
        csv.starts_with("customer,license,metric,period_start,quantity"),
        "{csv}"
    );
    // A day's or a month's usage is a total for that period: a bar, not a line ramping up
    // from the period before. Hours are steps (a total held for the hour).
    let style = chart_style(&mut b, &acme, "day").await;
    assert!(style == "bars", "daily usage drawn as {style}");
    let total = b
        .eval("document.getElementById('usage-total').getAttribute('data-value')")
        .await;
    assert_eq!(total.as_str(), Some("350"));
    b.screenshot(&shots.join("usage-day-bars.png")).await;
    check_clean(&mut b, "admin, customer, daily usage").await;
    let style = chart_style(&mut b, &acme, "month").await;
    assert!(style == "bars", "monthly usage drawn as {style}");
    check_clean(&mut b, "admin, customer, monthly usage").await;
    let style = chart_style(&mut b, &acme, "hour").await;
    assert!(style == "steps", "hourly usage drawn as {style}");

    // Admin releases one quarantined report from the page: Globex's total moves by 70.
    b.eval("location.hash = '#/quarantine'; true").await;
    b.wait_for("document.querySelector('main[data-view=quarantine]')")
        .await;
    let digest = hex::encode(tally_proto::Digest::of(&held[0].report).0);
    b.screenshot(&shots.join("quarantine.png")).await;
    check_clean(&mut b, "admin, quarantine").await;
    b.eval(&format!(
        "document.querySelector(\"tr[data-digest='{digest}'] button[data-action=release]\").click(); true"
    ))
    .await;
    b.wait_for(&format!(
        "document.querySelector('main[data-view=quarantine]') && !document.querySelector(\"tr[data-digest='{digest}']\")"
    ))
    .await;
    assert_eq!(api_used(&api, &admin, &globex, "api.convert").await, 112);
    b.eval(&format!("location.hash = '#/customers/{globex}'; true"))
        .await;
    b.wait_for("document.querySelector('#statement-lines')")
        .await;
    let used = b
        .text("#statement-lines tr[data-metric='api.convert'] [data-field=used]")
        .await
        .unwrap();
    assert_eq!(number(&used), 112);
    b.eval("document.getElementById('statement').scrollIntoView(); true")
        .await;
    b.screenshot(&shots.join("statement.png")).await;
    check_clean(&mut b, "admin, statement").await;
    // The statement's CSV download is the API's.
    b.eval("document.getElementById('statement-csv').click(); true")
        .await;
    let file = downloaded(&downloads, "statement-").await;
    let (_, csv) = api
        .get(
            &format!("/v1/statements/{globex}/{}?format=csv", month()),
            &admin,
        )
        .await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), csv);
    assert!(
        csv.contains(&format!("usage,api.convert,{},112,500,0", month())),
        "{csv}"
    );
    // Globex's agent: every report with its outcome, as the API lists them.
    let ga = api
        .json(&format!("/v1/agents?customer={globex}"), &admin)
        .await;
    let gid = ga["agents"][0]["agent_id"].as_str().unwrap().to_string();
    b.eval(&format!("location.hash = '#/agents/{gid}'; true"))
        .await;
    b.wait_for("document.querySelector('main[data-view=agent]')")
        .await;
    let shown = b
        .eval("Array.from(document.querySelectorAll('#agent-reports tbody tr')).map(r => [Number(r.dataset.seq), r.dataset.status, r.querySelector('[data-field=usage]').textContent])")
        .await;
    let history = api.json(&format!("/v1/agents/{gid}/reports"), &admin).await;
    // The page shows what each report counted, as the API says (from the signed bytes).
    let want: Vec<Value> = history["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let usage: Vec<String> = r["counters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| format!("{} {}", c["metric"].as_str().unwrap(), c["quantity"]))
                .collect();
            serde_json::json!([r["seq"], r["status"], usage.join(", ")])
        })
        .collect();
    assert_eq!(shown, Value::Array(want));
    assert_eq!(
        shown,
        serde_json::json!([
            [4, "quarantined", "api.convert 9, api.unlicensed 1"],
            [3, "accepted", "api.convert 70, api.unlicensed 1"],
            [2, "accepted", "api.convert 2"],
            [1, "accepted", "api.convert 40"]
        ])
    );
    b.screenshot(&shots.join("agent.png")).await;
    check_clean(&mut b, "admin, agent").await;
    check_staff_views(&mut b, "admin").await;
    // The audit log (long paths and queries, no spaces) fits a 1400 px window: the page
    // does not scroll sideways.
    b.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    visit(
        &mut b,
        "#/audit",
        "document.querySelector('main[data-view=audit]')",
    )
    .await;
    let widths = b
        .eval("[document.documentElement.scrollWidth, window.innerWidth]")
        .await;
    assert!(
        widths[0].as_u64() <= widths[1].as_u64() && widths[1] == 1400,
        "the audit page is wider than its 1400 px window: [scrollWidth, innerWidth] = {widths}"
    );
    b.screenshot(&shots.join("audit-1400.png")).await;
    b.call(
        "Emulation.clearDeviceMetricsOverride",
        serde_json::json!({}),
    )
    .await;
    sign_out(&mut b).await;

    // Billing sees the quarantine but has no buttons, and the API refuses it anyway.
    sign_in(&mut b, &base, &billing).await;
    b.wait_for("document.querySelector('main[data-view=overview]')")
        .await;
    b.eval("location.hash = '#/quarantine'; true").await;
    b.wait_for("document.querySelector('main[data-view=quarantine]')")
        .await;
    let rows = b
        .eval("document.querySelectorAll('#quarantine tbody tr').length")
        .await;
    assert_eq!(rows, 1);
    let buttons = b
        .eval("document.querySelectorAll('#quarantine button').length")
        .await;
    assert_eq!(
        buttons, 0,
        "a billing token must not get release/discard buttons"
    );
    check_clean(&mut b, "billing, quarantine").await;
    check_staff_views(&mut b, "billing").await;
    let other = hex::encode(tally_proto::Digest::of(&held[1].report).0);
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/quarantine/{other}/release"))
        .bearer_auth(&billing)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    sign_out(&mut b).await;

    // Each customer sees only itself.
    for (own, own_token, own_used, other, other_name, other_used) in [
        (&acme, &acme_token, 350u64, &globex, "Globex", 112u64),
        (&globex, &globex_token, 112, &acme, "Acme", 350),
    ] {
        sign_in(&mut b, &base, own_token).await;
        b.wait_for("document.querySelector('#chart[data-chart-ready]')")
            .await;
        let used = b
            .text("#statement-lines tr[data-metric='api.convert'] [data-field=used]")
            .await
            .unwrap();
        assert_eq!(number(&used), own_used);
        assert_eq!(
            api_used(&api, own_token, own, "api.convert").await,
            own_used
        );
        // The header names the customer as /v1/customers answers this token (its id beside
        // it, secondary).
        let mine = api.json("/v1/customers", own_token).await;
        assert_eq!(mine["customers"].as_array().unwrap().len(), 1, "{mine}");
        let name = mine["customers"][0]["name"].as_str().unwrap();
        let header = b.text("#who").await.unwrap_or_default();
        assert!(
            header.contains(name) && header.contains(own.as_str()),
            "the portal's header: {header:?}, the customer: {name}"
        );
        let id_muted = b.text("#who .muted").await;
        assert_eq!(id_muted.as_deref(), Some(own.as_str()));
        // No webhook (vendor-internal) anywhere: no column, no "pending"; no customer column
        // (it is implicit); the license of each alert as the API says.
        b.wait_for("document.querySelector('#alerts tbody tr')")
            .await;
        let alerts_text = b.eval("document.getElementById('alerts').innerText").await;
        let alerts_text = alerts_text.as_str().unwrap().to_lowercase();
        assert!(
            !alerts_text.contains("webhook")
                && !alerts_text.contains("pending")
                && !alerts_text.contains("delivered"),
            "the portal's alerts: {alerts_text}"
        );
        let body = b.eval("document.body.innerText").await;
        assert!(
            !body.as_str().unwrap().to_lowercase().contains("webhook"),
            "the portal mentions a webhook: {body}"
        );
        let headers = b
            .eval("Array.from(document.querySelectorAll('#alerts th')).map(h => h.textContent)")
            .await;
        assert!(
            !headers.as_array().unwrap().iter().any(|h| h == "Customer"),
            "{headers}"
        );
        let mine = api.json("/v1/alerts", own_token).await;
        if own == &acme {
            let shown = alert_cells(&mut b, own).await;
            assert_eq!(mine["alerts"].as_array().unwrap().len(), 1, "{mine}");
            assert_eq!(shown["license"], mine["alerts"][0]["license"], "{shown}");
            assert!(shown.get("webhook").is_none(), "{shown}");
            b.eval("document.getElementById('alerts').scrollIntoView(); true")
                .await;
            b.screenshot(&shots.join("alerts-portal.png")).await;
            b.eval("window.scrollTo(0, 0); true").await;
        } else {
            assert_eq!(mine["alerts"], serde_json::json!([]));
        }
        let html = b.eval("document.documentElement.outerHTML").await;
        let html = html.as_str().unwrap();
        assert!(!html.contains(other.as_str()) && !html.contains(other_name));
        // Its total appears in no text of the page (as a whole number).
        let text = b.eval("document.body.innerText").await;
        let text = text.as_str().unwrap();
        let other_total = other_used.to_string();
        assert!(
            !text
                .split(|c: char| !c.is_ascii_digit())
                .any(|w| w == other_total),
            "the other customer's total appears in the page: {text}"
        );
        if own == &acme {
            b.screenshot(&shots.join("portal.png")).await;
        }
        check_clean(&mut b, &format!("customer {own_used}, own page")).await;
        visit(
            &mut b,
            "#/agents",
            "document.querySelector('main[data-view=agents]')",
        )
        .await;
        check_clean(&mut b, &format!("customer {own_used}, agents")).await;
        b.eval(&format!("location.hash = '#/customers/{other}'; true"))
            .await;
        b.wait_for("document.querySelector('[data-error=not_found]')")
            .await;
        let html = b.eval("document.documentElement.outerHTML").await;
        assert!(!html.as_str().unwrap().contains(other_name));
        check_clean(&mut b, &format!("customer {own_used}, another's page")).await;
        sign_out(&mut b).await;
    }

    // A revoked token is refused at sign-in.
    let tokens = collector_json(&cdata, &["tokens", "list"]);
    let billing_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["role"] == "billing")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    collector_json(&cdata, &["tokens", "revoke", &billing_id]);
    sign_in(&mut b, &base, &billing).await;
    b.wait_for("document.getElementById('signin-error')").await;
    let e = b.text("#signin-error").await.unwrap();
    assert!(e.contains("not valid"), "{e}");
    println!("screenshots: {}", shots.display());
}

/// A fresh customer, nothing reported yet: the anomalies, the quarantine, the customer's
/// alerts and its agent's reports each show a "Nothing here" row, not a bare header. Then
/// reports of 2^53 + 1 (the first integer a JavaScript number cannot hold) and 2: the
/// overview, the statement and the usage total show the API's exact digits, not a rounded
/// float.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_tables_say_so_and_quantities_above_2_pow_53_are_exact() {
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cdata = tmp.path().join("collector");
    let admin = collector_json(&cdata, &["init"])["admin_token"]
        .as_str()
        .unwrap()
        .to_string();
    let customer = collector_json(&cdata, &["customers", "add", "Hooli"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let nb = tally_proto::time::rfc3339(Utc::now() - Duration::days(40));
    let license = collector_json(
        &cdata,
        &[
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert",
            "--metric",
            "storage.bytes=1000",
            "--expires",
            "2099-01-01",
            "--not-before",
            &nb,
        ],
    )["license_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut agent = agent_on(&license);
    collector_json(
        &cdata,
        &[
            "agents",
            "add",
            "--license",
            &license,
            "--key",
            &hex::encode(agent.key_bytes()),
        ],
    );
    let collector = CollectorProcess::spawn(&cdata);
    let base = format!("http://{}", collector.http);
    let api = Api { base: base.clone() };
    let agents = api
        .json(&format!("/v1/agents?customer={customer}"), &admin)
        .await;
    let agent_id = agents["agents"][0]["agent_id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut b = Browser::start().await;
    b.watch_errors().await;
    sign_in(&mut b, &base, &admin).await;
    b.wait_for("document.querySelector('main[data-view=overview]')")
        .await;
    let empty = [
        ("#/anomalies", "anomalies", "#anomalies"),
        ("#/quarantine", "quarantine", "#quarantine"),
        (&format!("#/agents/{agent_id}"), "agent", "#agent-reports"),
        (&format!("#/customers/{customer}"), "customer", "#alerts"),
    ];
    for (hash, view, table) in empty {
        visit(
            &mut b,
            hash,
            &format!("document.querySelector('main[data-view={view}] {table}')"),
        )
        .await;
        let rows = b
            .eval(&format!(
                "Array.from(document.querySelectorAll('{table} tbody tr')).map(r => r.textContent)"
            ))
            .await;
        assert!(
            rows.as_array().is_some_and(|r| r.len() == 1)
                && rows[0].as_str().unwrap_or("").starts_with("Nothing here"),
            "{view}: the empty table {table} has the rows {rows}"
        );
        if view == "quarantine" {
            b.screenshot(&shots.join("quarantine-empty.png")).await;
        }
        check_clean(&mut b, &format!("{view}, empty")).await;
    }

    // 2^53 + 1 and 2 of api.convert (unlimited); 2^53 + 1 of storage.bytes (limit 1000).
    let big = (1u64 << 53) + 1;
    let reports = vec![
        agent
            .next(&[("api.convert", big), ("storage.bytes", big)])
            .1,
        agent.next(&[("api.convert", 2)]).1,
    ];
    assert_eq!(
        submit(collector.grpc, reports).await,
        [pb::Outcome::Accepted as i32; 2]
    );
    let (status, raw) = api
        .get(&format!("/v1/statements/{customer}/{}", month()), &admin)
        .await;
    assert_eq!(status, 200, "{raw}");
    let (convert, bytes, overage) = (big + 2, big, big - 1000);
    for (metric, used) in [("api.convert", convert), ("storage.bytes", bytes)] {
        assert_eq!(api_used(&api, &admin, &customer, metric).await, used);
        assert!(raw.contains(&format!("\"used\":{used}")), "{raw}");
    }
    assert!(raw.contains(&format!("\"overage\":{overage}")), "{raw}");

    visit(
        &mut b,
        "#/",
        "document.querySelector('main[data-view=overview]')",
    )
    .await;
    for (metric, field, want) in [
        ("api.convert", "used", convert),
        ("storage.bytes", "used", bytes),
        ("storage.bytes", "overage", overage),
    ] {
        let shown = b
            .text(&format!(
                "#overview tr[data-metric='{metric}'] [data-field={field}]"
            ))
            .await
            .unwrap();
        assert!(
            number(&shown) == want,
            "overview {metric} {field}: the page shows {shown}, the API {want}"
        );
    }
    check_clean(&mut b, "overview, quantities above 2^53").await;
    visit(
        &mut b,
        &format!("#/customers/{customer}?granularity=hour"),
        "document.querySelector('#chart[data-chart-ready]') && document.querySelector('#statement-lines')",
    )
    .await;
    for (metric, field, want) in [
        ("api.convert", "used", convert),
        ("storage.bytes", "used", bytes),
        ("storage.bytes", "overage", overage),
    ] {
        let shown = b
            .text(&format!(
                "#statement-lines tr[data-metric='{metric}'] [data-field={field}]"
            ))
            .await
            .unwrap();
        assert!(
            number(&shown) == want,
            "statement {metric} {field}: the page shows {shown}, the API {want}"
        );
    }
    let total = b
        .eval("[document.getElementById('usage-total').getAttribute('data-value'), document.getElementById('usage-total').textContent]")
        .await;
    let want = convert.to_string();
    assert!(
        total[0] == want.as_str() && total[1].as_str().map(number) == Some(convert),
        "usage total: the page shows {total}, the API {want}"
    );
    b.screenshot(&shots.join("big-quantities.png")).await;
    check_clean(&mut b, "customer, quantities above 2^53").await;
}

/// Idle sign-out (`serve --ui-idle 3s`): a user who keeps using the page stays signed in
/// past the idle time; one who stops is signed out (the token gone from `sessionStorage`,
/// the sign-in form saying why); a tab reloaded after the idle time starts signed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_signs_out_after_the_idle_time() {
    let tmp = tempfile::tempdir().unwrap();
    let cdata = tmp.path().join("collector");
    let admin = collector_json(&cdata, &["init"])["admin_token"]
        .as_str()
        .unwrap()
        .to_string();
    let collector = CollectorProcess::spawn_with_args(
        &cdata,
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--ui-idle",
            "3s",
        ],
    );
    let base = format!("http://{}", collector.http);
    let mut b = Browser::start().await;
    sign_in(&mut b, &base, &admin).await;
    b.wait_for("!document.getElementById('signout').hidden")
        .await;
    let signed_in = "!!sessionStorage.getItem('tally.token') && !document.getElementById('signin')";
    // A keypress every 0.2 s, from inside the page (so the test's own pace cannot matter),
    // for 6 s — twice the idle time: still signed in.
    b.eval("window.__typing = setInterval(() => document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Shift'})), 200); true")
        .await;
    let active_until = std::time::Instant::now() + std::time::Duration::from_secs(6);
    while std::time::Instant::now() < active_until {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(
            b.eval(signed_in).await,
            Value::Bool(true),
            "signed out while active"
        );
    }
    b.eval("clearInterval(window.__typing); true").await;
    // No activity: signed out within the idle time plus the 1 s check.
    let idle_start = std::time::Instant::now();
    b.wait_for("document.getElementById('signin')").await;
    let waited = idle_start.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(2),
        "signed out too early: {waited:?}"
    );
    assert_eq!(
        b.eval("sessionStorage.getItem('tally.token')").await,
        Value::Null
    );
    let message = b.text("#signin-error").await.unwrap_or_default();
    assert!(
        message.contains("Signed out after 3 seconds without activity"),
        "{message:?}"
    );
    // A tab reloaded after the idle time (its last activity 10 s ago) starts signed out.
    sign_in(&mut b, &base, &admin).await;
    b.wait_for("!document.getElementById('signout').hidden")
        .await;
    b.eval("sessionStorage.setItem('tally.lastActive', String(Date.now() - 10000)); location.reload(); true")
        .await;
    b.wait_for("document.getElementById('signin-error')").await;
    assert_eq!(
        b.eval("sessionStorage.getItem('tally.token')").await,
        Value::Null
    );
    // The default is 30 minutes, written into the page.
    drop(collector);
    let plain = CollectorProcess::spawn(&cdata);
    let page = reqwest::get(format!("http://{}/", plain.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"<meta name="tally-ui-idle" content="1800">"#),
        "{page}"
    );
}

/// Benchmark mode: the usage page of a customer with a year of hourly data (8,760 reports,
/// imported), timed from the navigation to the first chart drawn, three times; the figure
/// is printed with the command to reproduce it (the design's target is ≤ 1 s; measured,
/// not asserted). The chart's total must equal the API's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_page_with_a_year_of_hourly_data() {
    let tmp = tempfile::tempdir().unwrap();
    let cdata = tmp.path().join("collector");
    let admin = collector_json(&cdata, &["init"])["admin_token"]
        .as_str()
        .unwrap()
        .to_string();
    let customer = collector_json(&cdata, &["customers", "add", "Initech"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let nb = tally_proto::time::rfc3339(Utc::now() - Duration::days(380));
    let license = collector_json(
        &cdata,
        &[
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert",
            "--expires",
            "2099-01-01",
            "--not-before",
            &nb,
        ],
    )["license_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut agent = TestAgent::new(&license);
    agent.window = Duration::hours(1);
    let hours = 365 * 24;
    let start = Utc::now() - Duration::hours(hours + 2);
    agent.cursor =
        DateTime::from_timestamp(start.timestamp() - start.timestamp() % 3600, 0).unwrap();
    collector_json(
        &cdata,
        &[
            "agents",
            "add",
            "--license",
            &license,
            "--key",
            &hex::encode(agent.key_bytes()),
        ],
    );
    let mut expected = 0u64;
    let reports: Vec<pb::SignedReport> = (0..hours)
        .map(|h| {
            let q = 1 + (h as u64 * 7919) % 50;
            expected += q;
            agent.next(&[("api.convert", q)]).1
        })
        .collect();
    let bundle = tmp.path().join("year.bundle");
    std::fs::write(
        &bundle,
        tally_proto::bundle::write_reports(&pb::ReportBundle {
            reports,
            rotations: Vec::new(),
        }),
    )
    .unwrap();
    let imported = collector_json(&cdata, &["import", bundle.to_str().unwrap()]);
    assert_eq!(imported["counts"]["accepted"], hours, "{imported}");
    let collector = CollectorProcess::spawn(&cdata);
    let base = format!("http://{}", collector.http);

    let mut b = Browser::start().await;
    sign_in(&mut b, &base, &admin).await;
    b.wait_for("document.querySelector('main[data-view=overview]')")
        .await;
    let from = (Utc::now() - Duration::days(366))
        .format("%Y-%m-%d")
        .to_string();
    let to = (Utc::now() + Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let target = format!("#/customers/{customer}?granularity=hour&from={from}&to={to}");
    let mut times = Vec::new();
    for _ in 0..3 {
        // From another view, so no chart is on the page before the navigation.
        b.eval("location.hash = '#/agents'; true").await;
        b.wait_for("document.querySelector('main[data-view=agents]')")
            .await;
        let ms = b
            .eval(&format!(
                "new Promise((done) => {{
                   const t0 = performance.now();
                   location.hash = {};
                   const tick = () => document.querySelector('#chart[data-chart-ready] canvas')
                     ? requestAnimationFrame(() => done(performance.now() - t0))
                     : requestAnimationFrame(tick);
                   tick();
                 }})",
                serde_json::to_string(&target).unwrap()
            ))
            .await
            .as_f64()
            .unwrap();
        times.push(ms);
    }
    let total = b
        .eval("document.getElementById('usage-total').getAttribute('data-value')")
        .await;
    assert_eq!(
        total.as_str().map(str::to_string),
        Some(expected.to_string())
    );
    let points = b
        .eval("Number(document.getElementById('chart').getAttribute('data-chart-ready'))")
        .await;
    assert!(points.as_u64().unwrap() >= hours as u64, "{points}");
    times.sort_by(f64::total_cmp);
    let median = times[1];
    println!(
        "usage page, one year of hourly data ({hours} reports, {} points): first chart drawn in \
         {median:.0} ms (median of 3: {times:.0?}); design target <= 1000 ms: {}\n  reproduce: \
         cargo build --release -p tally-collector && cargo test --release -p tally-tests --test web_ui year -- --nocapture",
        points,
        if median <= 1000.0 { "met" } else { "MISSED" }
    );
}

//! Closing a month with real processes: a `tally-agent` whose clock is set to the last days
//! of the previous month (libfaketime) reports usage to a `tally-collector` on real time;
//! `periods close` freezes the month into a statement signed by the statement key, which
//! `statements verify` checks offline and `tally-agent statements verify` checks against
//! the agent's own receipts. Reports of the closed month that arrive later land as an
//! adjustment of the next month and never change the closed statement's bytes; a statement
//! the vendor tampered with (one report dropped, one quantity changed) is caught, each
//! difference named.

use chrono::{Duration, Utc};
use serde_json::{Value, json};
use std::path::Path;
use tally_collector::calendar::{month_label, month_of};
use tally_proto::statement::Statement;
use tally_tests::{
    AgentProcess, CollectorProcess, agent_cmd, agent_cmd_env, agent_json, collector_cmd,
    collector_json,
};

/// Records `events` (quantity each) on the agent, one HTTP call each, and waits until
/// every report has its receipt.
async fn record(agent: &AgentProcess, quantities: &[u64]) {
    let http = reqwest::Client::new();
    for q in quantities {
        let r = http
            .post(format!("{}/v1/events", agent.url()))
            .json(&json!({"metric": "api.convert", "quantity": q}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
        // Spread the events over windows (interval 1 s).
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    agent.drain(60).await;
}

async fn get(http_addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, Vec<u8>) {
    let r = reqwest::Client::new()
        .get(format!("http://{http_addr}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// `tally-agent statements verify --fetch MONTH` with the token in the environment.
fn agent_fetch(data: &Path, month: &str, api: &str, token: &str) -> (i32, String, String) {
    let args = ["statements", "verify", "--fetch", month, "--api", api];
    agent_cmd_env(data, &args, &[("TALLY_API_TOKEN", Some(token))])
}

/// `tally-agent statements audit ARGS…` with the token in the environment.
fn agent_audit(data: &Path, args: &[&str], token: &str) -> (i32, String, String) {
    let mut all = vec!["statements", "audit"];
    all.extend_from_slice(args);
    agent_cmd_env(data, &all, &[("TALLY_API_TOKEN", Some(token))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_month_is_signed_frozen_and_verifiable_by_the_customers_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let (cdata, adata) = (tmp.path().join("collector"), tmp.path().join("agent"));
    let init = collector_json(&cdata, &["init"]);
    let admin = init["admin_token"].as_str().unwrap().to_string();
    // The key closed statements are signed with.
    let vendor_hex = init["statement_key"].as_str().unwrap().to_string();
    let customer = collector_json(&cdata, &["customers", "add", "Acme, \"Intl\""])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = collector_json(&cdata, &["customers", "add", "Globex"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Auto-close off: this test closes by hand.
    let collector = CollectorProcess::spawn_with_args(
        &cdata,
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--close-grace",
            "off",
        ],
    );
    let endpoint = format!("http://{}", collector.grpc);
    let not_before = tally_proto::time::rfc3339(Utc::now() - Duration::days(40));
    let lic = collector_json(
        &cdata,
        &[
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert=20",
            "--expires",
            "2099-01-01",
            "--not-before",
            &not_before,
            "--endpoint",
            &endpoint,
        ],
    );
    agent_json(
        &adata,
        &[
            "init",
            "--license",
            lic["file"].as_str().unwrap(),
            "--token",
            lic["enrollment_token"].as_str().unwrap(),
            "--collector",
            &endpoint,
        ],
    );
    let customer_token = collector_json(
        &cdata,
        &[
            "tokens",
            "create",
            "--role",
            &format!("customer:{customer}"),
        ],
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    let other_token = collector_json(
        &cdata,
        &["tokens", "create", "--role", &format!("customer:{other}")],
    )["token"]
        .as_str()
        .unwrap()
        .to_string();

    // The agent lives in the last days of the previous month.
    let this_month = month_of(Utc::now().timestamp());
    let day =
        |d: i64| chrono::DateTime::from_timestamp(this_month - d * 86_400 + 12 * 3600, 0).unwrap();
    let period = month_label(this_month - 1);
    let mut agent = AgentProcess::spawn_at(
        &adata,
        &["--listen", "127.0.0.1:0", "--interval", "1s"],
        day(3),
    );
    record(&agent, &[5, 7, 11]).await;
    agent.kill9();

    // Close it.
    let closed = collector_json(&cdata, &["periods", "close", &period]);
    assert_eq!(closed["period"], period.as_str());
    // Globex, added this month with no license or usage for the closed one, gets none.
    assert_eq!(closed["statements"], 1, "{closed}");
    let again = collector_json(&cdata, &["periods", "close", &period]);
    assert_eq!(again["already_closed"], true, "{again}");
    let (code, _, err) = collector_cmd(&cdata, &["periods", "close", &month_label(this_month)]);
    assert_eq!(code, 2, "the current month cannot be closed: {err}");
    assert!(err.contains("has not ended"), "{err}");

    let path = format!("/v1/statements/{customer}/{period}");
    let (status, frozen) = get(collector.http, &path, &admin).await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_slice(&frozen).unwrap();
    assert_eq!(doc["closed"], true, "{doc}");
    assert!(
        doc["signature"].as_str().is_some_and(|s| s.len() == 128),
        "{doc}"
    );
    assert_eq!(
        doc["key_id"],
        tally_proto::keys::key_id(&hex::decode(&vendor_hex).unwrap().try_into().unwrap())
    );
    assert_eq!(
        doc["lines"],
        json!([{"metric": "api.convert", "used": 23, "limit": 20, "overage": 3}]),
        "{doc}"
    );
    let agents = doc["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{doc}");
    assert_eq!(
        agents[0]["quantities"],
        json!([{"metric": "api.convert", "quantity": 23}])
    );
    assert_eq!(agents[0]["first_seq"], 1);

    // Offline check with only the statement key's public half.
    let file = tmp.path().join("statement.json");
    std::fs::write(&file, &frozen).unwrap();
    let f = file.to_str().unwrap();
    let elsewhere = tmp.path().join("nothing-here");
    let (code, out, err) = collector_cmd(
        &elsewhere,
        &["statements", "verify", f, "--vendor-key", &vendor_hex],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signature valid"), "{out}");
    let forged = tmp.path().join("forged.json");
    std::fs::write(
        &forged,
        String::from_utf8(frozen.clone())
            .unwrap()
            .replace("\"used\":23", "\"used\":13"),
    )
    .unwrap();
    let (code, _, err) = collector_cmd(
        &elsewhere,
        &[
            "statements",
            "verify",
            forged.to_str().unwrap(),
            "--vendor-key",
            &vendor_hex,
        ],
    );
    assert_eq!(code, 1, "a changed statement must not verify");
    assert!(err.contains("signature does not verify"), "{err}");

    // The agent checks its line: from the file, and fetched with the customer's token.
    let (code, out, err) = agent_cmd(&adata, &["statements", "verify", f]);
    assert_eq!(code, 0, "{out}{err}\n{doc}");
    assert!(out.contains("matches my receipts"), "{out}");
    let api = format!("http://{}", collector.http);
    let (code, out, err) = agent_fetch(&adata, &period, &api, &customer_token);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("matches my receipts"), "{out}");
    let (code, _, err) = agent_fetch(&adata, &period, &api, &other_token);
    assert_eq!(
        code, 1,
        "another customer's token must not fetch this statement: {err}"
    );
    assert!(err.contains("not found"), "{err}");

    // The customer audits the whole bill: its inventory is the key id `status` shows.
    let status = agent_json(&adata, &["status"]);
    let key_id = status["key_id"].as_str().unwrap().to_string();
    assert_eq!(
        status["public_key"].as_str().map(str::len),
        Some(64),
        "{status}"
    );
    let inventory = tmp.path().join("our-agents.txt");
    std::fs::write(&inventory, format!("# site A\n{key_id}\n")).unwrap();
    let inv = inventory.to_str().unwrap();
    let (code, out, err) = agent_audit(
        &adata,
        &["--fetch", &period, "--api", &api, "--agents", inv],
        &customer_token,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("matches") && out.contains("3 signed reports verified"),
        "{out}"
    );
    // The evidence is streamed (agent line by agent line: no length known up front) and
    // is one strict JSON document naming this agent's key and its three reports.
    let r = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/statements/{customer}/{period}/evidence",
            collector.http
        ))
        .bearer_auth(&customer_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers().get("content-length").is_none()
            && r.headers().get("transfer-encoding").map(|v| v.as_bytes()) == Some(b"chunked"),
        "{:?}",
        r.headers()
    );
    let ev: tally_proto::statement::audit::Evidence =
        serde_json::from_value(tally_proto::json::parse(&r.bytes().await.unwrap()).unwrap())
            .unwrap();
    assert_eq!(ev.agents.len(), 1);
    assert_eq!(ev.agents[0].key_id, key_id);
    assert_eq!(ev.agents[0].reports.len(), 3);
    // Another customer's token gets no evidence of this one (404), and the attempt is
    // in the audit log.
    let (status_code, body) = get(
        collector.http,
        &format!("/v1/statements/{customer}/{period}/evidence"),
        &other_token,
    )
    .await;
    assert_eq!(status_code, 404, "{}", String::from_utf8_lossy(&body));
    let (_, audit_log) = get(collector.http, "/v1/audit?limit=5", &admin).await;
    let audit_log = String::from_utf8_lossy(&audit_log).into_owned();
    assert!(
        audit_log.contains("evidence") && audit_log.contains("cross_tenant_denied"),
        "{audit_log}"
    );
    // A phantom install: a line for a key the customer never had, the total raised to
    // match and re-signed with the statement key (it adds up, and this agent's own line is
    // honest): the audit names it.
    let vendor = statement_key(&cdata, &frozen);
    let mut phantom = Statement::verify(&frozen, &vendor.verifying_key()).unwrap();
    let mut line = phantom.agents[0].clone();
    line.agent_id = "agt_phantom".into();
    line.key_id = "ffffffffffffffff".into();
    phantom.agents.push(line);
    phantom.lines[0].used += 23;
    phantom.lines[0].overage += 23;
    let phantom_file = tmp.path().join("phantom.json");
    std::fs::write(&phantom_file, phantom.sign(&vendor)).unwrap();
    let (code, out, err) = agent_cmd(
        &adata,
        &["statements", "verify", phantom_file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "one agent alone cannot see a phantom: {out}{err}");
    let (code, out, err) = agent_audit(
        &adata,
        &[
            phantom_file.to_str().unwrap(),
            "--api",
            &api,
            "--agents",
            inv,
        ],
        &customer_token,
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("key id ffffffffffffffff is not one of our agents (a phantom install)"),
        "{out}"
    );
    assert!(
        err.contains("not backed by our agents' signatures"),
        "{err}"
    );
    // An inventory that lacks the real agent: its line is named too.
    std::fs::write(&inventory, "0123456789abcdef\n").unwrap();
    let (code, out, _) = agent_audit(
        &adata,
        &["--fetch", &period, "--api", &api, "--agents", inv],
        &customer_token,
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("key id {key_id} is not one of our agents")),
        "{out}"
    );
    // A malformed inventory is bad input.
    std::fs::write(&inventory, "site-a\n").unwrap();
    let (code, _, err) = agent_audit(
        &adata,
        &["--fetch", &period, "--api", &api, "--agents", inv],
        &customer_token,
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: --agents") && err.contains("not a key id"),
        "{err}"
    );

    // Late reports of the closed month: an adjustment of this month; the closed statement
    // does not change by a byte.
    let mut agent = AgentProcess::spawn_at(
        &adata,
        &["--listen", "127.0.0.1:0", "--interval", "1s"],
        day(2),
    );
    record(&agent, &[2, 2, 2, 2]).await;
    agent.kill9();
    let (_, after) = get(collector.http, &path, &admin).await;
    assert_eq!(after, frozen, "a closed statement changed");
    let (_, open) = get(
        collector.http,
        &format!("/v1/statements/{customer}/{}", month_label(this_month)),
        &admin,
    )
    .await;
    let open: Value = serde_json::from_slice(&open).unwrap();
    assert_eq!(open["closed"], false, "{open}");
    assert_eq!(
        open["adjustments"],
        json!([{"metric": "api.convert", "period": period, "quantity": 8}]),
        "{open}"
    );
    // The CSV of both: the closed month's line, and this month's adjustment row, each
    // with the customer's id and name (quoted: it holds a comma and quotes).
    let (_, closed_csv) = get(collector.http, &format!("{path}?format=csv"), &admin).await;
    let closed_csv = String::from_utf8(closed_csv).unwrap();
    assert_eq!(
        closed_csv,
        format!(
            "customer,customer_name,kind,metric,period,quantity,limit,overage\n\
             {customer},\"Acme, \"\"Intl\"\"\",usage,api.convert,{period},23,20,3\n"
        )
    );
    let (_, open_csv) = get(
        collector.http,
        &format!(
            "/v1/statements/{customer}/{}?format=csv",
            month_label(this_month)
        ),
        &admin,
    )
    .await;
    let open_csv = String::from_utf8(open_csv).unwrap();
    assert!(
        open_csv.ends_with(&format!(
            "{customer},\"Acme, \"\"Intl\"\"\",adjustment,api.convert,{period},8,,\n"
        )),
        "{open_csv}"
    );
    // Usage by hour still says when it happened: the late usage is in the closed month.
    let (_, usage) = get(
        collector.http,
        &format!("/v1/usage?customer={customer}&granularity=month"),
        &admin,
    )
    .await;
    let usage: Value = serde_json::from_slice(&usage).unwrap();
    assert_eq!(usage["rows"][0]["quantity"], 31, "{usage}");
    // The agent's line still matches: the late reports are noted, not differences.
    let (code, out, err) = agent_cmd(&adata, &["statements", "verify", f]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("after the close"), "{out}");

    // Retention removes the report bodies of the closed month: the statement and the
    // totals stay, and every report resent (exported by the agent, imported at the
    // collector) is a duplicate, counted once.
    let expired = collector_json(&cdata, &["retention", "apply", "--retain-reports", "1s"]);
    assert_eq!(expired[0]["period"], period.as_str(), "{expired}");
    assert!(expired[0]["reports"].as_u64().unwrap() >= 3, "{expired}");
    // What was removed is listed per agent: the same root as the statement's line when
    // the line counts exactly the removed reports.
    let summaries = collector_json(&cdata, &["retention", "list"]);
    let line = &doc["agents"][0];
    assert!(
        summaries
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["period"] == period.as_str()
                && r["agent_id"] == line["agent_id"]
                && r["first_seq"] == line["first_seq"]),
        "{summaries} vs {line}"
    );
    let (code, out, _) = collector_cmd(&cdata, &["retention", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&period) && out.contains("reports\troot "),
        "{out}"
    );
    let (_, kept) = get(collector.http, &path, &admin).await;
    assert_eq!(kept, frozen, "retention changed a closed statement");
    let (_, usage_after) = get(
        collector.http,
        &format!("/v1/usage?customer={customer}&granularity=month"),
        &admin,
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&usage_after).unwrap(),
        usage,
        "retention changed the totals"
    );
    let bundle = tmp.path().join("all.bundle");
    agent_json(
        &adata,
        &["export", "--since", "1", "--out", bundle.to_str().unwrap()],
    );
    let imported = collector_json(&cdata, &["import", bundle.to_str().unwrap()]);
    let counts = imported["counts"].as_object().unwrap();
    assert!(
        counts.keys().all(|k| k == "duplicate") && counts["duplicate"].as_u64() > Some(3),
        "resent after retention: {imported}"
    );
    let (_, usage_resent) = get(
        collector.http,
        &format!("/v1/usage?customer={customer}&granularity=month"),
        &admin,
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&usage_resent).unwrap(),
        usage,
        "a resend after retention was counted"
    );

    // The vendor tampers: drops one report from the agent's line and raises a quantity,
    // and signs again (it holds the key). The agent names both differences.
    let vendor = statement_key(&cdata, &frozen);
    let mut s = Statement::verify(&frozen, &vendor.verifying_key()).unwrap();
    let line = &mut s.agents[0];
    let (first, last) = (line.first_seq, line.last_seq);
    assert!(last >= first + 2, "need three reports at least: {line:?}");
    let dropped = first + 1;
    line.seqs = vec![(first, first), (first + 2, last)];
    line.reports -= 1;
    line.quantities[0].quantity += 4;
    // The total raised to match, so the statement adds up and only the agent's own
    // receipts can tell.
    let l = s
        .lines
        .iter_mut()
        .find(|l| l.metric == "api.convert")
        .unwrap();
    l.used += 4;
    l.overage = l.limit.map_or(0, |limit| l.used.saturating_sub(limit));
    let tampered = tmp.path().join("tampered.json");
    std::fs::write(&tampered, s.sign(&vendor)).unwrap();
    let (code, out, err) = agent_cmd(
        &adata,
        &["statements", "verify", tampered.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!("seq {dropped} ")) && out.contains("missing from the bill"),
        "the dropped report must be named: {out}"
    );
    assert!(
        out.contains("metric api.convert: the bill counts 27, my receipts count 23"),
        "the changed quantity must be named: {out}"
    );
    assert!(err.contains("differs from my receipts"), "{err}");

    // A dishonest vendor's edits that leave every agent line honest, re-signed: the billed
    // total raised, and an adjustment invented with no agent line behind it. The statement
    // does not add up, and every verifier says so (exit 1), naming the metric.
    let honest = Statement::verify(&frozen, &vendor.verifying_key()).unwrap();
    let mut inflated = honest.clone();
    let l = inflated
        .lines
        .iter_mut()
        .find(|l| l.metric == "api.convert")
        .unwrap();
    l.used += 5;
    l.overage = l.limit.map_or(0, |limit| l.used.saturating_sub(limit));
    let mut invented = honest.clone();
    invented
        .adjustments
        .push(tally_proto::statement::Adjustment {
            metric: "api.convert".into(),
            period: "2000-01".into(),
            quantity: 7,
        });
    invented
        .adjustments
        .sort_by(|a, b| (&a.metric, &a.period).cmp(&(&b.metric, &b.period)));
    for (name, doc) in [("inflated", inflated), ("invented", invented)] {
        let path = tmp.path().join(format!("{name}.json"));
        std::fs::write(&path, doc.sign(&vendor)).unwrap();
        let (code, out, err) = agent_cmd(&adata, &["statements", "verify", path.to_str().unwrap()]);
        assert_eq!(code, 1, "agent, {name}: {out}{err}");
        assert!(
            err.contains("does not add up") && err.contains("api.convert: used"),
            "agent, {name}: {err}"
        );
        let (code, out, err) = collector_cmd(
            &cdata,
            &[
                "statements",
                "verify",
                path.to_str().unwrap(),
                "--vendor-key",
                &vendor_hex,
            ],
        );
        assert_eq!(code, 1, "collector, {name}: {out}{err}");
        assert!(
            err.contains("does not add up") && err.contains("api.convert: used"),
            "collector, {name}: {err}"
        );
    }
}

/// The private key that signed `statement` (the collector's statement key, in `keys/`):
/// what a dishonest vendor re-signs with.
fn statement_key(cdata: &std::path::Path, statement: &[u8]) -> ed25519_dalek::SigningKey {
    let v: serde_json::Value = serde_json::from_slice(statement).unwrap();
    let id = v["key_id"].as_str().unwrap();
    tally_proto::keys::read(&cdata.join("keys").join(format!("{id}.key"))).unwrap()
}

//! The bad-input matrix: one table of hostile inputs across gRPC ingest, import files,
//! billing HTTP and license files. Each row names the specific error it must get, and the
//! database is compared before and after: refused input changes nothing at all; authentic
//! but wrong reports (quarantine) are stored but change no rollup.

use chrono::Duration;
use tally_collector::datadir::CollectorFiles;
use tally_collector::store::{BillingStore, RegistryStore, UsageFilter};
use tally_proto::pb;
use tally_proto::receipt::{Outcome, ReceiptBody};
use tally_tests::{InProcessCollector, TestAgent, receipts};

/// (row count of every table except the audit log, sum of all rollups)
async fn snapshot(c: &InProcessCollector) -> (Vec<(String, i64)>, u64) {
    let db = rusqlite::Connection::open(c.ctx.dir.db()).unwrap();
    let tables: Vec<String> = db
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'audit' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let counts = tables.into_iter().map(|t| {
        let n = db
            .query_row(&format!("SELECT COUNT(*) FROM \"{t}\""), [], |r| r.get(0))
            .unwrap();
        (t, n)
    });
    let counts = counts.collect();
    let sum = c
        .store()
        .hourly_usage(UsageFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|r| r.quantity)
        .sum();
    (counts, sum)
}

#[derive(Clone, Copy, PartialEq)]
enum Effect {
    /// Nothing at all may change.
    Nothing,
    /// Stored for review, never counted.
    NotCounted,
}

struct Matrix {
    rows: Vec<(String, bool)>,
}

impl Matrix {
    fn record(&mut self, name: &str, ok: bool, detail: String) {
        if !ok {
            eprintln!("FAILED {name}: {detail}");
        }
        self.rows.push((name.to_string(), ok));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_matrix() {
    let c = InProcessCollector::start().await;
    let a = c.add_customer("A").await;
    let b = c.add_customer("B").await;
    let (lic_a, tok_a) = c.issue_license(&a, &["api.convert"]).await;
    let (lic_b, _) = c.issue_license(&b, &["api.convert"]).await;
    let mut agent = c.enroll(&lic_a, &tok_a).await;
    let revoked = c.enroll(&lic_a, &tok_a).await;
    let rid = c
        .store()
        .list_agents(Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.key == revoked.key_bytes())
        .unwrap()
        .agent_id;
    tally_collector::commands::agents_revoke(&c.ctx, &rid)
        .await
        .unwrap();
    // A delivered first report, so replays and forks have something to collide with.
    let (_, first) = agent.next(&[("api.convert", 5)]);
    let key = c.collector.ingestor.collector_key();
    let mut client = c.client().await;
    client
        .submit(pb::SubmitRequest {
            reports: vec![first.clone()],
        })
        .await
        .unwrap();
    let customer_token = c.token(&format!("customer:{a}")).await;
    let revoked_token = {
        let out = tally_collector::commands::tokens_create(&c.ctx, "billing", None)
            .await
            .unwrap();
        tally_collector::commands::tokens_revoke(&c.ctx, out.json["id"].as_str().unwrap())
            .await
            .unwrap();
        out.json["token"].as_str().unwrap().to_string()
    };

    let mut m = Matrix { rows: Vec::new() };

    // ---- gRPC ingest: (name, report, expected outcome, reason, effect) ----------------
    let mut grpc_cases: Vec<(&str, pb::SignedReport, Outcome, &str, Effect)> = Vec::new();
    let mut truncated = agent.draft(&[("api.convert", 1)]).sign(&agent.key);
    truncated.report.truncate(truncated.report.len() - 3);
    grpc_cases.push((
        "grpc: truncated report",
        truncated,
        Outcome::Refused,
        "malformed",
        Effect::Nothing,
    ));
    grpc_cases.push((
        "grpc: garbage bytes",
        pb::SignedReport {
            report: vec![0xde, 0xad, 0xbe, 0xef],
            signature: vec![0; 64],
        },
        Outcome::Refused,
        "malformed",
        Effect::Nothing,
    ));
    grpc_cases.push((
        "grpc: empty report",
        pb::SignedReport {
            report: vec![],
            signature: vec![0; 64],
        },
        Outcome::Refused,
        "malformed",
        Effect::Nothing,
    ));
    grpc_cases.push((
        "grpc: oversized report",
        pb::SignedReport {
            report: vec![0x0a; 70_000],
            signature: vec![0; 64],
        },
        Outcome::Refused,
        "too_large",
        Effect::Nothing,
    ));
    let mut wrong_sig = agent.draft(&[("api.convert", 1)]).sign(&agent.key);
    wrong_sig.signature[10] ^= 0x40;
    grpc_cases.push((
        "grpc: wrong signature",
        wrong_sig,
        Outcome::Refused,
        "bad_signature",
        Effect::Nothing,
    ));
    let draft = agent.draft(&[("api.convert", 1)]);
    let bytes = draft.encode();
    let other_domain = tally_proto::signing::sign(
        &agent.key,
        tally_proto::signing::Domain::ReceiptBody,
        &bytes,
    )
    .to_vec();
    grpc_cases.push((
        "grpc: wrong domain prefix",
        pb::SignedReport {
            report: bytes.clone(),
            signature: other_domain,
        },
        Outcome::Refused,
        "bad_signature",
        Effect::Nothing,
    ));
    let stranger = TestAgent::at(&lic_a, c.now());
    grpc_cases.push((
        "grpc: unknown key",
        stranger.draft(&[("api.convert", 1)]).sign(&stranger.key),
        Outcome::Refused,
        "unknown_agent",
        Effect::Nothing,
    ));
    grpc_cases.push((
        "grpc: revoked key",
        revoked.draft(&[("api.convert", 1)]).sign(&revoked.key),
        Outcome::Refused,
        "agent_revoked",
        Effect::Nothing,
    ));
    let mut other_license = agent.draft(&[("api.convert", 1)]);
    other_license.license_id = lic_b.clone();
    grpc_cases.push((
        "grpc: another customer's license",
        other_license.sign(&agent.key),
        Outcome::Refused,
        "license_mismatch",
        Effect::Nothing,
    ));
    let mut sql_license = agent.draft(&[("api.convert", 1)]);
    sql_license.license_id = "lic_a'; DROP TABLE reports; --".into();
    grpc_cases.push((
        "grpc: SQL metacharacters in license_id",
        sql_license.sign(&agent.key),
        Outcome::Refused,
        "license_mismatch",
        Effect::Nothing,
    ));
    grpc_cases.push((
        "grpc: replayed report",
        first.clone(),
        Outcome::Duplicate,
        "",
        Effect::Nothing,
    ));
    let mut fork = first_report(&first);
    fork.counters[0].quantity = 500;
    grpc_cases.push((
        "grpc: forked report (same seq)",
        fork.sign(&agent.key),
        Outcome::Quarantined,
        "seq_conflict",
        Effect::NotCounted,
    ));
    let mut skew = agent.draft(&[("api.convert", 1)]);
    skew.seq = 40;
    skew.window_start = c.now() + Duration::hours(2);
    skew.window_end = skew.window_start + Duration::minutes(1);
    grpc_cases.push((
        "grpc: clock skewed into the future",
        skew.sign(&agent.key),
        Outcome::Quarantined,
        "clock_skew",
        Effect::NotCounted,
    ));
    let mut old = agent.draft(&[("api.convert", 1)]);
    old.seq = 41;
    old.window_start = c.now() - Duration::days(50);
    old.window_end = old.window_start + Duration::minutes(1);
    grpc_cases.push((
        "grpc: window too old",
        old.sign(&agent.key),
        Outcome::Quarantined,
        "too_old",
        Effect::NotCounted,
    ));
    let mut bad_metric = agent.draft(&[("API.Convert", 1)]);
    bad_metric.seq = 44;
    grpc_cases.push((
        "grpc: invalid metric name",
        bad_metric.sign(&agent.key),
        Outcome::Quarantined,
        "invalid_counters",
        Effect::NotCounted,
    ));
    let mut unlicensed = agent.draft(&[("api.other", 1)]);
    unlicensed.seq = 45;
    grpc_cases.push((
        "grpc: unlicensed metric",
        unlicensed.sign(&agent.key),
        Outcome::Quarantined,
        "metric_not_licensed",
        Effect::NotCounted,
    ));
    let mut zero = agent.draft(&[("api.convert", 0)]);
    zero.seq = 46;
    grpc_cases.push((
        "grpc: zero quantity",
        zero.sign(&agent.key),
        Outcome::Quarantined,
        "invalid_counters",
        Effect::NotCounted,
    ));
    let mut huge = agent.draft(&[("api.convert", u64::MAX)]);
    huge.seq = 47;
    grpc_cases.push((
        "grpc: quantity beyond 2^63",
        huge.sign(&agent.key),
        Outcome::Quarantined,
        "invalid_counters",
        Effect::NotCounted,
    ));
    let mut invalid_utf8 = agent.draft(&[("api.convert", 1)]).encode();
    // Field 1 (license_id) with invalid UTF-8.
    let mut raw = vec![0x0a, 0x02, 0xff, 0xfe];
    raw.extend_from_slice(&invalid_utf8[invalid_utf8[1] as usize + 2..]);
    invalid_utf8 = raw;
    let sig = tally_proto::signing::sign(
        &agent.key,
        tally_proto::signing::Domain::UsageReport,
        &invalid_utf8,
    )
    .to_vec();
    grpc_cases.push((
        "grpc: invalid UTF-8 in a string field",
        pb::SignedReport {
            report: invalid_utf8,
            signature: sig,
        },
        Outcome::Refused,
        "malformed",
        Effect::Nothing,
    ));

    // A correctly signed report that carries one more field than `UsageReport` has (field
    // 15, a string): an encoder could smuggle a document through it, so it is not a report.
    let mut smuggled = agent.draft(&[("api.convert", 1)]).encode();
    let document = b"CONFIDENTIAL: the customer's contract text";
    smuggled.extend_from_slice(&[(15 << 3) | 2, document.len() as u8]);
    smuggled.extend_from_slice(document);
    let sig = tally_proto::signing::sign(
        &agent.key,
        tally_proto::signing::Domain::UsageReport,
        &smuggled,
    )
    .to_vec();
    grpc_cases.push((
        "grpc: an unknown field carrying a document",
        pb::SignedReport {
            report: smuggled,
            signature: sig,
        },
        Outcome::Refused,
        "malformed",
        Effect::Nothing,
    ));

    for (name, report, outcome, reason, effect) in grpc_cases {
        let before = snapshot(&c).await;
        let resp = client
            .submit(pb::SubmitRequest {
                reports: vec![report],
            })
            .await
            .unwrap()
            .into_inner();
        let r: &ReceiptBody = &receipts(resp, &key)[0];
        let after = snapshot(&c).await;
        let state_ok = match effect {
            Effect::Nothing => after == before,
            Effect::NotCounted => after.1 == before.1,
        };
        m.record(
            name,
            r.outcome == outcome && r.reason == reason && state_ok,
            format!(
                "{:?}/{} ({}); state ok: {state_ok}",
                r.outcome, r.reason, r.detail
            ),
        );
    }

    // ---- gRPC calls that are bad as a whole ------------------------------------------
    let before = snapshot(&c).await;
    let e = client
        .submit(pb::SubmitRequest {
            reports: vec![first.clone(); 501],
        })
        .await
        .unwrap_err();
    m.record(
        "grpc: 501 reports in one call",
        e.code() == tonic::Code::InvalidArgument && snapshot(&c).await == before,
        e.to_string(),
    );
    let e = client
        .submit(pb::SubmitRequest {
            reports: vec![
                pb::SignedReport {
                    report: vec![1; 60_000],
                    signature: vec![]
                };
                80
            ],
        })
        .await
        .unwrap_err();
    m.record(
        "grpc: request over 4 MiB",
        e.code() != tonic::Code::Ok && snapshot(&c).await == before,
        e.to_string(),
    );
    let bad_enroll =
        |license_id: &str, token: &str, key: Vec<u8>, proof: Vec<u8>| pb::EnrollRequest {
            license_id: license_id.into(),
            enrollment_token: token.into(),
            agent_key: key,
            proof,
        };
    let k = tally_proto::keys::generate();
    let kb = k.verifying_key().to_bytes().to_vec();
    for (name, req, code) in [
        (
            "enroll: wrong token",
            bad_enroll(
                &lic_a,
                "enr_wrong",
                kb.clone(),
                tally_proto::enroll::prove(&k, &lic_a, "enr_wrong").to_vec(),
            ),
            tonic::Code::PermissionDenied,
        ),
        (
            "enroll: bad proof",
            bad_enroll(&lic_a, &tok_a, kb.clone(), vec![0; 64]),
            tonic::Code::PermissionDenied,
        ),
        (
            "enroll: short key",
            bad_enroll(&lic_a, &tok_a, vec![1; 31], vec![0; 64]),
            tonic::Code::InvalidArgument,
        ),
        (
            "enroll: weak key",
            bad_enroll(
                &lic_a,
                &tok_a,
                [0u8; 32]
                    .iter()
                    .enumerate()
                    .map(|(i, _)| if i == 0 { 1 } else { 0 })
                    .collect(),
                vec![0; 64],
            ),
            tonic::Code::InvalidArgument,
        ),
        (
            "enroll: path traversal license id",
            bad_enroll("../../etc/passwd", &tok_a, kb.clone(), vec![0; 64]),
            tonic::Code::InvalidArgument,
        ),
        (
            "enroll: unknown license",
            bad_enroll(
                "lic_missing",
                &tok_a,
                kb.clone(),
                tally_proto::enroll::prove(&k, "lic_missing", &tok_a).to_vec(),
            ),
            tonic::Code::NotFound,
        ),
    ] {
        let e = client.enroll(req).await.unwrap_err();
        m.record(
            name,
            e.code() == code && snapshot(&c).await == before,
            e.to_string(),
        );
    }

    // ---- import files ---------------------------------------------------------------
    let dir = c.dir.path();
    for (name, bytes, needle) in [
        (
            "import: not a bundle",
            b"hello world".to_vec(),
            "not a report bundle",
        ),
        (
            "import: receipt bundle instead",
            tally_proto::bundle::write_receipts(&pb::ReceiptBundle::default()),
            "not a report bundle",
        ),
        (
            "import: truncated bundle",
            {
                let mut v = tally_proto::bundle::write_reports(&pb::ReportBundle {
                    reports: vec![first.clone()],
                    rotations: Vec::new(),
                });
                v.truncate(v.len() - 7);
                v
            },
            "damaged",
        ),
        ("import: empty file", Vec::new(), "not a report bundle"),
    ] {
        let p = dir.join("bad.bundle");
        std::fs::write(&p, &bytes).unwrap();
        let r = tally_collector::commands::import(&c.ctx, &p, None).await;
        let ok = matches!(&r, Err(e) if e.exit_code() == 2 && e.to_string().contains(needle));
        m.record(
            name,
            ok && snapshot(&c).await == before,
            format!("{:?}", r.err()),
        );
    }

    // ---- billing HTTP ---------------------------------------------------------------
    let http = reqwest::Client::new();
    let admin = Some(c.admin_token.as_str());
    // (name, path, token, status, error code, a phrase the message must contain)
    for (name, path, token, status, code, needle) in [
        (
            "http: missing token",
            "/v1/usage".to_string(),
            None,
            401u16,
            "unauthorized",
            "missing 'Authorization: Bearer <token>' header",
        ),
        (
            "http: invalid token",
            "/v1/usage".to_string(),
            Some("tally_forged"),
            401,
            "unauthorized",
            "unknown token",
        ),
        (
            "http: revoked token",
            "/v1/usage".to_string(),
            Some(revoked_token.as_str()),
            401,
            "unauthorized",
            "this token has been revoked",
        ),
        (
            "http: cross-tenant usage",
            format!("/v1/usage?customer={b}"),
            Some(customer_token.as_str()),
            404,
            "not_found",
            &format!("customer {b} not found"),
        ),
        (
            "http: cross-tenant statement",
            format!("/v1/statements/{b}/2026-01"),
            Some(customer_token.as_str()),
            404,
            "not_found",
            &format!("customer {b} not found"),
        ),
        (
            "http: cross-tenant evidence",
            format!("/v1/statements/{b}/2026-01/evidence"),
            Some(customer_token.as_str()),
            404,
            "not_found",
            &format!("customer {b} not found"),
        ),
        (
            "http: evidence of an open month",
            format!("/v1/statements/{a}/{}/evidence", c.now().format("%Y-%m")),
            admin,
            404,
            "not_found",
            "only a closed statement has evidence",
        ),
        (
            "http: evidence with a parameter",
            format!("/v1/statements/{a}/2026-01/evidence?format=csv"),
            admin,
            400,
            "invalid_parameter",
            "unknown parameter \"format\"",
        ),
        (
            "http: evidence of a month that is not one",
            format!("/v1/statements/{a}/2026-13/evidence"),
            admin,
            400,
            "invalid_parameter",
            "is not YYYY-MM",
        ),
        (
            "http: SQL metacharacters",
            "/v1/usage?license=lic%27%3B%20DROP%20TABLE%20reports%3B--".to_string(),
            admin,
            400,
            "invalid_parameter",
            "license",
        ),
        (
            "http: path traversal",
            "/v1/statements/..%2F..%2Fetc/2026-01".to_string(),
            admin,
            400,
            "invalid_parameter",
            "customer",
        ),
        (
            "http: invalid UTF-8 in query",
            "/v1/usage?metric=%C3%28".to_string(),
            admin,
            400,
            "invalid_parameter",
            "UTF-8",
        ),
        (
            "http: bad granularity",
            "/v1/usage?granularity=fortnight".to_string(),
            admin,
            400,
            "invalid_parameter",
            "granularity",
        ),
        (
            "http: unknown parameter",
            "/v1/usage?cusotmer=x".to_string(),
            admin,
            400,
            "invalid_parameter",
            "cusotmer",
        ),
        (
            "http: unknown route",
            "/v1/secrets".to_string(),
            admin,
            404,
            "not_found",
            "no route for GET /v1/secrets",
        ),
        (
            "http: audit limit 0",
            "/v1/audit?limit=0".to_string(),
            admin,
            400,
            "invalid_parameter",
            "limit: a whole number from 1 to 1000",
        ),
        (
            "http: audit for a customer token",
            "/v1/audit".to_string(),
            Some(customer_token.as_str()),
            403,
            "forbidden",
            "this call needs an admin or billing token",
        ),
        (
            "http: alerts limit with a sign",
            "/v1/alerts?limit=%2B5".to_string(),
            admin,
            400,
            "invalid_parameter",
            "limit: a whole number from 1 to 1000",
        ),
        (
            "http: agent history before seq 0",
            "/v1/agents/agt_x/reports?before_seq=0".to_string(),
            admin,
            400,
            "invalid_parameter",
            "before_seq: a positive whole number",
        ),
        (
            "http: history of an unknown agent",
            "/v1/agents/agt_nobody/reports".to_string(),
            admin,
            404,
            "not_found",
            "agent agt_nobody not found",
        ),
    ] {
        let mut req = http.get(c.http_url(&path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let got = resp.status().as_u16();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        let ok = got == status
            && v["error"]["code"] == code
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle));
        m.record(
            name,
            ok && snapshot(&c).await == before,
            format!("{got} {v}"),
        );
    }
    let resp = http
        .post(c.http_url("/v1/reports:import"))
        .bearer_auth(&c.admin_token)
        .body(vec![0u8; 100])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    m.record(
        "http: import garbage",
        status == 400
            && v["error"]["code"] == "invalid_bundle"
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not a report bundle"))
            && snapshot(&c).await == before,
        format!("{status} {v}"),
    );

    // ---- license files ---------------------------------------------------------------
    let signed = tally_proto::license::parse_armored(
        &std::fs::read(c.ctx.dir.licenses().join(format!("{lic_a}.license"))).unwrap(),
    )
    .unwrap();
    let mut tampered = signed.clone();
    let n = tampered.license.len();
    tampered.license[n - 1] ^= 1;
    let mut foreign = signed.clone();
    foreign.vendor_key = tally_proto::keys::generate()
        .verifying_key()
        .to_bytes()
        .to_vec();
    let vendor = c.collector.ingestor.collector_key();
    // (name, the error, the exact message it must have)
    for (name, r, want) in [
        (
            "license: tampered body",
            tally_proto::license::License::verify(&tampered, None)
                .err()
                .map(|e| e.to_string()),
            "license signature: signature does not verify".to_string(),
        ),
        (
            "license: re-signed by a foreign key, checked against the vendor's",
            tally_proto::license::License::verify(&foreign, Some(&vendor))
                .err()
                .map(|e| e.to_string()),
            format!(
                "license is signed by {}, expected the vendor key {}",
                hex::encode(&foreign.vendor_key),
                hex::encode(vendor.to_bytes())
            ),
        ),
        (
            "license: foreign vendor key, body signed by another",
            tally_proto::license::License::verify(&foreign, None)
                .err()
                .map(|e| e.to_string()),
            "license signature: signature does not verify".to_string(),
        ),
        (
            "license: no armor",
            tally_proto::license::parse_armored(b"just text")
                .err()
                .map(|e| e.to_string()),
            "license file has no '-----BEGIN TALLY LICENSE-----' line".to_string(),
        ),
        (
            "license: invalid UTF-8 armor",
            tally_proto::license::parse_armored(&[0xff, 0xfe, 0x00])
                .err()
                .map(|e| e.to_string()),
            "license file has no '-----BEGIN TALLY LICENSE-----' line".to_string(),
        ),
    ] {
        m.record(name, r.as_deref() == Some(want.as_str()), format!("{r:?}"));
    }

    let failed: Vec<&str> = m
        .rows
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| n.as_str())
        .collect();
    println!(
        "bad-input matrix: {} cases, {} failed",
        m.rows.len(),
        failed.len()
    );
    assert!(
        m.rows.len() >= 40,
        "the matrix has only {} cases",
        m.rows.len()
    );
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

fn first_report(s: &pb::SignedReport) -> tally_proto::report::Report {
    tally_proto::report::Report::decode(&s.report).unwrap()
}

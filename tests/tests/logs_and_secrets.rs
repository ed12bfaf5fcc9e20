//! No token or enrollment secret ever appears in a log line: a collector process runs at
//! the most verbose log level while tokens are created, used, misused and revoked, and
//! agents enroll; its whole stderr is then searched for every secret. Once with text logs,
//! once with `--log-format json` (via `TALLY_LOG_FORMAT`), where every line must also be
//! one JSON object with its fields at the top level.

use tally_proto::pb;
use tally_tests::{CollectorProcess, TestAgent, collector_json, connect};

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_logs() {
    let log = scenario("text").await;
    assert!(!log.trim_start().starts_with('{'), "text logs are not JSON");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_and_hold_no_secret() {
    let log = scenario("json").await;
    let mut levels = std::collections::BTreeSet::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["target"].is_string(), "{line}");
        levels.insert(
            v["level"]
                .as_str()
                .unwrap_or_else(|| panic!("{line}"))
                .to_string(),
        );
        // Fields first: the event's fields are top-level members, not nested.
        assert!(v.get("fields").is_none(), "{line}");
    }
    assert!(
        levels.contains("INFO") && levels.contains("TRACE"),
        "{levels:?}"
    );
    // The enrollment event carries its fields as members a log collector can index.
    let enrolled = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "Agent enrolled.")
        .expect("the enrollment is logged");
    assert!(
        enrolled.as_object().unwrap().len() > 4,
        "fields beside timestamp, level, message, target: {enrolled}"
    );
}

/// Runs the scenario against a collector logging at trace level in `format`, checks that
/// no secret reached its stderr, and returns that stderr.
async fn scenario(format: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let admin = collector_json(&data, &["init"])["admin_token"]
        .as_str()
        .unwrap()
        .to_string();
    let customer = collector_json(&data, &["customers", "add", "Acme"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let lic = collector_json(
        &data,
        &[
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert",
            "--expires",
            "2099-01-01",
            "--enrollments",
            "5",
        ],
    );
    let (license, enrollment) = (
        lic["license_id"].as_str().unwrap().to_string(),
        lic["enrollment_token"].as_str().unwrap().to_string(),
    );
    let cust_token = collector_json(
        &data,
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
    let revoked = collector_json(&data, &["tokens", "create", "--role", "billing"]);
    collector_json(
        &data,
        &["tokens", "revoke", revoked["id"].as_str().unwrap()],
    );
    let revoked_token = revoked["token"].as_str().unwrap().to_string();

    let proc = CollectorProcess::spawn_with_env(
        &data,
        &[("TALLY_LOG", "trace"), ("TALLY_LOG_FORMAT", format)],
    );
    let http = reqwest::Client::new();
    for (token, path) in [
        (&admin, "/v1/usage"),
        (&cust_token, "/v1/usage?customer=cus_other"),
        (&revoked_token, "/v1/customers"),
        (&enrollment, "/v1/customers"),
    ] {
        let _ = http
            .get(format!("http://{}{path}", proc.http))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    }
    // Enroll one agent properly and fail one with a wrong token.
    let mut client = connect(proc.grpc).await;
    let agent = TestAgent::new(&license);
    let proof = tally_proto::enroll::prove(&agent.key, &license, &enrollment);
    client
        .enroll(pb::EnrollRequest {
            license_id: license.clone(),
            enrollment_token: enrollment.clone(),
            agent_key: agent.key_bytes().to_vec(),
            proof: proof.to_vec(),
        })
        .await
        .unwrap();
    let other = TestAgent::new(&license);
    let wrong = format!("{enrollment}x");
    let proof = tally_proto::enroll::prove(&other.key, &license, &wrong);
    let err = client
        .enroll(pb::EnrollRequest {
            license_id: license.clone(),
            enrollment_token: wrong.clone(),
            agent_key: other.key_bytes().to_vec(),
            proof: proof.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let log = proc.stderr();
    assert!(
        log.contains("Agent enrolled."),
        "the capture must contain the collector's logs:\n{log}"
    );
    assert!(
        log.len() > 500,
        "trace logging produced almost nothing:\n{log}"
    );
    // A log file is read by people and tools: no terminal colour codes in it.
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log written to a file:\n{}",
        &log[..log.len().min(300)]
    );
    let agent_secret = hex::encode(agent.key.to_bytes());
    let vendor_secret = hex::encode(
        tally_proto::keys::read(&data.join("vendor.key"))
            .unwrap()
            .to_bytes(),
    );
    for secret in [
        &admin,
        &cust_token,
        &revoked_token,
        &enrollment,
        &wrong,
        &agent_secret,
        &vendor_secret,
    ] {
        assert!(
            !log.contains(secret.as_str()),
            "a secret appeared in the logs"
        );
    }
    // Not even a long prefix of one.
    for secret in [&admin, &enrollment] {
        assert!(
            !log.contains(&secret[..20]),
            "a secret prefix appeared in the logs"
        );
    }
    log
}

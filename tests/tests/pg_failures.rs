//! The collector on PostgreSQL when things go wrong (real processes, a real server started
//! from the machine's binaries): an unreachable database at start, a second `init`, a node
//! whose key file is not the database's, and the database lost mid-run and back.

use serde_json::Value;
use std::time::Duration;
use tally_proto::pb;
use tally_proto::receipt::Outcome;
use tally_tests::pg::PgServer;
use tally_tests::{CollectorProcess, TestAgent, collector_cmd, collector_json, connect, receipts};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Unreachable database: exit 1 with one `error:` line that names where it tried, never
/// the URL's password; nothing is created.
#[test]
fn unreachable_database_at_start_is_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("c");
    let url = "postgres://tally:s3cret-pw@127.0.0.1:1/tally";
    // A data directory with key files (as a second node would have), for `customers list`.
    let node = tmp.path().join("node");
    collector_json(&node, &["init"]);
    for (dir, args) in [
        (&data, vec!["--database", url, "init"]),
        (&node, vec!["--database", url, "customers", "list"]),
    ] {
        let (code, out, err) = collector_cmd(dir, &args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains("127.0.0.1:1"), "names the server: {err}");
        assert!(!err.contains("s3cret"), "the password leaked: {err}");
    }
    assert!(!data.exists(), "a failed init must create nothing");
}

/// `init` on a database another node initialized is refused (exit 2), and a node whose
/// key file differs from the database's refuses to serve, naming both key ids.
#[tokio::test]
async fn second_init_and_a_foreign_key_are_refused() {
    let url = tally_tests::pg::shared().fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let init = collector_json(&first, &["--database", &url, "init"]);
    let key: [u8; 32] = hex::decode(init["vendor_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();

    let second = tmp.path().join("second");
    let (code, out, err) = collector_cmd(&second, &["--database", &url, "init"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("already initialized"), "{err}");
    assert!(err.contains(&tally_proto::keys::key_id(&key)), "{err}");
    assert!(!second.join("vendor.key").exists(), "nothing written");

    // A node with keys of its own (from an unrelated SQLite init): it lacks the database's
    // receipt key, named. Given the database's online keys but still its own vendor key,
    // that vendor key is named as not the deployment's.
    let receipt: [u8; 32] = hex::decode(init["collector_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let foreign = tmp.path().join("foreign");
    let other = collector_json(&foreign, &["init"]);
    let other: [u8; 32] = hex::decode(other["vendor_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let refused = |expect: Vec<String>| {
        // `serve` must refuse at once; were it to start serving, it is killed and the test
        // fails.
        let mut child = std::process::Command::new(tally_tests::workspace_bin("tally-collector"))
            .args(["--data"])
            .arg(&foreign)
            .args([
                "--database",
                &url,
                "serve",
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve started with keys that are not the database's");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = child.wait_with_output().unwrap();
        let (code, out, err) = (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        );
        assert_eq!(code, 2, "{out}{err}");
        for id in expect {
            assert!(err.contains(&id), "the refusal names key {id}: {err}");
        }
    };
    refused(vec![tally_proto::keys::key_id(&receipt)]);
    for e in std::fs::read_dir(first.join("keys")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), foreign.join("keys").join(e.file_name())).unwrap();
    }
    refused(vec![tally_proto::keys::key_id(&other)]);
}

/// Waits (up to 30 s) until gRPC health reports `want` for `service`.
async fn await_health(grpc: std::net::SocketAddr, service: &str, want: ServingStatus) {
    let ch = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(ch);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if got == want as i32 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gRPC health of {service:?}: {got}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get(url: String, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The database stops under a running collector: Submit answers UNAVAILABLE (no receipt),
/// `/readyz` and the billing API answer 503 JSON, gRPC health says NOT_SERVING. When it is back, everything recovers by
/// itself: the same report is then accepted, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_lost_mid_run_then_back() {
    let pg = PgServer::start();
    let url = pg.fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("c");
    let init = collector_json(&data, &["--database", &url, "init"]);
    let admin = init["admin_token"].as_str().unwrap().to_string();
    let key = ed25519_dalek::VerifyingKey::from_bytes(
        &hex::decode(init["collector_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
    )
    .unwrap();
    let customer = collector_json(&data, &["--database", &url, "customers", "add", "Acme"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let nb = tally_proto::time::rfc3339(chrono::Utc::now() - chrono::Duration::days(30));
    let lic = collector_json(
        &data,
        &[
            "--database",
            &url,
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
    );
    let license = lic["license_id"].as_str().unwrap();
    let mut agent = TestAgent::new(license);
    collector_json(
        &data,
        &[
            "--database",
            &url,
            "agents",
            "add",
            "--license",
            license,
            "--key",
            &hex::encode(agent.key_bytes()),
        ],
    );
    let c = CollectorProcess::spawn_with_env(&data, &[("TALLY_DATABASE_URL", &url)]);
    let (ready, _) = get(format!("http://{}/readyz", c.http), &admin).await;
    assert_eq!(ready, 200);

    pg.stop("immediate");
    let (_, report) = agent.next(&[("api.convert", 5)]);
    let mut client = connect(c.grpc).await;
    let err = client
        .submit(pb::SubmitRequest {
            reports: vec![report.clone()],
        })
        .await
        .expect_err("no receipt while the database is down");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let (ready, body) = get(format!("http://{}/readyz", c.http), &admin).await;
    assert_eq!((ready, body["status"].as_str()), (503, Some("unavailable")));
    let (status, body) = get(format!("http://{}/v1/customers", c.http), &admin).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["code"].is_string(), "JSON error: {body}");
    // gRPC health tells a load balancer the same.
    for service in ["tally.v1.Ingest", ""] {
        await_health(c.grpc, service, ServingStatus::NotServing).await;
    }

    pg.start_again();
    // Recovery needs no restart of the collector: the pool reconnects on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (ready, _) = get(format!("http://{}/readyz", c.http), &admin).await;
        if ready == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for service in ["tally.v1.Ingest", ""] {
        await_health(c.grpc, service, ServingStatus::Serving).await;
    }
    let resp = client
        .submit(pb::SubmitRequest {
            reports: vec![report.clone()],
        })
        .await
        .expect("accepted once the database is back")
        .into_inner();
    assert_eq!(receipts(resp, &key)[0].outcome, Outcome::Accepted);
    let again = client
        .submit(pb::SubmitRequest {
            reports: vec![report],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipts(again, &key)[0].outcome, Outcome::Duplicate);
    let (status, usage) = get(
        format!("http://{}/v1/usage?granularity=month", c.http),
        &admin,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(usage["rows"][0]["quantity"].as_u64(), Some(5), "{usage}");
}

//! Disk full: the agent cannot write past a 2 MiB file size (`RLIMIT_FSIZE`, which the
//! kernel enforces on every write, as it would a full filesystem; no privileges needed, so
//! the suite runs as any user). Record calls then fail with a clear error instead of being
//! acknowledged, the agent keeps running, and what was acknowledged is exactly what is
//! counted.

use tally_tests::{AgentProcess, Deployment, agent_json};

/// The largest file the agent may write: its database's write-ahead log reaches it first.
const FILE_LIMIT: u64 = 2 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn record_fails_clearly_when_the_disk_is_full() {
    let d = Deployment::new(&["api.convert"], None);
    agent_json(
        &d.adata,
        &["init", "--license", &d.license_file, "--token", &d.token],
    );
    // Long windows, so everything stays in the open window and the database.
    let agent = AgentProcess::spawn_limited(
        &d.adata,
        &["--listen", "127.0.0.1:0", "--interval", "1h"],
        Some(FILE_LIMIT),
    );
    let http = reqwest::Client::new();
    let (mut acked, mut failures, mut message) = (0u64, 0, String::new());
    for batch in 0..200u64 {
        // Long idempotency keys make every event take room on disk.
        let events: Vec<_> = (0..500u64)
            .map(|i| serde_json::json!({"metric": "api.convert", "quantity": 1, "idempotency_key": format!("{batch:06}-{i:06}-{}", "k".repeat(110))}))
            .collect();
        let r = http
            .post(format!("{}/v1/events", agent.url()))
            .json(&serde_json::json!({"events": events}))
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            acked += 500;
        } else {
            assert_eq!(
                r.status().as_u16(),
                503,
                "a full disk is a server-side failure"
            );
            let v: serde_json::Value = r.json().await.unwrap();
            message = v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            failures += 1;
            if failures >= 3 {
                break;
            }
        }
    }
    println!("acknowledged {acked} events before the disk filled; error: {message}");
    assert!(failures >= 3, "the 2 MiB file limit was never reached");
    assert!(
        message.contains("could not commit") && message.contains("nothing was counted"),
        "{message}"
    );
    assert!(acked > 0);
    // Still alive and answering.
    assert!(
        http.get(format!("{}/v1/license", agent.url()))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    // Exactly what was acknowledged is counted (open window) — nothing from failed calls.
    let db = rusqlite::Connection::open_with_flags(
        d.adata.join("agent.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let counted: i64 = db
        .query_row("SELECT COALESCE(SUM(quantity), 0) FROM counters", [], |r| {
            r.get(0)
        })
        .unwrap();
    let reports: i64 = db
        .query_row("SELECT COUNT(*) FROM reports", [], |r| r.get(0))
        .unwrap();
    assert_eq!(reports, 0);
    assert_eq!(counted as u64, acked);
}

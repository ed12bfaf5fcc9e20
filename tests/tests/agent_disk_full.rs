//! Disk full: with the agent's data directory on a small filesystem (a 2 MiB tmpfs, so the
//! test needs root, as CI has), record calls fail with a clear error instead of being
//! acknowledged, the agent keeps running, and what was acknowledged is exactly what is
//! counted.

use std::process::Command;
use tally_tests::{AgentProcess, Deployment, agent_json};

struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn record_fails_clearly_when_the_disk_is_full() {
    let d = Deployment::new(&["api.convert"], None);
    std::fs::create_dir_all(&d.adata).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&d.adata)
        .status()
        .expect("run mount");
    assert!(
        ok.success(),
        "mounting a 2 MiB tmpfs needs root (CI runs as root)"
    );
    let _mount = Mount(d.adata.clone());
    agent_json(
        &d.adata,
        &["init", "--license", &d.license_file, "--token", &d.token],
    );
    // Long windows, so everything stays in the open window and the database.
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1h"]);
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
    assert!(failures >= 3, "the 2 MiB filesystem never filled");
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

//! Backups of a live collector: `backup --out` taken three times while reports stream in
//! over gRPC to a `tally-collector serve` process; each copy passes `backup verify`, and a
//! restored copy is one consistent snapshot (its rollups equal a brute-force sum over its
//! own accepted reports, and every report in it is in the live store). Bad input to the
//! three commands is refused with exit 2 and changes nothing.

use tally_collector::store::sqlite::SqliteStore;
use tally_collector::store::{BillingStore, Inspect, UsageFilter};
use tally_tests::{CollectorProcess, Deployment, TestAgent, collector_cmd, collector_json};

/// (accepted reports, usage) in a store, by brute force over its reports and from its
/// rollups.
async fn totals(db: &std::path::Path) -> (u64, u64, u64) {
    let store = SqliteStore::open(db).unwrap();
    let brute = tally_tests::brute_force_totals(&store).await;
    let accepted = store
        .stored_reports()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.status == tally_collector::rules::ReportStatus::Accepted)
        .count() as u64;
    let rollups: u64 = store
        .hourly_usage(UsageFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|r| r.quantity)
        .sum();
    (accepted, brute.values().sum(), rollups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_taken_while_ingesting_are_consistent_and_restore() {
    let d = Deployment::new(&["api.convert"], None);
    let lic = d.issue_backdated_license(&d.customer, "api.convert");
    let license = lic["license_id"].as_str().unwrap().to_string();
    let agent = TestAgent::new(&license);
    d.add_agent_key(&license, &agent);

    let feeder = tally_tests::Feeder::start(d.collector.grpc, agent, "api.convert");
    let backups = d.tmp.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let mut files = Vec::new();
    for i in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let f = backups.join(format!("b{i}.db"));
        let out = collector_json(&d.cdata, &["backup", "--out", f.to_str().unwrap()]);
        assert_eq!(out["file"], f.to_str().unwrap(), "{out}");
        files.push((f, out));
    }
    let sent = feeder.stop().await;
    assert!(
        sent >= 150,
        "reports kept arriving during the backups ({sent} sent)"
    );

    let live_db = d.cdata.join("collector.db");
    let mut previous = 0;
    for (f, out) in &files {
        // `backup verify` reads the file alone and prints the same totals as `backup`.
        let verified = collector_json(&d.cdata, &["backup", "verify", f.to_str().unwrap()]);
        assert_eq!(verified["usage"], out["usage"], "{verified}");
        let accepted = verified["reports"]["accepted"].as_u64().unwrap_or(0);
        assert!(
            accepted >= previous,
            "backups taken later hold at least as much"
        );
        previous = accepted;
        // One snapshot: rollups equal the sum of the accepted reports it holds.
        let (n, brute, rollups) = totals(f).await;
        assert_eq!(n, accepted);
        assert_eq!(
            brute,
            rollups,
            "{} is not one consistent snapshot",
            f.display()
        );
        assert_eq!(
            verified["usage"]["api.convert"].as_u64().unwrap_or(0),
            rollups
        );
    }
    assert!(previous > 0, "the backups hold reports");
    let (live_n, live_brute, live_rollups) = totals(&live_db).await;
    assert_eq!(live_brute, live_rollups);
    assert!(live_n >= previous);

    // Restore the last backup into a new data directory and serve from it.
    let restored = d.tmp.path().join("restored");
    let (last, last_out) = files.last().unwrap();
    let r = collector_json(&restored, &["restore", last.to_str().unwrap()]);
    assert_eq!(r["usage"], last_out["usage"]);
    // Before the key is copied: read-only commands work on the restored directory, and one
    // that signs names the missing file.
    let rows = collector_json(&restored, &["usage", "--granularity", "month"]);
    assert!(!rows["rows"].as_array().unwrap().is_empty(), "{rows}");
    let (code, _, err) = tally_tests::collector_cmd(&restored, &["periods", "close", "2000-01"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("keys/") && err.contains("is missing"), "{err}");
    // The keys are backed up apart from the data: copy them back.
    std::fs::copy(d.cdata.join("vendor.key"), restored.join("vendor.key")).unwrap();
    std::fs::create_dir_all(restored.join("keys")).unwrap();
    for e in std::fs::read_dir(d.cdata.join("keys")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), restored.join("keys").join(e.file_name())).unwrap();
    }
    let again = CollectorProcess::spawn(&restored);
    let usage: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/v1/usage?granularity=month", again.http))
        .bearer_auth(&d.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let served: u64 = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["quantity"].as_u64().unwrap())
        .sum();
    assert_eq!(served, last_out["usage"]["api.convert"].as_u64().unwrap());
    drop(again);
    let audit = collector_json(&restored, &["audit", "list"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "restore"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backup_and_restore_input_is_refused_and_changes_nothing() {
    let d = Deployment::new(&["api.convert"], None);
    let dir = d.tmp.path();
    let good = dir.join("good.db");
    collector_json(&d.cdata, &["backup", "--out", good.to_str().unwrap()]);
    let before = std::fs::read(&good).unwrap();
    // A copy whose monthly sums disagree with its hourly rollups is not a faithful copy.
    let inconsistent = dir.join("inconsistent.db");
    std::fs::copy(&good, &inconsistent).unwrap();
    {
        let c = rusqlite::Connection::open(&inconsistent).unwrap();
        c.execute(
            "INSERT INTO monthly_usage (license_id, metric, month, quantity) VALUES ('lic_x', 'api.convert', 0, 5)",
            [],
        )
        .unwrap();
    }
    let garbage = dir.join("garbage.db");
    std::fs::write(&garbage, b"not a database at all, just text").unwrap();
    let occupied = d.cdata.to_str().unwrap().to_string();
    for (args, data, needle) in [
        (
            vec!["backup", "--out", good.to_str().unwrap()],
            occupied.clone(),
            "already exists; a backup never overwrites a file",
        ),
        (vec!["backup"], occupied.clone(), "backup needs --out FILE"),
        (
            vec!["backup", "verify", garbage.to_str().unwrap()],
            occupied.clone(),
            "is not a Tally collector backup",
        ),
        (
            vec!["backup", "verify", inconsistent.to_str().unwrap()],
            occupied.clone(),
            "is inconsistent: hourly rollups",
        ),
        (
            vec!["backup", "verify", dir.join("missing.db").to_str().unwrap()],
            occupied.clone(),
            "is not a file",
        ),
        (
            vec!["restore", good.to_str().unwrap()],
            occupied.clone(),
            "already has a database; restore only into a data directory without one",
        ),
        (
            vec!["restore", garbage.to_str().unwrap()],
            dir.join("fresh").to_str().unwrap().to_string(),
            "is not a Tally collector backup",
        ),
        (
            vec![
                "--database",
                "postgres://tally:secret@db.example:5432/tally",
                "backup",
                "--out",
                dir.join("pg.db").to_str().unwrap(),
            ],
            occupied.clone(),
            "back up PostgreSQL with pg_dump",
        ),
    ] {
        let (code, out, err) = collector_cmd(std::path::Path::new(&data), &args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        let line = err.trim();
        assert!(
            line.starts_with("error: ") && line.lines().count() == 1 && line.contains(needle),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("secret"),
            "a database URL's password is never printed"
        );
    }
    assert_eq!(
        std::fs::read(&good).unwrap(),
        before,
        "the backup was not touched"
    );
    assert!(!dir.join("fresh").join("collector.db").exists());
    assert!(!dir.join("pg.db").exists());
    // `init` with a database it cannot reach writes nothing at all.
    let fresh_init = dir.join("fresh-init");
    let (code, _, err) = collector_cmd(
        &fresh_init,
        &[
            "--database",
            "postgres://tally:secret@db.example/tally",
            "init",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot reach PostgreSQL") && !err.contains("secret"),
        "{err}"
    );
    assert!(!fresh_init.exists(), "init left files behind");
}

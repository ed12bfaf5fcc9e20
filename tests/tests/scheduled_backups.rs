//! Scheduled, encrypted, checked backups (`serve --backup-every 1s --backup-dir DIR
//! --backup-keep 3 --backup-recipient FILE`) of a `tally-collector serve` process while
//! reports stream in: only age-encrypted files ever appear in the backup directory, at most
//! `--backup-keep` are kept, each restores with the private key to a consistent store and
//! the newest to the live totals exactly; a wrong key, a flipped byte or a missing key
//! fails clearly; every step is audited and counted. A backup that fails (its directory
//! gone) is an ERROR log and a metric, and the collector keeps serving and backs up again
//! once the directory is back.

use age::secrecy::ExposeSecret;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_collector::store::sqlite::SqliteStore;
use tally_tests::{CollectorProcess, Deployment, Feeder, TestAgent, collector_cmd, collector_json};

const SQLITE_HEADER: &[u8] = b"SQLite format 3\0";
const AGE_HEADER: &[u8] = b"age-encryption.org/v1\n";

/// An age key pair as `age-keygen` writes it: (private key file, public key file).
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let id = age::x25519::Identity::generate();
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(
        &key,
        format!(
            "# created: by the test\n# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        ),
    )
    .unwrap();
    std::fs::write(&public, format!("{}\n", id.to_public())).unwrap();
    (key, public)
}

/// The backup directory's files, by name.
fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn get(http: std::net::SocketAddr, path: &str, token: &str) -> String {
    reqwest::Client::new()
        .get(format!("http://{http}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample line of `/metrics` (`name{labels} value`).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{metrics}"))
}

fn serve_with_backups(d: &Deployment, dir: &Path, public: &Path, keep: &str) -> CollectorProcess {
    CollectorProcess::spawn_with_args(
        &d.cdata,
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--backup-every",
            "1s",
            "--backup-dir",
            dir.to_str().unwrap(),
            "--backup-keep",
            keep,
            "--backup-recipient",
            public.to_str().unwrap(),
        ],
    )
}

/// Accepted-report totals of a store: (brute force over its reports, its rollups).
async fn store_totals(db: &Path) -> (u64, u64) {
    let store = SqliteStore::open(db).unwrap();
    let brute: u64 = tally_tests::brute_force_totals(&store).await.values().sum();
    let rollups: u64 = tally_collector::store::BillingStore::hourly_usage(
        &store,
        tally_collector::store::UsageFilter::default(),
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.quantity)
    .sum();
    (brute, rollups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_backups_are_encrypted_kept_and_restore_exactly() {
    let mut d = Deployment::new(&["api.convert"], None);
    let lic = d.issue_backdated_license(&d.customer, "api.convert");
    let license = lic["license_id"].as_str().unwrap().to_string();
    let agent = TestAgent::new(&license);
    d.add_agent_key(&license, &agent);
    let keys = d.tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (key, public) = keypair(&keys, "backup");
    let (other_key, _) = keypair(&keys, "other");
    let backups = d.tmp.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    d.collector.kill9();
    d.collector = serve_with_backups(&d, &backups, &public, "3");

    let feeder = Feeder::start(d.collector.grpc, agent, "api.convert");
    // While reports stream in and backups are taken every second, the backup directory
    // never holds a plaintext database, not even for a moment we can catch.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        for (name, bytes) in listing(&backups) {
            assert!(
                !bytes.starts_with(SQLITE_HEADER) && !bytes.starts_with(b"SQLite"),
                "{name} is a plaintext database"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = feeder.stop().await;
    assert!(sent >= 100, "reports streamed in ({sent})");
    // Two more intervals: the newest backup then holds every report.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let metrics = get(d.collector.http, "/metrics", &d.admin).await;
    let live: Value =
        serde_json::from_str(&get(d.collector.http, "/v1/usage?granularity=month", &d.admin).await)
            .unwrap();
    let live_total: u64 = live["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["quantity"].as_u64().unwrap())
        .sum();
    tally_tests::sigterm(&d.collector.child);
    let _ = d.collector.child.wait();

    let taken = sample(&metrics, "tally_backups_total{result=\"ok\"}");
    assert!(taken >= 6.0, "backups taken: {taken}\n{metrics}");
    assert_eq!(
        sample(&metrics, "tally_backups_total{result=\"failed\"}"),
        0.0
    );
    assert!(sample(&metrics, "tally_backups_pruned_total") >= 3.0);
    assert!(sample(&metrics, "tally_backup_last_success_timestamp_seconds") > 1.7e9);

    // At rest: exactly --backup-keep files, every one age-encrypted, none plaintext.
    let files = listing(&backups);
    assert_eq!(
        files.len(),
        3,
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (name, bytes) in &files {
        assert!(
            name.starts_with("tally-") && name.ends_with(".db.age"),
            "{name}"
        );
        assert!(bytes.starts_with(AGE_HEADER), "{name} is not an age file");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(backups.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: mode {mode:o}");
        assert!(
            !bytes
                .windows(SQLITE_HEADER.len())
                .any(|w| w == SQLITE_HEADER),
            "{name} holds a plaintext SQLite header"
        );
    }

    // Each restores with the private key into a consistent store; the newest holds the
    // live totals exactly.
    let mut previous = 0;
    for (i, (name, _)) in files.iter().enumerate() {
        let file = backups.join(name);
        let f = file.to_str().unwrap();
        let verified = collector_json(
            &d.cdata,
            &["backup", "verify", f, "--identity", key.to_str().unwrap()],
        );
        let restored = d.tmp.path().join(format!("restored{i}"));
        let r = collector_json(
            &restored,
            &["restore", f, "--identity", key.to_str().unwrap()],
        );
        assert_eq!(r["usage"], verified["usage"], "{name}");
        let (brute, rollups) = store_totals(&restored.join("collector.db")).await;
        assert_eq!(brute, rollups, "{name} is not one consistent snapshot");
        assert_eq!(
            verified["usage"]["api.convert"].as_u64().unwrap_or(0),
            rollups
        );
        assert!(rollups >= previous, "later backups hold at least as much");
        previous = rollups;
        // Nothing decrypted is left beside the restored database.
        let left: Vec<String> = std::fs::read_dir(&restored)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("decrypted"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    assert_eq!(
        previous, live_total,
        "the newest backup holds the live totals"
    );

    // The audit log names every backup taken and every file pruned.
    let audit = collector_json(&d.cdata, &["audit", "list", "--limit", "1000"]);
    let entries = audit.as_array().unwrap();
    let scheduled = entries
        .iter()
        .filter(|e| {
            e["action"] == "backup scheduled" && e["outcome"].as_str().unwrap().starts_with("ok")
        })
        .count();
    let pruned = entries
        .iter()
        .filter(|e| e["action"] == "backup prune")
        .count();
    assert!(
        scheduled as f64 >= taken,
        "{scheduled} audited, {taken} counted"
    );
    assert!(pruned >= 3, "{pruned} prunes audited");
    for (name, _) in &files {
        assert!(
            entries
                .iter()
                .any(|e| e["target"].as_str().unwrap_or("").ends_with(name.as_str())),
            "{name} is not in the audit log"
        );
    }

    // A wrong key, a flipped byte, or no key: refused with one clear line, nothing restored.
    let newest = backups.join(&files.last().unwrap().0);
    let mut flipped = std::fs::read(&newest).unwrap();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let damaged = d.tmp.path().join("damaged.db.age");
    std::fs::write(&damaged, &flipped).unwrap();
    let target = d.tmp.path().join("refused");
    let n = newest.to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "backup",
                "verify",
                n,
                "--identity",
                other_key.to_str().unwrap(),
            ],
            "wrong --identity",
        ),
        (
            vec!["restore", n, "--identity", other_key.to_str().unwrap()],
            "wrong --identity",
        ),
        (
            vec![
                "backup",
                "verify",
                damaged.to_str().unwrap(),
                "--identity",
                key.to_str().unwrap(),
            ],
            "is not a readable encrypted backup",
        ),
        (
            vec![
                "restore",
                damaged.to_str().unwrap(),
                "--identity",
                key.to_str().unwrap(),
            ],
            "is not a readable encrypted backup",
        ),
        (vec!["backup", "verify", n], "is encrypted; give --identity"),
        (vec!["restore", n], "is encrypted; give --identity"),
        (
            vec![
                "backup",
                "verify",
                n,
                "--identity",
                public.to_str().unwrap(),
            ],
            "not an age X25519 private key",
        ),
    ] {
        let (code, out, err) = collector_cmd(&target, &args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        let line = err.trim();
        assert!(
            line.starts_with("error: ") && line.lines().count() == 1 && line.contains(needle),
            "{args:?}: {err}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&target)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a refused restore left {left:?}");
}

/// A scheduled backup that fails (its directory removed under the running collector) is an
/// ERROR log line, a `failed` count and an open `backups` incident on the status page; the
/// collector keeps serving, and the next backup after the directory is back succeeds and
/// closes the incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_scheduled_backup_is_logged_and_counted_never_a_crash() {
    let mut d = Deployment::new(&["api.convert"], None);
    let keys = d.tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (_, public) = keypair(&keys, "backup");
    let backups = d.tmp.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    d.collector.kill9();
    d.collector = serve_with_backups(&d, &backups, &public, "2");
    // (The first backup is taken at once: the directory has none yet.)
    std::fs::remove_dir_all(&backups).unwrap();
    let failed = "tally_backups_total{result=\"failed\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = get(d.collector.http, "/metrics", &d.admin).await;
        if sample(&m, failed) >= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failure counted:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        d.collector.child.try_wait().unwrap().is_none(),
        "the collector exited"
    );
    // The status page says so, with an open incident.
    let backups_state = |p: &Value| {
        p["components"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["component"] == "backups"))
            .map(|c| c["state"].clone())
    };
    let open_backup_incidents = |p: &Value| {
        p["incidents"]
            .as_array()
            .map(|is| {
                is.iter()
                    .filter(|i| i["component"] == "backups" && i["closed_at"].is_null())
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = status_json(d.collector.http).await;
        if backups_state(&p) == Some(Value::from("down")) && open_backup_incidents(&p) == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backups not down on /status: {p}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = d.collector.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("Scheduled backup failed")),
        "{log}"
    );
    std::fs::create_dir(&backups).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while listing(&backups)
        .iter()
        .all(|(n, _)| !n.ends_with(".db.age"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no backup after the directory came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Back up: the incident closes, recorded in the store.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = status_json(d.collector.http).await;
        let closed = p["incidents"].as_array().is_some_and(|is| {
            is.iter().any(|i| {
                i["component"] == "backups" && !i["closed_at"].is_null() && i["id"].is_i64()
            })
        });
        if backups_state(&p) == Some(Value::from("up")) && closed && open_backup_incidents(&p) == 0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backups incident not closed: {p}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit = collector_json(&d.cdata, &["audit", "list", "--limit", "1000"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "backup scheduled"
                && e["outcome"].as_str().unwrap().starts_with("failed")),
        "{audit}"
    );

    // Failing again, and the collector killed while the incident is open: the restarted
    // collector's first good backup closes it.
    let moved = d.tmp.path().join("moved");
    std::fs::rename(&backups, &moved).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = status_json(d.collector.http).await;
        let recorded_open =
            p["incidents"].as_array().unwrap().iter().any(|i| {
                i["component"] == "backups" && i["closed_at"].is_null() && i["id"].is_i64()
            });
        if recorded_open {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "second incident not recorded: {p}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.collector.kill9();
    std::fs::rename(&moved, &backups).unwrap();
    d.collector = serve_with_backups(&d, &backups, &public, "2");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = status_json(d.collector.http).await;
        let backups_incidents: Vec<&Value> = p["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["component"] == "backups")
            .collect();
        if backups_state(&p) == Some(Value::from("up"))
            && backups_incidents.len() == 2
            && backups_incidents.iter().all(|i| !i["closed_at"].is_null())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the incident left open by the restart was not closed: {p}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET /status` as JSON (no token).
async fn status_json(http: std::net::SocketAddr) -> Value {
    reqwest::Client::new()
        .get(format!("http://{http}/status"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

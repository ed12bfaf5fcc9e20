//! The files in `deploy/`, checked as an operator would use them: the systemd units pass
//! `systemd-analyze verify` (no warning either) and its offline security review; the sample
//! configs pass `config check` against real data directories, and a broken config fails it
//! naming the problem; and both binaries speak the service manager's readiness protocol
//! (`Type=notify`) to a real Unix datagram socket: `READY=1` only once they serve,
//! `STOPPING=1` on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tally_tests::*;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// `systemd-analyze`, installed by `scripts/test-deps.sh` where missing.
fn systemd_analyze() -> Command {
    Command::new(tally_tests::deps::require("systemd-analyze"))
}

/// The units as installed: the same files with `ExecStart*` pointing at the binaries this
/// build made (`systemd-analyze verify` checks that each command is executable).
fn installed_units(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for name in ["tally-collector.service", "tally-agent.service"] {
        let unit = std::fs::read_to_string(deploy(name)).expect("unit file");
        assert!(unit.contains("ExecStart=/usr/bin/"), "{name}: ExecStart");
        let unit = unit
            .replace(
                "/usr/bin/tally-collector",
                workspace_bin("tally-collector").to_str().unwrap(),
            )
            .replace(
                "/usr/bin/tally-agent",
                workspace_bin("tally-agent").to_str().unwrap(),
            );
        std::fs::write(dir.join(name), unit).unwrap();
        names.push(name.to_string());
    }
    names
}

#[test]
fn the_units_verify_without_a_warning_and_are_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    for name in installed_units(tmp.path()) {
        let out = systemd_analyze()
            .args(["verify", "--man=no", &name])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {name}: {:?}\n{stderr}",
            out.status
        );
        let unit = std::fs::read_to_string(tmp.path().join(&name)).unwrap();
        for line in [
            "Type=notify",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=\n",
            "SystemCallFilter=@system-service",
            "UMask=0077",
            "User=tally",
            "ExecStartPre=",
        ] {
            assert!(unit.contains(line), "{name} lacks {line:?}");
        }
        // systemd's own review of the sandbox, on its 0–10 scale (threshold in tenths):
        // "OK" is below 4.0; these units must stay at or below 2.0.
        let out = systemd_analyze()
            .args([
                "security",
                "--offline=true",
                "--threshold=20",
                "--no-pager",
                &name,
            ])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: exposure above 2.0:\n{}",
            report.lines().last().unwrap_or("")
        );
    }
}

#[test]
fn the_sample_configs_pass_config_check() {
    let d = Deployment::new(&["api.convert"], Some(""));
    let config = deploy("collector.toml");
    let config = config.to_str().unwrap();
    // The sample's data directory (/var/lib/…) is overridden by --data: flags win.
    let (code, out, err) =
        collector_cmd(&d.cdata, &["--config", config, "--json", "config", "check"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(v["ok"], true);
    assert_eq!(v["store"], "sqlite");
    assert_eq!(
        v["grpc_listen"], "0.0.0.0:7443",
        "the sample's address: {v}"
    );
    assert_eq!(v["close_grace_secs"], 3 * 86_400);
    assert_eq!(v["agent_rate"], 20.0);
    assert_eq!(v["ui_idle_secs"], 1800);
    assert_eq!(v["backups"], serde_json::Value::Null);
    assert_eq!(v["data"], d.cdata.display().to_string());
    // The sample's backup keys, switched on with a real directory and public key.
    let backups = d.tmp.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let public = d.tmp.path().join("backup.pub");
    std::fs::write(
        &public,
        "# public key\nage1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n",
    )
    .unwrap();
    let sample = std::fs::read_to_string(deploy("collector.toml")).unwrap();
    let on = sample
        .replace("#   backup_every = \"24h\"", "backup_every = \"24h\"")
        .replace(
            "#   backup_dir = \"/mnt/backups/tally\"",
            &format!("backup_dir = {:?}", backups.display().to_string()),
        )
        .replace("#   backup_keep = 5", "backup_keep = 5")
        .replace(
            "#   backup_recipient = \"/etc/tally/backup.pub\"",
            &format!("backup_recipient = {:?}", public.display().to_string()),
        );
    let file = d.tmp.path().join("with-backups.toml");
    std::fs::write(&file, on).unwrap();
    let (code, out, err) = collector_cmd(
        &d.cdata,
        &[
            "--config",
            file.to_str().unwrap(),
            "--json",
            "config",
            "check",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(v["backups"]["every_secs"], 86_400, "{v}");
    assert_eq!(v["backups"]["keep"], 5, "{v}");

    let agent_config = deploy("agent.toml");
    let (code, out, err) = agent_cmd(
        &d.adata,
        &[
            "--config",
            agent_config.to_str().unwrap(),
            "--json",
            "config",
            "check",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(v["ok"], true);
    assert_eq!(v["license_id"], d.license.as_str());
    assert_eq!(v["interval_secs"], 3600);
    // The sample names no collector: the one `init` stored is used.
    assert_eq!(
        v["collectors"],
        serde_json::json!([format!("http://{}", d.collector.grpc)])
    );
}

/// Each broken setting fails `config check` with exit 2 and one `error:` line naming it.
#[test]
fn a_broken_config_fails_config_check_naming_the_problem() {
    let d = Deployment::new(&["api.convert"], Some(""));
    let sample = std::fs::read_to_string(deploy("collector.toml")).unwrap();
    // A private key where the public one belongs (as `age-keygen` writes one).
    let secret_key = d.tmp.path().join("backup.key");
    std::fs::write(
        &secret_key,
        "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX\n",
    )
    .unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{sample}\ncolour = \"blue\"\n"),
            "unknown field `colour`",
        ),
        (
            sample.replace("close_grace = \"3d\"", "close_grace = \"3 days\""),
            "--close-grace",
        ),
        (
            sample.replace(
                "grpc_listen = \"0.0.0.0:7443\"",
                "grpc_listen = \"0.0.0.0\"",
            ),
            "--grpc-listen",
        ),
        (
            format!("{sample}\ntls_cert = \"/etc/tally/tls/collector.crt\"\n"),
            "tls_cert and tls_key go together",
        ),
        (
            format!(
                "{sample}\ntls_cert = \"/nonexistent/c.crt\"\ntls_key = \"/nonexistent/c.key\"\n"
            ),
            "/nonexistent/c.crt",
        ),
        (
            format!("{sample}\nwebhook = \"https://billing.example.com/hook\"\n"),
            "webhook and webhook_secret_file go together",
        ),
        (
            sample.replace("agent_rate = 20", "agent_rate = -1"),
            "--agent-rate",
        ),
        (
            format!("{sample}\nbackup_every = \"24h\"\n"),
            "backup_every, backup_dir and backup_recipient together",
        ),
        (
            format!(
                "{sample}\nbackup_every = \"24h\"\nbackup_dir = \"/nonexistent/b\"\nbackup_recipient = \"/nonexistent/k.pub\"\n"
            ),
            "--backup-dir /nonexistent/b: not a directory",
        ),
        (
            format!(
                "{sample}\nbackup_every = \"24h\"\nbackup_dir = {:?}\nbackup_recipient = {:?}\n",
                d.tmp.path().display().to_string(),
                secret_key.display().to_string()
            ),
            "holds a private key",
        ),
        (
            format!(
                "{sample}\nbackup_every = \"24h\"\nbackup_dir = {:?}\nbackup_recipient = {:?}\ndatabase = \"postgres://tally@db.example/tally\"\n",
                d.tmp.path().display().to_string(),
                secret_key.display().to_string()
            ),
            "scheduled backups are for the SQLite store",
        ),
        (
            sample.replace("ui_idle = \"30m\"", "ui_idle = \"0s\""),
            "--ui-idle",
        ),
    ];
    for (i, (text, expect)) in cases.into_iter().enumerate() {
        let file = d.tmp.path().join(format!("broken{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let (code, _, err) = collector_cmd(
            &d.cdata,
            &["--config", file.to_str().unwrap(), "config", "check"],
        );
        assert_eq!(code, 2, "case {i} ({expect}): {err}");
        assert!(
            err.starts_with("error: ") && err.contains(expect) && err.trim().lines().count() == 1,
            "case {i}: expected one error line naming {expect:?}: {err}"
        );
    }
    // An agent collector URL that cannot make an endpoint.
    let (code, _, err) = agent_cmd(
        &d.adata,
        &["config", "check", "--collector", "http://bad host:7443"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("bad collector URL"),
        "{err}"
    );
    // A directory that was never initialized.
    let empty = d.tmp.path().join("empty");
    let (code, _, err) = collector_cmd(&empty, &["config", "check"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has no keys") && err.contains("init"), "{err}");
    let (code, _, err) = agent_cmd(&empty, &["config", "check"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: "), "{err}");
}

/// The notification socket a service manager would listen on.
fn notify_socket(dir: &Path) -> (UnixDatagram, String) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    // A hang guard, not a timing assertion: a service that never notifies fails here.
    socket
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    (socket, path.to_str().unwrap().to_string())
}

fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

// Several threads: the clients' connection tasks must keep running (and close when
// the servers stop) while this test blocks on the socket and on `wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_notify_ready_once_serving_and_stopping_on_sigterm() {
    let d = Deployment::new(&["api.convert"], Some(""));
    let (socket, path) = notify_socket(d.tmp.path());

    // The collector: READY=1 arrives once both listeners answer.
    let cdata = d.tmp.path().join("c2");
    collector_json(&cdata, &["init"]);
    let mut collector = CollectorProcess::spawn_with_env(&cdata, &[("NOTIFY_SOCKET", &path)]);
    assert_eq!(next_message(&socket), "READY=1");
    let ready = reqwest::get(format!("http://{}/readyz", collector.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    connect(collector.grpc).await;
    sigterm(&collector.child);
    assert_eq!(next_message(&socket), "STOPPING=1");
    let status = collector.child.wait().unwrap();
    assert!(status.success(), "the collector stops cleanly: {status:?}");

    // The agent: READY=1 once its recording port takes events.
    let mut agent = AgentProcess::spawn_env(
        &d.adata,
        &["--listen", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", path.as_str())],
    );
    assert_eq!(next_message(&socket), "READY=1");
    let recorded = reqwest::Client::new()
        .post(format!("{}/v1/events", agent.url()))
        .json(&serde_json::json!({"metric": "api.convert"}))
        .send()
        .await
        .unwrap();
    assert!(recorded.status().is_success(), "{}", recorded.status());
    sigterm(&agent.child);
    assert_eq!(next_message(&socket), "STOPPING=1");
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "the agent stops cleanly: {status:?}");

    // Without NOTIFY_SOCKET nothing is sent (the collector of the deployment runs so).
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(socket.recv(&mut buf).is_err(), "nothing else arrived");
}

//! The data directories are private and owned by one server each: `init` creates them 0700
//! with databases, keys and license files 0600 (on both binaries, as processes); a second
//! `tally-collector serve` or `tally-agent run` on a directory in use is refused, naming
//! the first one's PID, and leaves its `ports.json` alone.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tally_tests::{AgentProcess, Deployment, workspace_bin};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Runs `BIN --data DATA ARGS…` to its end (at most 30 s): (exit code, stderr).
fn run_to_end(bin: &str, data: &Path, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(workspace_bin(bin))
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("TALLY_DATA")
        .env_remove("TALLY_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{bin} {args:?} kept running on a data directory in use");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directories_are_private_and_held_by_one_server() {
    let d = Deployment::new(&["api.convert"], Some(""));
    // The collector: directory, database (and its journal while serving), key, licenses.
    assert_eq!(mode(&d.cdata), 0o700, "collector data directory");
    assert_eq!(mode(&d.cdata.join("collector.db")), 0o600);
    assert_eq!(mode(&d.cdata.join("vendor.key")), 0o600);
    assert_eq!(mode(&d.cdata.join("licenses")), 0o700);
    assert_eq!(mode(Path::new(&d.license_file)), 0o600, "license file");
    assert_eq!(mode(&d.cdata.join("collector.db-wal")), 0o600);
    // The agent: directory, database, key.
    assert_eq!(mode(&d.adata), 0o700, "agent data directory");
    assert_eq!(mode(&d.adata.join("agent.db")), 0o600);

    // A second serve on the collector's directory: refused, naming the first one's PID.
    let ports_before = std::fs::read(d.cdata.join("ports.json")).unwrap();
    let (code, err) = run_to_end(
        "tally-collector",
        &d.cdata,
        &[
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(code, 1, "{err}");
    let pid = d.collector.child.id().to_string();
    assert!(
        err.starts_with("error: ")
            && err.contains(&format!("in use by another running process (PID {pid})")),
        "{err}"
    );
    assert_eq!(
        std::fs::read(d.cdata.join("ports.json")).unwrap(),
        ports_before
    );

    // The same for the agent.
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0"]);
    let ports_before = std::fs::read(d.adata.join("ports.json")).unwrap();
    let (code, err) = run_to_end("tally-agent", &d.adata, &["run", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{err}");
    let pid = agent.child.id().to_string();
    assert!(
        err.contains(&format!("in use by another running process (PID {pid})")),
        "{err}"
    );
    assert_eq!(
        std::fs::read(d.adata.join("ports.json")).unwrap(),
        ports_before
    );
    // The first agent still answers.
    let status = agent.status().await;
    assert!(status["key_id"].is_string(), "{status}");
}

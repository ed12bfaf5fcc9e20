//! A throwaway PostgreSQL server for tests, started from the machine's own server binaries
//! by `scripts/pg-test-server.sh` (the one place that knows how), on a free port in a
//! temporary directory.
//!
//! - [`shared`]: one server per test process, each test in its own database. If
//!   `TALLY_TEST_PG_URL` is set (`.ci/run` starts one server for the whole run), that
//!   server is used instead.
//! - [`PgServer::start`]: a private server a test may stop (`immediate`: a crash) and start
//!   again.
//!
//! A test that needs PostgreSQL and cannot start it fails with the script's error; it never
//! skips. Servers are destroyed when dropped, and a watchdog destroys a process's servers
//! when the process ends (statics are never dropped).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A PostgreSQL server for tests.
pub struct PgServer {
    /// The script's directory for this server; `None` for a server given by URL.
    dir: Option<PathBuf>,
    url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("pg-test-server.sh")
}

fn run_script(args: &[&str]) -> Result<String, String> {
    let out = Command::new(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed ({}): {}",
            script().display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A new directory name for a private server (the script creates it).
fn new_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "tally-pg-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Watchdog: destroys the server in `dir` once this process is gone, however it ends. In a
/// process group of its own, so a signal to the test's group (a CI timeout, Ctrl-C) does
/// not take it down with the test and leak the server.
fn watch(dir: &Path) {
    let _ = Command::new("sh")
        .process_group(0)
        .arg("-c")
        .arg(format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; '{script}' destroy '{dir}'",
            pid = std::process::id(),
            script = script().display(),
            dir = dir.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

impl PgServer {
    /// Starts a private server. Panics (the test fails) if PostgreSQL cannot be started.
    pub fn start() -> PgServer {
        let dir = new_dir();
        let url = run_script(&["start", &dir.to_string_lossy()])
            .unwrap_or_else(|e| panic!("this test needs PostgreSQL and could not start it: {e}"));
        watch(&dir);
        PgServer {
            dir: Some(dir),
            url,
        }
    }

    /// Starts a synchronous streaming standby of this (private, running) server: from now
    /// on every commit here waits until the standby has it.
    pub fn standby(&self) -> PgServer {
        let dir = new_dir();
        let url = run_script(&["standby", &self.dir(), &dir.to_string_lossy()])
            .unwrap_or_else(|e| panic!("this test needs a PostgreSQL standby: {e}"));
        watch(&dir);
        PgServer {
            dir: Some(dir),
            url,
        }
    }

    /// Promotes this standby to a primary; returns once it takes writes.
    pub fn promote(&self) {
        run_script(&["promote", &self.dir()]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `host:port` of the server, for multi-host connection URLs.
    pub fn host_port(&self) -> String {
        let rest = self
            .url
            .split_once('@')
            .map(|(_, r)| r)
            .unwrap_or(&self.url);
        rest.split('/').next().unwrap_or(rest).to_string()
    }

    fn dir(&self) -> String {
        self.dir
            .as_ref()
            .expect("only a server this test started can be stopped")
            .to_string_lossy()
            .to_string()
    }

    /// The server's data directory (its `postgresql.conf`), for tests that configure it.
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.dir()).join("data")
    }

    /// Stops the server: `fast` (clean), `immediate` (a crash: no checkpoint) or `kill`
    /// (SIGKILL to all its processes: a lost host).
    pub fn stop(&self, mode: &str) {
        run_script(&["stop", &self.dir(), mode]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts a stopped server again, on the same port.
    pub fn start_again(&self) {
        let url = run_script(&["start", &self.dir()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url, self.url, "a restarted server must keep its URL");
    }

    /// Creates a new, empty database and returns its URL.
    pub async fn fresh_database(&self) -> String {
        let name = format!(
            "tally_t_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            chrono::Utc::now().timestamp_subsec_nanos()
        );
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"));
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE: {e}"));
        drop(client);
        let _ = task.await;
        let base = self
            .url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&self.url);
        format!("{base}/{name}")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = run_script(&["destroy", &dir.to_string_lossy()]);
        }
    }
}

/// The server shared by this test process (or the one `TALLY_TEST_PG_URL` names).
pub fn shared() -> &'static PgServer {
    static SHARED: OnceLock<PgServer> = OnceLock::new();
    SHARED.get_or_init(|| match std::env::var("TALLY_TEST_PG_URL") {
        Ok(url) if !url.trim().is_empty() => PgServer {
            dir: None,
            url: url.trim().to_string(),
        },
        _ => PgServer::start(),
    })
}

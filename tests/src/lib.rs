//! Shared helpers for Tally's end-to-end suites: real collectors (in-process on port 0, or
//! as `tally-collector` processes that can be SIGKILLed), test agents that sign real
//! reports, and gRPC/HTTP clients. Nothing here replaces a part under test.

pub mod browser;
pub mod cluster;
pub mod deps;
pub mod pg;
pub mod soak;

use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use tally_collector::clock::Clock;
use tally_collector::commands::{self, Ctx, IssueArgs};
use tally_collector::datadir::{CollectorFiles, DataDir};
use tally_collector::server::{self, Collector};
use tally_collector::store::Inspect;
use tally_collector::store::sqlite::SqliteStore;
use tally_proto::Digest;
use tally_proto::pb;
use tally_proto::pb::ingest_client::IngestClient;
use tally_proto::report::{Counter, Report};
use tonic::transport::Channel;

/// Where an [`InProcessCollector`]'s clock starts: late enough in a month that a test's usage
/// (its [`TestAgent`]'s windows begin 20 days before now) lies in "this month" whatever the
/// date the suite runs on.
pub const TEST_NOW: &str = "2026-06-24T12:00:00Z";

/// The instant [`TEST_NOW`] names.
pub fn test_now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(TEST_NOW)
        .expect("TEST_NOW is RFC 3339")
        .with_timezone(&Utc)
}

/// A collector served in this process on loopback port 0, with a real SQLite database in a
/// temporary directory and real gRPC/HTTP listeners. Its clock starts at [`TEST_NOW`] and
/// runs forward (`now()`): tests place their reports relative to it, never to the date
/// they run on.
pub struct InProcessCollector {
    pub dir: tempfile::TempDir,
    pub ctx: Ctx,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin_token: String,
    pub collector: Collector,
    /// The collector's clock (the store's).
    pub clock: Clock,
    /// The same store as `ctx.store`, as its concrete type (for inspection).
    sqlite: Arc<SqliteStore>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcessCollector {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with the collector adjusted by `adjust` (e.g. shorter limits for a test).
    pub async fn start_with(adjust: impl FnOnce(&mut Collector)) -> Self {
        Self::start_configured(
            Some(tally_collector::ratelimit::DEFAULT_REPORTS_PER_SEC),
            adjust,
        )
        .await
    }

    /// Starts with a per-agent rate limit of `agent_rate` reports/s (`None`: unlimited).
    pub async fn start_configured(
        agent_rate: Option<f64>,
        adjust: impl FnOnce(&mut Collector),
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(dir.path().join("data"));
        let init = commands::init(data.clone(), None).await.expect("init");
        let admin_token = init.json["admin_token"].as_str().unwrap().to_string();
        let clock = Clock::starting_at(test_now());
        let sqlite = Arc::new(SqliteStore::open_with_clock(&data.db(), clock).expect("open"));
        let ctx = Ctx::with_store(data.clone(), sqlite.clone());
        let key = tally_proto::keys::read(&data.vendor_key()).unwrap();
        let mut collector = Collector::with_agent_rate(ctx.store.clone(), key, agent_rate);
        adjust(&mut collector);
        let g = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc, http) = (g.local_addr().unwrap(), h.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let c = collector.clone();
        let task = tokio::spawn(async move {
            server::run(c, g, h, async {
                let _ = rx.await;
            })
            .await
            .expect("collector serves");
        });
        InProcessCollector {
            dir,
            ctx,
            grpc,
            http,
            admin_token,
            collector,
            clock,
            sqlite,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The collector's "now".
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn store(&self) -> Arc<SqliteStore> {
        self.sqlite.clone()
    }

    /// A new gRPC connection (each call opens its own HTTP/2 connection).
    pub async fn client(&self) -> IngestClient<Channel> {
        connect(self.grpc).await
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub async fn add_customer(&self, name: &str) -> String {
        let out = commands::customers_add(&self.ctx, name).await.unwrap();
        out.json["id"].as_str().unwrap().to_string()
    }

    /// Issues a license valid from 60 days ago to a year from now.
    pub async fn issue_license(&self, customer: &str, metrics: &[&str]) -> (String, String) {
        let nb = tally_proto::time::rfc3339(self.now() - Duration::days(60));
        let na = tally_proto::time::rfc3339(self.now() + Duration::days(365));
        let out = commands::licenses_issue(
            &self.ctx,
            IssueArgs {
                customer: customer.to_string(),
                metrics: metrics.iter().map(|s| s.to_string()).collect(),
                expires: na,
                not_before: Some(nb),
                grace: "7d".into(),
                enrollments: 100,
                token_ttl: "7d".into(),
                endpoint: format!("http://{}", self.grpc),
                out: None,
                alert: None,
            },
        )
        .await
        .unwrap();
        (
            out.json["license_id"].as_str().unwrap().to_string(),
            out.json["enrollment_token"].as_str().unwrap().to_string(),
        )
    }

    /// Enrolls a fresh agent key over real gRPC `Enroll`.
    pub async fn enroll(&self, license_id: &str, token: &str) -> TestAgent {
        let agent = TestAgent::at(license_id, self.now());
        let proof = tally_proto::enroll::prove(&agent.key, license_id, token);
        self.client()
            .await
            .enroll(pb::EnrollRequest {
                license_id: license_id.to_string(),
                enrollment_token: token.to_string(),
                agent_key: agent.key.verifying_key().to_bytes().to_vec(),
                proof: proof.to_vec(),
            })
            .await
            .expect("enroll");
        agent
    }

    /// Creates an API token with `role` and returns the secret.
    pub async fn token(&self, role: &str) -> String {
        let out = commands::tokens_create(&self.ctx, role, None)
            .await
            .unwrap();
        out.json["token"].as_str().unwrap().to_string()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

pub async fn connect(addr: SocketAddr) -> IngestClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    IngestClient::new(ch)
        .max_decoding_message_size(8 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A test agent: a real ed25519 key that signs real, chained reports.
pub struct TestAgent {
    pub key: SigningKey,
    pub license_id: String,
    pub next_seq: u64,
    pub prev: Option<Digest>,
    /// Start of the next window.
    pub cursor: DateTime<Utc>,
    pub window: Duration,
}

impl TestAgent {
    /// A new key whose windows start 20 days before the system clock's now (for collector
    /// processes, which run on the system clock).
    pub fn new(license_id: &str) -> Self {
        Self::at(license_id, Utc::now())
    }

    /// A new key whose windows start 20 days before `now` (an in-process collector's
    /// `now()`).
    pub fn at(license_id: &str, now: DateTime<Utc>) -> Self {
        let start =
            DateTime::from_timestamp(now.timestamp() - 20 * 86_400 - now.timestamp() % 60, 0)
                .unwrap();
        TestAgent {
            key: tally_proto::keys::generate(),
            license_id: license_id.to_string(),
            next_seq: 1,
            prev: None,
            cursor: start,
            window: Duration::minutes(1),
        }
    }

    pub fn key_bytes(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The next report in the chain (advances seq, prev digest and window).
    pub fn next(&mut self, counters: &[(&str, u64)]) -> (Report, pb::SignedReport) {
        let report = self.draft(counters);
        let signed = report.sign(&self.key);
        self.accept_into_chain(&signed);
        (report, signed)
    }

    /// The report `next` would build, without advancing the chain (tests mutate it).
    pub fn draft(&self, counters: &[(&str, u64)]) -> Report {
        Report {
            license_id: self.license_id.clone(),
            agent_key: self.key_bytes(),
            seq: self.next_seq,
            prev_digest: self.prev,
            window_start: self.cursor,
            window_end: self.cursor + self.window,
            counters: counters
                .iter()
                .map(|(m, q)| Counter {
                    metric: m.to_string(),
                    quantity: *q,
                })
                .collect(),
            created_at: self.cursor + self.window,
            agent_version: "tally-tests".into(),
        }
    }

    /// Advances the chain past `signed` (as if it had been delivered).
    pub fn accept_into_chain(&mut self, signed: &pb::SignedReport) {
        self.prev = Some(Digest::of(&signed.report));
        self.next_seq += 1;
        self.cursor += self.window;
    }

    pub fn sign(&self, report: &Report) -> pb::SignedReport {
        report.sign(&self.key)
    }
}

/// Decodes and verifies receipts against the collector key.
pub fn receipts(
    resp: pb::SubmitResponse,
    collector_key: &ed25519_dalek::VerifyingKey,
) -> Vec<tally_proto::receipt::ReceiptBody> {
    resp.receipts
        .iter()
        .map(|r| {
            tally_proto::receipt::ReceiptBody::verify(r, collector_key).expect("receipt verifies")
        })
        .collect()
}

/// Sum of counters over the stored reports whose status is `accepted`, decoded from the
/// raw stored bytes: the brute-force truth usage queries are compared against.
pub async fn brute_force_totals(
    store: &dyn Inspect,
) -> std::collections::BTreeMap<(String, String), u64> {
    let mut totals = std::collections::BTreeMap::new();
    for r in store.stored_reports().await.unwrap() {
        if r.status != tally_collector::rules::ReportStatus::Accepted {
            continue;
        }
        let rep = Report::decode(&r.bytes).unwrap();
        for c in rep.counters {
            *totals
                .entry((rep.license_id.clone(), c.metric))
                .or_insert(0u64) += c.quantity;
        }
    }
    totals
}

/// Reports streaming into a collector in batches of 50 (one agent, `metric`, quantities
/// 1–7) until stopped, as a busy agent sends them.
pub struct Feeder {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Feeder {
    pub fn start(grpc: SocketAddr, mut agent: TestAgent, metric: &str) -> Feeder {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let metric = metric.to_string();
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut client = connect(grpc).await;
                let mut sent = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let reports: Vec<pb::SignedReport> = (0..50)
                        .map(|i| agent.next(&[(metric.as_str(), 1 + i % 7)]).1)
                        .collect();
                    // Over the per-agent rate the collector answers RESOURCE_EXHAUSTED and
                    // stores nothing: wait and resend the same reports, as an agent does.
                    loop {
                        match client
                            .submit(pb::SubmitRequest {
                                reports: reports.clone(),
                            })
                            .await
                        {
                            Ok(_) => break,
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await
                            }
                            Err(s) => panic!("submit: {s}"),
                        }
                    }
                    sent += 50;
                }
                sent
            })
        };
        Feeder { stop, task }
    }

    /// Stops after the batch in flight; returns how many reports were sent.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("feeder task")
    }
}

/// Path of a workspace binary built next to the running test (target/<profile>/NAME).
/// `cargo test --workspace` builds it, because the package that owns it has integration
/// tests of its own.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Test binaries live in target/<profile>/deps, other binaries in target/<profile>.
    let here = exe.parent().expect("exe dir");
    let dir = if here.ends_with("deps") {
        here.parent().expect("target dir")
    } else {
        here
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run the whole suite with `cargo test --workspace` (it builds the binary)",
        p.display()
    );
    p
}

/// Runs a `tally-collector` command and returns (exit code, stdout, stderr).
pub fn collector_cmd(data: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(workspace_bin("tally-collector"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("TALLY_DATA")
        .env_remove("TALLY_CONFIG")
        .output()
        .expect("run tally-collector");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a collector command with `--json` and parses its one JSON document.
pub fn collector_json(data: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (code, out, err) = collector_cmd(data, &a);
    assert_eq!(code, 0, "tally-collector {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON document ({e}): {out}"))
}

/// Starts `BIN --data DATA ARGS…` with stderr captured in DATA, and waits until it has
/// written `DATA/ports.json`. Returns the child, the parsed ports and the log path.
fn spawn_server(
    bin: &str,
    data: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Child, Value, PathBuf) {
    spawn_server_launched(bin, data, args, env, Launch::Direct)
}

/// How a server process is started.
enum Launch {
    Direct,
    /// Every file it writes limited to this many bytes (see [`spawn_server_limited`]).
    FileLimit(u64),
    /// Under libfaketime (preloaded into the process itself, so killing it kills the
    /// program, not a wrapper), its wall clock starting at this instant; its monotonic
    /// clock is left alone, so timers and timeouts behave.
    FakeTime(DateTime<Utc>),
}

/// Like [`spawn_server`]; with `file_limit`, the process may not write any file past that
/// many bytes (`RLIMIT_FSIZE`, set by `sh`'s `ulimit -f` in 512-byte blocks, which the
/// kernel enforces with `EFBIG`; `SIGXFSZ` is ignored so the write fails instead of the
/// process being killed). Needs no privileges.
fn spawn_server_limited(
    bin: &str,
    data: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    file_limit: Option<u64>,
) -> (Child, Value, PathBuf) {
    let launch = match file_limit {
        None => Launch::Direct,
        Some(b) => Launch::FileLimit(b),
    };
    spawn_server_launched(bin, data, args, env, launch)
}

fn spawn_server_launched(
    bin: &str,
    data: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    launch: Launch,
) -> (Child, Value, PathBuf) {
    let ports = data.join("ports.json");
    let _ = std::fs::remove_file(&ports);
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let stderr_path = data.join(format!("{bin}-{n}.log"));
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut cmd = match launch {
        Launch::Direct => Command::new(workspace_bin(bin)),
        Launch::FakeTime(at) => {
            let mut c = Command::new(workspace_bin(bin));
            c.env("LD_PRELOAD", deps::require("libfaketime"))
                .env("FAKETIME", at.format("@%Y-%m-%d %H:%M:%S").to_string())
                .env("TZ", "UTC")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            c
        }
        Launch::FileLimit(bytes) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!(
                    "ulimit -f {} && trap '' XFSZ && exec \"$0\" \"$@\"",
                    bytes.div_ceil(512)
                ))
                .arg(workspace_bin(bin));
            c
        }
    };
    cmd.arg("--data")
        .arg(data)
        .args(args)
        .env_remove("TALLY_DATA")
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = std::fs::read_to_string(&ports)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        {
            return (child, v, stderr_path);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{bin} exited early ({status}): {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{bin} did not write ports.json in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A `tally-collector serve` process on loopback port 0.
pub struct CollectorProcess {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub stderr_path: PathBuf,
}

impl CollectorProcess {
    /// Starts `serve` on an initialized data directory and waits for `ports.json`.
    pub fn spawn(data: &Path) -> Self {
        Self::spawn_with_env(data, &[])
    }

    pub fn spawn_with_env(data: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_full_env(
            data,
            &[
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ],
            env,
        )
    }

    /// Starts `serve` with explicit listen flags (e.g. to restart on the same ports).
    pub fn spawn_with_args(data: &Path, args: &[&str]) -> Self {
        Self::spawn_full_env(data, args, &[])
    }

    /// Starts `serve` with explicit flags and extra environment variables.
    pub fn spawn_full_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let (child, ports, stderr_path) = spawn_server("tally-collector", data, &all, env);
        let addr = |k: &str| {
            ports[k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("address in ports.json")
        };
        CollectorProcess {
            grpc: addr("grpc"),
            http: addr("http"),
            child,
            stderr_path,
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // std's kill() sends SIGKILL on Unix.
        let _ = self.child.wait();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a `tally-agent` command and returns (exit code, stdout, stderr).
pub fn agent_cmd(data: &Path, args: &[&str]) -> (i32, String, String) {
    agent_cmd_env(data, args, &[])
}

/// Like [`agent_cmd`], with variables set (`("X", Some(v))`) or removed (`("X", None)`),
/// e.g. the billing API token, which commands read from the environment only.
pub fn agent_cmd_env(
    data: &Path,
    args: &[&str],
    env: &[(&str, Option<&str>)],
) -> (i32, String, String) {
    let mut cmd = Command::new(workspace_bin("tally-agent"));
    cmd.arg("--data")
        .arg(data)
        .args(args)
        .env_remove("TALLY_DATA")
        .env_remove("TALLY_CONFIG");
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("run tally-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs an agent command with `--json` and parses its one JSON document.
pub fn agent_json(data: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (code, out, err) = agent_cmd(data, &a);
    assert_eq!(code, 0, "tally-agent {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON document ({e}): {out}"))
}

/// A `tally-agent run` process.
pub struct AgentProcess {
    pub child: Child,
    pub listen: SocketAddr,
    pub stderr_path: PathBuf,
}

/// `run` followed by `args`.
fn run_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all
}

/// Asks a server process to stop (SIGTERM), as a service manager does.
pub fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -TERM {}", child.id());
}

impl AgentProcess {
    /// Starts `run` with extra args (e.g. `--interval 1s`) and waits for `ports.json`.
    pub fn spawn(data: &Path, args: &[&str]) -> Self {
        Self::spawn_limited(data, args, None)
    }

    /// Like [`AgentProcess::spawn`], with extra environment variables.
    pub fn spawn_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::from_server(spawn_server("tally-agent", data, &run_args(args), env))
    }

    /// Like [`AgentProcess::spawn`], with every file the agent writes limited to
    /// `file_limit` bytes (see `spawn_server_limited`).
    pub fn spawn_limited(data: &Path, args: &[&str], file_limit: Option<u64>) -> Self {
        Self::from_server(spawn_server_limited(
            "tally-agent",
            data,
            &run_args(args),
            &[],
            file_limit,
        ))
    }

    /// Starts `run` under libfaketime, its wall clock starting at `at` (windows, reports
    /// and their times are then `at`'s; the collector keeps the real time).
    pub fn spawn_at(data: &Path, args: &[&str], at: DateTime<Utc>) -> Self {
        Self::from_server(spawn_server_launched(
            "tally-agent",
            data,
            &run_args(args),
            &[],
            Launch::FakeTime(at),
        ))
    }

    /// The started `run` process and the address its `ports.json` names.
    fn from_server((child, ports, stderr_path): (Child, Value, PathBuf)) -> Self {
        let listen = ports["listen"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("listen in ports.json");
        AgentProcess {
            child,
            listen,
            stderr_path,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `GET /v1/status` of the running agent.
    pub async fn status(&self) -> Value {
        reqwest::get(format!("{}/v1/status", self.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Flushes the open window and waits until the outbox is empty (every report has a
    /// receipt), up to `secs` seconds.
    pub async fn drain(&self, secs: u64) -> Value {
        let http = reqwest::Client::new();
        http.post(format!("{}/v1/flush", self.url()))
            .send()
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let s = self.status().await;
            let pending = s["reports"]["pending"].as_u64().unwrap_or(0);
            if pending == 0 && s["open_window"].as_array().is_some_and(Vec::is_empty) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "outbox did not drain: {s}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A collector process and an enrolled agent data directory, ready to run.
pub struct Deployment {
    pub tmp: tempfile::TempDir,
    pub cdata: PathBuf,
    pub adata: PathBuf,
    pub collector: CollectorProcess,
    pub admin: String,
    /// The key receipts are signed with (`init`'s `collector_key`).
    pub receipt_key: ed25519_dalek::VerifyingKey,
    pub customer: String,
    pub license: String,
    pub license_file: String,
    pub token: String,
}

impl Deployment {
    /// Collector process up, a customer and license for `metrics`, and (unless
    /// `enroll_via` is `None`) the agent initialized against `enroll_via` (the collector's
    /// gRPC URL if empty).
    pub fn new(metrics: &[&str], enroll_via: Option<&str>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let cdata = tmp.path().join("collector");
        let adata = tmp.path().join("agent");
        let init = collector_json(&cdata, &["init"]);
        let admin = init["admin_token"].as_str().unwrap().to_string();
        let receipt_key = ed25519_dalek::VerifyingKey::from_bytes(
            &hex::decode(init["collector_key"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap(),
        )
        .unwrap();
        let customer = collector_json(&cdata, &["customers", "add", "Acme"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let collector = CollectorProcess::spawn(&cdata);
        let endpoint = format!("http://{}", collector.grpc);
        let mut args = vec![
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--expires",
            "2099-01-01",
            "--endpoint",
            &endpoint,
        ];
        for m in metrics {
            args.push("--metric");
            args.push(m);
        }
        let lic = collector_json(&cdata, &args);
        let license = lic["license_id"].as_str().unwrap().to_string();
        let license_file = lic["file"].as_str().unwrap().to_string();
        let token = lic["enrollment_token"].as_str().unwrap().to_string();
        let d = Deployment {
            tmp,
            cdata,
            adata,
            collector,
            admin,
            receipt_key,
            customer,
            license,
            license_file,
            token,
        };
        if let Some(via) = enroll_via {
            let url = if via.is_empty() {
                endpoint
            } else {
                via.to_string()
            };
            agent_json(
                &d.adata,
                &[
                    "init",
                    "--license",
                    &d.license_file,
                    "--token",
                    &d.token,
                    "--collector",
                    &url,
                ],
            );
        }
        d
    }

    /// Issues a license for `customer` valid from 30 days ago (so a [`TestAgent`]'s
    /// backdated windows are inside it), through the CLI. Returns its JSON.
    pub fn issue_backdated_license(&self, customer: &str, metric: &str) -> Value {
        let nb = tally_proto::time::rfc3339(Utc::now() - Duration::days(30));
        collector_json(
            &self.cdata,
            &[
                "licenses",
                "issue",
                "--customer",
                customer,
                "--metric",
                metric,
                "--expires",
                "2099-01-01",
                "--not-before",
                &nb,
            ],
        )
    }

    /// Enrolls a [`TestAgent`]'s key on `license` by hand (`agents add`).
    pub fn add_agent_key(&self, license: &str, agent: &TestAgent) {
        collector_json(
            &self.cdata,
            &[
                "agents",
                "add",
                "--license",
                license,
                "--key",
                &hex::encode(agent.key_bytes()),
            ],
        );
    }

    /// Usage totals per metric from the billing API.
    pub async fn totals(&self) -> std::collections::BTreeMap<String, u64> {
        let v: Value = reqwest::Client::new()
            .get(format!(
                "http://{}/v1/usage?granularity=month",
                self.collector.http
            ))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut out = std::collections::BTreeMap::new();
        for r in v["rows"].as_array().unwrap() {
            *out.entry(r["metric"].as_str().unwrap().to_string())
                .or_insert(0) += r["quantity"].as_u64().unwrap();
        }
        out
    }
}

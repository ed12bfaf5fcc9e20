//! N `tally-collector serve` processes sharing one PostgreSQL database, set up as
//! docs/operations.md tells operators to: node 0 runs `init`, the others get copies of its
//! key and license files. Plus the agent side: enrolling an agent that lists several
//! collectors, and its `run` flags.

use crate::CollectorProcess;
use chrono::{Duration as ChronoDuration, Utc};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// N collector nodes sharing one database: node 0 ran `init`; the others got copies of its
/// key and license files, as docs/operations.md tells operators to do.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub url: String,
    pub nodes: Vec<PathBuf>,
    pub procs: Vec<CollectorProcess>,
    pub admin: String,
    /// The key receipts are signed with (`init`'s `collector_key`).
    pub collector_key: ed25519_dalek::VerifyingKey,
    /// The deployment's (first) vendor key.
    pub vendor_key: ed25519_dalek::VerifyingKey,
}

pub fn cli(data: &Path, url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--database", url];
    all.extend_from_slice(args);
    crate::collector_json(data, &all)
}

fn copy_node_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("licenses")).unwrap();
    std::fs::create_dir_all(to.join("keys")).unwrap();
    std::fs::copy(from.join("vendor.key"), to.join("vendor.key")).unwrap();
    for e in std::fs::read_dir(from.join("keys")).unwrap() {
        let e = e.unwrap();
        let _ = std::fs::copy(e.path(), to.join("keys").join(e.file_name()));
    }
    for e in std::fs::read_dir(from.join("licenses")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("licenses").join(e.file_name())).unwrap();
    }
}

impl Cluster {
    pub fn new(url: String, n: usize) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let nodes: Vec<PathBuf> = (0..n)
            .map(|i| tmp.path().join(format!("node{i}")))
            .collect();
        let init = cli(&nodes[0], &url, &["init"]);
        let key: [u8; 32] = hex::decode(init["collector_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        for node in &nodes[1..] {
            copy_node_files(&nodes[0], node);
        }
        let mut c = Cluster {
            tmp,
            url,
            nodes,
            procs: Vec::new(),
            admin: init["admin_token"].as_str().unwrap().to_string(),
            collector_key: ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap(),
            vendor_key: ed25519_dalek::VerifyingKey::from_bytes(
                &hex::decode(init["vendor_key"].as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap(),
            )
            .unwrap(),
        };
        for i in 0..n {
            let p = c.spawn(i, "127.0.0.1:0", "127.0.0.1:0");
            c.procs.push(p);
        }
        c
    }

    pub fn spawn(&self, i: usize, grpc: &str, http: &str) -> CollectorProcess {
        CollectorProcess::spawn_full_env(
            &self.nodes[i],
            &[
                "--grpc-listen",
                grpc,
                "--http-listen",
                http,
                "--agent-rate",
                "0",
            ],
            &[("TALLY_DATABASE_URL", &self.url)],
        )
    }

    /// Restarts node `i` on its old ports.
    pub fn restart(&mut self, i: usize) {
        let (g, h) = (
            self.procs[i].grpc.to_string(),
            self.procs[i].http.to_string(),
        );
        self.procs[i] = self.spawn(i, &g, &h);
    }

    /// A customer and a license valid from 30 days ago, issued on node 0; the license file
    /// is copied to every node (each serves license files on request).
    pub fn customer_with_license(&self, metrics: &[&str]) -> (String, Value) {
        let customer = cli(&self.nodes[0], &self.url, &["customers", "add", "Acme"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let nb = tally_proto::time::rfc3339(Utc::now() - ChronoDuration::days(30));
        let mut args = vec![
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--expires",
            "2099-01-01",
            "--not-before",
            &nb,
            "--enrollments",
            "10",
        ];
        for m in metrics {
            args.extend(["--metric", m]);
        }
        let lic = cli(&self.nodes[0], &self.url, &args);
        for node in &self.nodes[1..] {
            copy_node_files(&self.nodes[0], node);
        }
        (customer, lic)
    }

    /// Usage per metric from node `i`'s billing API.
    pub async fn totals(&self, i: usize) -> BTreeMap<String, u64> {
        let v: Value = reqwest::Client::new()
            .get(format!(
                "http://{}/v1/usage?granularity=month",
                self.procs[i].http
            ))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for r in v["rows"].as_array().unwrap() {
            *out.entry(r["metric"].as_str().unwrap().to_string())
                .or_insert(0) += r["quantity"].as_u64().unwrap();
        }
        out
    }
}

/// Initializes an agent against `collectors` (all of the cluster, in this agent's order).
pub fn enroll_agent(dir: &Path, lic: &Value, collectors: &[String]) {
    let mut args = vec![
        "init",
        "--license",
        lic["file"].as_str().unwrap(),
        "--token",
        lic["enrollment_token"].as_str().unwrap(),
    ];
    for c in collectors {
        args.extend(["--collector", c.as_str()]);
    }
    crate::agent_json(dir, &args);
}

pub fn run_args<'a>(collectors: &'a [String], listen: &'a str) -> Vec<&'a str> {
    let mut args = vec!["--listen", listen, "--interval", "1s"];
    for c in collectors {
        args.extend(["--collector", c.as_str()]);
    }
    args
}

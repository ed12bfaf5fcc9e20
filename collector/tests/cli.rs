//! The `tally-collector` binary's command-line contract (README, "The two commands" and after): `--json` documents
//! with fixed field names, exit codes, one-line errors, config precedence, and bad
//! arguments that change no state.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn run(data: &Path, args: &[&str]) -> (i32, String, String) {
    run_env(data, args, &[])
}

fn run_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally-collector"));
    cmd.arg("--data")
        .arg(data)
        .args(args)
        .env_remove("TALLY_DATA")
        .env_remove("TALLY_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn json(data: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (code, out, err) = run(data, &a);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{args:?} printed not exactly one JSON document ({e}): {out}"))
}

/// Row counts of every table: "no state changed" means these are equal before and after.
fn snapshot(data: &Path) -> Vec<(String, i64)> {
    let db = rusqlite::Connection::open(data.join("collector.db")).unwrap();
    let tables: Vec<String> = db
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'audit' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables
        .into_iter()
        .map(|t| {
            let n = db
                .query_row(&format!("SELECT COUNT(*) FROM \"{t}\""), [], |r| r.get(0))
                .unwrap();
            (t, n)
        })
        .collect()
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let init = json(&data, &["init"]);
    assert!(init["admin_token"].as_str().unwrap().starts_with("tally_"));
    assert_eq!(init["collector_key"].as_str().unwrap().len(), 64);
    let customer = json(&data, &["customers", "add", "Acme"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    (tmp, data, customer)
}

#[test]
fn json_documents_have_the_contract_field_names() {
    let (_tmp, data, customer) = setup();
    let lic = json(
        &data,
        &[
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert=100",
            "--expires",
            "2099-01-01",
        ],
    );
    let license = lic["license_id"].as_str().unwrap();
    assert!(Path::new(lic["file"].as_str().unwrap()).exists());
    // A date is the last day of validity: the license runs to the end of it.
    let listed = json(&data, &["licenses", "list"]);
    assert_eq!(
        listed[0]["not_after"], "2099-01-02T00:00:00Z",
        "--expires 2099-01-01 ends at the end of that day: {listed}"
    );
    assert!(
        lic["enrollment_token"]
            .as_str()
            .unwrap()
            .starts_with("enr_")
    );
    let tok = json(
        &data,
        &[
            "tokens",
            "create",
            "--role",
            &format!("customer:{customer}"),
        ],
    );
    assert!(tok["id"].as_str().unwrap().starts_with("tok_"));
    assert!(tok["token"].as_str().unwrap().starts_with("tally_"));
    let key = hex::encode(tally_proto::keys::generate().verifying_key().to_bytes());
    let agent = json(
        &data,
        &["agents", "add", "--license", license, "--key", &key],
    );
    let agent_id = agent["agent_id"].as_str().unwrap();
    let list = json(&data, &["agents", "list"]);
    let row = &list.as_array().unwrap()[0];
    for field in [
        "agent_id",
        "key",
        "license_id",
        "status",
        "last_seq",
        "last_seen",
    ] {
        assert!(row.get(field).is_some(), "agents list lacks {field}: {row}");
    }
    assert_eq!(row["agent_id"], agent_id);
    assert_eq!(row["key"], key);
    assert_eq!(row["status"], "active");
    // Secrets are stored hashed only.
    let db = rusqlite::Connection::open(data.join("collector.db")).unwrap();
    let dump: Vec<u8> = std::fs::read(data.join("collector.db")).unwrap();
    let secret = tok["token"].as_str().unwrap();
    assert!(!dump.windows(secret.len()).any(|w| w == secret.as_bytes()));
    let enr = lic["enrollment_token"].as_str().unwrap();
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM tokens WHERE hash = ?1",
            [tally_collector::ids::hash_secret(secret).as_slice()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    assert!(!dump.windows(enr.len()).any(|w| w == enr.as_bytes()));
    // The vendor key file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("vendor.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Admin actions are audited with actor "cli".
    let audit = json(&data, &["audit", "list"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "init",
        "customers add",
        "licenses issue",
        "tokens create",
        "agents add",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
}

#[test]
fn bad_arguments_exit_2_with_one_error_line_and_change_nothing() {
    let (_tmp, data, customer) = setup();
    let key = hex::encode(tally_proto::keys::generate().verifying_key().to_bytes());
    let unknown_digest = "ab".repeat(32);
    let cases: Vec<Vec<&str>> = vec![
        vec!["frobnicate"],
        vec!["customers", "add"],
        vec!["customers", "add", ""],
        vec![
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "Bad-Name",
            "--expires",
            "2099-01-01",
        ],
        vec![
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert=0",
            "--expires",
            "2099-01-01",
        ],
        vec![
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert",
            "--expires",
            "someday",
        ],
        vec![
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert",
            "--expires",
            "2001-01-01",
        ],
        vec![
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert",
            "--expires",
            "2099-01-01",
            "--grace",
            "7w",
        ],
        vec![
            "licenses",
            "issue",
            "--customer",
            "cus_missing",
            "--metric",
            "api.convert",
            "--expires",
            "2099-01-01",
        ],
        vec![
            "licenses",
            "issue",
            "--customer",
            "../../etc",
            "--metric",
            "api.convert",
            "--expires",
            "2099-01-01",
        ],
        vec!["licenses", "revoke", "lic_missing"],
        vec!["agents", "add", "--license", "lic_missing", "--key", &key],
        vec!["agents", "add", "--license", "lic_x", "--key", "zz"],
        vec!["agents", "list", "--status", "sleepy"],
        vec!["tokens", "create", "--role", "root"],
        vec!["tokens", "create", "--role", "customer:nobody"],
        vec!["tokens", "revoke", "tok_missing"],
        vec!["usage", "--granularity", "week"],
        vec!["usage", "--from", "2026-01-01T00:30:00Z"],
        vec!["usage", "--customer", "x' OR 1=1 --"],
        vec!["quarantine", "release", "abcd"],
        vec!["quarantine", "release", &unknown_digest],
        vec!["import", "/nonexistent/file"],
    ];
    let before = snapshot(&data);
    // Errors say it in the flags' words.
    for (args, needle) in [
        (
            vec![
                "licenses",
                "issue",
                "--customer",
                &customer,
                "--metric",
                "api.convert",
                "--expires",
                "2020-01-01",
            ],
            "--expires 2020-01-01 is in the past",
        ),
        (
            vec![
                "licenses",
                "issue",
                "--customer",
                &customer,
                "--metric",
                "api.convert",
                "--expires",
                "2099-01-01",
                "--not-before",
                "2099-02-01",
            ],
            "--expires 2099-01-01 must be after --not-before",
        ),
        (
            vec!["customers", "cancel", &customer, "--now"],
            "add --yes to confirm",
        ),
    ] {
        let (code, _, err) = run(&data, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
    for args in cases {
        let (code, out, err) = run(&data, &args);
        assert_eq!(code, 2, "{args:?} should exit 2; stderr: {err}");
        assert!(out.is_empty(), "{args:?} printed on stdout: {out}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?} should print one line, got: {err}");
        assert!(lines[0].starts_with("error: "), "{args:?}: {err}");
        assert_eq!(snapshot(&data), before, "{args:?} changed state");
    }
}

#[test]
fn uninitialized_directory_and_double_init_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&tmp.path().join("nothing"), &["customers", "list"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("not an initialized data directory") && err.contains("hint"),
        "{err}"
    );
    let data = tmp.path().join("d");
    json(&data, &["init"]);
    let (code, _, err) = run(&data, &["init"]);
    assert_eq!(code, 2);
    assert!(err.contains("already initialized"), "{err}");
    // Empty lists say so (in text; `--json` gives an empty array).
    for (args, says) in [
        (vec!["quarantine", "list"], "no report is in quarantine\n"),
        (vec!["periods", "list"], "no month is closed yet\n"),
    ] {
        let (code, out, err) = run(&data, &args);
        assert_eq!((code, out.as_str()), (0, says), "{args:?}: {err}");
        let mut j = vec!["--json"];
        j.extend(&args);
        let (_, out, _) = run(&data, &j);
        assert_eq!(out.trim(), "[]", "{args:?}");
    }
}

#[test]
fn config_file_env_and_flags_precedence() {
    let (tmp, data, _) = setup();
    let cfg = tmp.path().join("tally.toml");
    std::fs::write(&cfg, format!("data = {:?}\n", data.display().to_string())).unwrap();
    // The config file names the data directory when no flag or env does.
    let out = Command::new(env!("CARGO_BIN_EXE_tally-collector"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--json",
            "customers",
            "list",
        ])
        .env_remove("TALLY_DATA")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    // TALLY_DATA beats the config file.
    let empty = tmp.path().join("other");
    let out = Command::new(env!("CARGO_BIN_EXE_tally-collector"))
        .args(["--config", cfg.to_str().unwrap(), "customers", "list"])
        .env("TALLY_DATA", &empty)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "env must win over the config file"
    );
    // A bad config file is a clear error.
    std::fs::write(&cfg, "colour = 'blue'\n").unwrap();
    let (code, _, err) = run_env(
        &data,
        &["--config", cfg.to_str().unwrap(), "customers", "list"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: config file") && err.contains("colour"),
        "{err}"
    );
}

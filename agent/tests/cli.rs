//! The `tally-agent` binary's command-line contract for bad input: one `error:` line, exit
//! code 2, nothing created. (Also makes `cargo test --workspace` build the binary that the
//! end-to-end suites in `tests/` run.)

use std::process::Command;

fn run(data: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tally-agent"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("TALLY_DATA")
        .env_remove("TALLY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn bad_arguments_and_license_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("agent");
    let garbage = tmp.path().join("garbage.license");
    std::fs::write(
        &garbage,
        "-----BEGIN TALLY LICENSE-----\n!!!\n-----END TALLY LICENSE-----\n",
    )
    .unwrap();
    let empty = tmp.path().join("empty.license");
    std::fs::write(&empty, "").unwrap();
    let g = garbage.to_str().unwrap();
    let e = empty.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["frobnicate"], "unrecognized"),
        (
            vec!["init", "--license", "/nonexistent.license", "--token", "t"],
            "cannot read",
        ),
        (vec!["init", "--license", g, "--token", "t"], "base64"),
        (
            vec!["init", "--license", e, "--token", "t"],
            "BEGIN TALLY LICENSE",
        ),
        (vec!["run", "--interval", "0s"], "duration"),
        (vec!["run", "--interval", "2d"], "24h"),
        (
            vec!["reports", "list"],
            "not an initialized agent directory",
        ),
        (vec!["reports", "show", "abc"], "invalid value"),
        // clap's whole message on the one line: what is missing, and its suggestion.
        (vec!["record"], "were not provided: <METRIC>"),
        (
            vec!["status", "--jsno"],
            "a similar argument exists: '--json'",
        ),
    ];
    for (args, needle) in cases {
        let (code, out, err) = run(&data, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!data.join("agent.key").exists(), "{args:?} created a key");
    }
}

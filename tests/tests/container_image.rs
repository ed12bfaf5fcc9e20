//! The container image (`deploy/Dockerfile`). With a container engine at hand the image is
//! built and run; without one (this project's CI machine has the `docker` client but no
//! daemon), the test runs the Dockerfile's own build command — the static musl build the
//! image copies — and runs those binaries as a non-root user: `init`, `serve` answering
//! `/readyz`, `config check`. Either way the Dockerfile's shape is checked: both targets,
//! a non-root user, the copied paths the build command makes.

use std::path::{Path, PathBuf};
use std::process::Command;
use tally_tests::*;

const MUSL: &str = "x86_64-unknown-linux-musl";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn dockerfile() -> String {
    std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap()
}

/// The Dockerfile's `RUN cargo build …` command, as words.
fn build_command(dockerfile: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("RUN cargo build "))
        .expect("a `RUN cargo build` line");
    std::iter::once("build")
        .chain(line.split_whitespace())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_dockerfile_builds_static_binaries_for_non_root_images() {
    let file = dockerfile();
    for target in ["collector", "agent"] {
        let from = file
            .lines()
            .find(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {target}")))
            .unwrap_or_else(|| panic!("no `{target}` target"));
        assert!(
            from.contains("distroless/static") && from.contains(":nonroot"),
            "{from}"
        );
        let copy = format!("/src/target/{MUSL}/release/tally-{target} /usr/bin/tally-{target}");
        assert!(file.contains(&copy), "the {target} image copies {copy}");
    }
    assert_eq!(file.matches("USER nonroot:nonroot").count(), 2);
    // /data belongs to the user, so a new volume mounted there is writable.
    assert_eq!(
        file.matches("COPY --from=build --chown=65532:65532 /data /data")
            .count(),
        2
    );
    assert!(!file.contains("USER root"));
    let cmd = build_command(&file);
    for word in [
        "--locked",
        "--release",
        "--target",
        MUSL,
        "tally-collector",
        "tally-agent",
    ] {
        assert!(cmd.iter().any(|w| w == word), "{word} in {cmd:?}");
    }
}

/// A container engine that can build here (a client whose daemon answers).
fn engine() -> Option<&'static str> {
    ["podman", "docker"].into_iter().find(|e| {
        Command::new(e)
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn the_image_binaries_build_and_run_as_a_non_root_user() {
    let tmp = tempfile::tempdir().unwrap();
    if let Some(engine) = engine() {
        for target in ["collector", "agent"] {
            let tag = format!("tally-{target}:test");
            let out = Command::new(engine)
                .args([
                    "build",
                    "-f",
                    "deploy/Dockerfile",
                    "--target",
                    target,
                    "-t",
                    &tag,
                    ".",
                ])
                .current_dir(repo())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{engine} build --target {target}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = Command::new(engine)
                .args(["run", "--rm", &tag, "--version"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{engine} run {tag}");
        }
        return;
    }
    // No engine: the image's build command, in a target directory of its own (the suite's
    // own is locked by the running `cargo test`).
    deps::require("musl");
    let target_dir = workspace_bin("tally-collector")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("container-image");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(build_command(&dockerfile()))
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Dockerfile's build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = |name: &str| target_dir.join(MUSL).join("release").join(name);
    for name in ["tally-collector", "tally-agent"] {
        // Static: nothing for the dynamic loader (distroless/static has no libc).
        let ldd = Command::new("ldd").arg(bin(name)).output().unwrap();
        let said = String::from_utf8_lossy(&ldd.stdout).to_string()
            + &String::from_utf8_lossy(&ldd.stderr);
        assert!(
            said.contains("statically linked") || said.contains("not a dynamic executable"),
            "{name} is not static: {said}"
        );
    }

    // As the image runs them: a user that is not root (65532, distroless' `nonroot`, when
    // this test runs as root; else the test's own user), owning only its data directory.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    if root {
        let ok = Command::new("chown")
            .args(["-R", "65532:65532"])
            .arg(tmp.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown");
    }
    let as_user = |bin: &Path, args: &[&str]| -> Command {
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65532",
                "--regid=65532",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.args(args)
            .env_clear()
            .env("TALLY_DATA", &data)
            .env("TALLY_LOG_FORMAT", "json");
        cmd
    };
    let out = as_user(&bin("tally-collector"), &["--json", "init"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init as a non-root user: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["admin_token"].as_str().is_some_and(|t| !t.is_empty()));
    if root {
        let meta = std::fs::metadata(data.join("vendor.key")).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            65532,
            "the key belongs to the service user"
        );
    }
    let out = as_user(&bin("tally-collector"), &["config", "check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "config check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut serve = as_user(
        &bin("tally-collector"),
        &[
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let ports = data.join("ports.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ports.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "serve wrote no ports.json"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ports).unwrap()).unwrap();
    let ready = http_status(p["http"].as_str().unwrap(), "/readyz");
    let _ = serve.kill();
    let stderr = serve.wait_with_output().unwrap().stderr;
    assert_eq!(ready, 200, "/readyz: {}", String::from_utf8_lossy(&stderr));
    // Its log is JSON, one object per line.
    for line in String::from_utf8_lossy(&stderr).lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }
    let out = Command::new(bin("tally-agent"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// The status code of `GET path` on `addr`, over a plain HTTP/1.0 exchange.
fn http_status(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

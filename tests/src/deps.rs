//! What some tests need beyond the Rust toolchain (`chromium`, `libfaketime`), installed on
//! first use by `scripts/test-deps.sh` (Debian packages, as root), never assumed: a test
//! whose dependency cannot be had fails, saying how to get it.

use std::path::PathBuf;
use std::process::Command;

/// The path of `program` (or library), installing its package first if it is missing.
pub fn require(program: &str) -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-deps.sh");
    let out = Command::new(&script)
        .arg(program)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "this test needs `{program}`: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

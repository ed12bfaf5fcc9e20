//! `ports.json`: where a server started with port 0 tells scripts and tests the addresses
//! it chose. Written atomically (write + rename), so a watcher never reads half a file.

use serde_json::Value;
use std::path::Path;

pub const FILE: &str = "ports.json";

/// Writes `value` to `DIR/ports.json`.
pub fn write(dir: &Path, value: &Value) -> std::io::Result<()> {
    let tmp = dir.join("ports.json.tmp");
    std::fs::write(&tmp, value.to_string())?;
    std::fs::rename(&tmp, dir.join(FILE))
}

/// The bytes of `DIR/ports.json`, `None` if there is none. The caller parses them (with
/// `tally_proto::json`'s strict parser: this crate knows no JSON dialect of its own).
pub fn read(dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(dir.join(FILE)).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::read(dir.path()).is_none());
        let v = serde_json::json!({"listen": "127.0.0.1:7071"});
        super::write(dir.path(), &v).unwrap();
        let back: serde_json::Value =
            serde_json::from_slice(&super::read(dir.path()).unwrap()).unwrap();
        assert_eq!(back, v);
    }
}

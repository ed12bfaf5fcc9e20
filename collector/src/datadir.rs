//! The collector's data directory: database, vendor key, issued license files, ports.json.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("collector.db")
    }
    /// The vendor signing key: signs licenses and receipts. Mode 0600.
    pub fn vendor_key(&self) -> PathBuf {
        self.root.join("vendor.key")
    }
    pub fn licenses(&self) -> PathBuf {
        self.root.join("licenses")
    }
    pub fn ports(&self) -> PathBuf {
        self.root.join("ports.json")
    }
    pub fn is_initialized(&self) -> bool {
        self.vendor_key().exists() && self.db().exists()
    }
    pub fn path(&self) -> &Path {
        &self.root
    }
}

//! The collector's files in its data directory: database, vendor key, issued license files
//! (and, from the shared part, ports.json).

use std::path::PathBuf;

pub use tally_runtime::datadir::DataDir;

/// Names of the collector's files; `use` it wherever they are needed.
pub trait CollectorFiles {
    /// The SQLite store (when no `--database` names another).
    fn db(&self) -> PathBuf;
    /// The vendor signing key: signs licenses and receipts. Mode 0600.
    fn vendor_key(&self) -> PathBuf;
    /// Issued license files.
    fn licenses(&self) -> PathBuf;
}

impl CollectorFiles for DataDir {
    fn db(&self) -> PathBuf {
        self.root.join("collector.db")
    }
    fn vendor_key(&self) -> PathBuf {
        self.root.join("vendor.key")
    }
    fn licenses(&self) -> PathBuf {
        self.root.join("licenses")
    }
}

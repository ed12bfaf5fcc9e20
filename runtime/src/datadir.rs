//! A binary's data directory (`--data DIR`, env `TALLY_DATA`, config key `data`, default
//! `./tally-data`): the part both binaries share. Each binary names its own files on top.

use std::path::{Path, PathBuf};

/// Where a binary keeps its state.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// The directory from the flag (or environment), else the config file, else the
    /// default `./tally-data`.
    pub fn resolve(flag: Option<PathBuf>, config: Option<PathBuf>) -> Self {
        DataDir::new(
            flag.or(config)
                .unwrap_or_else(|| PathBuf::from("./tally-data")),
        )
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `ports.json`: the addresses a running server chose.
    pub fn ports(&self) -> PathBuf {
        self.root.join(crate::ports::FILE)
    }
}

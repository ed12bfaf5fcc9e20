//! The agent's data directory: database, agent key (0600), ports.json.

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
        self.root.join("agent.db")
    }
    pub fn key(&self) -> PathBuf {
        self.root.join("agent.key")
    }
    pub fn ports(&self) -> PathBuf {
        self.root.join("ports.json")
    }
    pub fn is_initialized(&self) -> bool {
        self.key().exists() && self.db().exists()
    }
    pub fn path(&self) -> &Path {
        &self.root
    }
}

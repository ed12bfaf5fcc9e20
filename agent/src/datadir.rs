//! The agent's files in its data directory: database and agent key (0600) (and, from the
//! shared part, ports.json).

use std::path::PathBuf;

pub use tally_runtime::datadir::DataDir;

/// Names of the agent's files; `use` it wherever they are needed.
pub trait AgentFiles {
    fn db(&self) -> PathBuf;
    fn key(&self) -> PathBuf;
    /// Both the key and the database exist (`init` has run).
    fn is_initialized(&self) -> bool;
}

impl AgentFiles for DataDir {
    fn db(&self) -> PathBuf {
        self.root.join("agent.db")
    }
    fn key(&self) -> PathBuf {
        self.root.join("agent.key")
    }
    fn is_initialized(&self) -> bool {
        self.key().exists() && self.db().exists()
    }
}

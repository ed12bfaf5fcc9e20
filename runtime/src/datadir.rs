//! A binary's data directory (`--data DIR`, env `TALLY_DATA`, config key `data`, default
//! `./tally-data`): the part both binaries share. Each binary names its own files on top.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Makes every file and directory this process creates from now on private to its user
/// (umask 077: directories 0700, files 0600).
pub fn private_by_default() {
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
}

/// The data directory is in use by another running process.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{dir} is in use by another running process (PID {pid}); one server per data \
         directory (hint: stop it, or give this one its own --data)"
    )]
    Held { dir: String, pid: String },
    #[error("cannot lock {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive lock on a data directory (`DIR/lock`, holding the PID of its owner),
/// held until this is dropped or the process ends, however it ends (the kernel releases
/// an `flock` with the last descriptor, `kill -9` included).
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

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

    /// Creates the directory (and its parents) if it is missing; with
    /// [`private_by_default`] it is 0700.
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.root)
    }

    /// A warning if the directory can be read or entered by other users (it holds secrets'
    /// hashes and usage), `None` if it is private or missing.
    pub fn looser_than_private(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&self.root).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "{} is accessible to other users (mode {mode:o}); it should be 0700 \
                 (hint: chmod 700 {})",
                self.root.display(),
                self.root.display()
            )
        })
    }

    /// Takes the directory's exclusive lock for a server (`tally-collector serve`,
    /// `tally-agent run`): a second server on the same directory is refused, naming the
    /// first one's PID.
    pub fn lock(&self) -> Result<DirLock, LockError> {
        let dir = self.root.display().to_string();
        let io = |source| LockError::Io {
            dir: dir.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.root.join("lock"))
            .map_err(io)?;
        if let Err(e) =
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(LockError::Held {
                    dir,
                    pid: pid.trim().chars().take(20).collect(),
                });
            }
            return Err(io(e.into()));
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let d = DataDir::new(tmp.path());
        let first = d.lock().unwrap();
        // flock locks belong to the open file description: a second open in the same
        // process conflicts just as another process would.
        match d.lock() {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        assert!(d.lock().is_ok(), "released with its holder");
    }
}

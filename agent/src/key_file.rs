//! The agent key file across rotations: `agent.key` holds the key the chain is held by.
//!
//! A rotation writes the new key to `agent.key.next` (0600, synced), commits the rotation
//! in the database, then renames `agent.key.next` over `agent.key` (so the old private key
//! is gone: what it signed is signed, and it must sign nothing more). A crash between the
//! commit and the rename leaves the database naming the new key while `agent.key` still
//! holds the old one: [`load`] finishes the rename. A crash before the commit leaves a
//! stray `agent.key.next` that no rotation names: [`load`] removes it.

use crate::datadir::{AgentFiles, DataDir};
use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};

/// Why the agent key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{0}")]
    File(#[from] tally_proto::keys::KeyFileError),
    #[error(
        "{file} holds agent key {found}, but the agent's chain is held by key {expected} \
         (its last rotation); restore that key's file"
    )]
    NotTheHolder {
        file: String,
        found: String,
        expected: String,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// Where a rotation writes the new key before the database names it.
pub fn next_path(dir: &DataDir) -> PathBuf {
    let mut p = dir.key().into_os_string();
    p.push(".next");
    PathBuf::from(p)
}

/// The key the chain is held by: `holder` (from the stored rotations; `None` before any),
/// or whatever `agent.key` holds when there is none. Finishes an interrupted rotation.
pub fn load(dir: &DataDir, holder: Option<[u8; 32]>) -> Result<SigningKey, KeyFileError> {
    let key = tally_proto::keys::read(&dir.key())?;
    let next = next_path(dir);
    let Some(holder) = holder else {
        remove_stray(&next)?;
        return Ok(key);
    };
    if key.verifying_key().to_bytes() == holder {
        remove_stray(&next)?;
        return Ok(key);
    }
    if next.exists() {
        let new = tally_proto::keys::read(&next)?;
        if new.verifying_key().to_bytes() == holder {
            install(dir, &next)?;
            return Ok(new);
        }
    }
    Err(KeyFileError::NotTheHolder {
        file: dir.key().display().to_string(),
        found: tally_proto::keys::key_id(&key.verifying_key().to_bytes()),
        expected: tally_proto::keys::key_id(&holder),
    })
}

/// Writes `key` as the next key (a rotation's first step), replacing a stray one.
pub fn write_next(dir: &DataDir, key: &SigningKey) -> Result<(), KeyFileError> {
    let next = next_path(dir);
    remove_stray(&next)?;
    tally_proto::keys::write_new(&next, key)?;
    Ok(())
}

/// Renames the next key over `agent.key` and syncs the directory (a rotation's last step).
/// Another process may have finished it first: then `agent.key` already holds it.
pub fn install(dir: &DataDir, next: &Path) -> Result<(), KeyFileError> {
    let io = |action, path: &Path| {
        let path = path.display().to_string();
        move |source| KeyFileError::Io {
            action,
            path,
            source,
        }
    };
    match std::fs::rename(next, dir.key()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("rename", next)(e)),
    }
    std::fs::File::open(dir.path())
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir.path()))?;
    Ok(())
}

fn remove_stray(next: &Path) -> Result<(), KeyFileError> {
    match std::fs::remove_file(next) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(KeyFileError::Io {
            action: "remove",
            path: next.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, DataDir) {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::new(t.path().to_path_buf());
        (t, d)
    }

    #[test]
    fn an_interrupted_rotation_is_finished_or_undone() {
        let (_t, d) = dir();
        let old = tally_proto::keys::generate();
        let new = tally_proto::keys::generate();
        tally_proto::keys::write_new(&d.key(), &old).unwrap();
        // Crashed before the commit: the stray next key is removed, the old key stays.
        write_next(&d, &new).unwrap();
        assert_eq!(load(&d, None).unwrap(), old);
        assert!(!next_path(&d).exists());
        // Crashed after the commit, before the rename: the rename is finished.
        write_next(&d, &new).unwrap();
        let holder = new.verifying_key().to_bytes();
        assert_eq!(load(&d, Some(holder)).unwrap(), new);
        assert!(!next_path(&d).exists());
        assert_eq!(tally_proto::keys::read(&d.key()).unwrap(), new);
        // A key file that is not the holder's, and no next key: refused, named.
        let other = tally_proto::keys::generate();
        let e = load(&d, Some(other.verifying_key().to_bytes())).unwrap_err();
        assert!(matches!(e, KeyFileError::NotTheHolder { .. }), "{e}");
    }
}

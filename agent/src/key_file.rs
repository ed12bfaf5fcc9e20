//! The agent key file across rotations: `agent.key` holds the key the chain is held by.
//!
//! A rotation writes the new key to `agent.key.next-<key id>` (0600; the file and the
//! directory synced), commits the rotation in the database, then renames that file over
//! `agent.key` (so the old private key is gone: what it signed is signed, and it must sign
//! nothing more). A crash, or another process, between the commit and the rename leaves the
//! database naming the new key while `agent.key` still holds the old one: [`load`] finishes
//! the rename. The next file is named by its key, so two rotations racing, or a command
//! loading the key meanwhile, never take or remove another rotation's file. A crash before
//! the commit leaves a `agent.key.next-<id>` that no rotation names: a key that never signed
//! anything and that nothing trusts, left for the operator to remove.

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

/// Where a rotation writes the new key `key_id` before the database names it.
pub fn next_path(dir: &DataDir, key_id: &str) -> PathBuf {
    let mut p = dir.key().into_os_string();
    p.push(format!(".next-{key_id}"));
    PathBuf::from(p)
}

/// The key the chain is held by: `holder` (from the stored rotations; `None` before any),
/// or whatever `agent.key` holds when there is none. Finishes an interrupted rotation.
pub fn load(dir: &DataDir, holder: Option<[u8; 32]>) -> Result<SigningKey, KeyFileError> {
    let key = tally_proto::keys::read(&dir.key())?;
    let Some(holder) = holder else {
        return Ok(key);
    };
    if key.verifying_key().to_bytes() == holder {
        return Ok(key);
    }
    let holder_id = tally_proto::keys::key_id(&holder);
    let next = next_path(dir, &holder_id);
    if next.exists() {
        let new = tally_proto::keys::read(&next)?;
        if new.verifying_key().to_bytes() == holder {
            install(dir, &new)?;
            return Ok(new);
        }
    }
    Err(KeyFileError::NotTheHolder {
        file: dir.key().display().to_string(),
        found: tally_proto::keys::key_id(&key.verifying_key().to_bytes()),
        expected: holder_id,
    })
}

/// Writes `key` as a next key (a rotation's first step): the file and the directory are
/// synced before the rotation that names it commits.
pub fn write_next(dir: &DataDir, key: &SigningKey) -> Result<PathBuf, KeyFileError> {
    let next = next_path(
        dir,
        &tally_proto::keys::key_id(&key.verifying_key().to_bytes()),
    );
    tally_proto::keys::write_new(&next, key)?;
    sync_dir(dir)?;
    Ok(next)
}

/// Renames `key`'s next file over `agent.key` and syncs the directory (a rotation's last
/// step). Another process may have finished it first; either way `agent.key` must then
/// hold `key`.
pub fn install(dir: &DataDir, key: &SigningKey) -> Result<(), KeyFileError> {
    let public = key.verifying_key().to_bytes();
    let next = next_path(dir, &tally_proto::keys::key_id(&public));
    match std::fs::rename(&next, dir.key()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(KeyFileError::Io {
                action: "rename",
                path: next.display().to_string(),
                source,
            });
        }
    }
    sync_dir(dir)?;
    let now = tally_proto::keys::read(&dir.key())?;
    if now.verifying_key().to_bytes() != public {
        return Err(KeyFileError::NotTheHolder {
            file: dir.key().display().to_string(),
            found: tally_proto::keys::key_id(&now.verifying_key().to_bytes()),
            expected: tally_proto::keys::key_id(&public),
        });
    }
    Ok(())
}

fn sync_dir(dir: &DataDir) -> Result<(), KeyFileError> {
    std::fs::File::open(dir.path())
        .and_then(|d| d.sync_all())
        .map_err(|source| KeyFileError::Io {
            action: "sync",
            path: dir.path().display().to_string(),
            source,
        })
}

/// Removes a next key no rotation names (its rotation was refused before it committed).
pub fn remove_next(next: &Path) {
    let _ = std::fs::remove_file(next);
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
    fn an_interrupted_rotation_is_finished_and_a_stray_next_key_ignored() {
        let (_t, d) = dir();
        let old = tally_proto::keys::generate();
        let new = tally_proto::keys::generate();
        tally_proto::keys::write_new(&d.key(), &old).unwrap();
        // Crashed before the commit (or a rotation in progress in another process): the
        // next key is left alone, the old key stays.
        let stray = write_next(&d, &new).unwrap();
        assert_eq!(load(&d, None).unwrap(), old);
        assert_eq!(load(&d, Some(old.verifying_key().to_bytes())).unwrap(), old);
        assert!(stray.exists());
        // Crashed after the commit, before the rename: the rename is finished.
        let holder = new.verifying_key().to_bytes();
        assert_eq!(load(&d, Some(holder)).unwrap(), new);
        assert!(!stray.exists());
        assert_eq!(tally_proto::keys::read(&d.key()).unwrap(), new);
        // Finished twice (the rotating command after a loader did it): fine.
        install(&d, &new).unwrap();
        // A key file that is not the holder's, and no next key for it: refused, named.
        let other = tally_proto::keys::generate();
        let e = load(&d, Some(other.verifying_key().to_bytes())).unwrap_err();
        assert!(matches!(e, KeyFileError::NotTheHolder { .. }), "{e}");
        // Installing a key whose next file is gone and that agent.key does not hold: refused.
        assert!(install(&d, &other).is_err());
    }
}

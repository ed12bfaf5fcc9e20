//! Private key files: 32-byte ed25519 seeds, hex-encoded, created with mode 0600.

use ed25519_dalek::SigningKey;
use std::io::Write;
use std::path::Path;

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot {action} key file {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("key file {0} is not a hex-encoded 32-byte ed25519 seed")]
    Format(String),
}

/// A fresh random signing key from the operating system's generator.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// Writes `key` to a new file with mode 0600; refuses to overwrite an existing file.
pub fn write_new(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        action: "create",
        path: path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

/// Reads a key written by [`write_new`].
pub fn read(path: &Path) -> Result<SigningKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        action: "read",
        path: path.display().to_string(),
        source,
    })?;
    let bytes =
        hex::decode(text.trim()).map_err(|_| KeyFileError::Format(path.display().to_string()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyFileError::Format(path.display().to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A public key's id: the first 8 bytes of its SHA-256, in hex. Short enough to read out,
/// long enough to tell keys apart.
pub fn key_id(public: &[u8; 32]) -> String {
    use sha2::{Digest as _, Sha256};
    hex::encode(&Sha256::digest(public)[..8])
}

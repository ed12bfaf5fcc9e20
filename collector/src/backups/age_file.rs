//! Backup files encrypted to the operator's public key, in the age format (X25519
//! recipients, <https://age-encryption.org/v1>): what `serve --backup-recipient` writes and
//! what `backup verify`/`restore --identity` read. The collector holds only the public key
//! (`age1…`); the private key (`AGE-SECRET-KEY-1…`, as `age-keygen` writes it) stays with the
//! operator and is needed only to read a backup.
//!
//! age authenticates the whole file: a wrong identity, a flipped byte anywhere or a
//! truncated file is an error, never a silently damaged database.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The first line of every age file.
const MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// A key file may hold comments; anything bigger than this is not a key file.
const MAX_KEY_FILE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AgeFileError {
    #[error("{file}: {reason}")]
    KeyFile { file: PathBuf, reason: String },
    #[error("{0} is encrypted with a key that is not in the identity file (wrong --identity?)")]
    WrongIdentity(PathBuf),
    #[error("{file} is not a readable encrypted backup: {reason}")]
    Damaged { file: PathBuf, reason: String },
    #[error("{0}")]
    Io(String),
}

fn key_file_lines(path: &Path) -> Result<Vec<String>, AgeFileError> {
    let bad = |reason: String| AgeFileError::KeyFile {
        file: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    if meta.len() > MAX_KEY_FILE {
        return Err(bad(format!(
            "larger than {MAX_KEY_FILE} bytes: not a key file"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// The public key backups are encrypted to (`--backup-recipient FILE`: one `age1…` line,
/// comments allowed, as `age-keygen -y` prints it).
pub struct BackupRecipient(age::x25519::Recipient);

impl BackupRecipient {
    pub fn read(path: &Path) -> Result<Self, AgeFileError> {
        let bad = |reason: &str| AgeFileError::KeyFile {
            file: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let lines = key_file_lines(path)?;
        if lines.iter().any(|l| l.starts_with("AGE-SECRET-KEY-")) {
            return Err(bad(
                "holds a private key; give the public key (age1…, `age-keygen -y KEYFILE` prints \
                 it) and keep the private key off the collector",
            ));
        }
        match lines.as_slice() {
            [one] => age::x25519::Recipient::from_str(one)
                .map(BackupRecipient)
                .map_err(|e| bad(&format!("not an age X25519 public key (age1…): {e}"))),
            [] => Err(bad("holds no public key (expected one age1… line)")),
            _ => Err(bad("holds several lines; expected one age1… public key")),
        }
    }

    /// The public key, as written in the file (`age1…`).
    pub fn public(&self) -> String {
        self.0.to_string()
    }

    /// Encrypts the file `plain` into a new file `out` (which must not exist), synced to
    /// disk before this returns.
    pub fn encrypt(&self, plain: &Path, out: &Path) -> Result<(), AgeFileError> {
        let io = |what: &str, e: std::io::Error| AgeFileError::Io(format!("{what}: {e}"));
        let mut input = File::open(plain).map_err(|e| io(&plain.display().to_string(), e))?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(out)
            .map_err(|e| io(&out.display().to_string(), e))?;
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&self.0 as &dyn age::Recipient))
                .map_err(|e| AgeFileError::Io(format!("encrypting: {e}")))?;
        let mut writer = encryptor
            .wrap_output(BufWriter::new(file))
            .map_err(|e| io("encrypting", e))?;
        std::io::copy(&mut input, &mut writer).map_err(|e| io("encrypting", e))?;
        let file = writer
            .finish()
            .map_err(|e| io("encrypting", e))?
            .into_inner()
            .map_err(|e| io("writing", e.into_error()))?;
        file.sync_all().map_err(|e| io("syncing", e))
    }
}

/// The private keys that may read a backup (`--identity FILE`: `AGE-SECRET-KEY-1…` lines,
/// comments allowed, as `age-keygen` writes them).
pub struct BackupIdentity(Vec<age::x25519::Identity>);

impl BackupIdentity {
    pub fn read(path: &Path) -> Result<Self, AgeFileError> {
        let bad = |reason: String| AgeFileError::KeyFile {
            file: path.to_path_buf(),
            reason,
        };
        let mut keys = Vec::new();
        for (i, line) in key_file_lines(path)?.iter().enumerate() {
            // The parse error would not name the key, but stay generic all the same.
            let key = age::x25519::Identity::from_str(line).map_err(|_| {
                bad(format!(
                    "key {} is not an age X25519 private key (AGE-SECRET-KEY-1…)",
                    i + 1
                ))
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(bad("holds no private key (AGE-SECRET-KEY-1…)".into()));
        }
        Ok(BackupIdentity(keys))
    }

    /// Decrypts the age file `encrypted` into a new file `out` (which must not exist,
    /// created with mode 0600: it is the plaintext database). On any error `out` is
    /// removed: a half-decrypted file is never left behind.
    pub fn decrypt(&self, encrypted: &Path, out: &Path) -> Result<(), AgeFileError> {
        let result = self.decrypt_into(encrypted, out);
        if result.is_err() {
            let _ = std::fs::remove_file(out);
        }
        result
    }

    fn decrypt_into(&self, encrypted: &Path, out: &Path) -> Result<(), AgeFileError> {
        let damaged = |reason: String| AgeFileError::Damaged {
            file: encrypted.to_path_buf(),
            reason,
        };
        let input = File::open(encrypted)
            .map_err(|e| AgeFileError::Io(format!("{}: {e}", encrypted.display())))?;
        let decryptor = age::Decryptor::new_buffered(BufReader::new(input))
            .map_err(|e| damaged(e.to_string()))?;
        let mut reader = decryptor
            .decrypt(self.0.iter().map(|k| k as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => {
                    AgeFileError::WrongIdentity(encrypted.to_path_buf())
                }
                other => damaged(other.to_string()),
            })?;
        let file = private_new_file(out)?;
        let mut w = BufWriter::new(file);
        // A chunk that fails its authentication tag (a damaged or truncated file) is a read
        // error; a write error (a full disk) is ours, not the file's.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(damaged(e.to_string())),
            };
            w.write_all(&buf[..n])
                .map_err(|e| AgeFileError::Io(format!("writing {}: {e}", out.display())))?;
        }
        let file = w
            .into_inner()
            .map_err(|e| AgeFileError::Io(format!("writing: {}", e.into_error())))?;
        file.sync_all()
            .map_err(|e| AgeFileError::Io(format!("syncing: {e}")))
    }
}

fn private_new_file(path: &Path) -> Result<File, AgeFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AgeFileError::Io(format!("{}: {e}", path.display())))
}

/// Whether `path` is an age file (by its first line). An unreadable file is not.
pub fn is_encrypted(path: &Path) -> bool {
    let mut head = [0u8; MAGIC.len()];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    /// Writes `bytes` to a new file with mode 0600 (a private key file).
    fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AgeFileError> {
        let mut f = private_new_file(path)?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| AgeFileError::Io(format!("{}: {e}", path.display())))
    }

    fn keypair(dir: &Path) -> (PathBuf, PathBuf) {
        let id = age::x25519::Identity::generate();
        let (key, public) = (dir.join("backup.key"), dir.join("backup.pub"));
        let text = format!(
            "# created by a test\n# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        );
        write_private(&key, text.as_bytes()).unwrap();
        std::fs::write(&public, format!("{}\n", id.to_public())).unwrap();
        (key, public)
    }

    #[test]
    fn encrypts_to_the_recipient_and_only_its_identity_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = keypair(dir.path());
        std::fs::create_dir(dir.path().join("x")).unwrap();
        let (other_key, _) = keypair(&dir.path().join("x"));
        let plain = dir.path().join("plain");
        let body: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(&plain, &body).unwrap();
        let enc = dir.path().join("enc.age");
        BackupRecipient::read(&public)
            .unwrap()
            .encrypt(&plain, &enc)
            .unwrap();
        assert!(is_encrypted(&enc));
        assert!(!is_encrypted(&plain));
        let ciphertext = std::fs::read(&enc).unwrap();
        assert!(!ciphertext.windows(16).any(|w| w == &body[4000..4016]));

        let out = dir.path().join("out");
        BackupIdentity::read(&key)
            .unwrap()
            .decrypt(&enc, &out)
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), body);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let wrong = BackupIdentity::read(&other_key).unwrap();
        let out2 = dir.path().join("out2");
        assert!(matches!(
            wrong.decrypt(&enc, &out2),
            Err(AgeFileError::WrongIdentity(_))
        ));
        assert!(!out2.exists());

        // One flipped byte in the payload: refused, and nothing left behind.
        let mut flipped = ciphertext.clone();
        let i = flipped.len() - 100;
        flipped[i] ^= 1;
        let bad = dir.path().join("flipped.age");
        std::fs::write(&bad, &flipped).unwrap();
        let out3 = dir.path().join("out3");
        let err = BackupIdentity::read(&key)
            .unwrap()
            .decrypt(&bad, &out3)
            .unwrap_err();
        assert!(matches!(err, AgeFileError::Damaged { .. }), "{err}");
        assert!(!out3.exists());
    }

    #[test]
    fn key_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = keypair(dir.path());
        // The private key where the public one belongs: refused, naming the mistake.
        let err = BackupRecipient::read(&key).err().unwrap().to_string();
        assert!(err.contains("holds a private key"), "{err}");
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "age1notakey\n").unwrap();
        assert!(BackupRecipient::read(&junk).is_err());
        assert!(BackupIdentity::read(&junk).is_err());
        assert!(BackupIdentity::read(&public).is_err());
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nothing\n").unwrap();
        assert!(BackupRecipient::read(&empty).is_err());
        assert!(BackupIdentity::read(&empty).is_err());
        assert!(BackupRecipient::read(&dir.path().join("absent")).is_err());
    }
}

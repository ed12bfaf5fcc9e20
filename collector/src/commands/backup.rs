//! `backup --out FILE`, `backup verify FILE` and `restore FILE`: the SQLite store's online
//! backup, its offline check, and a restore into a data directory without a database.
//! `verify` and `restore` also read the encrypted files scheduled backups write, given the
//! private key (`--identity KEY`). The PostgreSQL store is backed up with PostgreSQL's own
//! tools instead.

use super::{CmdResult, CommandError, Output, usage_err};
use crate::backups::age_file::{self, AgeFileError, BackupIdentity};
use crate::datadir::{CollectorFiles, DataDir};
use crate::store::sqlite::SqliteStore;
use crate::store::sqlite::backup::{self, BackupTotals};
use crate::store::{AuditEntry, AuditStore, Store};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Refuses a `--database` that names another store than the SQLite file.
fn sqlite_only(database: Option<&str>) -> Result<(), CommandError> {
    match database.map(str::trim).filter(|d| !d.is_empty()) {
        None | Some("sqlite:") => Ok(()),
        Some(_) => Err(usage_err(
            "backup and restore are for the SQLite store; back up PostgreSQL with pg_dump or \
             point-in-time recovery (see docs/operations.md, \"Backups\")",
        )),
    }
}

fn totals_output(file: &Path, t: &BackupTotals, headline: &str) -> Output {
    let mut text = format!(
        "{headline} {}\nschema version {}: {} customers, {} licenses, {} agents\n",
        file.display(),
        t.schema_version,
        t.customers,
        t.licenses,
        t.agents
    );
    for (status, n) in &t.reports {
        text.push_str(&format!("reports {status}: {n}\n"));
    }
    for (metric, q) in &t.usage {
        text.push_str(&format!("usage {metric}: {q}\n"));
    }
    Output::new(
        json!({
            "file": file.display().to_string(),
            "schema_version": t.schema_version,
            "customers": t.customers,
            "licenses": t.licenses,
            "agents": t.agents,
            "reports": t.reports,
            "usage": t.usage,
        }),
        text,
    )
}

async fn blocking<T: Send + 'static, E: Into<CommandError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, CommandError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CommandError::Runtime(e.to_string()))?
        .map_err(Into::into)
}

async fn audit(db: &Path, action: &str, target: &Path) -> Result<(), CommandError> {
    let store = SqliteStore::open(db)?;
    store
        .audit(AuditEntry {
            at: store.clock().now(),
            actor: "cli".into(),
            action: action.into(),
            target: target.display().to_string(),
            outcome: "ok".into(),
        })
        .await?;
    Ok(())
}

/// `backup --out FILE`: a consistent copy of the live database (serve may keep running).
pub async fn backup(dir: &DataDir, database: Option<&str>, out: PathBuf) -> CmdResult {
    sqlite_only(database)?;
    let db = dir.db();
    if !db.exists() {
        return Err(usage_err(format!(
            "{} has no database to back up (hint: is --data right?)",
            dir.path().display()
        )));
    }
    let (src, dst) = (db.clone(), out.clone());
    let totals = blocking(move || backup::backup(&src, &dst)).await?;
    audit(&db, "backup", &out).await?;
    Ok(totals_output(&out, &totals, "backed up to"))
}

impl From<AgeFileError> for CommandError {
    fn from(e: AgeFileError) -> Self {
        match e {
            AgeFileError::Io(_) => CommandError::Runtime(e.to_string()),
            _ => CommandError::Usage(e.to_string()),
        }
    }
}

/// A plaintext copy of an encrypted backup, in a private place; removed when dropped.
struct Decrypted(PathBuf);

impl Drop for Decrypted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        // A backup made before backups left WAL mode is read with these beside it.
        for suffix in ["-wal", "-shm"] {
            let mut side = self.0.clone().into_os_string();
            side.push(suffix);
            let _ = std::fs::remove_file(side);
        }
    }
}

/// `file` as a plaintext backup: itself, or (encrypted) decrypted with `identity` to
/// `scratch`, a path of ours.
fn plaintext(
    file: &Path,
    identity: Option<&Path>,
    scratch: PathBuf,
) -> Result<(PathBuf, Option<Decrypted>), CommandError> {
    if !age_file::is_encrypted(file) {
        return Ok((file.to_path_buf(), None));
    }
    let Some(identity) = identity else {
        return Err(usage_err(format!(
            "{} is encrypted; give --identity KEYFILE (the age private key its recipient \
             belongs to)",
            file.display()
        )));
    };
    let keys = BackupIdentity::read(identity)?;
    keys.decrypt(file, &scratch)?;
    Ok((scratch.clone(), Some(Decrypted(scratch))))
}

/// A private directory for a decrypted copy (`backup verify` needs no data directory).
fn private_scratch_dir() -> Result<PathBuf, CommandError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "tally-backup-verify-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| CommandError::Runtime(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// `backup verify FILE [--identity KEY]`: integrity and the totals a backup holds. Reads
/// only the file (an encrypted one is decrypted to a private temporary file, then removed).
pub async fn backup_verify(file: PathBuf, identity: Option<PathBuf>) -> CmdResult {
    let shown = file.clone();
    let totals = blocking(move || {
        let scratch = private_scratch_dir()?;
        let result = plaintext(&file, identity.as_deref(), scratch.join("backup.db"))
            .and_then(|(plain, _decrypted)| Ok(backup::verify(&plain)?));
        let _ = std::fs::remove_dir_all(&scratch);
        result
    })
    .await?;
    Ok(totals_output(&shown, &totals, "ok:"))
}

/// `restore FILE [--identity KEY]`: into a data directory that has no database yet (an
/// encrypted file is decrypted there first, next to where the database will be).
pub async fn restore(
    dir: &DataDir,
    database: Option<&str>,
    file: PathBuf,
    identity: Option<PathBuf>,
) -> CmdResult {
    sqlite_only(database)?;
    std::fs::create_dir_all(dir.path()).map_err(|e| {
        CommandError::Runtime(format!("cannot create {}: {e}", dir.path().display()))
    })?;
    if dir.db().exists() {
        return Err(usage_err(format!(
            "{} already has a database; restore only into a data directory without one",
            dir.path().display()
        )));
    }
    let (f, db) = (file.clone(), dir.db());
    let scratch = dir
        .path()
        .join(format!(".restore-{}.decrypted", std::process::id()));
    let totals = blocking(move || {
        let (plain, _decrypted) = plaintext(&f, identity.as_deref(), scratch)?;
        Ok::<_, CommandError>(backup::restore(&plain, &db)?)
    })
    .await?;
    audit(&dir.db(), "restore", &file).await?;
    let mut out = totals_output(&file, &totals, "restored");
    if !dir.vendor_key().exists() {
        out.text.push_str(&format!(
            "note: copy the vendor key (vendor.key, mode 0600) into {} before 'serve'\n",
            dir.path().display()
        ));
    }
    Ok(out)
}

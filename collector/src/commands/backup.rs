//! `backup --out FILE`, `backup verify FILE` and `restore FILE`: the SQLite store's online
//! backup, its offline check, and a restore into a data directory without a database.
//! The PostgreSQL store is backed up with PostgreSQL's own tools instead.

use super::{CmdResult, CommandError, Output, usage_err};
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, CommandError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CommandError::Runtime(e.to_string()))??)
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

/// `backup verify FILE`: integrity and the totals a backup holds. Reads only the file.
pub async fn backup_verify(file: PathBuf) -> CmdResult {
    let f = file.clone();
    let totals = blocking(move || backup::verify(&f)).await?;
    Ok(totals_output(&file, &totals, "ok:"))
}

/// `restore FILE`: into a data directory that has no database yet.
pub async fn restore(dir: &DataDir, database: Option<&str>, file: PathBuf) -> CmdResult {
    sqlite_only(database)?;
    std::fs::create_dir_all(dir.path()).map_err(|e| {
        CommandError::Runtime(format!("cannot create {}: {e}", dir.path().display()))
    })?;
    let (f, db) = (file.clone(), dir.db());
    let totals = blocking(move || backup::restore(&f, &db)).await?;
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

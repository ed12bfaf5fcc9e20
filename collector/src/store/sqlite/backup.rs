//! Backups of the SQLite store: a consistent online copy while `serve` keeps ingesting
//! (SQLite's online backup API, all pages in one step under one read transaction, so the
//! copy is the database as of one commit), an offline check of a backup file, and a
//! restore into a data directory that has no database yet.
//!
//! A backup holds the database only. The vendor key is not in it: keys are backed up apart
//! from the data (see docs/operations.md), so a stolen backup cannot sign licenses.

use super::schema;
use crate::store::{StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What a backup file holds, as `backup verify` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupTotals {
    pub schema_version: u32,
    pub customers: u64,
    pub licenses: u64,
    pub agents: u64,
    /// Stored reports per status (`accepted`, `quarantined`, `discarded`).
    pub reports: BTreeMap<String, u64>,
    /// Counted usage per metric, all licenses and months.
    pub usage: BTreeMap<String, u64>,
}

fn invalid(m: impl Into<String>) -> StoreError {
    StoreError::Invalid(m.into())
}

/// The marker in the temporary names of copies being made ([`partial_name`]).
pub const PARTIAL_MARK: &str = ".tally-partial-";

/// A temporary name next to `target` that is this process's alone (never an existing file
/// of someone else's).
fn partial_name(target: &Path) -> std::path::PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}{PARTIAL_MARK}{}", std::process::id()))
}

/// Gives the finished file `tmp` the name `target` without ever replacing a file: a hard
/// link fails if `target` appeared in the meantime (unlike a rename).
fn give_name(tmp: &Path, target: &Path) -> StoreResult<()> {
    let linked = std::fs::hard_link(tmp, target);
    let _ = std::fs::remove_file(tmp);
    linked.map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => invalid(format!(
            "{} already exists; it is never overwritten",
            target.display()
        )),
        _ => StoreError::Database(format!("naming {}: {e}", target.display())),
    })
}

/// Copies the live database at `db` to `out` (which must not exist). Safe while another
/// process writes: WAL readers do not block the writer, and the copy is one snapshot.
pub fn backup(db: &Path, out: &Path) -> StoreResult<BackupTotals> {
    if out.exists() {
        return Err(invalid(format!(
            "{} already exists; a backup never overwrites a file",
            out.display()
        )));
    }
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    src.busy_timeout(Duration::from_secs(10))?;
    let tmp = partial_name(out);
    let copied = (|| -> StoreResult<()> {
        let mut dst = Connection::open(&tmp)?;
        {
            let b = rusqlite::backup::Backup::new(&src, &mut dst)?;
            // -1: every page in one step, under one read transaction: a consistent snapshot.
            b.step(-1)?;
        }
        // The copy is one self-contained file: out of WAL mode, so reading it later (even
        // read-only) leaves no -wal/-shm files beside it. `restore` turns WAL back on.
        dst.execute_batch("PRAGMA journal_mode = DELETE;")?;
        drop(dst);
        // The copy is complete and closed; make it durable, then give it its name.
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::Database(format!("syncing the backup: {e}")))
    })();
    if let Err(e) = copied {
        // Never leave a partial copy (plaintext data) behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    give_name(&tmp, out)?;
    verify(out)
}

/// Checks a backup file: a SQLite database that passes `integrity_check`, with a Tally
/// schema this build knows, and returns the totals it holds. Never changes the file.
pub fn verify(file: &Path) -> StoreResult<BackupTotals> {
    if !file.is_file() {
        return Err(invalid(format!("{} is not a file", file.display())));
    }
    let not_backup = |e: rusqlite::Error| {
        invalid(format!(
            "{} is not a Tally collector backup: {e}",
            file.display()
        ))
    };
    let conn =
        Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(not_backup)?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(not_backup)?;
    if check != "ok" {
        return Err(invalid(format!(
            "{} is damaged: integrity check says {check}",
            file.display()
        )));
    }
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(not_backup)?;
    if version == 0 || version as usize > schema::VERSION {
        return Err(invalid(format!(
            "{} has schema version {version}; this build knows versions 1 to {}",
            file.display(),
            schema::VERSION
        )));
    }
    let count = |sql: &str| -> StoreResult<u64> {
        Ok(conn
            .query_row(sql, [], |r| r.get::<_, i64>(0))
            .map_err(not_backup)? as u64)
    };
    let pairs = |sql: &str| -> StoreResult<BTreeMap<String, u64>> {
        let mut st = conn.prepare(sql).map_err(not_backup)?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(not_backup)?
            .collect::<Result<_, _>>()
            .map_err(not_backup)?;
        Ok(rows)
    };
    // The hourly rollups and the monthly sums are written in the same transaction as the
    // report they count; a copy in which they disagree is not a faithful copy.
    let hourly =
        pairs("SELECT metric, SUM(quantity) FROM rollups GROUP BY metric ORDER BY metric")?;
    let usage =
        pairs("SELECT metric, SUM(quantity) FROM monthly_usage GROUP BY metric ORDER BY metric")?;
    if hourly != usage {
        return Err(invalid(format!(
            "{} is inconsistent: hourly rollups {hourly:?} and monthly sums {usage:?} differ",
            file.display()
        )));
    }
    Ok(BackupTotals {
        schema_version: version,
        customers: count("SELECT COUNT(*) FROM customers")?,
        licenses: count("SELECT COUNT(*) FROM licenses")?,
        agents: count("SELECT COUNT(*) FROM agents")?,
        reports: pairs("SELECT status, COUNT(*) FROM reports GROUP BY status ORDER BY status")?,
        // Summed in SQL over at most one row per (license, metric, month): each row was
        // checked against 64-bit overflow when it was written; a total over all licenses
        // could still exceed it, and SQLite would then answer with a float, which the
        // integer read above refuses rather than rounds.
        usage,
    })
}

/// Restores `file` as the database at `db`, which must not exist yet (an empty data
/// directory, or one holding only the vendor key). The file is verified first.
pub fn restore(file: &Path, db: &Path) -> StoreResult<BackupTotals> {
    let totals = verify(file)?;
    if db.exists() {
        return Err(invalid(format!(
            "{} already has a database; restore only into a data directory without one",
            db.parent().unwrap_or(db).display()
        )));
    }
    let src = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let tmp = partial_name(db);
    {
        let mut dst = Connection::open(&tmp)?;
        rusqlite::backup::Backup::new(&src, &mut dst)?.step(-1)?;
        dst.execute_batch("PRAGMA journal_mode = WAL;")?;
    }
    give_name(&tmp, db)?;
    Ok(totals)
}

//! Scheduled backups (`serve --backup-every 24h --backup-dir DIR --backup-keep 5
//! --backup-recipient FILE`, SQLite store): every interval, a consistent online copy of the
//! database, checked, encrypted to the operator's public key, named by the time it was
//! taken; then the oldest beyond `keep` removed. Each step is audited and counted in
//! `/metrics`. A failed backup is an ERROR log, a metric and an open `backups` incident,
//! never a crash: the next one runs on schedule.
//!
//! Only encrypted files ever reach the backup directory. The plaintext copy is made in the
//! data directory (where the plaintext database already lives), checked there, encrypted
//! into the backup directory under a temporary name, synced, given its final name, and
//! removed.

use super::age_file::{AgeFileError, BackupRecipient};
use crate::metrics::Metrics;
use crate::status::{Component, StatusBoard};
use crate::store::sqlite::backup::{self, BackupTotals};
use crate::store::{AuditEntry, Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tally_proto::time::Instant;

/// Backup files are `tally-<UTC time>.db.age`; nothing else in the directory is touched.
const PREFIX: &str = "tally-";
const SUFFIX: &str = ".db.age";
const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";

/// Default `--backup-keep`.
pub const DEFAULT_KEEP: usize = 5;

/// The schedule `serve` was given.
pub struct BackupSchedule {
    pub every: Duration,
    pub dir: PathBuf,
    /// How many backups to keep (at least 1).
    pub keep: usize,
    pub recipient: Arc<BackupRecipient>,
    /// The live database file.
    pub db: PathBuf,
    /// Where the plaintext copy is made and checked before encryption: the data directory,
    /// beside the database.
    pub work: PathBuf,
}

/// One scheduled backup, done.
#[derive(Debug)]
pub struct Taken {
    pub file: PathBuf,
    pub totals: BackupTotals,
    /// Older backups removed to keep `keep`.
    pub pruned: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduledBackupError {
    #[error("snapshot: {0}")]
    Snapshot(#[from] StoreError),
    #[error("encryption: {0}")]
    Encrypt(#[from] AgeFileError),
    #[error("{0}")]
    Io(String),
}

/// The file name of a backup taken at `at`.
pub fn file_name(at: Instant) -> String {
    format!("{PREFIX}{}{SUFFIX}", at.format(TIME_FORMAT))
}

/// The time in a backup file's name, if `name` is one this schedule wrote (and may
/// therefore prune).
fn backup_time(name: &str) -> Option<Instant> {
    let t = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    chrono::NaiveDateTime::parse_from_str(t, TIME_FORMAT)
        .ok()
        .map(|n| n.and_utc())
}

fn is_backup_name(name: &str) -> bool {
    backup_time(name).is_some()
}

/// When the newest backup in `dir` was taken (by its name), if there is one.
pub fn newest(dir: &Path) -> Option<Instant> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| backup_time(e.file_name().to_str()?))
        .max()
}

/// Removes what an interrupted backup left: plaintext copies in `work`, partial encrypted
/// files in `dir` (names only this schedule makes). Returns how many went.
pub fn sweep_leftovers(work: &Path, dir: &Path) -> usize {
    let mut removed = 0;
    for (d, marker) in [(work, ".plaintext-"), (dir, ".partial-")] {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // `.tally-<time>.db.age.plaintext-<pid>`, and the copy's own temporary name
            // beside it (`..tally-….plaintext-<pid>.tally-partial-<pid>`).
            let ours = name.starts_with('.')
                && name.trim_start_matches('.').starts_with(PREFIX)
                && name.contains(&format!("{SUFFIX}{marker}"));
            if ours && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

fn io(what: &str, path: &Path, e: std::io::Error) -> ScheduledBackupError {
    ScheduledBackupError::Io(format!("{what} {}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<(), ScheduledBackupError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))
}

/// Takes one backup now (`at` names it): the plaintext snapshot in the work directory,
/// checked, encrypted into the backup directory; then prunes. Blocking.
pub fn take(s: &BackupSchedule, at: Instant) -> Result<Taken, ScheduledBackupError> {
    let (db, work) = (&s.db, &s.work);
    let name = file_name(at);
    let file = s.dir.join(&name);
    let plain = work.join(format!(".{name}.plaintext-{}", std::process::id()));
    let partial = s
        .dir
        .join(format!(".{name}.partial-{}", std::process::id()));
    let result = (|| -> Result<BackupTotals, ScheduledBackupError> {
        // `backup` makes the one-snapshot copy and verifies it: integrity, a known schema,
        // rollups that agree with the monthly sums. Only a checked copy is encrypted.
        let totals = backup::backup(db, &plain)?;
        s.recipient.encrypt(&plain, &partial)?;
        // A hard link never replaces a file: two backups in one millisecond fail, not
        // overwrite.
        std::fs::hard_link(&partial, &file).map_err(|e| io("naming", &file, e))?;
        std::fs::remove_file(&partial).map_err(|e| io("removing", &partial, e))?;
        sync_dir(&s.dir)?;
        Ok(totals)
    })();
    let _ = std::fs::remove_file(&plain);
    let _ = std::fs::remove_file(&partial);
    let totals = result?;
    // The backup is taken whatever pruning does: a failure to prune is logged, not a
    // failed backup.
    let pruned = prune(&s.dir, s.keep, &file).unwrap_or_else(|e| {
        tracing::error!(error = %e, "Removing old scheduled backups failed; the directory keeps more than --backup-keep.");
        Vec::new()
    });
    Ok(Taken {
        file,
        totals,
        pruned,
    })
}

/// Removes the oldest backup files in `dir` beyond the newest `keep` (by the time in their
/// names); returns what it removed. `just_taken` is never removed (a clock set back would
/// otherwise make the new backup the "oldest"), and other files are never touched.
pub fn prune(
    dir: &Path,
    keep: usize,
    just_taken: &Path,
) -> Result<Vec<PathBuf>, ScheduledBackupError> {
    assert!(keep >= 1, "keep at least one backup");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| io("listing", dir, e))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_backup_name(n))
        .collect();
    if let Some(n) = just_taken.file_name().and_then(|n| n.to_str()) {
        names.retain(|x| x != n);
    }
    // The just-taken one counts as one of those kept.
    let keep = keep - 1;
    // The fixed-width UTC time in the name sorts as the time does.
    names.sort();
    let excess = names.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for n in names.into_iter().take(excess) {
        let path = dir.join(n);
        std::fs::remove_file(&path).map_err(|e| io("removing", &path, e))?;
        removed.push(path);
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

async fn audit(store: &dyn Store, action: &str, target: String, outcome: String) {
    let entry = AuditEntry {
        at: store.clock().now(),
        actor: "backup-schedule".into(),
        action: action.into(),
        target,
        outcome,
    };
    if let Err(e) = store.audit(entry).await {
        tracing::warn!(error = %e, action, "Could not write the audit entry of a scheduled backup.");
    }
}

/// What a backup holds, as one audit outcome.
fn summary(t: &BackupTotals) -> String {
    let reports: u64 = t.reports.values().sum();
    let usage: Vec<String> = t.usage.iter().map(|(m, q)| format!("{m}={q}")).collect();
    format!("ok reports={reports} usage[{}]", usage.join(" "))
}

/// Runs one backup and records it: audit entries, metrics, the `backups` incident.
pub async fn run_once(
    store: &Arc<dyn Store>,
    metrics: &Metrics,
    status: &StatusBoard,
    schedule: &Arc<BackupSchedule>,
) -> Result<Taken, ScheduledBackupError> {
    let at = store.clock().now();
    let s = schedule.clone();
    let result = tokio::task::spawn_blocking(move || take(&s, at))
        .await
        .unwrap_or_else(|e| Err(ScheduledBackupError::Io(format!("backup task: {e}"))));
    status.observe(Component::Backups, result.is_ok(), store.clock().now());
    match &result {
        Ok(t) => {
            metrics.backup(true);
            metrics.backup_succeeded_at(at.timestamp());
            metrics.backups_pruned(t.pruned.len() as u64);
            tracing::info!(file = %t.file.display(), pruned = t.pruned.len(), "Scheduled backup taken.");
            audit(
                store.as_ref(),
                "backup scheduled",
                t.file.display().to_string(),
                summary(&t.totals),
            )
            .await;
            for p in &t.pruned {
                audit(
                    store.as_ref(),
                    "backup prune",
                    p.display().to_string(),
                    format!("ok keep={}", schedule.keep),
                )
                .await;
            }
        }
        Err(e) => {
            metrics.backup(false);
            tracing::error!(error = %e, dir = %schedule.dir.display(), "Scheduled backup failed; the next one runs on schedule.");
            audit(
                store.as_ref(),
                "backup scheduled",
                schedule.dir.display().to_string(),
                format!("failed: {e}"),
            )
            .await;
        }
    }
    result
}

/// Takes a backup every `schedule.every` until `stop` resolves, the first one interval
/// after the newest backup in the directory (at once if that is past or there is none): a
/// collector restarted more often than the interval still backs up on time, and one that
/// restarts in a loop does not fill the directory. A backup in progress finishes before the
/// loop stops.
pub async fn backup_loop(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    status: Arc<StatusBoard>,
    schedule: Arc<BackupSchedule>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let leftovers = sweep_leftovers(&schedule.work, &schedule.dir);
    if leftovers > 0 {
        tracing::warn!(
            files = leftovers,
            "Removed what an interrupted scheduled backup left."
        );
    }
    let newest = newest(&schedule.dir);
    if let Some(t) = newest {
        metrics.backup_succeeded_at(t.timestamp());
    }
    let wait = newest
        .map(|t| t + chrono::Duration::from_std(schedule.every).unwrap_or(chrono::Duration::MAX))
        .map(|due| {
            (due - store.clock().now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        })
        .unwrap_or(Duration::ZERO)
        .min(schedule.every);
    let start = tokio::time::Instant::now() + wait;
    let mut tick = tokio::time::interval_at(start, schedule.every);
    // A backup that takes longer than the interval delays the next one; never a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let _ = run_once(&store, &metrics, &status, &schedule).await;
            }
            _ = &mut stop => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_time_and_only_backup_names_are_pruned() {
        let t = |s: &str| s.parse::<Instant>().unwrap();
        let a = file_name(t("2026-01-02T03:04:05.006Z"));
        assert_eq!(a, "tally-20260102T030405.006Z.db.age");
        assert!(is_backup_name(&a));
        for other in [
            "tally-x.db.age",
            "tally-20260102T030405.006Z.db",
            "notes.txt",
            ".tally-20260102T030405.006Z.db.age.partial-1",
        ] {
            assert!(!is_backup_name(other), "{other}");
        }
        let dir = tempfile::tempdir().unwrap();
        let times = [
            "2026-03-01T00:00:00Z",
            "2025-12-31T23:59:59.999Z",
            "2026-01-01T00:00:00Z",
        ];
        for x in times {
            std::fs::write(dir.path().join(file_name(t(x))), b"x").unwrap();
        }
        std::fs::write(dir.path().join("keep-me.txt"), b"x").unwrap();
        let just = dir.path().join(file_name(t("2026-03-01T00:00:00Z")));
        let removed = prune(dir.path(), 1, &just).unwrap();
        let names: Vec<String> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![
                file_name(t("2025-12-31T23:59:59.999Z")),
                file_name(t("2026-01-01T00:00:00Z"))
            ]
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "keep-me.txt".to_string(),
                file_name(t("2026-03-01T00:00:00Z"))
            ]
        );
        assert!(prune(dir.path(), 1, &just).unwrap().is_empty());
        // A clock set back: the just-taken backup sorts oldest and is kept all the same.
        let back = dir.path().join(file_name(t("2020-01-01T00:00:00Z")));
        std::fs::write(&back, b"x").unwrap();
        let removed = prune(dir.path(), 1, &back).unwrap();
        assert_eq!(
            removed,
            vec![dir.path().join(file_name(t("2026-03-01T00:00:00Z")))]
        );
        assert!(back.exists());
        // What an interrupted backup leaves is swept; nothing else.
        let work = tempfile::tempdir().unwrap();
        let left = [
            work.path()
                .join(".tally-20260101T000000.000Z.db.age.plaintext-7"),
            work.path()
                .join("..tally-20260101T000000.000Z.db.age.plaintext-7.tally-partial-7"),
            dir.path()
                .join(".tally-20260101T000000.000Z.db.age.partial-7"),
        ];
        for f in &left {
            std::fs::write(f, b"x").unwrap();
        }
        std::fs::write(work.path().join("collector.db"), b"x").unwrap();
        assert_eq!(sweep_leftovers(work.path(), dir.path()), 3);
        assert!(left.iter().all(|f| !f.exists()));
        assert!(work.path().join("collector.db").exists() && back.exists());
        assert_eq!(newest(dir.path()), Some(t("2020-01-01T00:00:00Z")));
    }
}

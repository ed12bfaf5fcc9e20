//! The data lifecycle the collector runs by itself: purging cancelled customers when their
//! time comes, and retention (removing the bodies of reports `--retain-reports` after their
//! month closed). Each purge and each month's removal leaves one audit entry with counts.

use crate::store::{AuditEntry, Expiry, Purge, Store, StoreResult};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_proto::time::Instant;

/// How often `serve` looks for purges that are due.
pub const PURGE_CHECK_EVERY: Duration = Duration::from_secs(60);

/// Purges every cancelled customer due at `now`, each recorded in the audit log (actor
/// `actor`: `cli` or `lifecycle`) with what it removed. The license files `licenses issue`
/// wrote into `licenses_dir` go too (files written elsewhere with `--out` are the
/// operator's). The purge itself is atomic per customer; its audit entry is the next write
/// (a crash between the two loses the entry, never half a purge).
pub async fn purge_due(
    store: &dyn Store,
    now: Instant,
    actor: &str,
    licenses_dir: Option<&Path>,
) -> StoreResult<Vec<Purge>> {
    let purged = store.purge_due(now).await?;
    for p in &purged {
        let mut files = 0;
        if let Some(dir) = licenses_dir {
            for id in &p.license_ids {
                if std::fs::remove_file(dir.join(format!("{id}.license"))).is_ok() {
                    files += 1;
                }
            }
        }
        store
            .audit(AuditEntry {
                at: now,
                actor: actor.into(),
                action: "customers purge".into(),
                target: p.customer_id.clone(),
                outcome: format!(
                    "reports={} rollup_rows={} anomalies={} agents={} licenses={} tokens={} statements={} alerts={} license_files={files}",
                    p.reports, p.rollup_rows, p.anomalies, p.agents, p.licenses, p.tokens, p.statements, p.alerts
                ),
            })
            .await?;
        tracing::info!(customer = %p.customer_id, reports = p.reports, "Purged a cancelled customer.");
    }
    Ok(purged)
}

/// Removes the license files in `dir` (`<license id>.license`, as `licenses issue` names
/// them) of licenses the store no longer has: a purge run by another collector node on a
/// shared database removed the licenses there, and only that node's files with them.
/// Returns how many files went. Safe against a concurrent `licenses issue`: the files are
/// listed *before* the store is asked, and a license is stored before its file is written,
/// so every listed file of a live license is found.
pub async fn sweep_license_files(store: &dyn Store, dir: &Path) -> StoreResult<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0); // no licenses/ on this node yet
    };
    let files: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let id = path
                .file_name()?
                .to_str()?
                .strip_suffix(".license")?
                .to_string();
            crate::ids::is_valid_id(&id).then_some((id, path))
        })
        .collect();
    if files.is_empty() {
        return Ok(0);
    }
    let live: std::collections::HashSet<String> = store
        .list_licenses(None)
        .await?
        .into_iter()
        .map(|l| l.license_id)
        .collect();
    let mut removed = 0;
    for (id, path) in files {
        if !live.contains(&id) && std::fs::remove_file(&path).is_ok() {
            tracing::info!(license = %id, "Removed the file of a purged license.");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Default: report bodies are kept 400 days after their month closed.
pub const DEFAULT_RETAIN_REPORTS_SECS: i64 = 400 * 86_400;

/// Removes the bodies of the reports of every month closed at least `retain_secs` before
/// `now` (see `Store::expire_reports`), each month recorded in the audit log.
pub async fn expire_due(
    store: &dyn Store,
    retain_secs: i64,
    now: Instant,
    actor: &str,
) -> StoreResult<Vec<Expiry>> {
    let cutoff = now - chrono::Duration::seconds(retain_secs.max(0));
    let mut expired = store.expire_reports(cutoff, now).await?;
    // A month another collector or process did meanwhile comes back empty: not audited twice.
    expired.retain(|e| e.reports > 0 || e.agents > 0);
    for e in &expired {
        store
            .audit(AuditEntry {
                at: now,
                actor: actor.into(),
                action: "reports expire".into(),
                target: crate::calendar::month_label(e.month),
                outcome: format!("reports={} agents={}", e.reports, e.agents),
            })
            .await?;
        tracing::info!(month = %crate::calendar::month_label(e.month), reports = e.reports, "Removed the bodies of a closed month's reports.");
    }
    Ok(expired)
}

/// Runs [`purge_due`], [`expire_due`] and [`sweep_license_files`] every
/// [`PURGE_CHECK_EVERY`] until `stop` resolves.
pub async fn lifecycle_loop(
    store: std::sync::Arc<dyn Store>,
    licenses_dir: Option<PathBuf>,
    retain_secs: i64,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(PURGE_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = purge_due(store.as_ref(), store.clock().now(), "lifecycle", licenses_dir.as_deref()).await {
                    tracing::error!(error = %e, "Purging cancelled customers failed; will retry.");
                }
                if let Err(e) = expire_due(store.as_ref(), retain_secs, store.clock().now(), "lifecycle").await {
                    tracing::error!(error = %e, "Removing expired report bodies failed; will retry.");
                }
                if let Some(dir) = &licenses_dir
                    && let Err(e) = sweep_license_files(store.as_ref(), dir).await
                {
                    tracing::warn!(error = %e, "Looking for purged licenses' files failed; will retry.");
                }
            }
            _ = &mut stop => break,
        }
    }
}

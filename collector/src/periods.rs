//! Closing months: `periods close`, the automatic close `serve` runs, and what
//! `GET /v1/statements/{customer}/{month}` answers for open and closed months.
//!
//! A close runs in two steps, so ingest is held up only for the first, short one:
//! 1. `Store::begin_close` records the month closed. From then on no report can be billed
//!    on it: later ones become adjustments of a later month. This step is serialized
//!    with every ingest and release.
//! 2. Each customer's statement is built from the reports billed on the month (which can
//!    no longer change), signed with the statement key, and stored with `finish_close`.
//!
//! A crash between the two leaves the month closed but not done; the next close of it
//! (by hand, or the automatic one) finishes it with the same close time, so the documents
//! are the same. Several collectors closing at once write identical documents.

use crate::calendar::next_month;
use crate::rules::periods::{self as rules, CloseFacts};
use crate::store::{AuditEntry, StatementLine, Store, StoreError};
use ed25519_dalek::SigningKey;
use std::collections::BTreeSet;
use std::time::Duration;
use tally_proto::statement::Adjustment;
use tally_proto::statement::audit::{AgentEvidence, Evidence, ReportEvidence};
use tally_proto::time::{Instant, rfc3339};

/// How often `serve` looks for months due for closing.
pub const CLOSE_CHECK_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// The month cannot be closed (not ended yet), or a total would overflow.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What closing a month did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub month: i64,
    pub closed_at: Instant,
    /// Statements written by this close (0 if it was already done).
    pub statements: usize,
    pub already_done: bool,
}

/// Closes `month` at `now` (see the module docs), signing with `vendor` (the statement key
/// of the keyring; the vendor key itself for a deployment that has only that one key).
pub async fn close(
    store: &dyn Store,
    vendor: &SigningKey,
    month: i64,
    now: Instant,
) -> Result<Closed, CloseError> {
    rules::closable(month, now.timestamp()).map_err(CloseError::Invalid)?;
    let period = store.begin_close(month, now).await?;
    if period.done {
        return Ok(Closed {
            month,
            closed_at: period.closed_at,
            statements: 0,
            already_done: true,
        });
    }
    let key_id = tally_proto::keys::key_id(&vendor.verifying_key().to_bytes());
    let closed_at = tally_proto::time::rfc3339_micros(period.closed_at);
    let mut documents = Vec::new();
    for customer in store.list_customers(None).await? {
        let limits = store.license_limits(customer.id.clone(), month).await?;
        let reports = store
            .counted_reports(customer.id.clone(), month, false)
            .await?;
        // A customer added after the month gets a statement only if it has something for
        // it (a backdated license, usage imported or reported late).
        let later = customer.created_at.timestamp() >= next_month(month);
        if later && limits.is_empty() && reports.is_empty() {
            continue;
        }
        let facts = CloseFacts {
            customer: &customer.id,
            month,
            closed_at: &closed_at,
            key_id: &key_id,
            limits: &limits,
        };
        let statement = rules::closed_statement(&facts, &reports).map_err(CloseError::Invalid)?;
        documents.push((customer.id, statement.sign(vendor)));
    }
    let statements = documents.len();
    store.finish_close(month, documents).await?;
    Ok(Closed {
        month,
        closed_at: period.closed_at,
        statements,
        already_done: false,
    })
}

/// A customer-month's statement as the billing API shows it.
#[derive(Debug, Clone)]
pub enum StatementView {
    /// The signed document of a closed month, byte for byte as it was frozen.
    Closed(Vec<u8>),
    /// An open month: its lines so far and the late usage of closed months billed on it.
    Open {
        lines: Vec<StatementLine>,
        adjustments: Vec<Adjustment>,
    },
    /// A closed month in which nothing was billed to the customer: closed like every
    /// customer's, with no signed statement (there is nothing to sign).
    ClosedEmpty { closed_at: Instant },
}

pub async fn statement(
    store: &dyn Store,
    customer: &str,
    month: i64,
) -> Result<StatementView, CloseError> {
    if let Some(doc) = store.closed_statement(customer.to_string(), month).await? {
        return Ok(StatementView::Closed(doc));
    }
    // A month closes for every customer at once; one with nothing billed has no document.
    if let Some(p) = store
        .periods()
        .await?
        .into_iter()
        .find(|p| p.month == month && p.done)
    {
        return Ok(StatementView::ClosedEmpty {
            closed_at: p.closed_at,
        });
    }
    let lines = store.statement(customer.to_string(), month).await?;
    let late = store
        .counted_reports(customer.to_string(), month, true)
        .await?;
    let adjustments = rules::adjustments(month, &late).map_err(CloseError::Invalid)?;
    Ok(StatementView::Open { lines, adjustments })
}

/// Which agent lines `customer`'s closed statement of `month` has, in the statement's
/// order (by key id): `(agent id, key id)`. `None` if the month has no closed statement for
/// the customer. The evidence of each comes from [`agent_evidence`], one at a time.
pub async fn evidence_lines(
    store: &dyn Store,
    customer: &str,
    month: i64,
) -> Result<Option<Vec<(String, String)>>, StoreError> {
    let Some(doc) = store.closed_statement(customer.to_string(), month).await? else {
        return Ok(None);
    };
    // The document is the store's own, signed at close; read, not verified, here.
    let malformed = |what: &str| StoreError::Database(format!("stored statement: {what}"));
    let doc = tally_proto::json::parse(&doc).map_err(|e| malformed(e.message()))?;
    let agents = doc["agents"]
        .as_array()
        .ok_or_else(|| malformed("no agents array"))?;
    agents
        .iter()
        .map(|a| match (a["agent_id"].as_str(), a["key_id"].as_str()) {
            (Some(id), Some(key_id)) => Ok((id.to_string(), key_id.to_string())),
            _ => Err(malformed("an agent line without agent_id or key_id")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The evidence of one agent line (see [`evidence_lines`]): each report it counts with
/// the agent's key and signature, or the digest alone where retention removed the body.
pub async fn agent_evidence(
    store: &dyn Store,
    customer: &str,
    month: i64,
    agent_id: &str,
) -> Result<AgentEvidence, StoreError> {
    let rows = store
        .statement_evidence(customer.to_string(), month, agent_id.to_string())
        .await?;
    // The keys that signed the line's reports, in the order they held the chain: the
    // newest is the line's key, the others its earlier keys.
    let mut keys: Vec<[u8; 32]> = Vec::new();
    for r in &rows {
        if keys.last() != Some(&r.agent_key) {
            keys.push(r.agent_key);
        }
    }
    let key = keys.pop().unwrap_or_default();
    Ok(AgentEvidence {
        agent_id: agent_id.to_string(),
        key_id: tally_proto::keys::key_id(&key),
        key: hex::encode(key),
        earlier_keys: keys.iter().map(hex::encode).collect(),
        reports: rows
            .iter()
            .map(|row| {
                let body = (!row.bytes.is_empty()).then_some((&row.bytes[..], &row.signature[..]));
                ReportEvidence::new(row.seq, &row.digest, body)
            })
            .collect(),
    })
}

/// The whole evidence of `customer`'s closed statement of `month`, in memory (the HTTP
/// handler streams the same thing agent by agent). `None` if there is no closed statement.
pub async fn evidence(
    store: &dyn Store,
    customer: &str,
    month: i64,
) -> Result<Option<Evidence>, StoreError> {
    let Some(lines) = evidence_lines(store, customer, month).await? else {
        return Ok(None);
    };
    let mut agents = Vec::with_capacity(lines.len());
    for (agent_id, _) in &lines {
        agents.push(agent_evidence(store, customer, month, agent_id).await?);
    }
    Ok(Some(Evidence {
        customer: customer.to_string(),
        period: crate::calendar::month_label(month),
        agents,
    }))
}

/// Closes every month due at `now` (see [`rules::months_due`]) and finishes any close a
/// crash interrupted, each recorded in the audit log as done by `actor`.
pub async fn close_due(
    store: &dyn Store,
    vendor: &SigningKey,
    grace_secs: i64,
    now: Instant,
    actor: &str,
) -> Result<Vec<Closed>, CloseError> {
    let periods = store.periods().await?;
    let closed: BTreeSet<i64> = periods.iter().map(|p| p.month).collect();
    // The first month that can hold usage: the oldest customer's, or an earlier license
    // start (a license may be backdated, and reports of its term imported later).
    let customers = store.list_customers(None).await?;
    let licenses = store.list_licenses(None).await?;
    let first = customers
        .iter()
        .map(|c| c.created_at.timestamp())
        .chain(licenses.iter().map(|l| l.not_before.timestamp()))
        .min();
    let mut months: Vec<i64> = periods
        .iter()
        .filter(|p| !p.done)
        .map(|p| p.month)
        .collect();
    months.extend(rules::months_due(
        first,
        now.timestamp(),
        grace_secs,
        &closed,
    ));
    let mut out = Vec::new();
    let mut failed = None;
    for month in months {
        // One month that cannot be closed (its statements cannot be built) must not hold
        // up the others; it is retried on the next round, and its error returned.
        match close(store, vendor, month, now).await {
            Ok(c) => {
                audit_close(store, &c, actor).await?;
                out.push(c);
            }
            Err(e) => {
                tracing::error!(month = %crate::calendar::month_label(month), error = %e, "A month could not be closed; its statements are not signed yet.");
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

/// Records a close in the audit log.
pub async fn audit_close(store: &dyn Store, c: &Closed, actor: &str) -> Result<(), StoreError> {
    store
        .audit(AuditEntry {
            at: store.clock().now(),
            actor: actor.into(),
            action: "periods close".into(),
            target: crate::calendar::month_label(c.month),
            outcome: if c.already_done {
                "already closed".into()
            } else {
                format!(
                    "closed_at={} statements={}",
                    rfc3339(c.closed_at),
                    c.statements
                )
            },
        })
        .await
}

/// Runs [`close_due`] every [`CLOSE_CHECK_EVERY`] until `stop` resolves.
pub async fn close_loop(
    store: std::sync::Arc<dyn Store>,
    online: std::sync::Arc<crate::keys::KeyHandle>,
    grace_secs: i64,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(CLOSE_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = store.clock().now();
                let keys = online.current();
                let statement_key = match keys.signing_key(tally_proto::keyring::Purpose::Statement, now) {
                    Ok(k) => k.clone(),
                    Err(e) => {
                        tracing::error!(error = %e, "Cannot close due months: no valid statement key.");
                        continue;
                    }
                };
                match close_due(store.as_ref(), &statement_key, grace_secs, now, "lifecycle").await {
                    Ok(closed) => {
                        for c in closed {
                            tracing::info!(month = %crate::calendar::month_label(c.month), statements = c.statements, "Closed a month.");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "Closing due months failed; will retry."),
                }
            }
            _ = &mut stop => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::month_of;
    use crate::store::sqlite::SqliteStore;
    use chrono::Duration;
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("c.db")).unwrap();
        (dir, Arc::new(s))
    }

    #[tokio::test]
    async fn serve_closes_every_month_due_once_and_finishes_an_interrupted_close() {
        let (_dir, store) = store();
        let vendor = tally_proto::keys::generate();
        let now = store.clock().now();
        let this = month_of(now.timestamp());
        let last = month_of(this - 1);
        let before_last = month_of(last - 1);
        // A customer from two months before the current one.
        let created = chrono::DateTime::from_timestamp(before_last + 3600, 0).unwrap();
        store.add_customer("Acme".into(), created).await.unwrap();
        // A crash left the month before last closed but without its statements.
        let begun = store.begin_close(before_last, now).await.unwrap();
        assert!(!begun.done);

        let grace = 3 * 86_400;
        let far = chrono::DateTime::from_timestamp(this + grace, 0).unwrap();
        let later = far.max(now);
        let closed = close_due(store.as_ref(), &vendor, grace, later, "lifecycle")
            .await
            .unwrap();
        let months: Vec<i64> = closed.iter().map(|c| c.month).collect();
        assert_eq!(months, vec![before_last, last], "{closed:?}");
        assert_eq!(
            closed[0].closed_at, begun.closed_at,
            "an interrupted close keeps its close time"
        );
        assert!(closed.iter().all(|c| c.statements == 1 && !c.already_done));
        let periods = store.periods().await.unwrap();
        assert!(
            periods.iter().all(|p| p.done) && periods.len() == 2,
            "{periods:?}"
        );
        // Nothing is due twice.
        let again = close_due(
            store.as_ref(),
            &vendor,
            grace,
            later + Duration::hours(1),
            "lifecycle",
        )
        .await
        .unwrap();
        assert!(again.is_empty(), "{again:?}");
        let audit = store.list_audit(10).await.unwrap();
        assert_eq!(
            audit
                .iter()
                .filter(|a| a.entry.action == "periods close" && a.entry.actor == "lifecycle")
                .count(),
            2,
            "{audit:?}"
        );
        // The statements are signed documents of their month.
        let doc = store
            .closed_statement(
                store.list_customers(None).await.unwrap()[0].id.clone(),
                last,
            )
            .await
            .unwrap()
            .unwrap();
        let s = tally_proto::statement::Statement::verify(&doc, &vendor.verifying_key()).unwrap();
        assert_eq!(s.period, crate::calendar::month_label(last));
    }

    #[tokio::test]
    async fn months_before_the_customer_existed_close_when_a_license_covers_them() {
        let (_dir, store) = store();
        let vendor = tally_proto::keys::generate();
        let now = store.clock().now();
        // A customer created now, with a license backdated 60 days: usage of the months
        // before may be imported, so they close too.
        crate::store::fixture::Fixture::seed(
            store.as_ref(),
            crate::store::fixture::Seed {
                name: "late",
                license_id: "lic_late",
                metrics: &[("api.convert", None)],
                now,
            },
        )
        .await
        .unwrap();
        let this = month_of(now.timestamp());
        let backdated = month_of((now - Duration::days(60)).timestamp());
        let later = now + Duration::days(40);
        let closed = close_due(store.as_ref(), &vendor, 0, later, "lifecycle")
            .await
            .unwrap();
        let months: Vec<i64> = closed.iter().map(|c| c.month).collect();
        assert_eq!(months.first(), Some(&backdated), "{months:?}");
        assert!(months.contains(&this), "{months:?}");
    }

    #[tokio::test]
    async fn the_current_month_cannot_be_closed() {
        let (_dir, store) = store();
        let vendor = tally_proto::keys::generate();
        let now = store.clock().now();
        let e = close(store.as_ref(), &vendor, month_of(now.timestamp()), now)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("has not ended"), "{e}");
        assert!(
            store.periods().await.unwrap().is_empty(),
            "nothing recorded"
        );
    }
}

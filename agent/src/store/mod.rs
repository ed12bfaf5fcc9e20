//! The agent's durable state in SQLite (WAL, `synchronous=FULL`): open-window counters,
//! idempotency keys, the outbox of signed reports with their receipts, and metadata.
//!
//! Invariants: an event is acknowledged only after the transaction that counts it commits;
//! one transaction turns a closed window's counters into the next signed report (so a
//! counter is never both in a report and still open); nothing is deleted before a signed
//! receipt says the collector stored the report.

use crate::windows::{MAX_WINDOW, Windows};

mod close;
mod receipts;
mod record;
mod rotations;
use close::close_tx;
use ed25519_dalek::SigningKey;
use receipts::receipts_tx;
pub use receipts::{HeldReceipt, HeldReport};
use record::record_tx;
pub use rotations::{RotationState, StoredRotation};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_proto::Digest;
use tally_proto::pb;
use tally_proto::reason::Reason;
use tally_proto::receipt::{Outcome, ReceiptBody};
use tally_proto::report::{Counter, Report};
use tally_runtime::sqlite_writer::{WriteFailed, Writer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The group commit failed or the writer stopped; nothing of the write is durable.
    #[error("database error: {0}")]
    Write(#[from] WriteFailed),
    /// The key offered to sign reports no longer holds the chain: a rotation handed it to
    /// the key named (reload the key file and sign with that one).
    #[error("the agent key was rotated to key {}", tally_proto::keys::key_id(.0))]
    KeyRotated([u8; 32]),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_SECS: i64 = 24 * 3600;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    window_start INTEGER NOT NULL,
    metric TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (window_start, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, seen_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reports (
    seq INTEGER PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    bytes BLOB NOT NULL,
    signature BLOB NOT NULL,
    window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'quarantined', 'refused')),
    reason TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    receipt_body BLOB,
    receipt_signature BLOB,
    delivered_at INTEGER
);
CREATE INDEX IF NOT EXISTS reports_pending ON reports(seq) WHERE state = 'pending';
"#;

/// One validated event.
#[derive(Debug, Clone)]
pub struct Event {
    pub metric: String,
    pub quantity: u64,
    pub idempotency_key: Option<String>,
}

/// What a record call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    pub recorded: u64,
    pub duplicates: u64,
}

/// Where a report stands with the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// In the outbox, no receipt yet.
    Pending,
    /// Receipted `ACCEPTED` or `DUPLICATE`: counted once by the collector.
    Delivered,
    /// Receipted `QUARANTINED` (final; kept for review, not counted).
    Quarantined,
    /// Receipted `REFUSED` (final; not stored by the collector).
    Refused,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Quarantined => "quarantined",
            DeliveryState::Refused => "refused",
        }
    }

    /// The state a receipt with `outcome` and `reason` leaves its report in. A `DUPLICATE`
    /// with a reason is a resend of a report the collector stored but does not count (its
    /// first receipt was lost): not counted, like the quarantine it names.
    ///
    /// `REFUSED unknown_agent` is not final: the collector does not know the agent's key
    /// *yet* (an air-gapped site whose reports were imported before the vendor ran `agents
    /// add`). The report stays pending — exported again, delivered again — until it is.
    pub fn after(outcome: Outcome, reason: &str) -> DeliveryState {
        match outcome {
            Outcome::Refused if reason == Reason::UnknownAgent.as_str() => DeliveryState::Pending,
            Outcome::Duplicate if !reason.is_empty() => DeliveryState::Quarantined,
            Outcome::Accepted | Outcome::Duplicate => DeliveryState::Delivered,
            Outcome::Quarantined => DeliveryState::Quarantined,
            Outcome::Refused => DeliveryState::Refused,
        }
    }

    fn parse(s: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Quarantined,
            DeliveryState::Refused,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }

    /// Receipted, but not counted by the collector.
    pub fn not_counted(self) -> bool {
        matches!(self, DeliveryState::Quarantined | DeliveryState::Refused)
    }
}

/// A stored report with its delivery state.
#[derive(Debug, Clone)]
pub struct StoredReport {
    pub seq: u64,
    pub digest: Digest,
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
    pub state: DeliveryState,
    /// The receipt's reason code (see `tally_proto::reason::Reason`), empty if none.
    pub reason: String,
    pub detail: String,
    pub receipt: Option<pb::Receipt>,
}

impl StoredReport {
    pub fn signed(&self) -> pb::SignedReport {
        pb::SignedReport {
            report: self.bytes.clone(),
            signature: self.signature.clone(),
        }
    }
}

/// Reports per delivery state, and the open window's (metric, quantity) pairs.
pub type Summary = (BTreeMap<String, u64>, Vec<(String, u64)>);

/// The agent's SQLite store.
pub struct AgentStore {
    writer: Writer,
    path: PathBuf,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
}

impl AgentStore {
    pub fn open(path: &Path) -> StoreResult<AgentStore> {
        let conn = Connection::open(path)?;
        configure(&conn)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(rotations::SCHEMA)?;
        // Added with keyrings: the id of the key that signed each stored receipt.
        let has_key_id: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('reports') WHERE name = 'receipt_key_id'")?
            .exists([])?;
        if !has_key_id {
            conn.execute_batch(
                "ALTER TABLE reports ADD COLUMN receipt_key_id TEXT NOT NULL DEFAULT ''",
            )?;
        }
        let writer = Writer::start(conn, "tally-agent-writer")
            .map_err(|e| StoreError::Database(e.to_string()))?;
        Ok(AgentStore {
            writer,
            path: path.to_path_buf(),
        })
    }

    /// A short-lived read-only connection (reads are rare and small on the agent).
    pub fn reader(&self) -> StoreResult<Connection> {
        let c = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        c.busy_timeout(Duration::from_secs(10))?;
        Ok(c)
    }

    pub async fn set_meta(&self, key: &'static str, value: Vec<u8>) -> StoreResult<()> {
        self.writer
            .write(move |c| {
                c.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                    params![key, value],
                )?;
                Ok(())
            })
            .await
    }

    pub fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .reader()?
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Counts validated events in the open window, after deduplicating idempotency keys.
    /// Returns after the commit is durable.
    pub async fn record(
        &self,
        events: Vec<Event>,
        now: i64,
        windows: Windows,
    ) -> StoreResult<Recorded> {
        self.writer
            .write(move |c| record_tx(c, &events, now, windows))
            .await
    }

    /// Closes every window that ended by `now` (or, with `flush`, the open one too) into
    /// signed reports in the outbox. Returns how many reports were made.
    pub async fn close_windows(
        &self,
        key: SigningKey,
        license_id: String,
        now: i64,
        windows: Windows,
        flush: bool,
    ) -> StoreResult<u64> {
        self.writer
            .write(move |c| close_tx(c, &key, &license_id, now, windows, flush))
            .await
    }

    /// The oldest undelivered reports, in sequence order.
    /// The outbox at a glance: how many reports wait for a receipt, and when the oldest
    /// of them was created (Unix seconds).
    pub fn outbox(&self) -> StoreResult<(u64, Option<i64>)> {
        Ok(self.reader()?.query_row(
            "SELECT COUNT(*), MIN(created_at) FROM reports WHERE state = 'pending'",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )?)
    }

    pub fn pending(&self, limit: u32) -> StoreResult<Vec<StoredReport>> {
        self.reports_where("state = 'pending' ORDER BY seq LIMIT ?1", limit as i64)
    }

    /// Every report with seq ≥ `since`, in order.
    pub fn reports_since(&self, since: u64) -> StoreResult<Vec<StoredReport>> {
        self.reports_where("seq >= ?1 ORDER BY seq", since as i64)
    }

    fn reports_where(&self, clause: &str, arg: i64) -> StoreResult<Vec<StoredReport>> {
        let c = self.reader()?;
        let mut st = c.prepare(&format!(
            "SELECT seq, digest, bytes, signature, state, reason, detail, receipt_body, receipt_signature, receipt_key_id FROM reports WHERE {clause}"
        ))?;
        let rows = st
            .query_map([arg], |r| {
                let d: Vec<u8> = r.get(1)?;
                let body: Option<Vec<u8>> = r.get(7)?;
                let sig: Option<Vec<u8>> = r.get(8)?;
                Ok(StoredReport {
                    seq: r.get::<_, i64>(0)? as u64,
                    digest: Digest::from_slice(&d).unwrap_or(Digest([0; 32])),
                    bytes: r.get(2)?,
                    signature: r.get(3)?,
                    state: {
                        let s: String = r.get(4)?;
                        DeliveryState::parse(&s).ok_or_else(|| {
                            rusqlite::Error::FromSqlConversionFailure(
                                4,
                                rusqlite::types::Type::Text,
                                format!("unknown delivery state {s:?}").into(),
                            )
                        })?
                    },
                    reason: r.get(5)?,
                    detail: r.get(6)?,
                    receipt: body.zip(sig).map(|(body, signature)| pb::Receipt {
                        body,
                        signature,
                        key_id: r.get(9).unwrap_or_default(),
                    }),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Stores verified receipts: each marks its report delivered (accepted or duplicate) or
    /// final (quarantined, refused). Receipts for unknown digests are ignored (counted in
    /// the returned tuple's second field). The newest receipt's lease and credits are kept
    /// for the license status.
    pub async fn store_receipts(
        &self,
        receipts: Vec<(ReceiptBody, pb::Receipt)>,
    ) -> StoreResult<(u64, u64)> {
        self.writer.write(move |c| receipts_tx(c, &receipts)).await
    }

    /// Drops idempotency keys older than 24 h.
    pub async fn prune(&self, now: i64) -> StoreResult<()> {
        self.writer
            .write(move |c| {
                c.execute(
                    "DELETE FROM idempotency WHERE seen_at < ?1",
                    [now - IDEMPOTENCY_SECS],
                )?;
                Ok(())
            })
            .await
    }

    /// Counts per delivery state, and the open window's counters.
    pub fn summary(&self) -> StoreResult<Summary> {
        let c = self.reader()?;
        let mut st = c.prepare("SELECT state, COUNT(*) FROM reports GROUP BY state")?;
        let states = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let mut st = c.prepare(
            "SELECT metric, SUM(quantity) FROM counters GROUP BY metric ORDER BY metric",
        )?;
        let open = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((states, open))
    }
}

pub(super) fn get_i64(c: &Connection, key: &str) -> StoreResult<Option<i64>> {
    let v: Option<Vec<u8>> = c
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok()))
}

pub(super) fn set_i64(c: &Connection, key: &str, v: i64) -> StoreResult<()> {
    c.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![key, v.to_string().into_bytes()])?;
    Ok(())
}

/// The start of the open window: events recorded now are counted there.
pub(super) fn cursor(c: &Connection, now: i64, windows: Windows) -> StoreResult<i64> {
    match get_i64(c, "cursor")? {
        Some(v) => Ok(v),
        None => {
            // The first window starts no earlier than the license (see `windows`).
            let v = windows.start_of(now);
            set_i64(c, "cursor", v)?;
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: u64) -> Vec<Event> {
        vec![Event {
            metric: "api.convert".into(),
            quantity: n,
            idempotency_key: None,
        }]
    }

    #[tokio::test]
    async fn idle_windows_become_heartbeats_and_counted_windows_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = AgentStore::open(&dir.path().join("a.db")).unwrap();
        let key = tally_proto::keys::generate();
        let t0: i64 = 1_800_000_000; // a multiple of 60
        let w60 = Windows::aligned(60);
        store.record(events(3), t0 + 5, w60).await.unwrap();
        // Five minutes later: window 1 counted, then 4 idle minutes as one heartbeat.
        assert_eq!(
            store
                .close_windows(key.clone(), "lic".into(), t0 + 300 + 1, w60, false)
                .await
                .unwrap(),
            2
        );
        let r = store.reports_since(1).unwrap();
        let a = Report::decode(&r[0].bytes).unwrap();
        let b = Report::decode(&r[1].bytes).unwrap();
        assert_eq!(
            (a.window_start.timestamp(), a.window_end.timestamp()),
            (t0, t0 + 60)
        );
        assert_eq!(
            a.counters,
            vec![Counter {
                metric: "api.convert".into(),
                quantity: 3
            }]
        );
        assert!(
            b.counters.is_empty(),
            "an idle stretch is a heartbeat with no counters"
        );
        assert_eq!(
            (b.window_start.timestamp(), b.window_end.timestamp()),
            (t0 + 60, t0 + 300)
        );
        assert_eq!(b.prev_digest, Some(r[0].digest));
        // Nothing left open, nothing closed twice.
        assert_eq!(
            store
                .close_windows(key, "lic".into(), t0 + 301, w60, false)
                .await
                .unwrap(),
            0
        );
        assert!(store.summary().unwrap().1.is_empty());
    }

    #[tokio::test]
    async fn a_flush_closes_every_counted_window_even_in_its_first_second() {
        let dir = tempfile::tempdir().unwrap();
        let store = AgentStore::open(&dir.path().join("a.db")).unwrap();
        let key = tally_proto::keys::generate();
        let t: i64 = 1_800_000_000;
        let w1 = Windows::aligned(1);
        store.record(events(4), t, w1).await.unwrap();
        // The window loop has not run yet; the next event lands in the window starting now.
        store.record(events(16), t + 1, w1).await.unwrap();
        assert_eq!(
            store
                .close_windows(key, "lic".into(), t + 1, w1, true)
                .await
                .unwrap(),
            2
        );
        assert!(
            store.summary().unwrap().1.is_empty(),
            "a flush must leave nothing open"
        );
        let total: u64 = store
            .reports_since(1)
            .unwrap()
            .iter()
            .flat_map(|r| Report::decode(&r.bytes).unwrap().counters)
            .map(|c| c.quantity)
            .sum();
        assert_eq!(total, 20);
    }

    #[test]
    fn a_duplicate_naming_a_reason_is_not_counted() {
        use DeliveryState::*;
        assert_eq!(DeliveryState::after(Outcome::Accepted, ""), Delivered);
        assert_eq!(DeliveryState::after(Outcome::Duplicate, ""), Delivered);
        assert_eq!(
            DeliveryState::after(Outcome::Duplicate, "clock_skew"),
            Quarantined
        );
        assert_eq!(
            DeliveryState::after(Outcome::Quarantined, "clock_skew"),
            Quarantined
        );
        assert_eq!(DeliveryState::after(Outcome::Refused, "malformed"), Refused);
        // Not enrolled yet: kept for another try.
        assert_eq!(
            DeliveryState::after(Outcome::Refused, "unknown_agent"),
            Pending
        );
    }

    #[tokio::test]
    async fn idempotency_keys_count_once_within_24h() {
        let dir = tempfile::tempdir().unwrap();
        let store = AgentStore::open(&dir.path().join("a.db")).unwrap();
        let e = vec![Event {
            metric: "m".into(),
            quantity: 2,
            idempotency_key: Some("k".into()),
        }];
        assert_eq!(
            store
                .record(e.clone(), 1000, Windows::aligned(60))
                .await
                .unwrap(),
            Recorded {
                recorded: 1,
                duplicates: 0
            }
        );
        assert_eq!(
            store
                .record(e.clone(), 1001, Windows::aligned(60))
                .await
                .unwrap(),
            Recorded {
                recorded: 0,
                duplicates: 1
            }
        );
        assert_eq!(
            store
                .record(e, 1000 + IDEMPOTENCY_SECS + 1, Windows::aligned(60))
                .await
                .unwrap(),
            Recorded {
                recorded: 1,
                duplicates: 0
            }
        );
    }
}

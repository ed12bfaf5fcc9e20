//! The agent's durable state in SQLite (WAL, `synchronous=FULL`): open-window counters,
//! idempotency keys, the outbox of signed reports with their receipts, and metadata.
//!
//! Invariants: an event is acknowledged only after the transaction that counts it commits;
//! one transaction turns a closed window's counters into the next signed report (so a
//! counter is never both in a report and still open); nothing is deleted before a signed
//! receipt says the collector stored the report.

use crate::windows::{MAX_WINDOW, Windows};
use ed25519_dalek::SigningKey;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_proto::Digest;
use tally_proto::pb;
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

    /// The state a receipt with `outcome` leaves its report in.
    pub fn after(outcome: Outcome) -> DeliveryState {
        match outcome {
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
            "SELECT seq, digest, bytes, signature, state, reason, detail, receipt_body, receipt_signature FROM reports WHERE {clause}"
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
                    receipt: body
                        .zip(sig)
                        .map(|(body, signature)| pb::Receipt { body, signature }),
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

fn get_i64(c: &Connection, key: &str) -> StoreResult<Option<i64>> {
    let v: Option<Vec<u8>> = c
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok()))
}

fn set_i64(c: &Connection, key: &str, v: i64) -> StoreResult<()> {
    c.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![key, v.to_string().into_bytes()])?;
    Ok(())
}

/// The start of the open window: events recorded now are counted there.
fn cursor(c: &Connection, now: i64, windows: Windows) -> StoreResult<i64> {
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

fn record_tx(
    c: &Connection,
    events: &[Event],
    now: i64,
    windows: Windows,
) -> StoreResult<Recorded> {
    // Never count into a window that is already closed (flush, or a clock stepping back).
    let window = windows.start_of(now).max(cursor(c, now, windows)?);
    let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
    let mut out = Recorded::default();
    let mut seen = c.prepare_cached("SELECT seen_at FROM idempotency WHERE key = ?1")?;
    let mut remember =
        c.prepare_cached("INSERT OR REPLACE INTO idempotency (key, seen_at) VALUES (?1, ?2)")?;
    for e in events {
        if let Some(k) = &e.idempotency_key {
            let at: Option<i64> = seen.query_row([k], |r| r.get(0)).optional()?;
            if at.is_some_and(|t| t > now - IDEMPOTENCY_SECS) {
                out.duplicates += 1;
                continue;
            }
            remember.execute(params![k, now])?;
        }
        let q = i64::try_from(e.quantity)
            .map_err(|_| StoreError::Invalid("quantity out of range".into()))?;
        let s = sums.entry(&e.metric).or_default();
        *s = s
            .checked_add(q)
            .ok_or_else(|| StoreError::Invalid("quantities overflow".into()))?;
        out.recorded += 1;
    }
    let mut get =
        c.prepare_cached("SELECT quantity FROM counters WHERE window_start = ?1 AND metric = ?2")?;
    let mut put = c.prepare_cached(
        "INSERT OR REPLACE INTO counters (window_start, metric, quantity) VALUES (?1, ?2, ?3)",
    )?;
    for (m, q) in sums {
        let cur: i64 = get
            .query_row(params![window, m], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let new = cur.checked_add(q).ok_or_else(|| {
            StoreError::Invalid(format!("the open window's count of {m} would overflow"))
        })?;
        put.execute(params![window, m, new])?;
    }
    Ok(out)
}

fn close_tx(
    c: &Connection,
    key: &SigningKey,
    license_id: &str,
    now: i64,
    windows: Windows,
    flush: bool,
) -> StoreResult<u64> {
    let mut cur = cursor(c, now, windows)?;
    let limit = if flush {
        // A flush closes everything counted so far: if the newest counted window starts at
        // `now` (events in its first second), it ends one second later (well within the
        // collector's 5 min skew).
        let newest: Option<i64> = c
            .prepare_cached("SELECT MAX(window_start) FROM counters WHERE window_start >= ?1")?
            .query_row([cur], |r| r.get(0))?;
        match newest {
            Some(ws) => now.max(ws + 1),
            None => now,
        }
    } else {
        windows.start_of(now)
    };
    let mut made = 0;
    while cur < limit {
        let next_ws: Option<i64> = c
            .prepare_cached("SELECT MIN(window_start) FROM counters WHERE window_start >= ?1")?
            .query_row([cur], |r| r.get(0))?;
        let end = if next_ws == Some(cur) {
            windows.end_of(cur).min(limit)
        } else {
            // An idle stretch: one heartbeat up to the next counted window, at most 24 h,
            // never across a license bound.
            next_ws
                .unwrap_or(limit)
                .min(limit)
                .min(cur + MAX_WINDOW)
                .min(windows.next_cut(cur))
        };
        let counters: Vec<Counter> = c
            .prepare_cached(
                "SELECT metric, quantity FROM counters WHERE window_start = ?1 ORDER BY metric",
            )?
            .query_map([cur], |r| {
                Ok(Counter {
                    metric: r.get(0)?,
                    quantity: r.get::<_, i64>(1)? as u64,
                })
            })?
            .collect::<Result<_, _>>()?;
        c.prepare_cached("DELETE FROM counters WHERE window_start = ?1")?
            .execute([cur])?;
        make_report(c, key, license_id, cur, end, counters, now)?;
        made += 1;
        cur = end;
    }
    // Any counters left below the cursor (impossible by construction) would be lost; check.
    let stale: i64 = c.query_row(
        "SELECT COUNT(*) FROM counters WHERE window_start < ?1",
        [cur],
        |r| r.get(0),
    )?;
    if stale > 0 {
        return Err(StoreError::Database(
            "counters below the window cursor".into(),
        ));
    }
    set_i64(c, "cursor", cur)?;
    Ok(made)
}

fn make_report(
    c: &Connection,
    key: &SigningKey,
    license_id: &str,
    start: i64,
    end: i64,
    counters: Vec<Counter>,
    now: i64,
) -> StoreResult<()> {
    let last: Option<(i64, Vec<u8>)> = c
        .prepare_cached("SELECT seq, digest FROM reports ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let ts = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .ok_or_else(|| StoreError::Invalid("time out of range".into()))
    };
    let report = Report {
        license_id: license_id.to_string(),
        agent_key: key.verifying_key().to_bytes(),
        seq: last.as_ref().map_or(1, |(s, _)| *s as u64 + 1),
        prev_digest: last.as_ref().and_then(|(_, d)| Digest::from_slice(d)),
        window_start: ts(start)?,
        window_end: ts(end)?,
        counters,
        created_at: ts(now.max(end))?,
        agent_version: concat!("tally-agent/", env!("CARGO_PKG_VERSION")).to_string(),
    };
    let signed = report.sign(key);
    c.prepare_cached(
        "INSERT INTO reports (seq, digest, bytes, signature, window_start, window_end, created_at, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
    )?
    .execute(params![
        report.seq as i64,
        Digest::of(&signed.report).as_bytes().as_slice(),
        signed.report,
        signed.signature,
        start,
        end,
        now
    ])?;
    Ok(())
}

fn receipts_tx(c: &Connection, receipts: &[(ReceiptBody, pb::Receipt)]) -> StoreResult<(u64, u64)> {
    let (mut stored, mut unknown) = (0, 0);
    let mut newest: Option<&ReceiptBody> = None;
    for (body, raw) in receipts {
        let state = DeliveryState::after(body.outcome).as_str();
        let n = c
            .prepare_cached(
                "UPDATE reports SET state = ?2, reason = ?3, detail = ?4, receipt_body = ?5, receipt_signature = ?6,
                        delivered_at = ?7
                 WHERE digest = ?1",
            )?
            .execute(params![
                body.report_digest.as_bytes().as_slice(),
                state,
                body.reason,
                body.detail,
                raw.body,
                raw.signature,
                body.received_at.timestamp()
            ])?;
        if n == 0 {
            unknown += 1;
            continue;
        }
        stored += 1;
        if body.lease_until.is_some() && newest.is_none_or(|b| b.received_at <= body.received_at) {
            newest = Some(body);
        }
    }
    if let Some(b) = newest {
        // Keep the newest receipt (by collector time) for the license status.
        let prev = get_i64(c, "status_received_at")?.unwrap_or(i64::MIN);
        if b.received_at.timestamp() >= prev {
            let raw = receipts
                .iter()
                .find(|(x, _)| std::ptr::eq(x, b))
                .map(|(_, r)| r)
                .ok_or_else(|| StoreError::Database("receipt vanished".into()))?;
            c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('status_receipt', ?1)",
                [prost::Message::encode_to_vec(raw)],
            )?;
            set_i64(c, "status_received_at", b.received_at.timestamp())?;
        }
    }
    Ok((stored, unknown))
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

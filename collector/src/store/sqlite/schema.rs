//! Versioned migrations. Each entry runs once, in order, in its own transaction; the
//! applied version is kept in `PRAGMA user_version`. Never edit a shipped migration: add one.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE customers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE licenses (
        id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL REFERENCES customers(id),
        signed BLOB NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        grace_secs INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX licenses_customer ON licenses(customer_id);
    CREATE TABLE license_metrics (
        license_id TEXT NOT NULL REFERENCES licenses(id),
        metric TEXT NOT NULL,
        quota INTEGER,
        PRIMARY KEY (license_id, metric)
    ) WITHOUT ROWID;
    CREATE TABLE enrollment_tokens (
        hash BLOB PRIMARY KEY,
        license_id TEXT NOT NULL REFERENCES licenses(id),
        uses_left INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        key BLOB NOT NULL UNIQUE,
        license_id TEXT NOT NULL REFERENCES licenses(id),
        enrolled_at INTEGER NOT NULL,
        revoked_at INTEGER,
        last_seq INTEGER NOT NULL DEFAULT 0,
        last_seen INTEGER
    );
    CREATE INDEX agents_license ON agents(license_id);
    -- Every authentic report, exactly once (digest = SHA-256 of its bytes).
    -- fork = 1 marks a second, different report for an (agent, seq) already taken.
    CREATE TABLE reports (
        digest BLOB PRIMARY KEY,
        agent_id TEXT NOT NULL REFERENCES agents(id),
        seq INTEGER NOT NULL,
        fork INTEGER NOT NULL DEFAULT 0,
        license_id TEXT NOT NULL,
        prev_digest BLOB,
        window_start INTEGER NOT NULL,
        window_end INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        source TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('accepted', 'quarantined', 'discarded')),
        reason TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '',
        resolved_at INTEGER,
        bytes BLOB NOT NULL,
        signature BLOB NOT NULL
    );
    CREATE UNIQUE INDEX reports_agent_seq ON reports(agent_id, seq) WHERE fork = 0;
    CREATE INDEX reports_quarantined ON reports(status) WHERE status = 'quarantined';
    -- (license, metric, hour) -> quantity, updated in the transaction that counts a report.
    CREATE TABLE rollups (
        license_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        hour INTEGER NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity >= 0),
        PRIMARY KEY (license_id, metric, hour)
    ) WITHOUT ROWID;
    -- The same sums per calendar month (UTC), for receipts' credits and statements.
    CREATE TABLE monthly_usage (
        license_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        month INTEGER NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity >= 0),
        PRIMARY KEY (license_id, metric, month)
    ) WITHOUT ROWID;
    CREATE TABLE anomalies (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        license_id TEXT NOT NULL,
        seq_from INTEGER NOT NULL,
        seq_to INTEGER NOT NULL,
        digest BLOB,
        detail TEXT NOT NULL DEFAULT '',
        opened_at INTEGER NOT NULL,
        closed_at INTEGER
    );
    CREATE INDEX anomalies_open_gaps ON anomalies(agent_id, seq_from) WHERE kind = 'gap' AND closed_at IS NULL;
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,
        role TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    "#,
];

/// Brings the database up to the newest schema version.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Re-check under the write lock: another process may have migrated meanwhile.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now as usize > i {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

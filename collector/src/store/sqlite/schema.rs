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
    // 2: reports clustered by (agent_id, seq) instead of by a random digest.
    //
    // Measured by `tally-bench ingest-scaling`: with the digest as the key, every insert
    // landed on a random page of a B-tree as large as the table, so at 10 M reports each
    // report dirtied (and wrote to the WAL) its own 4 KiB page. Keyed by (agent, seq), an
    // agent's reports are appended next to each other; duplicates and forks are found by
    // the same key (a report's bytes fix its agent and seq). Lookups by digest alone are
    // for billing's review of quarantined reports, served by a small partial index over
    // the reports that were ever under review.
    r#"
    CREATE TABLE reports_v2 (
        agent_id TEXT NOT NULL REFERENCES agents(id),
        seq INTEGER NOT NULL,
        digest BLOB NOT NULL,
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
        signature BLOB NOT NULL,
        PRIMARY KEY (agent_id, seq, digest)
    ) WITHOUT ROWID;
    INSERT INTO reports_v2 (agent_id, seq, digest, fork, license_id, prev_digest, window_start,
        window_end, received_at, source, status, reason, detail, resolved_at, bytes, signature)
      SELECT agent_id, seq, digest, fork, license_id, prev_digest, window_start,
        window_end, received_at, source, status, reason, detail, resolved_at, bytes, signature
      FROM reports;
    DROP TABLE reports;
    ALTER TABLE reports_v2 RENAME TO reports;
    -- At most one counted-or-quarantined main report per (agent, seq); forks are extra rows.
    CREATE UNIQUE INDEX reports_agent_seq ON reports(agent_id, seq) WHERE fork = 0;
    CREATE INDEX reports_quarantined ON reports(status) WHERE status = 'quarantined';
    -- Reports that are or were under review (quarantined, discarded, released), by digest.
    CREATE INDEX reports_reviewed ON reports(digest)
        WHERE status != 'accepted' OR resolved_at IS NOT NULL;
    "#,
    // 3: cancelled customers, purged when their time comes.
    r#"
    ALTER TABLE customers ADD COLUMN cancelled_at INTEGER;
    ALTER TABLE customers ADD COLUMN purge_at INTEGER;
    CREATE INDEX customers_purge_due ON customers(purge_at) WHERE purge_at IS NOT NULL;
    "#,
    // 4: the collector key the database belongs to (recorded by `init`, or by the first
    // `serve` of a database made before version 4).
    r#"
    CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    "#,
    // 5: closed months, their frozen statements and retention. `billed_month` is set only on a report
    // counted after its own month closed (an adjustment of that later month); NULL means
    // the month of its window start, so the partial index holds late reports only and
    // costs the ingest path nothing.
    r#"
    ALTER TABLE reports ADD COLUMN billed_month INTEGER;
    CREATE INDEX reports_late ON reports(billed_month) WHERE billed_month IS NOT NULL;
    CREATE TABLE periods (
        month INTEGER PRIMARY KEY,
        closed_at INTEGER NOT NULL, -- microseconds
        done INTEGER NOT NULL DEFAULT 0,
        expired_at INTEGER -- when retention removed the bodies of its reports
    );
    -- Per agent and month, what retention removed: the seq range, count and Merkle root of
    -- the removed reports' digests (their rows stay, without bytes and signature).
    CREATE TABLE report_retention (
        agent_id TEXT NOT NULL,
        month INTEGER NOT NULL,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        reports INTEGER NOT NULL,
        root BLOB NOT NULL,
        removed_at INTEGER NOT NULL,
        PRIMARY KEY (agent_id, month)
    ) WITHOUT ROWID;
    CREATE TABLE statements (
        customer_id TEXT NOT NULL,
        month INTEGER NOT NULL,
        document BLOB NOT NULL,
        PRIMARY KEY (customer_id, month)
    ) WITHOUT ROWID;
    -- Usage alerts: a license's thresholds (percent of each limited metric's monthly
    -- limit), and one row per crossing, written in the transaction that counted the report
    -- (the id is derived from license, metric, month and threshold: the same crossing has
    -- the same id wherever it is computed). The webhook outbox is the undelivered rows.
    CREATE TABLE license_alerts (
        license_id TEXT NOT NULL REFERENCES licenses(id),
        percent INTEGER NOT NULL,
        PRIMARY KEY (license_id, percent)
    ) WITHOUT ROWID;
    CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        license_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        month INTEGER NOT NULL,
        percent INTEGER NOT NULL,
        used INTEGER NOT NULL,
        quota INTEGER NOT NULL,
        crossed_at INTEGER NOT NULL,
        delivered_at INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        UNIQUE (license_id, metric, month, percent)
    );
    CREATE INDEX alerts_pending ON alerts(next_attempt_at) WHERE delivered_at IS NULL;
    "#,
    // 6: repeated reads grouped into one audit row (`repeats` calls, the last at `last_at`).
    r#"
    ALTER TABLE audit ADD COLUMN repeats INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE audit ADD COLUMN last_at INTEGER;
    CREATE INDEX audit_calls ON audit(actor, action, target, outcome);
    "#,
    // 7: the status page's incidents (a component down from opened_at to closed_at).
    r#"
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        component TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        opened_at INTEGER NOT NULL,
        closed_at INTEGER
    );
    CREATE INDEX incidents_component ON incidents(component, opened_at);
    "#,
    // 8: the keyrings (every version, as signed).
    r#"
    CREATE TABLE keyrings (
        version INTEGER PRIMARY KEY,
        signed BLOB NOT NULL,
        added_at INTEGER NOT NULL
    );
    "#,
    // 9: agent keys. An agent's chain is held by one key at a time: the enrolled key from
    // seq 1, then each key a rotation hands it to, from its `from_seq` until the next
    // rotation's (`until_seq`, exclusive). `agents.key` is the current one.
    r#"
    CREATE TABLE agent_keys (
        key BLOB PRIMARY KEY,
        agent_id TEXT NOT NULL REFERENCES agents(id),
        from_seq INTEGER NOT NULL,
        until_seq INTEGER,
        revoked_at INTEGER,
        rotation BLOB,
        added_at INTEGER NOT NULL
    );
    CREATE INDEX agent_keys_agent ON agent_keys(agent_id, from_seq);
    INSERT INTO agent_keys (key, agent_id, from_seq, added_at)
        SELECT key, id, 1, enrolled_at FROM agents;
    "#,
];

/// The newest schema version this build writes.
pub const VERSION: usize = MIGRATIONS.len();

/// Brings the database up to the newest schema version. A database whose schema is newer
/// than this build (a newer collector migrated it) is refused: this build would misread
/// what it does not know, so it must not touch it.
pub fn migrate(conn: &mut Connection) -> crate::store::StoreResult<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current as usize > MIGRATIONS.len() {
        return Err(crate::store::StoreError::Invalid(format!(
            "the database's schema is version {current}, newer than this build knows ({}); \
             run a newer tally-collector",
            MIGRATIONS.len()
        )));
    }
    Ok(migrate_to(conn, MIGRATIONS.len())?)
}

/// Applies migrations up to and including version `target`.
fn migrate_to(conn: &mut Connection, target: usize) -> rusqlite::Result<()> {
    let current: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().take(target).skip(current) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_2_keeps_every_report_and_indexes_review_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("v1.db")).unwrap();
        migrate_to(&mut c, 1).unwrap();
        c.execute_batch(
            "INSERT INTO customers VALUES ('c', 'C', 0);
             INSERT INTO licenses (id, customer_id, signed, not_before, not_after, grace_secs, created_at)
               VALUES ('l', 'c', x'00', 0, 10, 0, 0);
             INSERT INTO agents (id, key, license_id, enrolled_at) VALUES ('a', x'01', 'l', 0);
             INSERT INTO reports (digest, agent_id, seq, license_id, window_start, window_end,
                 received_at, source, status, bytes, signature)
               VALUES (x'aa', 'a', 1, 'l', 0, 60, 61, 'online', 'accepted', x'0102', x'03'),
                      (x'bb', 'a', 2, 'l', 60, 120, 121, 'online', 'quarantined', x'0405', x'06');
             INSERT INTO reports (digest, agent_id, seq, fork, license_id, window_start, window_end,
                 received_at, source, status, reason, bytes, signature)
               VALUES (x'cc', 'a', 2, 1, 'l', 60, 120, 122, 'online', 'quarantined', 'seq_conflict', x'07', x'08');",
        )
        .unwrap();
        migrate(&mut c).unwrap();
        let version: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        type Row = (Vec<u8>, i64, i64, String, Vec<u8>);
        let rows: Vec<Row> = c
            .prepare("SELECT digest, seq, fork, status, bytes FROM reports ORDER BY agent_id, seq, digest")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (vec![0xaa], 1, 0, "accepted".into(), vec![1, 2]),
                (vec![0xbb], 2, 0, "quarantined".into(), vec![4, 5]),
                (vec![0xcc], 2, 1, "quarantined".into(), vec![7]),
            ]
        );
        // A second main report for a taken (agent, seq) is refused by the database itself.
        let dup = c.execute(
            "INSERT INTO reports (digest, agent_id, seq, license_id, window_start, window_end,
                 received_at, source, status, bytes, signature)
               VALUES (x'dd', 'a', 1, 'l', 0, 60, 61, 'online', 'accepted', x'09', x'0a')",
            [],
        );
        assert!(dup.is_err(), "the (agent, seq) main-report index must hold");
        // Review lookups by digest use the partial index, not a scan.
        let plan: String = c
            .query_row(
                "EXPLAIN QUERY PLAN SELECT status FROM reports
                 WHERE digest = x'bb' AND (status != 'accepted' OR resolved_at IS NOT NULL)",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("reports_reviewed"), "{plan}");
    }
}

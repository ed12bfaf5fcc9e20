//! Versioned migrations for PostgreSQL. They run at start, all pending ones in one
//! transaction that first takes a transaction-scoped advisory lock: when N collectors
//! start at once, one migrates and the others wait, then find nothing left to do. DDL is
//! transactional in PostgreSQL, so a failed migration leaves the schema as it was. Never
//! edit a shipped migration: add one.
//!
//! The schema mirrors the SQLite store's (times are Unix seconds, quantities `BIGINT`
//! checked non-negative), with one addition: every digest is unique, which also serves
//! review lookups by digest.

use super::{StoreResult, query_opt};

/// Arbitrary, fixed: the advisory lock key that serializes migrations.
const MIGRATION_LOCK: i64 = 0x7461_6c6c_795f_6d69; // "tally_mi"

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the whole schema of the SQLite store's version 3, plus the collector key, with
    // rollup and monthly sums split into shards.
    r#"
    CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );
    CREATE TABLE customers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        cancelled_at BIGINT,
        purge_at BIGINT
    );
    CREATE INDEX customers_purge_due ON customers(purge_at) WHERE purge_at IS NOT NULL;
    CREATE TABLE licenses (
        id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL REFERENCES customers(id),
        signed BYTEA NOT NULL,
        not_before BIGINT NOT NULL,
        not_after BIGINT NOT NULL,
        grace_secs BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE INDEX licenses_customer ON licenses(customer_id);
    CREATE TABLE license_metrics (
        license_id TEXT NOT NULL REFERENCES licenses(id),
        metric TEXT NOT NULL,
        quota BIGINT,
        PRIMARY KEY (license_id, metric)
    );
    CREATE TABLE enrollment_tokens (
        hash BYTEA PRIMARY KEY,
        license_id TEXT NOT NULL REFERENCES licenses(id),
        uses_left BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX enrollment_tokens_license ON enrollment_tokens(license_id);
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        key BYTEA NOT NULL UNIQUE,
        license_id TEXT NOT NULL REFERENCES licenses(id),
        enrolled_at BIGINT NOT NULL,
        revoked_at BIGINT,
        last_seq BIGINT NOT NULL DEFAULT 0,
        last_seen BIGINT
    );
    CREATE INDEX agents_license ON agents(license_id);
    -- Every authentic report, exactly once. fork marks a second, different report for an
    -- (agent, seq) already taken. Keyed by (agent, seq) so one range scan answers the
    -- duplicate, fork and chain questions of ingest.
    CREATE TABLE reports (
        agent_id TEXT NOT NULL REFERENCES agents(id),
        seq BIGINT NOT NULL,
        digest BYTEA NOT NULL,
        fork BOOLEAN NOT NULL DEFAULT false,
        license_id TEXT NOT NULL,
        prev_digest BYTEA,
        window_start BIGINT NOT NULL,
        window_end BIGINT NOT NULL,
        received_at BIGINT NOT NULL,
        source TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('accepted', 'quarantined', 'discarded')),
        reason TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '',
        resolved_at BIGINT,
        bytes BYTEA NOT NULL,
        signature BYTEA NOT NULL,
        PRIMARY KEY (agent_id, seq, digest)
    );
    -- At most one main report per (agent, seq), and each digest once, whatever the number
    -- of collectors writing.
    CREATE UNIQUE INDEX reports_agent_seq ON reports(agent_id, seq) WHERE NOT fork;
    CREATE UNIQUE INDEX reports_digest ON reports(digest);
    CREATE INDEX reports_quarantined ON reports(status) WHERE status = 'quarantined';
    -- Sums split into shards by agent (see `ingest::SHARDS`): readers add the shards up.
    CREATE TABLE rollups (
        license_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        hour BIGINT NOT NULL,
        shard SMALLINT NOT NULL,
        quantity BIGINT NOT NULL CHECK (quantity >= 0),
        PRIMARY KEY (license_id, metric, hour, shard)
    );
    CREATE TABLE monthly_usage (
        license_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        month BIGINT NOT NULL,
        shard SMALLINT NOT NULL,
        quantity BIGINT NOT NULL CHECK (quantity >= 0),
        PRIMARY KEY (license_id, metric, month, shard)
    );
    CREATE TABLE anomalies (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        license_id TEXT NOT NULL,
        seq_from BIGINT NOT NULL,
        seq_to BIGINT NOT NULL,
        digest BYTEA,
        detail TEXT NOT NULL DEFAULT '',
        opened_at BIGINT NOT NULL,
        closed_at BIGINT
    );
    CREATE INDEX anomalies_open_gaps ON anomalies(agent_id, seq_from)
        WHERE kind = 'gap' AND closed_at IS NULL;
    CREATE INDEX anomalies_license ON anomalies(license_id);
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash BYTEA NOT NULL UNIQUE,
        role TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE TABLE audit (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    "#,
    // 2: closed months, their frozen statements and retention, as in the SQLite store's
    // version 5.
    // `billed_month` is set only on a report counted after its own month closed.
    r#"
    ALTER TABLE reports ADD COLUMN billed_month BIGINT;
    CREATE INDEX reports_late ON reports(billed_month) WHERE billed_month IS NOT NULL;
    CREATE TABLE periods (
        month BIGINT PRIMARY KEY,
        closed_at BIGINT NOT NULL, -- microseconds
        done BOOLEAN NOT NULL DEFAULT false,
        expired_at BIGINT
    );
    CREATE TABLE license_alerts (
        license_id TEXT NOT NULL REFERENCES licenses(id),
        percent INTEGER NOT NULL,
        PRIMARY KEY (license_id, percent)
    );
    CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        license_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        month BIGINT NOT NULL,
        percent INTEGER NOT NULL,
        used BIGINT NOT NULL,
        quota BIGINT NOT NULL,
        crossed_at BIGINT NOT NULL,
        delivered_at BIGINT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        UNIQUE (license_id, metric, month, percent)
    );
    CREATE INDEX alerts_pending ON alerts(next_attempt_at) WHERE delivered_at IS NULL;
    CREATE TABLE report_retention (
        agent_id TEXT NOT NULL,
        month BIGINT NOT NULL,
        first_seq BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        reports BIGINT NOT NULL,
        root BYTEA NOT NULL,
        removed_at BIGINT NOT NULL,
        PRIMARY KEY (agent_id, month)
    );
    CREATE TABLE statements (
        customer_id TEXT NOT NULL,
        month BIGINT NOT NULL,
        document BYTEA NOT NULL,
        PRIMARY KEY (customer_id, month)
    );
    "#,
    // 3: repeated reads grouped into one audit row, as in the SQLite store's version 6.
    r#"
    ALTER TABLE audit ADD COLUMN repeats BIGINT NOT NULL DEFAULT 1;
    ALTER TABLE audit ADD COLUMN last_at BIGINT;
    CREATE INDEX audit_calls ON audit(actor, action, target, outcome, id);
    "#,
    // 4: the status page's incidents, as in the SQLite store's version 7.
    r#"
    CREATE TABLE incidents (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        component TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        opened_at BIGINT NOT NULL,
        closed_at BIGINT
    );
    CREATE INDEX incidents_component ON incidents(component, opened_at);
    "#,
    // 5: the keyrings, as in the SQLite store's version 8.
    r#"
    CREATE TABLE keyrings (
        version BIGINT PRIMARY KEY,
        signed BYTEA NOT NULL,
        added_at BIGINT NOT NULL
    );
    "#,
    // 6: agent keys, as in the SQLite store's version 9.
    r#"
    CREATE TABLE agent_keys (
        key BYTEA PRIMARY KEY,
        agent_id TEXT NOT NULL REFERENCES agents(id),
        from_seq BIGINT NOT NULL,
        until_seq BIGINT,
        revoked_at BIGINT,
        rotation BYTEA,
        added_at BIGINT NOT NULL
    );
    CREATE INDEX agent_keys_agent ON agent_keys(agent_id, from_seq);
    INSERT INTO agent_keys (key, agent_id, from_seq, added_at)
        SELECT key, id, 1, enrolled_at FROM agents;
    "#,
];

/// Brings the database up to the newest schema version.
pub(super) async fn migrate(client: &mut deadpool_postgres::Object) -> StoreResult<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS tally_schema (version INTEGER NOT NULL)")
        .await?;
    let current: i32 = match query_opt(&tx, "SELECT version FROM tally_schema", &[]).await? {
        Some(r) => r.get(0),
        None => {
            tx.execute("INSERT INTO tally_schema (version) VALUES (0)", &[])
                .await?;
            0
        }
    };
    let current = usize::try_from(current).unwrap_or(0);
    if current > MIGRATIONS.len() {
        return Err(super::StoreError::Invalid(format!(
            "the database's schema is version {current}, newer than this build knows ({}); \
             run a newer tally-collector",
            MIGRATIONS.len()
        )));
    }
    for sql in &MIGRATIONS[current..] {
        tx.batch_execute(sql).await?;
    }
    let version = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    tx.execute("UPDATE tally_schema SET version = $1", &[&version])
        .await?;
    tx.commit().await?;
    Ok(())
}

//! Queries both stores run word for word: written once here, in PostgreSQL's placeholder
//! style (`$1`, `$2`, …) with casts spelled `CAST(x AS TEXT)`, which both dialects read.
//! SQLite runs them through [`sqlite`], which only rewrites the placeholders.
//!
//! These queries fetch candidate rows and nothing more: which of them a bill counts, which
//! limits a month sees and which quarantined reports are anomalies is decided by `rules`
//! (`rules::periods::counts_on`, `rules::periods::limits_in_month`,
//! `rules::quarantine_is_anomaly`) on the rows they return. A query whose dialects differ
//! in more than placeholders (upserts, arrays, locking) stays in its store.

/// Every report that may count on a customer's statement of a month: those whose window
/// starts in it and those billed on it. `$1` customer, `$2` month start, `$3` next month's
/// start. Columns: agent id, agent key (the key that held the agent's chain at the
/// report's seq: the one that signed it), license id, seq, digest, bytes, status,
/// window start, billed month. Read along each agent's `(agent_id, seq)` key (SQLite is
/// told the join order; PostgreSQL plans its own).
pub const MONTH_CANDIDATES: &str = "
    SELECT a.id, COALESCE((SELECT k.key FROM agent_keys k WHERE k.agent_id = a.id
                AND k.from_seq <= r.seq AND (k.until_seq IS NULL OR r.seq < k.until_seq)), a.key),
           a.license_id, r.seq, r.digest, r.bytes, r.status, r.window_start, r.billed_month
    FROM licenses l JOIN agents a ON a.license_id = l.id CROSS JOIN reports r
    WHERE r.agent_id = a.id AND l.customer_id = $1
      AND ((r.window_start >= $2 AND r.window_start < $3) OR r.billed_month = $2)
    ORDER BY a.id, r.seq";

/// The reports billed on a month although their window is earlier (late ones), from the
/// small index of billed months. `$1` customer, `$2` month start; columns as
/// [`MONTH_CANDIDATES`].
pub const LATE_CANDIDATES: &str = "
    SELECT a.id, COALESCE((SELECT k.key FROM agent_keys k WHERE k.agent_id = a.id
                AND k.from_seq <= r.seq AND (k.until_seq IS NULL OR r.seq < k.until_seq)), a.key),
           a.license_id, r.seq, r.digest, r.bytes, r.status, r.window_start, r.billed_month
    FROM reports r JOIN agents a ON a.id = r.agent_id JOIN licenses l ON l.id = a.license_id
    WHERE r.billed_month = $2 AND l.customer_id = $1
    ORDER BY a.id, r.seq";

/// [`MONTH_CANDIDATES`] of one agent (`$4`), with the signatures: a statement line's
/// evidence. Columns: agent id, agent key, seq, digest, bytes, signature, status,
/// window start, billed month.
pub const EVIDENCE_CANDIDATES: &str = "
    SELECT a.id, COALESCE((SELECT k.key FROM agent_keys k WHERE k.agent_id = a.id
                AND k.from_seq <= r.seq AND (k.until_seq IS NULL OR r.seq < k.until_seq)), a.key),
           r.seq, r.digest, r.bytes, r.signature, r.status, r.window_start, r.billed_month
    FROM licenses l JOIN agents a ON a.license_id = l.id CROSS JOIN reports r
    WHERE r.agent_id = a.id AND l.customer_id = $1 AND a.id = $4
      AND ((r.window_start >= $2 AND r.window_start < $3) OR r.billed_month = $2)
    ORDER BY r.seq";

/// Every limit of every license of a customer (`$1`), with the license's term. Columns:
/// license id, metric, quota (NULL: unlimited), not_before, not_after, grace seconds.
pub const LIMIT_CANDIDATES: &str = "
    SELECT l.id, m.metric, m.quota, l.not_before, l.not_after, l.grace_secs
    FROM license_metrics m JOIN licenses l ON l.id = m.license_id
    WHERE l.customer_id = $1
    ORDER BY l.id, m.metric";

/// The anomalies recorded as such (gaps, forks, …), of one customer (`$1`) or of all
/// (`$1` NULL). Columns: kind, agent id, license id, customer id, seq from, seq to, digest,
/// detail, opened at, closed at.
pub const ANOMALY_ROWS: &str = "
    SELECT a.kind, a.agent_id, a.license_id, l.customer_id, a.seq_from, a.seq_to, a.digest,
           a.detail, a.opened_at, a.closed_at
    FROM anomalies a JOIN licenses l ON l.id = a.license_id
    WHERE CAST($1 AS TEXT) IS NULL OR l.customer_id = $1
    ORDER BY a.opened_at, a.agent_id, a.seq_from";

/// The quarantine, of one customer (`$1`) or of all (`$1` NULL), oldest first. Columns:
/// digest, agent id, license id, customer id, seq, reason, detail, received at,
/// window start, window end.
pub const QUARANTINE_ROWS: &str = "
    SELECT r.digest, r.agent_id, r.license_id, l.customer_id, r.seq, r.reason, r.detail,
           r.received_at, r.window_start, r.window_end
    FROM reports r JOIN licenses l ON l.id = r.license_id
    WHERE r.status = 'quarantined' AND (CAST($1 AS TEXT) IS NULL OR l.customer_id = $1)
    ORDER BY r.received_at, r.agent_id, r.seq";

/// The newest incident of a component (`$1`). Columns: id, opened at, closed at.
pub const LATEST_INCIDENT: &str = "
    SELECT id, opened_at, closed_at FROM incidents WHERE component = $1
    ORDER BY opened_at DESC, id DESC LIMIT 1";

/// A new incident: `$1` component, `$2` detail, `$3` opened at, `$4` closed at (NULL: open).
pub const INSERT_INCIDENT: &str = "
    INSERT INTO incidents (component, detail, opened_at, closed_at) VALUES ($1, $2, $3, $4)";

/// Incident `$1` now spans `$2` to `$3` (NULL: open).
pub const UPDATE_INCIDENT: &str =
    "UPDATE incidents SET opened_at = $2, closed_at = $3 WHERE id = $1";

/// Incidents open at some time at or after `$1`, newest first, at most `$2`. Columns: id,
/// component, detail, opened at, closed at.
pub const INCIDENTS_SINCE: &str = "
    SELECT id, component, detail, opened_at, closed_at FROM incidents
    WHERE closed_at IS NULL OR closed_at >= $1
    ORDER BY opened_at DESC, id DESC LIMIT $2";

/// The newest keyring version (NULL when none). Column: version.
pub const NEWEST_KEYRING: &str = "SELECT MAX(version) FROM keyrings";

/// A keyring: `$1` version, `$2` the encoded signed keyring, `$3` when it was added.
pub const INSERT_KEYRING: &str =
    "INSERT INTO keyrings (version, signed, added_at) VALUES ($1, $2, $3)";

/// The keyrings after version `$1`, oldest first, at most `$2`. Columns: version, signed.
pub const KEYRINGS_AFTER: &str =
    "SELECT version, signed FROM keyrings WHERE version > $1 ORDER BY version LIMIT $2";

/// The agent key `$1` (32 bytes), with its agent. Columns: see `AgentKey::from_columns`.
/// An agent with no `agent_keys` row at all (enrolled by a node of an earlier version
/// while a newer one had already migrated the database) is read from `agents` as its one
/// enrolled key, from seq 1.
pub const AGENT_KEY: &str = "
    SELECT k.key, a.id, a.license_id, k.from_seq, k.until_seq, k.revoked_at, a.revoked_at
    FROM agent_keys k JOIN agents a ON a.id = k.agent_id WHERE k.key = $1
    UNION ALL
    SELECT a.key, a.id, a.license_id, 1, NULL, NULL, a.revoked_at
    FROM agents a WHERE a.key = $1
      AND NOT EXISTS (SELECT 1 FROM agent_keys k WHERE k.agent_id = a.id)";

/// Records the enrolled key `$1` of agent `$2` if the agent has no key row yet (see
/// [`AGENT_KEY`]), `$3` added at.
pub const ADOPT_ENROLLED_KEY: &str = "
    INSERT INTO agent_keys (key, agent_id, from_seq, added_at)
    SELECT $1, $2, 1, $3
    WHERE NOT EXISTS (SELECT 1 FROM agent_keys k WHERE k.agent_id = $2)";

/// Every key of agent `$1`, in the order they held its chain. Columns: as [`AGENT_KEY`].
/// (An agent without key rows: its enrolled key, as in [`AGENT_KEY`].)
pub const KEYS_OF_AGENT: &str = "
    SELECT u.key, u.agent_id, u.license_id, u.from_seq, u.until_seq, u.key_revoked_at,
           u.agent_revoked_at
    FROM (SELECT k.key AS key, a.id AS agent_id, a.license_id AS license_id,
                 k.from_seq AS from_seq, k.until_seq AS until_seq,
                 k.revoked_at AS key_revoked_at, a.revoked_at AS agent_revoked_at
          FROM agent_keys k JOIN agents a ON a.id = k.agent_id WHERE a.id = $1
          UNION ALL
          SELECT a.key, a.id, a.license_id, 1, NULL, NULL, a.revoked_at
          FROM agents a WHERE a.id = $1
            AND NOT EXISTS (SELECT 1 FROM agent_keys k WHERE k.agent_id = a.id)) AS u
    ORDER BY u.from_seq, u.until_seq IS NULL";

/// Every agent key (32 bytes each), for finding one by key id (ids are not stored: a key
/// id is a hash of the key); with the enrolled key of every agent without key rows, as in
/// [`AGENT_KEY`].
pub const ALL_AGENT_KEYS: &str = "
    SELECT key FROM agent_keys
    UNION ALL
    SELECT a.key FROM agents a
    WHERE NOT EXISTS (SELECT 1 FROM agent_keys k WHERE k.agent_id = a.id)";

/// A key an agent signs with: `$1` key, `$2` agent id, `$3` first seq it signs, `$4` the
/// signed rotation that handed it the chain (NULL: the enrolled key), `$5` added at.
pub const INSERT_AGENT_KEY: &str = "
    INSERT INTO agent_keys (key, agent_id, from_seq, rotation, added_at)
    VALUES ($1, $2, $3, $4, $5)";

/// Key `$1` hands its agent's chain on at seq `$2`.
pub const HAND_OVER_AGENT_KEY: &str = "UPDATE agent_keys SET until_seq = $2 WHERE key = $1";

/// Agent `$1` now signs with key `$2`.
pub const SET_AGENT_KEY: &str = "UPDATE agents SET key = $2 WHERE id = $1";

/// Records the enrolled key `$1` of an agent without key rows (see [`AGENT_KEY`]) before
/// it is revoked; `$2` added at.
pub const ADOPT_KEY: &str = "
    INSERT INTO agent_keys (key, agent_id, from_seq, added_at)
    SELECT a.key, a.id, 1, $2 FROM agents a
    WHERE a.key = $1 AND NOT EXISTS (SELECT 1 FROM agent_keys k WHERE k.agent_id = a.id)";

/// Revokes agent key `$1` from `$2`; an earlier revocation stands (never moved later).
pub const REVOKE_AGENT_KEY: &str = "
    UPDATE agent_keys SET revoked_at = $2
    WHERE key = $1 AND (revoked_at IS NULL OR revoked_at > $2)";

/// The signed rotations of agent `$1`, oldest first. Column: the signed rotation.
pub const ROTATIONS_OF_AGENT: &str = "
    SELECT rotation FROM agent_keys WHERE agent_id = $1 AND rotation IS NOT NULL
    ORDER BY from_seq";

/// A shared query in SQLite's spelling: `$N` becomes `?N` (SQLite would number `$N`
/// placeholders by first appearance, not by `N`).
pub fn sqlite(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_question_marks() {
        assert_eq!(
            sqlite("WHERE a = $2 AND b = $10 OR c = $1 AND d = '$x'"),
            "WHERE a = ?2 AND b = ?10 OR c = ?1 AND d = '$x'"
        );
    }

    #[test]
    fn every_shared_query_prepares_on_sqlite() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::store::sqlite::schema::migrate(&mut conn).unwrap();
        for q in [
            MONTH_CANDIDATES,
            LATE_CANDIDATES,
            EVIDENCE_CANDIDATES,
            LIMIT_CANDIDATES,
            ANOMALY_ROWS,
            QUARANTINE_ROWS,
            LATEST_INCIDENT,
            INSERT_INCIDENT,
            UPDATE_INCIDENT,
            INCIDENTS_SINCE,
            NEWEST_KEYRING,
            INSERT_KEYRING,
            KEYRINGS_AFTER,
            AGENT_KEY,
            ADOPT_ENROLLED_KEY,
            ADOPT_KEY,
            KEYS_OF_AGENT,
            ALL_AGENT_KEYS,
            INSERT_AGENT_KEY,
            HAND_OVER_AGENT_KEY,
            SET_AGENT_KEY,
            REVOKE_AGENT_KEY,
            ROTATIONS_OF_AGENT,
        ] {
            conn.prepare(&sqlite(q))
                .unwrap_or_else(|e| panic!("{e}: {q}"));
        }
    }
}

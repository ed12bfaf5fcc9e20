//! Closing windows: one transaction turns every closed window's counters into the next
//! signed, chained report (idle stretches into heartbeats), so a counter is never both in a
//! report and still open.

use super::*;

pub(super) fn close_tx(
    c: &Connection,
    key: &SigningKey,
    license_id: &str,
    now: i64,
    windows: Windows,
    flush: bool,
) -> StoreResult<u64> {
    // Sign only with the key holding the chain: a rotation committed since the caller
    // loaded its key hands every later seq to the new key.
    if let Some(holder) = super::rotations::current_key(c)?
        && holder != key.verifying_key().to_bytes()
    {
        return Err(StoreError::KeyRotated(holder));
    }
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

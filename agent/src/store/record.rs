//! Counting events into the open window: one transaction per group, idempotency keys
//! remembered for 24 h, sums checked for overflow.

use super::*;

pub(super) fn record_tx(
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

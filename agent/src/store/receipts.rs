//! Storing verified receipts: each marks its report delivered or final, and the newest
//! receipt is kept for the license status.

use super::*;

pub(super) fn receipts_tx(
    c: &Connection,
    receipts: &[(ReceiptBody, pb::Receipt)],
) -> StoreResult<(u64, u64)> {
    let (mut stored, mut unknown) = (0, 0);
    let mut newest: Option<&ReceiptBody> = None;
    for (body, raw) in receipts {
        let state = DeliveryState::after(body.outcome, &body.reason).as_str();
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

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
        let state = DeliveryState::after(body.outcome, &body.reason);
        if state == DeliveryState::Pending {
            // Still undelivered (not enrolled yet): remember why, keep no receipt.
            let n = c
                .prepare_cached(
                    "UPDATE reports SET reason = ?2, detail = ?3 WHERE digest = ?1 AND state = 'pending'",
                )?
                .execute(params![
                    body.report_digest.as_bytes().as_slice(),
                    body.reason,
                    body.detail
                ])?;
            if n == 0 {
                unknown += 1;
            } else {
                stored += 1;
            }
            continue;
        }
        let state = state.as_str();
        let n = c
            .prepare_cached(
                "UPDATE reports SET state = ?2, reason = ?3, detail = ?4, receipt_body = ?5, receipt_signature = ?6,
                        delivered_at = ?7, receipt_key_id = ?8
                 WHERE digest = ?1",
            )?
            .execute(params![
                body.report_digest.as_bytes().as_slice(),
                state,
                body.reason,
                body.detail,
                raw.body,
                raw.signature,
                body.received_at.timestamp(),
                raw.key_id
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

/// A report the agent holds, with what its receipt says: what a closed statement's line is
/// checked against (`crate::statement_check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldReport {
    pub seq: u64,
    pub digest: Digest,
    /// Unix seconds.
    pub window_start: i64,
    /// `(metric, quantity)`, as signed in the report.
    pub counters: Vec<(String, u64)>,
    /// `None`: no receipt yet.
    pub receipt: Option<HeldReceipt>,
}

/// What a stored receipt says about its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldReceipt {
    pub outcome: Outcome,
    /// Collector time, Unix microseconds.
    pub received_at: i64,
    /// The receipt says the report is counted: `ACCEPTED`, or `DUPLICATE` with no reason
    /// (a resend of a counted report whose first receipt was lost; a duplicate of a report
    /// still quarantined carries its reason).
    pub counted: bool,
}

impl AgentStore {
    /// The reports a statement check needs, in seq order: every report whose window starts
    /// in `window_from..window_to` (Unix seconds), and every report whose seq is in one of
    /// the inclusive `seqs` ranges (the seqs a statement line counts, whatever their
    /// window). Each with its counters (decoded from the signed bytes) and its receipt's
    /// outcome and `received_at`; every receipt is verified again with `verify` (the agent's
    /// keyring) and must name its report's digest (a stored receipt or report that does not check out
    /// is an error, not a silently missing receipt).
    pub fn held_reports(
        &self,
        window_from: i64,
        window_to: i64,
        seqs: &[(u64, u64)],
        verify: &dyn Fn(&pb::Receipt) -> Result<ReceiptBody, tally_proto::receipt::ReceiptError>,
    ) -> StoreResult<Vec<HeldReport>> {
        // SQLite integers are i64: a range reaching past i64::MAX stops there (no seq does).
        let clamp = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        let ranges: Vec<[i64; 2]> = seqs
            .iter()
            .filter(|(a, b)| a <= b)
            .map(|&(a, b)| [clamp(a), clamp(b)])
            .collect();
        let ranges = serde_json::to_string(&ranges)
            .map_err(|e| StoreError::Database(format!("seq ranges: {e}")))?;
        let c = self.reader()?;
        let mut st = c.prepare(
            "SELECT seq, digest, bytes, receipt_body, receipt_signature, receipt_key_id FROM reports
             WHERE (window_start >= ?1 AND window_start < ?2)
                OR EXISTS (SELECT 1 FROM json_each(?3) AS r
                           WHERE reports.seq BETWEEN json_extract(r.value, '$[0]')
                                                 AND json_extract(r.value, '$[1]'))
             ORDER BY seq",
        )?;
        type Row = (
            i64,
            Vec<u8>,
            Vec<u8>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            String,
        );
        let rows = st
            .query_map(params![window_from, window_to, ranges], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<Vec<Row>, _>>()?;
        rows.into_iter()
            .map(|(seq, digest, bytes, body, signature, key_id)| {
                let bad = |m: String| {
                    StoreError::Invalid(format!(
                        "report seq {seq}: {m} (hint: run 'tally-agent reports verify')"
                    ))
                };
                let digest = Digest::from_slice(&digest)
                    .ok_or_else(|| bad("the stored digest is not 32 bytes".into()))?;
                let rep = Report::decode(&bytes).map_err(|e| bad(e.to_string()))?;
                let receipt = match body.zip(signature) {
                    None => None,
                    Some((body, signature)) => {
                        let b = verify(&pb::Receipt {
                            body,
                            signature,
                            key_id,
                        })
                        .map_err(|e| bad(format!("receipt: {e}")))?;
                        if b.report_digest != digest {
                            return Err(bad("the receipt is for another report".into()));
                        }
                        Some(HeldReceipt {
                            outcome: b.outcome,
                            received_at: b.received_at.timestamp_micros(),
                            counted: b.outcome == Outcome::Accepted
                                || (b.outcome == Outcome::Duplicate && b.reason.is_empty()),
                        })
                    }
                };
                Ok(HeldReport {
                    seq: seq as u64,
                    digest,
                    window_start: rep.window_start.timestamp(),
                    counters: rep
                        .counters
                        .into_iter()
                        .map(|c| (c.metric, c.quantity))
                        .collect(),
                    receipt,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(
        key: &SigningKey,
        digest: Digest,
        outcome: Outcome,
        at: i64,
    ) -> (ReceiptBody, pb::Receipt) {
        let body = ReceiptBody {
            report_digest: digest,
            outcome,
            reason: String::new(),
            detail: String::new(),
            received_at: chrono::DateTime::from_timestamp(at, 0).unwrap(),
            lease_until: None,
            credits: vec![],
        };
        let raw = body.sign(key);
        (body, raw)
    }

    #[tokio::test]
    async fn held_reports_are_the_window_range_plus_the_listed_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let store = AgentStore::open(&dir.path().join("a.db")).unwrap();
        let (key, collector) = (tally_proto::keys::generate(), tally_proto::keys::generate());
        let t: i64 = 1_800_000_000;
        let w = crate::windows::Windows::aligned(60);
        for i in 0..3 {
            let e = Event {
                metric: "api.convert".into(),
                quantity: i + 1,
                idempotency_key: None,
            };
            store
                .record(vec![e], t + 60 * i as i64 + 1, w)
                .await
                .unwrap();
            store
                .close_windows(
                    key.clone(),
                    "lic".into(),
                    t + 60 * (i as i64 + 1) + 1,
                    w,
                    false,
                )
                .await
                .unwrap();
        }
        let reports = store.reports_since(1).unwrap();
        assert_eq!(reports.len(), 3);
        store
            .store_receipts(vec![receipt(
                &collector,
                reports[1].digest,
                Outcome::Accepted,
                t + 200,
            )])
            .await
            .unwrap();
        let key = collector.verifying_key();
        let ck = |r: &pb::Receipt| ReceiptBody::verify(r, &key);
        let seqs = |v: Vec<HeldReport>| v.iter().map(|r| r.seq).collect::<Vec<_>>();

        let held = store.held_reports(t + 60, t + 120, &[], &ck).unwrap();
        assert_eq!(
            held,
            vec![HeldReport {
                seq: 2,
                digest: reports[1].digest,
                window_start: t + 60,
                counters: vec![("api.convert".into(), 2)],
                receipt: Some(HeldReceipt {
                    outcome: Outcome::Accepted,
                    received_at: (t + 200) * 1_000_000,
                    counted: true,
                }),
            }]
        );
        assert_eq!(
            seqs(store.held_reports(t + 60, t + 120, &[(3, 3)], &ck).unwrap()),
            vec![2, 3]
        );
        assert_eq!(
            seqs(store.held_reports(0, 1, &[(1, u64::MAX)], &ck).unwrap()),
            vec![1, 2, 3]
        );
        assert_eq!(
            seqs(store.held_reports(0, 1, &[(3, 1)], &ck).unwrap()),
            Vec::<u64>::new(),
            "a reversed range lists nothing"
        );
        assert!(store.held_reports(0, 1, &[], &ck).unwrap().is_empty());

        // A stored receipt that does not verify is an error, not a missing receipt.
        let forged = tally_proto::keys::generate();
        store
            .store_receipts(vec![receipt(
                &forged,
                reports[2].digest,
                Outcome::Accepted,
                t + 300,
            )])
            .await
            .unwrap();
        let e = store.held_reports(t, t + 180, &[], &ck).unwrap_err();
        assert!(e.to_string().contains("report seq 3: receipt"), "{e}");
        // A genuine receipt moved onto another report is an error too.
        rusqlite::Connection::open(dir.path().join("a.db"))
            .unwrap()
            .execute(
                "UPDATE reports SET (receipt_body, receipt_signature) =
                   (SELECT receipt_body, receipt_signature FROM reports WHERE seq = 2)
                 WHERE seq = 1",
                [],
            )
            .unwrap();
        let e = store.held_reports(t, t + 60, &[], &ck).unwrap_err();
        assert!(
            e.to_string()
                .contains("report seq 1: the receipt is for another report"),
            "{e}"
        );
    }
}

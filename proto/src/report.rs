//! Usage reports: the domain type, its encoding, signing and structural checks.

use crate::digest::Digest;
use crate::limits::{MAX_COUNTERS, MAX_QUANTITY, MAX_REPORT_BYTES, MAX_SHORT_STRING};
use crate::metric::validate_metric_name;
use crate::pb;
use crate::signing::{self, Domain};
use crate::time::{Instant, from_timestamp, to_timestamp};
use ed25519_dalek::SigningKey;
use prost::Message;

/// One `(metric, quantity)` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub metric: String,
    pub quantity: u64,
}

/// A usage report, decoded. Exactly the fields of docs/protocol.md §2.1, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub license_id: String,
    pub agent_key: [u8; 32],
    pub seq: u64,
    /// `None` for seq 1.
    pub prev_digest: Option<Digest>,
    pub window_start: Instant,
    pub window_end: Instant,
    pub counters: Vec<Counter>,
    pub created_at: Instant,
    pub agent_version: String,
}

/// Why report bytes are not a report the collector can even look at (a refusal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("malformed: {0}")]
    Malformed(String),
}

/// Why a report's counters break the contract (authentic, but not countable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CounterError(pub String);

impl Report {
    /// Encodes the report (the bytes that get signed and digested).
    pub fn encode(&self) -> Vec<u8> {
        self.to_pb().encode_to_vec()
    }

    fn to_pb(&self) -> pb::UsageReport {
        pb::UsageReport {
            license_id: self.license_id.clone(),
            agent_key: self.agent_key.to_vec(),
            seq: self.seq,
            prev_digest: self.prev_digest.map(|d| d.0.to_vec()).unwrap_or_default(),
            window_start: Some(to_timestamp(self.window_start)),
            window_end: Some(to_timestamp(self.window_end)),
            counters: self
                .counters
                .iter()
                .map(|c| pb::Counter {
                    metric: c.metric.clone(),
                    quantity: c.quantity,
                })
                .collect(),
            created_at: Some(to_timestamp(self.created_at)),
            agent_version: self.agent_version.clone(),
        }
    }

    /// Encodes and signs the report with the agent key.
    pub fn sign(&self, key: &SigningKey) -> pb::SignedReport {
        let report = self.encode();
        let signature = signing::sign(key, Domain::UsageReport, &report).to_vec();
        pb::SignedReport { report, signature }
    }

    /// Decodes report bytes and checks everything that makes them a well-formed report:
    /// size, field presence and lengths. Counter contents are checked separately by
    /// [`Report::check_counters`], because a report with bad counters can still be authentic.
    pub fn decode(bytes: &[u8]) -> Result<Report, ReportError> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge(format!(
                "report is {} bytes, the limit is {MAX_REPORT_BYTES}",
                bytes.len()
            )));
        }
        let m = pb::UsageReport::decode(bytes)
            .map_err(|e| ReportError::Malformed(format!("report does not decode: {e}")))?;
        let bad = |s: &str| Err(ReportError::Malformed(s.to_string()));
        // Usage only: prost skips fields it does not know, so a signed report could carry
        // anything in an extra field and be stored with it. Every byte must belong to a
        // known field: the decoded message re-encodes to exactly as many bytes (a canonical
        // encoder, as every protobuf library's default is, always passes; nothing is
        // re-encoded to be *verified* — the signature covers the bytes received).
        if m.encoded_len() != bytes.len() {
            return bad(
                "the report has bytes outside the fields of UsageReport (unknown fields or a \
                 non-canonical encoding); only usage may be reported",
            );
        }
        if m.counters.len() > MAX_COUNTERS {
            return Err(ReportError::TooLarge(format!(
                "{} counters, the limit is {MAX_COUNTERS}",
                m.counters.len()
            )));
        }
        let Ok(agent_key) = <[u8; 32]>::try_from(m.agent_key.as_slice()) else {
            return bad("agent_key must be 32 bytes");
        };
        if m.license_id.is_empty() || m.license_id.len() > MAX_SHORT_STRING {
            return bad("license_id must be 1 to 128 bytes");
        }
        if m.agent_version.len() > MAX_SHORT_STRING {
            return bad("agent_version is longer than 128 bytes");
        }
        if m.seq == 0 {
            return bad("seq starts at 1");
        }
        if m.seq > i64::MAX as u64 {
            return bad("seq is out of range");
        }
        let prev_digest = match m.prev_digest.len() {
            0 => None,
            32 => Digest::from_slice(&m.prev_digest),
            _ => return bad("prev_digest must be empty or 32 bytes"),
        };
        let ts = |t: &Option<prost_types::Timestamp>, name: &str| {
            t.as_ref()
                .and_then(from_timestamp)
                .ok_or_else(|| ReportError::Malformed(format!("{name} is missing or invalid")))
        };
        Ok(Report {
            license_id: m.license_id,
            agent_key,
            seq: m.seq,
            prev_digest,
            window_start: ts(&m.window_start, "window_start")?,
            window_end: ts(&m.window_end, "window_end")?,
            created_at: ts(&m.created_at, "created_at")?,
            counters: m
                .counters
                .into_iter()
                .map(|c| Counter {
                    metric: c.metric,
                    quantity: c.quantity,
                })
                .collect(),
            agent_version: m.agent_version,
        })
    }

    /// Counters must be sorted by metric, unique, with valid names and quantities in
    /// `1..=MAX_QUANTITY` whose sum does not overflow.
    pub fn check_counters(&self) -> Result<(), CounterError> {
        let mut total: u64 = 0;
        for (i, c) in self.counters.iter().enumerate() {
            validate_metric_name(&c.metric).map_err(|e| CounterError(e.to_string()))?;
            if c.quantity == 0 {
                return Err(CounterError(format!("quantity of {} is zero", c.metric)));
            }
            if c.quantity > MAX_QUANTITY {
                return Err(CounterError(format!(
                    "quantity of {} exceeds {MAX_QUANTITY}",
                    c.metric
                )));
            }
            total = total
                .checked_add(c.quantity)
                .filter(|t| *t <= MAX_QUANTITY)
                .ok_or_else(|| CounterError("sum of quantities overflows".into()))?;
            if i > 0 && self.counters[i - 1].metric >= c.metric {
                return Err(CounterError(format!(
                    "counters are not sorted and unique at {:?}",
                    c.metric
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    pub(crate) fn sample() -> Report {
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        Report {
            license_id: "lic_1".into(),
            agent_key: [7; 32],
            seq: 2,
            prev_digest: Some(Digest([1; 32])),
            window_start: t,
            window_end: t + chrono::Duration::hours(1),
            counters: vec![
                Counter {
                    metric: "api.convert".into(),
                    quantity: 3,
                },
                Counter {
                    metric: "api.render".into(),
                    quantity: 1,
                },
            ],
            created_at: t + chrono::Duration::hours(1),
            agent_version: "0.1.0".into(),
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(Report::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn bytes_outside_the_known_fields_are_malformed() {
        let r = sample();
        // An unknown field (15, a string) appended, and one in the middle of a counter.
        let mut extra = r.encode();
        extra.extend_from_slice(&[(15 << 3) | 2, 3, b'd', b'o', b'c']);
        assert!(matches!(
            Report::decode(&extra),
            Err(ReportError::Malformed(m)) if m.contains("outside the fields")
        ));
        let mut counter = pb::Counter {
            metric: "api.convert".into(),
            quantity: 3,
        }
        .encode_to_vec();
        counter.extend_from_slice(&[(9 << 3), 1]); // field 9, varint 1
        let mut m = r.to_pb();
        m.counters.clear();
        let mut bytes = m.encode_to_vec();
        bytes.push((7 << 3) | 2); // field 7: counters
        bytes.push(counter.len() as u8);
        bytes.extend_from_slice(&counter);
        assert!(Report::decode(&bytes).is_err());
    }

    #[test]
    fn structural_errors() {
        let mut r = sample();
        r.seq = 0;
        assert!(matches!(
            Report::decode(&r.encode()),
            Err(ReportError::Malformed(_))
        ));
        assert!(matches!(
            Report::decode(&[0xff, 0xff]),
            Err(ReportError::Malformed(_))
        ));
        assert!(matches!(
            Report::decode(&vec![0u8; MAX_REPORT_BYTES + 1]),
            Err(ReportError::TooLarge(_))
        ));
        let mut r = sample();
        r.counters = (0..257)
            .map(|i| Counter {
                metric: format!("m{i:03}"),
                quantity: 1,
            })
            .collect();
        assert!(matches!(
            Report::decode(&r.encode()),
            Err(ReportError::TooLarge(_))
        ));
    }

    #[test]
    fn counter_rules() {
        assert!(sample().check_counters().is_ok());
        let mut r = sample();
        r.counters.swap(0, 1);
        assert!(r.check_counters().is_err());
        let mut r = sample();
        r.counters[1].metric = "api.convert".into();
        assert!(r.check_counters().is_err());
        let mut r = sample();
        r.counters[0].quantity = 0;
        assert!(r.check_counters().is_err());
        let mut r = sample();
        r.counters[0].quantity = MAX_QUANTITY;
        assert!(r.check_counters().is_err(), "sum overflow must be caught");
        let mut r = sample();
        r.counters[0].metric = "Bad".into();
        assert!(r.check_counters().is_err());
    }
}

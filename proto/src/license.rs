//! License documents: what the vendor sells, signed by the vendor key and armored as text.
//!
//! ```text
//! -----BEGIN TALLY LICENSE-----
//! base64 of an encoded SignedLicense, wrapped at 64 columns
//! -----END TALLY LICENSE-----
//! ```

use crate::limits::{MAX_LICENSE_FILE_BYTES, MAX_SHORT_STRING};
use crate::metric::validate_metric_name;
use crate::pb;
use crate::signing::{self, Domain, SignatureError};
use crate::time::{Instant, from_timestamp, to_timestamp};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;

const BEGIN: &str = "-----BEGIN TALLY LICENSE-----";
const END: &str = "-----END TALLY LICENSE-----";

/// A metric a license allows, with its optional per-calendar-month limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicensedMetric {
    pub metric: String,
    pub limit: Option<u64>,
}

/// A license, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct License {
    pub license_id: String,
    pub customer_id: String,
    pub metrics: Vec<LicensedMetric>,
    pub not_before: Instant,
    pub not_after: Instant,
    pub grace_secs: u64,
    pub collector_endpoint: String,
}

/// Why a license file or document is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    #[error("license file is larger than {MAX_LICENSE_FILE_BYTES} bytes")]
    TooLarge,
    #[error("license file has no '{BEGIN}' line")]
    NoBegin,
    #[error("license file has no '{END}' line after the BEGIN line")]
    NoEnd,
    #[error("license file body is not valid base64: {0}")]
    Base64(String),
    #[error("license file does not decode: {0}")]
    Decode(String),
    #[error("license signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("license is signed by {found}, expected the vendor key {expected}")]
    WrongVendor { found: String, expected: String },
    #[error("license is not valid: {0}")]
    Invalid(String),
}

impl License {
    /// Checks the fields every license must satisfy.
    pub fn validate(&self) -> Result<(), LicenseError> {
        let inv = |s: String| Err(LicenseError::Invalid(s));
        for (name, v) in [
            ("license_id", &self.license_id),
            ("customer_id", &self.customer_id),
        ] {
            if v.is_empty() || v.len() > MAX_SHORT_STRING {
                return inv(format!("{name} must be 1 to {MAX_SHORT_STRING} bytes"));
            }
        }
        if self.metrics.is_empty() {
            return inv("a license lists at least one metric".into());
        }
        let mut names: Vec<&str> = Vec::new();
        for m in &self.metrics {
            validate_metric_name(&m.metric).map_err(|e| LicenseError::Invalid(e.to_string()))?;
            if names.contains(&m.metric.as_str()) {
                return inv(format!("metric {} is listed twice", m.metric));
            }
            if m.limit == Some(0) {
                return inv(format!("limit of {} must be at least 1", m.metric));
            }
            names.push(&m.metric);
        }
        if self.not_after <= self.not_before {
            return inv("not_after must be after not_before".into());
        }
        if self.collector_endpoint.len() > 2048 {
            return inv("collector_endpoint is too long".into());
        }
        Ok(())
    }

    /// The limit for `metric`, `None` if the metric is not licensed, `Some(None)` if
    /// unlimited.
    pub fn metric(&self, metric: &str) -> Option<&LicensedMetric> {
        self.metrics.iter().find(|m| m.metric == metric)
    }

    /// Encodes and signs with the vendor key.
    pub fn sign(&self, vendor: &SigningKey) -> pb::SignedLicense {
        let license = pb::License {
            license_id: self.license_id.clone(),
            customer_id: self.customer_id.clone(),
            metrics: self
                .metrics
                .iter()
                .map(|m| pb::LicensedMetric {
                    metric: m.metric.clone(),
                    limit: m.limit,
                })
                .collect(),
            not_before: Some(to_timestamp(self.not_before)),
            not_after: Some(to_timestamp(self.not_after)),
            grace_seconds: self.grace_secs,
            collector_endpoint: self.collector_endpoint.clone(),
        }
        .encode_to_vec();
        let signature = signing::sign(vendor, Domain::License, &license).to_vec();
        let public = vendor.verifying_key().to_bytes();
        pb::SignedLicense {
            license,
            signature,
            vendor_key: public.to_vec(),
            key_id: crate::keys::key_id(&public),
        }
    }

    /// Verifies a signed license (against `expected_vendor` when given, otherwise against
    /// the key it names) and decodes it.
    pub fn verify(
        signed: &pb::SignedLicense,
        expected_vendor: Option<&VerifyingKey>,
    ) -> Result<(License, VerifyingKey), LicenseError> {
        let key = signing::trusted_key(&signed.vendor_key)?;
        if let Some(expected) = expected_vendor
            && expected != &key
        {
            return Err(LicenseError::WrongVendor {
                found: hex::encode(key.to_bytes()),
                expected: hex::encode(expected.to_bytes()),
            });
        }
        signing::verify(&key, Domain::License, &signed.license, &signed.signature)?;
        // Licenses signed before key ids existed name none; one that names an id must name
        // its own key's.
        if !signed.key_id.is_empty() && signed.key_id != crate::keys::key_id(&key.to_bytes()) {
            return Err(LicenseError::Invalid(format!(
                "key id {:?} is not the id of the key that signed it",
                signed.key_id
            )));
        }
        let m = pb::License::decode(signed.license.as_slice())
            .map_err(|e| LicenseError::Decode(e.to_string()))?;
        let ts = |t: &Option<prost_types::Timestamp>, name: &str| {
            t.as_ref()
                .and_then(from_timestamp)
                .ok_or_else(|| LicenseError::Invalid(format!("{name} is missing")))
        };
        let lic = License {
            license_id: m.license_id,
            customer_id: m.customer_id,
            metrics: m
                .metrics
                .into_iter()
                .map(|lm| LicensedMetric {
                    metric: lm.metric,
                    limit: lm.limit,
                })
                .collect(),
            not_before: ts(&m.not_before, "not_before")?,
            not_after: ts(&m.not_after, "not_after")?,
            grace_secs: m.grace_seconds,
            collector_endpoint: m.collector_endpoint,
        };
        lic.validate()?;
        Ok((lic, key))
    }
}

/// Armors a signed license as text.
pub fn armor(signed: &pb::SignedLicense) -> String {
    let b64 = STANDARD.encode(signed.encode_to_vec());
    let mut out = String::with_capacity(b64.len() + 80);
    out.push_str(BEGIN);
    out.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// Parses armored text back into a signed license (not yet verified).
pub fn parse_armored(text: &[u8]) -> Result<pb::SignedLicense, LicenseError> {
    if text.len() > MAX_LICENSE_FILE_BYTES {
        return Err(LicenseError::TooLarge);
    }
    let text = String::from_utf8_lossy(text);
    let mut lines = text.lines().map(str::trim);
    lines
        .by_ref()
        .find(|l| *l == BEGIN)
        .ok_or(LicenseError::NoBegin)?;
    let mut b64 = String::new();
    let mut ended = false;
    for l in lines {
        if l == END {
            ended = true;
            break;
        }
        b64.push_str(l);
    }
    if !ended {
        return Err(LicenseError::NoEnd);
    }
    let bytes = STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| LicenseError::Base64(e.to_string()))?;
    pb::SignedLicense::decode(bytes.as_slice()).map_err(|e| LicenseError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> License {
        License {
            license_id: "lic_1".into(),
            customer_id: "cus_1".into(),
            metrics: vec![
                LicensedMetric {
                    metric: "api.convert".into(),
                    limit: Some(1000),
                },
                LicensedMetric {
                    metric: "api.render".into(),
                    limit: None,
                },
            ],
            not_before: chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            not_after: chrono::Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap(),
            grace_secs: 7 * 86_400,
            collector_endpoint: "http://127.0.0.1:7443".into(),
        }
    }

    #[test]
    fn armor_round_trip_and_verify() {
        let key = crate::keys::generate();
        let text = armor(&sample().sign(&key));
        let signed = parse_armored(text.as_bytes()).unwrap();
        let (lic, vk) = License::verify(&signed, Some(&key.verifying_key())).unwrap();
        assert_eq!(lic, sample());
        assert_eq!(vk, key.verifying_key());
    }

    #[test]
    fn malformed_files_have_clear_errors() {
        let key = crate::keys::generate();
        let text = armor(&sample().sign(&key));
        assert_eq!(parse_armored(b"hello"), Err(LicenseError::NoBegin));
        let no_end = text.replace(END, "");
        assert_eq!(parse_armored(no_end.as_bytes()), Err(LicenseError::NoEnd));
        let bad_b64 = text.replacen('\n', "\n!!", 1);
        assert!(matches!(
            parse_armored(bad_b64.as_bytes()),
            Err(LicenseError::Base64(_))
        ));
        assert_eq!(
            parse_armored(&vec![b'a'; MAX_LICENSE_FILE_BYTES + 1]),
            Err(LicenseError::TooLarge)
        );
        let garbage = format!("{BEGIN}\n{}\n{END}\n", STANDARD.encode([0xffu8; 10]));
        assert!(matches!(
            parse_armored(garbage.as_bytes()),
            Err(LicenseError::Decode(_))
        ));
    }

    #[test]
    fn tampered_or_foreign_licenses_fail() {
        let key = crate::keys::generate();
        let mut signed = sample().sign(&key);
        let other = crate::keys::generate();
        assert!(matches!(
            License::verify(&signed, Some(&other.verifying_key())),
            Err(LicenseError::WrongVendor { .. })
        ));
        let last = signed.license.len() - 1;
        signed.license[last] ^= 1;
        assert!(matches!(
            License::verify(&signed, None),
            Err(LicenseError::Signature(_))
        ));
    }
}

//! Offline bundles: the files that carry reports (agent → vendor) and receipts back.
//!
//! A bundle file is a magic line followed by one encoded protobuf message, so a wrong file
//! is told apart from a damaged one.

use crate::limits::MAX_BUNDLE_BYTES;
use crate::pb;
use prost::Message;

const REPORTS_MAGIC: &[u8] = b"TALLY-REPORTS v1\n";
const RECEIPTS_MAGIC: &[u8] = b"TALLY-RECEIPTS v1\n";

/// Why a bundle file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("file is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("not a {0} file (it does not start with {1:?})")]
    WrongKind(&'static str, String),
    #[error("{0} file is damaged: {1}")]
    Damaged(&'static str, String),
}

fn read<M: Message + Default>(
    bytes: &[u8],
    magic: &[u8],
    kind: &'static str,
) -> Result<M, BundleError> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge);
    }
    let body = bytes.strip_prefix(magic).ok_or_else(|| {
        BundleError::WrongKind(kind, String::from_utf8_lossy(magic).trim().to_string())
    })?;
    M::decode(body).map_err(|e| BundleError::Damaged(kind, e.to_string()))
}

fn write<M: Message>(m: &M, magic: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    m.encode(&mut out).expect("Vec has unlimited capacity");
    out
}

pub fn write_reports(b: &pb::ReportBundle) -> Vec<u8> {
    write(b, REPORTS_MAGIC)
}

pub fn read_reports(bytes: &[u8]) -> Result<pb::ReportBundle, BundleError> {
    read(bytes, REPORTS_MAGIC, "report bundle")
}

pub fn write_receipts(b: &pb::ReceiptBundle) -> Vec<u8> {
    write(b, RECEIPTS_MAGIC)
}

pub fn read_receipts(bytes: &[u8]) -> Result<pb::ReceiptBundle, BundleError> {
    read(bytes, RECEIPTS_MAGIC, "receipt bundle")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let b = pb::ReportBundle {
            reports: vec![pb::SignedReport {
                report: vec![1, 2, 3],
                signature: vec![4; 64],
            }],
            rotations: Vec::new(),
        };
        let bytes = write_reports(&b);
        assert_eq!(read_reports(&bytes).unwrap(), b);
        assert!(matches!(
            read_receipts(&bytes),
            Err(BundleError::WrongKind(..))
        ));
        assert!(matches!(
            read_reports(&bytes[..bytes.len() - 3]),
            Err(BundleError::Damaged(..))
        ));
    }
}

//! Property tests: decoding, verification and license parsing never panic on arbitrary
//! input, and what is signed round-trips.

use proptest::prelude::*;
use tally_proto::license;
use tally_proto::report::Report;
use tally_proto::signing::{self, Domain};

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(r) = Report::decode(&bytes) {
            let _ = r.check_counters();
        }
    }

    #[test]
    fn license_parse_never_panics(text in ".{0,400}") {
        let armored = format!("-----BEGIN TALLY LICENSE-----\n{text}\n-----END TALLY LICENSE-----\n");
        if let Ok(signed) = license::parse_armored(armored.as_bytes()) {
            let _ = license::License::verify(&signed, None);
        }
        let _ = license::parse_armored(text.as_bytes());
    }

    #[test]
    fn verify_rejects_any_flipped_byte(msg in proptest::collection::vec(any::<u8>(), 1..300), at in any::<usize>(), bit in 0u8..8) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let sig = signing::sign(&key, Domain::UsageReport, &msg);
        prop_assert!(signing::verify(&key.verifying_key(), Domain::UsageReport, &msg, &sig).is_ok());
        let mut bad = msg.clone();
        let i = at % bad.len();
        bad[i] ^= 1 << bit;
        prop_assert!(signing::verify(&key.verifying_key(), Domain::UsageReport, &bad, &sig).is_err());
    }
}

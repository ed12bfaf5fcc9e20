//! License files as `tally-agent init` reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tally_proto::license::{License, parse_armored};

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = parse_armored(data) {
        let _ = License::verify(&signed, None);
    }
    // Also as the body between armor lines.
    let mut text = b"-----BEGIN TALLY LICENSE-----\n".to_vec();
    text.extend_from_slice(data);
    text.extend_from_slice(b"\n-----END TALLY LICENSE-----\n");
    if let Ok(signed) = parse_armored(&text) {
        let _ = License::verify(&signed, None);
    }
});

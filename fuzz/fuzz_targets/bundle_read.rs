//! Offline bundles as `tally-collector import` and `tally-agent import-receipts` read them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tally_proto::bundle;
use tally_proto::report::Report;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = bundle::read_reports(data) {
        for r in b.reports {
            if let Ok(rep) = Report::decode(&r.report) {
                let _ = rep.check_counters();
            }
        }
    }
    let _ = bundle::read_receipts(data);
    let mut with_magic = b"TALLY-REPORTS v1\n".to_vec();
    with_magic.extend_from_slice(data);
    let _ = bundle::read_reports(&with_magic);
});

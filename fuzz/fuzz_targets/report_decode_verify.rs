//! Report bytes as the collector receives them: a SignedReport, decoded, checked and
//! verified exactly as ingest does. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tally_proto::pb;
use tally_proto::report::Report;
use tally_proto::signing::{self, Domain};

fuzz_target!(|data: &[u8]| {
    let Ok(signed) = pb::SignedReport::decode(data) else { return };
    let _ = tally_proto::Digest::of(&signed.report);
    let Ok(report) = Report::decode(&signed.report) else { return };
    let _ = report.check_counters();
    if let Ok(key) = signing::verifying_key(&report.agent_key) {
        let _ = signing::verify(&key, Domain::UsageReport, &signed.report, &signed.signature);
        if let Ok(sig) = signing::signature(&signed.signature) {
            let msg = Domain::UsageReport.message(&signed.report);
            let _ = signing::verify_message(&key, &msg, &sig);
        }
    }
    // Whatever decodes re-encodes to something that decodes to the same report.
    assert_eq!(Report::decode(&report.encode()).ok(), Some(report));
});

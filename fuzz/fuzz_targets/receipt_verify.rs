//! Receipts as the agent receives them, verified against a fixed collector key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tally_proto::pb;
use tally_proto::receipt::ReceiptBody;

fuzz_target!(|data: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    if let Ok(r) = pb::Receipt::decode(data) {
        let _ = ReceiptBody::verify(&r, &key.verifying_key());
        // A body the fuzzer made, signed by the right key, must verify iff it decodes.
        let signed = pb::Receipt {
            body: r.body.clone(),
            signature: tally_proto::signing::sign(&key, tally_proto::signing::Domain::ReceiptBody, &r.body).to_vec(),
        };
        let _ = ReceiptBody::verify(&signed, &key.verifying_key());
    }
});

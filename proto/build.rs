//! Generates the `tally.v1` types and services from `tally/v1/*.proto` with protox (pure
//! Rust, so no system `protoc`), and writes the descriptor set to `OUT_DIR` for gRPC
//! reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "tally/v1/report.proto",
        "tally/v1/license.proto",
        "tally/v1/keyring.proto",
        "tally/v1/ingest.proto",
        "tally/v1/recorder.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("tally_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}

//! `tally-proto`: the wire contract of Tally (docs/protocol.md).
//!
//! This is the only crate that knows the wire format. Everything that crosses a process
//! boundary — reports, receipts, licenses, enrollment proofs, offline bundles — is encoded,
//! signed, verified and decoded here, and turned into plain domain types at this boundary.
//! Prost types (`pb`) are re-exported only for the gRPC edges of the agent and collector.

pub mod agent_key;
pub mod batch_signer;
pub mod bundle;
pub mod digest;
pub mod enroll;
pub mod json;
pub mod keyring;
pub mod keys;
pub mod license;
pub mod limits;
pub mod metric;
pub mod reason;
pub mod receipt;
pub mod report;
pub mod signing;
pub mod statement;
pub mod time;

/// Generated `tally.v1` messages and services.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tally.v1");

    /// Encoded `FileDescriptorSet` of the `tally.v1` package, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/tally_descriptor.bin"));
}

pub use digest::Digest;

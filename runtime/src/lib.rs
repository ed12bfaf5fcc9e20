//! `tally-runtime`: the plumbing both binaries share. It knows nothing of reports,
//! licenses or billing; it must never depend on `tally-proto`, the agent or the collector.

pub mod json;

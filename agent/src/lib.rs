//! `tally-agent`: the customer half of Tally. See `ARCHITECTURE.md` for the map.

pub mod agent;
pub mod client;
pub mod commands;
pub mod datadir;
pub mod grpc;
pub mod http;
pub mod key_file;
pub mod metrics;
pub mod running;
pub mod server;
pub mod statement_check;
pub mod status;
pub mod store;
pub mod tls;
pub mod trusted_keys;
pub mod windows;

//! `tally-collector`: the vendor half of Tally. See `ARCHITECTURE.md` for the map.

pub mod agent_rotation;
pub mod backups;
pub mod calendar;
pub mod clock;
pub mod commands;
pub mod datadir;
pub mod grpc;
pub mod http;
pub mod ids;
pub mod ingest;
pub mod keys;
pub mod lifecycle;
pub mod metrics;
pub mod periods;
pub mod ratelimit;
pub mod roles;
pub mod rules;
pub mod server;
pub mod status;
pub mod store;
pub mod tls;
pub mod usage;
pub mod views;
pub mod webhook;

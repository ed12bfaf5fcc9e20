//! `tally-runtime`: the plumbing both binaries share — the group-commit SQLite
//! writer, HTTP serving with limits for untrusted clients, the command-line contract,
//! `ports.json`, shutdown signals, the service manager's readiness protocol, the
//! rendering of `/metrics` and the optional export of traces. It knows nothing of reports, licenses or billing; it must never
//! depend on `tally-proto`, the agent or the collector.

pub mod cli;
pub mod datadir;
pub mod http_serve;
pub mod metrics;
pub mod ports;
pub mod service_manager;
pub mod shutdown;
pub mod sqlite_writer;
pub mod traces;

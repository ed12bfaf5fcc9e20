//! Limits of the wire contract (docs/protocol.md §5). Both sides enforce the same numbers.

/// Largest encoded `UsageReport`, in bytes.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Most counters in one report.
pub const MAX_COUNTERS: usize = 256;
/// Longest report window, in seconds (24 h).
pub const MAX_WINDOW_SECS: i64 = 24 * 3600;
/// Most reports in one `Submit` call.
pub const MAX_REPORTS_PER_SUBMIT: usize = 500;
/// Largest `Submit` request, in bytes.
pub const MAX_SUBMIT_BYTES: usize = 4 * 1024 * 1024;
/// Longest metric name, in bytes.
pub const MAX_METRIC_LEN: usize = 64;
/// Largest single quantity. Quantities are stored as signed 64-bit integers, so anything
/// above this could not be summed exactly.
pub const MAX_QUANTITY: u64 = i64::MAX as u64;
/// Longest license id, agent version, enrollment token and similar short strings.
pub const MAX_SHORT_STRING: usize = 128;
/// Largest license file, in bytes.
pub const MAX_LICENSE_FILE_BYTES: usize = 64 * 1024;
/// Largest offline bundle (export/import file), in bytes.
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024 * 1024;

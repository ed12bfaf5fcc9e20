//! Reason codes: why a report was refused or quarantined. One enum for the whole project,
//! so the collector's rules, its receipts and the agent's status speak the same names.
//! On the wire a reason is the string of [`Reason::as_str`] (a receipt's `reason` field).

use crate::receipt::Outcome;

/// Why a report was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // Refusals: the report is not authentic; nothing of it is stored.
    TooLarge,
    Malformed,
    BadSignature,
    UnknownAgent,
    AgentRevoked,
    LicenseMismatch,
    // Quarantine: authentic, stored, not counted until billing releases it.
    MetricNotLicensed,
    InvalidCounters,
    BadWindow,
    WindowOverlap,
    ClockSkew,
    TooOld,
    LicenseInactive,
    ChainMismatch,
    SeqConflict,
}

impl Reason {
    /// Every reason code.
    pub const ALL: [Reason; 15] = [
        Reason::TooLarge,
        Reason::Malformed,
        Reason::BadSignature,
        Reason::UnknownAgent,
        Reason::AgentRevoked,
        Reason::LicenseMismatch,
        Reason::MetricNotLicensed,
        Reason::InvalidCounters,
        Reason::BadWindow,
        Reason::WindowOverlap,
        Reason::ClockSkew,
        Reason::TooOld,
        Reason::LicenseInactive,
        Reason::ChainMismatch,
        Reason::SeqConflict,
    ];

    /// The code as written in receipts, logs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownAgent => "unknown_agent",
            Reason::AgentRevoked => "agent_revoked",
            Reason::LicenseMismatch => "license_mismatch",
            Reason::MetricNotLicensed => "metric_not_licensed",
            Reason::InvalidCounters => "invalid_counters",
            Reason::BadWindow => "bad_window",
            Reason::WindowOverlap => "window_overlap",
            Reason::ClockSkew => "clock_skew",
            Reason::TooOld => "too_old",
            Reason::LicenseInactive => "license_inactive",
            Reason::ChainMismatch => "chain_mismatch",
            Reason::SeqConflict => "seq_conflict",
        }
    }

    /// The outcome a report with this reason gets: `Refused` or `Quarantined`.
    pub fn outcome(self) -> Outcome {
        match self {
            Reason::TooLarge
            | Reason::Malformed
            | Reason::BadSignature
            | Reason::UnknownAgent
            | Reason::AgentRevoked
            | Reason::LicenseMismatch => Outcome::Refused,
            _ => Outcome::Quarantined,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason code {0:?}")]
pub struct UnknownReason(pub String);

impl std::str::FromStr for Reason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_split_into_refusals_and_quarantine() {
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
        }
        let refused = Reason::ALL
            .iter()
            .filter(|r| r.outcome() == Outcome::Refused)
            .count();
        assert_eq!(refused, 6);
        assert!("accepted".parse::<Reason>().is_err());
    }
}

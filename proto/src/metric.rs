//! Metric names: `^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$`, at most 64 bytes.

use crate::limits::MAX_METRIC_LEN;

/// Why a metric name is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricNameError {
    #[error("metric name is empty")]
    Empty,
    #[error("metric name is longer than {MAX_METRIC_LEN} bytes")]
    TooLong,
    #[error(
        "metric name {0:?} is not valid: use lowercase segments like \"api.convert\" \
         (letters, digits, '_', separated by '.', starting with a letter)"
    )]
    Invalid(String),
}

/// Checks a metric name against the contract.
pub fn validate_metric_name(name: &str) -> Result<(), MetricNameError> {
    if name.is_empty() {
        return Err(MetricNameError::Empty);
    }
    if name.len() > MAX_METRIC_LEN {
        return Err(MetricNameError::TooLong);
    }
    let invalid = || MetricNameError::Invalid(name.to_string());
    let mut segments = name.split('.');
    let first = segments.next().ok_or_else(invalid)?;
    let mut chars = first.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_lowercase()) {
        return Err(invalid());
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if !chars.all(ok) {
        return Err(invalid());
    }
    for seg in segments {
        if seg.is_empty() || !seg.chars().all(ok) {
            return Err(invalid());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_contract_examples() {
        for ok in ["api.convert", "a", "pages.rendered_total", "x1.2_b", "a_.b"] {
            assert_eq!(validate_metric_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "Api.convert",
            "1api",
            "_a",
            "api.",
            ".api",
            "api..convert",
            "api-convert",
            "api convert",
            "api.Convert",
            "é",
            "api.convert\0",
        ] {
            assert!(
                validate_metric_name(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(
            validate_metric_name(&"a".repeat(65)),
            Err(MetricNameError::TooLong)
        );
        assert_eq!(validate_metric_name(&"a".repeat(64)), Ok(()));
    }
}

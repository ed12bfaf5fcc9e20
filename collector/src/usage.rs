//! Usage queries: parameters, validation and aggregation of hourly rollups into periods.
//! Shared by `GET /v1/usage` and `tally-collector usage`, so both answer identically.

use crate::calendar::{day_of, hour_of, month_of};
use crate::ids::is_valid_id;
use crate::store::{HourlyUsage, Store, StoreError, UsageFilter};
use std::collections::BTreeMap;
use std::fmt::Write;
use tally_proto::metric::validate_metric_name;
use tally_proto::time::{parse_instant, rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Granularity {
    Hour,
    #[default]
    Day,
    Month,
}

impl Granularity {
    pub fn period_of(self, hour: i64) -> i64 {
        match self {
            Granularity::Hour => hour_of(hour),
            Granularity::Day => day_of(hour),
            Granularity::Month => month_of(hour),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
    Csv,
    Table,
}

/// A validated usage query.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub filter: UsageFilter,
    pub granularity: Granularity,
    pub format: Format,
}

/// A bad parameter: which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct ParamError {
    pub param: String,
    pub message: String,
}

fn perr(param: &str, message: impl Into<String>) -> ParamError {
    ParamError {
        param: param.to_string(),
        message: message.into(),
    }
}

/// Parses `customer, license, metric, from, to, granularity, format` from key/value pairs.
/// Unknown or repeated parameters are errors, so a typo never silently widens a query.
pub fn parse_query(
    pairs: &[(String, String)],
    allow_table: bool,
) -> Result<UsageQuery, ParamError> {
    let mut q = UsageQuery::default();
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in pairs {
        if seen.contains(&k.as_str()) {
            return Err(perr(k, "given more than once"));
        }
        seen.push(k);
        match k.as_str() {
            "customer" | "license" => {
                if !is_valid_id(v) {
                    return Err(perr(k, format!("{:?} is not a valid id", short(v))));
                }
                if k == "customer" {
                    q.filter.customer = Some(v.clone());
                } else {
                    q.filter.license = Some(v.clone());
                }
            }
            "metric" => {
                validate_metric_name(v).map_err(|e| perr(k, e.to_string()))?;
                q.filter.metric = Some(v.clone());
            }
            "from" | "to" => {
                let at = parse_instant(v).map_err(|e| perr(k, e.to_string()))?;
                let t = at.timestamp();
                // Fractions of a second count: 10:00:00.5 is not on the hour.
                if t != hour_of(t) || at.timestamp_subsec_nanos() != 0 {
                    return Err(perr(
                        k,
                        "must be aligned to the hour (usage is kept per hour)",
                    ));
                }
                if k == "from" {
                    q.filter.from = Some(t);
                } else {
                    q.filter.to = Some(t);
                }
            }
            "granularity" => {
                q.granularity = match v.as_str() {
                    "hour" => Granularity::Hour,
                    "day" => Granularity::Day,
                    "month" => Granularity::Month,
                    _ => {
                        return Err(perr(
                            k,
                            format!("{:?} is not one of hour, day, month", short(v)),
                        ));
                    }
                }
            }
            "format" => {
                q.format = match v.as_str() {
                    "json" => Format::Json,
                    "csv" => Format::Csv,
                    "table" if allow_table => Format::Table,
                    _ => {
                        let allowed = if allow_table {
                            "table, csv, json"
                        } else {
                            "json, csv"
                        };
                        return Err(perr(k, format!("{:?} is not one of {allowed}", short(v))));
                    }
                }
            }
            _ => {
                return Err(perr(
                    k,
                    "unknown parameter (allowed: customer, license, metric, from, to, granularity, format)",
                ));
            }
        }
    }
    if let (Some(f), Some(t)) = (q.filter.from, q.filter.to)
        && f >= t
    {
        return Err(perr(
            "to",
            "must be after from (from is inclusive, to exclusive)",
        ));
    }
    Ok(q)
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// One output row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    pub customer: String,
    pub license: String,
    pub metric: String,
    pub period_start: String,
    pub quantity: u64,
}

/// A sum does not fit in 64 bits.
#[derive(Debug, Clone, thiserror::Error)]
#[error("a usage total exceeds the 64-bit range")]
pub struct OverflowError;

/// Sums hourly rows into periods, checked for overflow. Rows are ordered by customer,
/// license, metric, period.
pub fn aggregate(rows: &[HourlyUsage], g: Granularity) -> Result<Vec<UsageRow>, OverflowError> {
    let mut sums: BTreeMap<(&str, &str, &str, i64), u64> = BTreeMap::new();
    for r in rows {
        let e = sums
            .entry((
                &r.customer_id,
                &r.license_id,
                &r.metric,
                g.period_of(r.hour),
            ))
            .or_default();
        *e = e.checked_add(r.quantity).ok_or(OverflowError)?;
    }
    Ok(sums
        .into_iter()
        .map(|((c, l, m, p), q)| UsageRow {
            customer: c.to_string(),
            license: l.to_string(),
            metric: m.to_string(),
            period_start: chrono::DateTime::from_timestamp(p, 0)
                .map(rfc3339)
                .unwrap_or_default(),
            quantity: q,
        })
        .collect())
}

pub const CSV_HEADER: &str = "customer,license,metric,period_start,quantity";

/// CSV (RFC 4180, written by the `csv` crate) with the fixed header. Today every field is
/// an id, a metric name, a timestamp or a number, none of which needs quoting; the writer
/// quotes whatever would.
pub fn to_csv(rows: &[UsageRow]) -> String {
    csv_text(
        CSV_HEADER.split(','),
        rows.iter().map(|r| {
            [
                r.customer.clone(),
                r.license.clone(),
                r.metric.clone(),
                r.period_start.clone(),
                r.quantity.to_string(),
            ]
        }),
    )
}

/// Writes `header` and `records` as CSV text (`\n` line ends, fields quoted when needed).
pub fn csv_text<H, R, F>(header: H, records: R) -> String
where
    H: IntoIterator,
    H::Item: AsRef<[u8]>,
    R: IntoIterator<Item = F>,
    F: IntoIterator,
    F::Item: AsRef<[u8]>,
{
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing to a Vec cannot fail, and every record has the header's field count.
    let _ = w.write_record(header);
    for r in records {
        let _ = w.write_record(r);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

pub fn to_table(rows: &[UsageRow]) -> String {
    let mut out = format!(
        "{:<22} {:<22} {:<28} {:<21} {:>20}\n",
        "CUSTOMER", "LICENSE", "METRIC", "PERIOD_START", "QUANTITY"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<22} {:<22} {:<28} {:<21} {:>20}",
            r.customer, r.license, r.metric, r.period_start, r.quantity
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_rejects() {
        let q = parse_query(
            &kv(&[
                ("from", "2026-01-01"),
                ("to", "2026-02-01"),
                ("granularity", "month"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(q.granularity, Granularity::Month);
        for bad in [
            vec![("from", "yesterday")],
            vec![("from", "2026-01-01T00:30:00Z")],
            vec![("granularity", "week")],
            vec![("format", "xml")],
            vec![("format", "table")],
            vec![("customer", "a'; DROP TABLE reports;--")],
            vec![("metric", "Bad")],
            vec![("colour", "red")],
            vec![("from", "2026-02-01"), ("to", "2026-01-01")],
            vec![("metric", "a"), ("metric", "b")],
        ] {
            assert!(parse_query(&kv(&bad), false).is_err(), "{bad:?}");
        }
    }
}

/// A usage filter that names nothing that exists: a typo must not read as "no usage".
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The customer, license or metric named (the message says which).
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks that the filter's customer and license exist (the license being the customer's,
/// when both are given), and, when the query found no usage, that its metric is one some
/// license in scope lists (usage of an unlisted metric, from a released quarantine, is
/// still found: the check only explains an empty answer).
pub async fn check_filter(
    store: &dyn Store,
    f: &UsageFilter,
    found_rows: bool,
) -> Result<(), FilterError> {
    if let Some(c) = &f.customer
        && !store.customer_exists(c.clone()).await?
    {
        return Err(FilterError::NotFound(format!("customer {c} not found")));
    }
    if f.license.is_none() && (f.metric.is_none() || found_rows) {
        return Ok(());
    }
    let licenses = store.list_licenses(f.customer.clone()).await?;
    let in_scope: Vec<_> = licenses
        .iter()
        .filter(|l| f.license.as_ref().is_none_or(|id| &l.license_id == id))
        .collect();
    if let Some(id) = &f.license
        && in_scope.is_empty()
    {
        return Err(FilterError::NotFound(match &f.customer {
            Some(c) => format!("license {id} not found for customer {c}"),
            None => format!("license {id} not found"),
        }));
    }
    if let Some(m) = &f.metric
        && !found_rows
        && !in_scope
            .iter()
            .any(|l| l.metrics.iter().any(|lm| &lm.metric == m))
    {
        return Err(FilterError::NotFound(format!(
            "metric {m} is in no license{}",
            match (&f.license, &f.customer) {
                (Some(l), _) => format!(" (looked in {l})"),
                (None, Some(c)) => format!(" of customer {c}"),
                (None, None) => String::new(),
            }
        )));
    }
    Ok(())
}

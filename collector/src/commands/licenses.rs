//! `licenses issue | list | revoke`: signed license files and their enrollment tokens.

use super::{CmdResult, CommandError, Ctx, Output, check_id, text_of, usage_err};
use crate::datadir::CollectorFiles;
use crate::ids::{self, hash_secret, is_valid_id};
use crate::store::NewLicense;
use crate::views;
use serde_json::json;
use std::path::PathBuf;
use tally_proto::license::{License, LicensedMetric, armor};
use tally_proto::metric::validate_metric_name;
use tally_proto::time::{parse_duration_secs, parse_end_instant, parse_instant};

/// Parameters of `licenses issue`, as given on the command line.
pub struct IssueArgs {
    pub customer: String,
    pub metrics: Vec<String>,
    pub expires: String,
    pub not_before: Option<String>,
    pub grace: String,
    pub enrollments: u32,
    pub token_ttl: String,
    pub endpoint: String,
    pub out: Option<PathBuf>,
    /// `--alert 80%,100%`: usage alert thresholds.
    pub alert: Option<String>,
}

fn alert_arg(s: &str) -> Result<Vec<u32>, CommandError> {
    crate::rules::alerts::parse_thresholds(s).map_err(|e| usage_err(format!("--alert: {e}")))
}

/// Parses `metric[=LIMIT]`.
pub fn parse_metric_arg(s: &str) -> Result<LicensedMetric, CommandError> {
    let (name, limit) = match s.split_once('=') {
        None => (s, None),
        Some((n, l)) => {
            let l: u64 = l
                .parse()
                .ok()
                .filter(|l| *l >= 1 && *l <= i64::MAX as u64)
                .ok_or_else(|| {
                    usage_err(format!(
                        "--metric {s}: the limit must be a positive integer"
                    ))
                })?;
            (n, Some(l))
        }
    };
    validate_metric_name(name).map_err(|e| usage_err(format!("--metric: {e}")))?;
    Ok(LicensedMetric {
        metric: name.to_string(),
        limit,
    })
}

pub async fn licenses_issue(ctx: &Ctx, a: IssueArgs) -> CmdResult {
    if !is_valid_id(&a.customer) {
        return Err(usage_err("--customer: not a valid customer id"));
    }
    if a.metrics.is_empty() {
        return Err(usage_err("give at least one --metric NAME[=LIMIT]"));
    }
    let metrics = a
        .metrics
        .iter()
        .map(|m| parse_metric_arg(m))
        .collect::<Result<Vec<_>, _>>()?;
    let now = ctx.store.clock().now();
    // A date is the end of that day: "--expires 2027-12-31" includes the 31st.
    let not_after =
        parse_end_instant(&a.expires).map_err(|e| usage_err(format!("--expires: {e}")))?;
    let not_before = match &a.not_before {
        Some(s) => parse_instant(s).map_err(|e| usage_err(format!("--not-before: {e}")))?,
        None => now,
    };
    // In the flags' words, before the license's own checks say it in its fields' words.
    if not_after <= now {
        return Err(usage_err(format!(
            "--expires {} is in the past (it ends at {})",
            a.expires,
            tally_proto::time::rfc3339(not_after)
        )));
    }
    if not_after <= not_before {
        return Err(usage_err(format!(
            "--expires {} must be after --not-before ({})",
            a.expires,
            tally_proto::time::rfc3339(not_before)
        )));
    }
    let grace_secs = if a.grace == "0" {
        0
    } else {
        parse_duration_secs(&a.grace).map_err(|e| usage_err(format!("--grace: {e}")))?
    };
    let ttl =
        parse_duration_secs(&a.token_ttl).map_err(|e| usage_err(format!("--token-ttl: {e}")))?;
    if a.enrollments == 0 {
        return Err(usage_err("--enrollments must be at least 1"));
    }
    let alerts = a.alert.as_deref().map(alert_arg).transpose()?;
    if !(a.endpoint.starts_with("http://") || a.endpoint.starts_with("https://")) {
        return Err(usage_err("--endpoint must be an http:// or https:// URL"));
    }
    let license = License {
        license_id: ids::new_id("lic"),
        customer_id: a.customer.clone(),
        metrics,
        not_before,
        not_after,
        grace_secs,
        collector_endpoint: a.endpoint.clone(),
    };
    license.validate().map_err(|e| usage_err(e.to_string()))?;
    let signed = license.sign(&ctx.vendor_key("licenses issue")?);
    let token = ids::new_secret("enr");
    let out = a.out.unwrap_or_else(|| {
        ctx.dir
            .licenses()
            .join(format!("{}.license", license.license_id))
    });
    if out.exists() {
        return Err(usage_err(format!("{} already exists", out.display())));
    }
    // Before the license is stored: a node whose data directory has no licenses/ yet (a
    // second collector on a shared database) must not store a license it cannot write.
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            CommandError::Runtime(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    ctx.store
        .issue_license(
            NewLicense {
                license: license.clone(),
                signed: prost::Message::encode_to_vec(&signed),
                token_hash: hash_secret(&token),
                enrollments: a.enrollments,
                token_expires: now + chrono::Duration::seconds(ttl as i64),
                alerts: alerts.unwrap_or_default(),
            },
            now,
        )
        .await?;
    std::fs::write(&out, armor(&signed))
        .map_err(|e| CommandError::Runtime(format!("cannot write {}: {e}", out.display())))?;
    ctx.audit("licenses issue", &license.license_id, "ok")
        .await?;
    Ok(Output::new(
        json!({"license_id": license.license_id, "file": out.display().to_string(), "enrollment_token": token}),
        format!(
            "license {}\nfile: {}\nenrollment token (shown once): {token}\n",
            license.license_id,
            out.display()
        ),
    ))
}

pub async fn licenses_list(ctx: &Ctx, customer: Option<String>) -> CmdResult {
    let rows = ctx.store.list_licenses(customer).await?;
    let now = ctx.store.clock().now();
    let json = views::list(&rows, |l| views::license(l, now));
    let text = json
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            format!(
                "{}\t{}\t{}\texpires {}\n",
                text_of(&l["license_id"]),
                text_of(&l["customer_id"]),
                text_of(&l["status"]),
                text_of(&l["not_after"])
            )
        })
        .collect::<String>();
    Ok(Output::new(json, text))
}

/// `licenses alerts ID --alert 80%,100%` (or `none`): replaces a license's thresholds.
pub async fn licenses_alerts(ctx: &Ctx, id: &str, alert: &str) -> CmdResult {
    check_id("license", id)?;
    let p = alert_arg(alert)?;
    ctx.store
        .set_license_alerts(id.to_string(), p.clone())
        .await?;
    let shown: Vec<String> = p.iter().map(|v| format!("{v}%")).collect();
    ctx.audit("licenses alerts", id, &shown.join(",")).await?;
    Ok(Output::new(
        json!({"license_id": id, "alerts": p}),
        format!(
            "{id}: alerts at {}\n",
            if shown.is_empty() {
                "none".to_string()
            } else {
                shown.join(", ")
            }
        ),
    ))
}

pub async fn licenses_revoke(ctx: &Ctx, id: &str) -> CmdResult {
    check_id("license", id)?;
    ctx.store
        .revoke_license(id.to_string(), ctx.store.clock().now())
        .await?;
    ctx.audit("licenses revoke", id, "ok").await?;
    Ok(Output::new(
        json!({"license_id": id, "status": "revoked"}),
        format!("revoked {id}\n"),
    ))
}

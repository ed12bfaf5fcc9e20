//! The operator commands behind `tally-collector`'s CLI. `main.rs` parses arguments; these
//! functions validate them, act through the `Store`, write the audit log and return what
//! to print (one JSON document for `--json`, or text).

use crate::datadir::{CollectorFiles, DataDir};
use crate::ids::{self, hash_secret, is_valid_id};
use crate::roles::Role;
use crate::server::{self, Collector};
use crate::store::{AgentFilter, AuditEntry, NewLicense, Store, StoreError};

mod serve;
use crate::rules::AgentStatus;
use crate::usage::{self, Format};
use crate::views;
use serde_json::{Value, json};
pub use serve::{ServeOptions, serve};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tally_proto::Digest;
use tally_proto::license::{License, LicensedMetric, armor};
use tally_proto::metric::validate_metric_name;
use tally_proto::pb;
use tally_proto::time::{parse_duration_secs, parse_instant};
use tally_proto::{bundle, keys, signing};

pub use tally_runtime::cli::{CmdResult, CommandError, Output};

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Database(m) | StoreError::Unavailable(m) => {
                CommandError::Runtime(format!("database: {m}"))
            }
            other => CommandError::Usage(other.to_string()),
        }
    }
}

fn usage_err(m: impl Into<String>) -> CommandError {
    CommandError::Usage(m.into())
}

/// An opened data directory and the store it uses.
pub struct Ctx {
    pub dir: DataDir,
    pub store: Arc<dyn Store>,
}

impl Ctx {
    /// Opens an initialized data directory and its store (`database`: see
    /// [`crate::store::open`]).
    pub fn open(dir: DataDir, database: Option<&str>) -> Result<Ctx, CommandError> {
        if !dir.vendor_key().exists() {
            return Err(usage_err(format!(
                "{} is not an initialized data directory (hint: run 'tally-collector --data {} init' first)",
                dir.path().display(),
                dir.path().display()
            )));
        }
        let store = crate::store::open(&dir, database, false)?;
        Ok(Ctx { dir, store })
    }

    /// A context over an already opened store (tests and embedders).
    pub fn with_store(dir: DataDir, store: Arc<dyn Store>) -> Ctx {
        Ctx { dir, store }
    }

    pub fn vendor_key(&self) -> Result<ed25519_dalek::SigningKey, CommandError> {
        keys::read(&self.dir.vendor_key()).map_err(|e| CommandError::Runtime(e.to_string()))
    }

    async fn audit(&self, action: &str, target: &str, outcome: &str) -> Result<(), CommandError> {
        self.store
            .audit(AuditEntry {
                at: chrono::Utc::now(),
                actor: "cli".into(),
                action: action.into(),
                target: target.into(),
                outcome: outcome.into(),
            })
            .await?;
        Ok(())
    }
}

/// `init`: data directory, database, vendor key and a first admin token (printed once).
pub async fn init(dir: DataDir, database: Option<&str>) -> CmdResult {
    if dir.vendor_key().exists() {
        return Err(usage_err(format!(
            "{} is already initialized",
            dir.path().display()
        )));
    }
    std::fs::create_dir_all(dir.licenses()).map_err(|e| {
        CommandError::Runtime(format!("cannot create {}: {e}", dir.path().display()))
    })?;
    let key = keys::generate();
    keys::write_new(&dir.vendor_key(), &key).map_err(|e| CommandError::Runtime(e.to_string()))?;
    let store = crate::store::open(&dir, database, true)?;
    let token = ids::new_secret("tally");
    let id = ids::new_id("tok");
    let now = chrono::Utc::now();
    store
        .create_token(
            id.clone(),
            hash_secret(&token),
            Role::Admin,
            "initial admin".into(),
            now,
        )
        .await?;
    let ctx = Ctx { dir, store };
    ctx.audit("init", &id, "ok").await?;
    let collector_key = hex::encode(key.verifying_key().to_bytes());
    Ok(Output::new(
        json!({"admin_token": token, "collector_key": collector_key, "admin_token_id": id}),
        format!(
            "Initialized {}.\ncollector key: {collector_key}\nadmin token (shown once, keep it safe): {token}\n",
            ctx.dir.path().display()
        ),
    ))
}

pub async fn customers_add(ctx: &Ctx, name: &str) -> CmdResult {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(usage_err(
            "customer name must be 1 to 200 printable characters",
        ));
    }
    let c = ctx
        .store
        .add_customer(name.to_string(), chrono::Utc::now())
        .await?;
    ctx.audit("customers add", &c.id, "ok").await?;
    Ok(Output::new(
        json!({"id": c.id, "name": c.name}),
        format!("{}\n", c.id),
    ))
}

pub async fn customers_list(ctx: &Ctx) -> CmdResult {
    let rows = ctx.store.list_customers(None).await?;
    let text = rows
        .iter()
        .map(|c| format!("{}\t{}\n", c.id, c.name))
        .collect::<String>();
    Ok(Output::new(views::list(&rows, views::customer), text))
}

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
    let now = chrono::Utc::now();
    let not_after = parse_instant(&a.expires).map_err(|e| usage_err(format!("--expires: {e}")))?;
    let not_before = match &a.not_before {
        Some(s) => parse_instant(s).map_err(|e| usage_err(format!("--not-before: {e}")))?,
        None => now,
    };
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
    if not_after <= now {
        return Err(usage_err("--expires is in the past"));
    }
    let signed = license.sign(&ctx.vendor_key()?);
    let token = ids::new_secret("enr");
    let out = a.out.unwrap_or_else(|| {
        ctx.dir
            .licenses()
            .join(format!("{}.license", license.license_id))
    });
    if out.exists() {
        return Err(usage_err(format!("{} already exists", out.display())));
    }
    ctx.store
        .issue_license(
            NewLicense {
                license: license.clone(),
                signed: prost::Message::encode_to_vec(&signed),
                token_hash: hash_secret(&token),
                enrollments: a.enrollments,
                token_expires: now + chrono::Duration::seconds(ttl as i64),
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
    let now = chrono::Utc::now();
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

pub async fn licenses_revoke(ctx: &Ctx, id: &str) -> CmdResult {
    check_id("license", id)?;
    ctx.store
        .revoke_license(id.to_string(), chrono::Utc::now())
        .await?;
    ctx.audit("licenses revoke", id, "ok").await?;
    Ok(Output::new(
        json!({"license_id": id, "status": "revoked"}),
        format!("revoked {id}\n"),
    ))
}

fn check_id(what: &str, id: &str) -> Result<(), CommandError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(usage_err(format!("{id:?} is not a valid {what} id")))
    }
}

pub async fn agents_add(ctx: &Ctx, license: &str, key_hex: &str) -> CmdResult {
    check_id("license", license)?;
    let bytes = hex::decode(key_hex.trim())
        .map_err(|_| usage_err("--key must be 64 hexadecimal characters"))?;
    let key = signing::verifying_key(&bytes).map_err(|e| usage_err(format!("--key: {e}")))?;
    if key.is_weak() {
        return Err(usage_err("--key is a weak (small-order) ed25519 key"));
    }
    let id = ctx
        .store
        .add_agent(license.to_string(), key.to_bytes(), chrono::Utc::now())
        .await?;
    ctx.audit("agents add", &id, "ok").await?;
    Ok(Output::new(json!({"agent_id": id}), format!("{id}\n")))
}

pub async fn agents_list(ctx: &Ctx, filter: AgentFilter, status: Option<String>) -> CmdResult {
    let only = match status.as_deref() {
        None => None,
        Some(s) => Some(
            AgentStatus::parse(s)
                .ok_or_else(|| usage_err("--status must be active, silent or revoked"))?,
        ),
    };
    let rows = ctx.store.list_agents(filter).await?;
    let rows = views::agents_with_status(
        rows,
        chrono::Utc::now(),
        server::DEFAULT_SILENT_AFTER_SECS,
        only,
    );
    // The CLI's documented fields: agent_id, key, license_id, status, last_seq, last_seen.
    let json_rows: Vec<Value> = rows
        .iter()
        .map(|(a, s)| {
            let mut v = views::agent(a, *s);
            if let Some(o) = v.as_object_mut() {
                o.remove("customer_id");
            }
            v
        })
        .collect();
    let text = rows
        .iter()
        .map(|(a, s)| {
            format!(
                "{}\t{}\t{}\tlast_seq {}\n",
                a.agent_id,
                a.license_id,
                s.as_str(),
                a.last_seq
            )
        })
        .collect::<String>();
    Ok(Output::new(Value::Array(json_rows), text))
}

pub async fn agents_revoke(ctx: &Ctx, id: &str) -> CmdResult {
    check_id("agent", id)?;
    ctx.store
        .revoke_agent(id.to_string(), chrono::Utc::now())
        .await?;
    ctx.audit("agents revoke", id, "ok").await?;
    Ok(Output::new(
        json!({"agent_id": id, "status": "revoked"}),
        format!("revoked {id}\n"),
    ))
}

pub async fn tokens_create(ctx: &Ctx, role: &str, name: Option<String>) -> CmdResult {
    let role: Role = role
        .parse()
        .map_err(|e: crate::roles::RoleParseError| usage_err(format!("--role: {e}")))?;
    let name = name.unwrap_or_default();
    if name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(usage_err("--name must be at most 200 printable characters"));
    }
    let token = ids::new_secret("tally");
    let id = ids::new_id("tok");
    ctx.store
        .create_token(
            id.clone(),
            hash_secret(&token),
            role.clone(),
            name,
            chrono::Utc::now(),
        )
        .await?;
    ctx.audit("tokens create", &id, &format!("ok role={role}"))
        .await?;
    Ok(Output::new(
        json!({"id": id, "token": token, "role": role.to_string()}),
        format!("{id}\ntoken (shown once): {token}\n"),
    ))
}

pub async fn tokens_list(ctx: &Ctx) -> CmdResult {
    let rows = ctx.store.list_tokens().await?;
    let text = rows
        .iter()
        .map(|t| {
            format!(
                "{}\t{}\t{}{}\n",
                t.id,
                t.role,
                t.name,
                if t.revoked { "\trevoked" } else { "" }
            )
        })
        .collect::<String>();
    Ok(Output::new(views::list(&rows, views::token), text))
}

pub async fn tokens_revoke(ctx: &Ctx, id: &str) -> CmdResult {
    check_id("token", id)?;
    ctx.store
        .revoke_token(id.to_string(), chrono::Utc::now())
        .await?;
    ctx.audit("tokens revoke", id, "ok").await?;
    Ok(Output::new(
        json!({"id": id, "status": "revoked"}),
        format!("revoked {id}\n"),
    ))
}

/// `usage`: the same query as `GET /v1/usage`, answered from the local database.
pub async fn usage(ctx: &Ctx, pairs: Vec<(String, String)>, json_out: bool) -> CmdResult {
    let explicit_format = pairs.iter().any(|(k, _)| k == "format");
    let mut q = usage::parse_query(&pairs, true).map_err(|e| usage_err(format!("--{e}")))?;
    if !explicit_format {
        q.format = Format::Table;
    }
    let rows = ctx.store.hourly_usage(q.filter.clone()).await?;
    let rows =
        usage::aggregate(&rows, q.granularity).map_err(|e| CommandError::Runtime(e.to_string()))?;
    let text = match (json_out, q.format) {
        (false, Format::Csv) => usage::to_csv(&rows),
        (false, Format::Json) => {
            serde_json::to_string_pretty(&json!({"rows": rows})).unwrap_or_default() + "\n"
        }
        _ => usage::to_table(&rows),
    };
    Ok(Output::new(json!({"rows": rows}), text))
}

/// `import FILE`: a report bundle through the normal ingest path (`too_old` at 400 days).
pub async fn import(ctx: &Ctx, file: &Path, receipts_out: Option<&Path>) -> CmdResult {
    let bytes = std::fs::read(file)
        .map_err(|e| usage_err(format!("cannot read {}: {e}", file.display())))?;
    let b =
        bundle::read_reports(&bytes).map_err(|e| usage_err(format!("{}: {e}", file.display())))?;
    let collector = Collector::new(ctx.store.clone(), ctx.vendor_key()?);
    let (receipts, verdicts) = collector
        .ingestor
        .import(b.reports)
        .await
        .map_err(|e| CommandError::Runtime(e.to_string()))?;
    if let Some(out) = receipts_out {
        std::fs::write(out, bundle::write_receipts(&pb::ReceiptBundle { receipts }))
            .map_err(|e| CommandError::Runtime(format!("cannot write {}: {e}", out.display())))?;
    }
    let summary = crate::views::import_summary(&verdicts);
    let counts = summary["counts"].as_object().cloned().unwrap_or_default();
    ctx.audit(
        "import",
        &file.display().to_string(),
        &serde_json::to_string(&counts).unwrap_or_default(),
    )
    .await?;
    let text = counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}\n"))
        .collect::<String>();
    Ok(Output::new(summary, text))
}

pub async fn quarantine_list(ctx: &Ctx) -> CmdResult {
    let rows = ctx.store.quarantine(None).await?;
    let text = rows
        .iter()
        .map(|q| {
            format!(
                "{}\t{}\tseq {}\t{}\t{}\n",
                q.digest, q.agent_id, q.seq, q.reason, q.detail
            )
        })
        .collect::<String>();
    Ok(Output::new(views::list(&rows, views::quarantined), text))
}

fn parse_digest(s: &str) -> Result<Digest, CommandError> {
    s.parse::<Digest>().map_err(|e| usage_err(e.to_string()))
}

pub async fn quarantine_release(ctx: &Ctx, digest: &str) -> CmdResult {
    let d = parse_digest(digest)?;
    let counted = ctx.store.release(d, chrono::Utc::now()).await?;
    let status = if counted {
        "released"
    } else {
        "already_counted"
    };
    ctx.audit("quarantine release", &d.to_hex(), status).await?;
    Ok(Output::new(
        json!({"digest": d.to_hex(), "status": status}),
        format!("{status} {d}\n"),
    ))
}

pub async fn quarantine_discard(ctx: &Ctx, digest: &str) -> CmdResult {
    let d = parse_digest(digest)?;
    ctx.store.discard(d, chrono::Utc::now()).await?;
    ctx.audit("quarantine discard", &d.to_hex(), "discarded")
        .await?;
    Ok(Output::new(
        json!({"digest": d.to_hex(), "status": "discarded"}),
        format!("discarded {d}\n"),
    ))
}

pub async fn audit_list(ctx: &Ctx, limit: u32) -> CmdResult {
    let rows = ctx.store.list_audit(limit).await?;
    let text = rows
        .iter()
        .map(|e| {
            format!(
                "{}\t{}\t{}\t{}\t{}\n",
                tally_proto::time::rfc3339(e.at),
                e.actor,
                e.action,
                e.target,
                e.outcome
            )
        })
        .collect::<String>();
    Ok(Output::new(views::list(&rows, views::audit), text))
}

/// A JSON string's text (for table output built from a view).
fn text_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

//! The operator commands behind `tally-collector`'s CLI. `main.rs` parses arguments; these
//! functions validate them, act through the `Store`, write the audit log and return what
//! to print (one JSON document for `--json`, or text).

use crate::datadir::{CollectorFiles, DataDir};
use crate::ids::{self, hash_secret, is_valid_id};
use crate::roles::Role;
use crate::store::{AuditEntry, Store, StoreError};

mod agents;
mod backup;
mod cancel;
mod keyring;
mod licenses;
mod periods;
mod review;
mod serve;
mod tokens;
use crate::views;
pub use agents::{agents_add, agents_list, agents_revoke};
pub use backup::{backup, backup_verify, restore};
pub use cancel::customers_cancel;
pub use keyring::{keys_list, keys_revoke, keys_rotate_collector, keys_rotate_vendor};
pub use licenses::{
    IssueArgs, licenses_alerts, licenses_issue, licenses_list, licenses_revoke, parse_metric_arg,
};
pub use periods::{
    periods_close, periods_list, retention_apply, retention_list, statements_verify,
};
pub use review::{
    audit_list, import, quarantine_discard, quarantine_list, quarantine_release, usage,
};
use serde_json::{Value, json};
pub use serve::{
    BackupOptions, CheckedServe, DEFAULT_UI_IDLE_SECS, ServeOptions, config_check, serve,
};
use std::sync::Arc;
use tally_proto::keys;
pub use tokens::{tokens_create, tokens_list, tokens_revoke};

pub use tally_runtime::cli::{CmdResult, CommandError, Output};

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Database(m) | StoreError::Unavailable(m) | StoreError::Contended(m) => {
                CommandError::Runtime(format!("database: {m}"))
            }
            other => CommandError::Usage(other.to_string()),
        }
    }
}

impl From<crate::keys::KeysError> for CommandError {
    fn from(e: crate::keys::KeysError) -> Self {
        use crate::keys::KeysError as K;
        match e {
            K::Store(s) => s.into(),
            // A node set up wrong (a key missing or foreign): exit 2, so a service manager
            // does not restart it in a loop.
            K::NoKeyring(_) | K::MissingKey { .. } | K::NoVendorKey { .. } | K::Invalid(_) => {
                CommandError::Usage(e.to_string())
            }
            K::BadKeyring { .. } | K::KeyFile(_) | K::NoCurrentKey(_) => {
                CommandError::Runtime(e.to_string())
            }
        }
    }
}

pub(crate) fn usage_err(m: impl Into<String>) -> CommandError {
    CommandError::Usage(m.into())
}

/// A duration flag (`3d`, `12h`, …) in seconds.
pub(crate) fn duration_arg(flag: &str, value: &str) -> Result<i64, CommandError> {
    tally_proto::time::parse_duration_secs(value.trim())
        .ok()
        .and_then(|s| i64::try_from(s).ok())
        .ok_or_else(|| {
            usage_err(format!(
                "--{flag}: {value:?} is not a duration (e.g. 3d, 12h)"
            ))
        })
}

/// An opened data directory and the store it uses.
pub struct Ctx {
    pub dir: DataDir,
    pub store: Arc<dyn Store>,
}

impl Ctx {
    /// Opens an initialized data directory and its store (`database`: see
    /// [`crate::store::open`]).
    pub async fn open(dir: DataDir, database: Option<&str>) -> Result<Ctx, CommandError> {
        // The store is what makes a directory initialized: a restored one has it before
        // its vendor key is copied back, and read-only commands work on it. (A missing
        // database says "run init first".) Commands that sign ask for the key and name it.
        let store = crate::store::open(&dir, database, false).await?;
        Ok(Ctx { dir, store })
    }

    /// A context over an already opened store (tests and embedders).
    pub fn with_store(dir: DataDir, store: Arc<dyn Store>) -> Ctx {
        Ctx { dir, store }
    }

    /// The vendor key, for `what` (a command that signs licenses or keyrings).
    pub fn vendor_key(
        &self,
        what: &'static str,
    ) -> Result<ed25519_dalek::SigningKey, CommandError> {
        Ok(crate::keys::vendor_key(&self.dir, what)?)
    }

    /// The online keys (receipt and statement keys) and their keyring.
    pub async fn online_keys(&self) -> Result<crate::keys::OnlineKeys, CommandError> {
        Ok(crate::keys::load(self.store.as_ref(), &self.dir).await?)
    }

    pub(crate) async fn audit(
        &self,
        action: &str,
        target: &str,
        outcome: &str,
    ) -> Result<(), CommandError> {
        self.store
            .audit(AuditEntry {
                at: self.store.clock().now(),
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
    // Refuse a database this build cannot open before any file is written.
    let kind = crate::store::check_database_url(database)?;
    if let crate::store::Database::Postgres(_) = kind {
        // A shared database is opened (and migrated) first: one that already belongs to
        // a collector key is not taken over; a new node copies the first node's keys.
        let store = crate::store::open(&dir, database, true).await?;
        if let Some(k) = store.collector_key().await? {
            return Err(usage_err(format!(
                "the database is already initialized (vendor key {}); to add a collector \
                 node, copy the first node's data directory files (keys/, licenses/, and \
                 vendor.key if it issues licenses) instead of running init",
                keys::key_id(&k)
            )));
        }
    }
    std::fs::create_dir_all(dir.licenses()).map_err(|e| {
        CommandError::Runtime(format!("cannot create {}: {e}", dir.path().display()))
    })?;
    let key = keys::generate();
    keys::write_new(&dir.vendor_key(), &key).map_err(|e| CommandError::Runtime(e.to_string()))?;
    // The online keys receipts and statements are signed with, apart from the vendor key
    // (which can then leave this machine: docs/operations.md, "Keys").
    let (receipt, statement) = crate::keys::new_online_keys(&dir)?;
    let store = crate::store::open(&dir, database, true).await?;
    store
        .bind_collector_key(key.verifying_key().to_bytes())
        .await?;
    crate::keys::add_first_keyring(
        store.as_ref(),
        &key,
        Some((&receipt, &statement)),
        store.clock().now(),
    )
    .await?;
    let token = ids::new_secret("tally");
    let id = ids::new_id("tok");
    let now = store.clock().now();
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
    let hex_of = |k: &ed25519_dalek::SigningKey| hex::encode(k.verifying_key().to_bytes());
    // `collector_key`: the key receipts are signed with (what enrollment answers).
    let (collector_key, statement_key, vendor_key) =
        (hex_of(&receipt), hex_of(&statement), hex_of(&key));
    Ok(Output::new(
        json!({
            "admin_token": token,
            "collector_key": collector_key,
            "statement_key": statement_key,
            "vendor_key": vendor_key,
            "admin_token_id": id,
        }),
        format!(
            "Initialized {}.\nvendor key: {vendor_key} (signs licenses and keyrings: keep vendor.key \
             offline once licenses are issued; see docs/operations.md, \"Keys\")\n\
             receipt key: {collector_key}\nstatement key: {statement_key}\n\
             admin token (shown once, keep it safe): {token}\n",
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
        .add_customer(name.to_string(), ctx.store.clock().now())
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
        .map(|c| match c.cancelled_at {
            None => format!("{}\t{}\n", c.id, c.name),
            Some(t) => format!(
                "{}\t{}\tcancelled {}\n",
                c.id,
                c.name,
                tally_proto::time::rfc3339(t)
            ),
        })
        .collect::<String>();
    Ok(Output::new(views::list(&rows, views::customer), text))
}

pub(crate) fn check_id(what: &str, id: &str) -> Result<(), CommandError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(usage_err(format!("{id:?} is not a valid {what} id")))
    }
}

/// A JSON string's text (for table output built from a view).
pub(crate) fn text_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

//! `keys list | rotate --collector | revoke KEYID [--from TIME]`: the deployment's keyring.
//! Rotating and revoking sign a new keyring with the vendor key, so they run where
//! `vendor.key` is; every serving collector picks the new keyring up by itself (within
//! seconds), signing with the new online keys from then on — once `keys/` holds them
//! (copy the new files to every node).

use super::{CmdResult, Ctx, Output, usage_err};
use crate::keys;
use serde_json::json;
use tally_proto::keyring::{KeyEntry, Keyring, Purpose};
use tally_proto::time::rfc3339;

fn entry_json(k: &KeyEntry) -> serde_json::Value {
    json!({
        "key_id": k.key_id,
        "public_key": hex::encode(k.public_key),
        "purposes": k.purposes.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "valid_from": rfc3339(k.valid_from),
        "valid_until": k.valid_until.map(rfc3339),
        "revoked_at": k.revoked_at.map(rfc3339),
        "current": k.is_current(),
    })
}

fn keyring_output(k: &Keyring, headline: &str) -> Output {
    let mut text = format!("{headline}keyring version {}\n", k.version);
    for e in &k.keys {
        let purposes: Vec<&str> = e.purposes.iter().map(|p| p.as_str()).collect();
        let state = match (e.revoked_at, e.valid_until) {
            (Some(r), _) => format!("revoked from {}", rfc3339(r)),
            (None, Some(u)) => format!("until {}", rfc3339(u)),
            (None, None) => "current".into(),
        };
        text.push_str(&format!(
            "{}\t{}\tfrom {}\t{state}\n",
            e.key_id,
            purposes.join(","),
            rfc3339(e.valid_from)
        ));
    }
    Output::new(
        json!({"version": k.version, "keys": k.keys.iter().map(entry_json).collect::<Vec<_>>()}),
        text,
    )
}

/// `keys list`: the newest keyring, verified from the deployment's first vendor key.
pub async fn keys_list(ctx: &Ctx) -> CmdResult {
    let (k, _) = keys::verified_chain(ctx.store.as_ref())
        .await?
        .ok_or_else(|| usage_err("no keyring yet (hint: start `serve` once, or run `init`)"))?;
    Ok(keyring_output(&k, ""))
}

/// `--overlap`: how long replaced keys stay valid, at least [`keys::MIN_OVERLAP_SECS`].
fn overlap_arg(overlap: Option<&str>) -> Result<i64, super::CommandError> {
    let secs = match overlap {
        None => keys::DEFAULT_OVERLAP_SECS,
        Some(d) => super::duration_arg("overlap", d)?,
    };
    if secs < keys::MIN_OVERLAP_SECS {
        return Err(usage_err(format!(
            "--overlap: at least {}s (every serving node takes up to {} s to notice a new \
             keyring, and must not sign with an ended key meanwhile)",
            keys::MIN_OVERLAP_SECS,
            keys::REFRESH_EVERY.as_secs()
        )));
    }
    Ok(secs)
}

/// `keys rotate --collector [--overlap 10m]`: new receipt and statement keys; the old ones
/// stay valid `overlap` longer (while every node switches), then end, and stay listed,
/// valid for what they signed.
pub async fn keys_rotate_collector(ctx: &Ctx, overlap: Option<&str>) -> CmdResult {
    let overlap = overlap_arg(overlap)?;
    let vendor = ctx.vendor_key("keys rotate")?;
    let now = ctx.store.clock().now();
    let until = now + chrono::Duration::seconds(overlap);
    let k = keys::next_keyring(
        ctx.store.as_ref(),
        &ctx.dir,
        &[&vendor],
        true,
        until,
        now,
        |_| Ok(()),
    )
    .await?;
    ctx.audit(
        "keys rotate",
        &format!("keyring {}", k.version),
        "ok collector",
    )
    .await?;
    let mut out = keyring_output(&k, "rotated: new receipt and statement keys\n");
    out.text.push_str(&format!(
        "copy the new files in {} to every collector node\n",
        keys::keys_dir(&ctx.dir).display()
    ));
    Ok(out)
}

/// `keys revoke KEYID [--from TIME]`: what the key signed claiming `TIME` or later (default:
/// now) is refused by agents. Revoking a current online key also makes new online keys.
/// KEYID may also name an agent key: the collector then refuses every report signed by it
/// that arrives at or after `TIME` (`agent_revoked`), judged by the collector's clock.
pub async fn keys_revoke(ctx: &Ctx, key_id: &str, from: Option<&str>) -> CmdResult {
    let now = ctx.store.clock().now();
    let from = match from {
        None => now,
        Some(t) => {
            tally_proto::time::parse_instant(t).map_err(|e| usage_err(format!("--from: {e}")))?
        }
    };
    if from > now {
        return Err(usage_err("--from: a revocation starts now or earlier"));
    }
    if let Some(agent_key) = ctx.store.agent_key_by_id(key_id.to_string()).await? {
        return revoke_agent_key(ctx, &agent_key, from).await;
    }
    let vendor = ctx.vendor_key("keys revoke")?;
    let (newest, _) = keys::verified_chain(ctx.store.as_ref())
        .await?
        .ok_or_else(|| usage_err("no keyring yet"))?;
    let entry = newest.get(key_id).ok_or_else(|| {
        usage_err(format!(
            "key {key_id} is not in the keyring (see `keys list`)"
        ))
    })?;
    if entry.has(Purpose::Vendor) {
        return Err(usage_err(format!(
            "key {key_id} is a vendor key: replace it with `keys rotate --vendor` instead"
        )));
    }
    if entry.revoked_at.is_some_and(|r| r <= from) {
        return Err(usage_err(format!(
            "key {key_id} is already revoked from then on"
        )));
    }
    // The collector must keep signing: a current key revoked is replaced at once.
    let replace = entry.is_current();
    let id = key_id.to_string();
    let k = keys::next_keyring(
        ctx.store.as_ref(),
        &ctx.dir,
        &[&vendor],
        replace,
        now + chrono::Duration::seconds(keys::DEFAULT_OVERLAP_SECS),
        now,
        move |next| {
            let e = next
                .keys
                .iter_mut()
                .find(|e| e.key_id == id)
                .ok_or_else(|| keys::KeysError::Invalid(format!("key {id} vanished")))?;
            e.revoked_at = Some(from.max(e.valid_from));
            Ok(())
        },
    )
    .await?;
    ctx.audit(
        "keys revoke",
        key_id,
        &format!("ok from {} keyring {}", rfc3339(from), k.version),
    )
    .await?;
    Ok(keyring_output(
        &k,
        &format!("revoked {key_id} from {}\n", rfc3339(from)),
    ))
}

/// `keys revoke` of an agent key (no vendor key needed: agent keys are the collector's to
/// accept or refuse).
async fn revoke_agent_key(
    ctx: &Ctx,
    key: &crate::store::AgentKey,
    from: tally_proto::time::Instant,
) -> CmdResult {
    let key_id = tally_proto::keys::key_id(&key.key);
    if key.revoked_at.is_some_and(|r| r <= from) {
        return Err(usage_err(format!(
            "agent key {key_id} is already revoked from then on"
        )));
    }
    ctx.store.revoke_agent_key(key.key, from).await?;
    ctx.audit(
        "keys revoke",
        &key_id,
        &format!("ok: agent key of {} from {}", key.agent_id, rfc3339(from)),
    )
    .await?;
    Ok(Output::new(
        serde_json::json!({
            "agent_key": key_id,
            "agent_id": key.agent_id,
            "license_id": key.license_id,
            "revoked_from": rfc3339(from),
        }),
        format!(
            "revoked agent key {key_id} (agent {}) from {}: its reports arriving from then \
             on are refused (agent_revoked)\n",
            key.agent_id,
            rfc3339(from)
        ),
    ))
}

/// `keys rotate --vendor`: a new vendor key. The new keyring is signed by the old and the
/// new key, so agents follow; the old key ends (licenses it signed stay valid until they
/// expire: they are checked with the key they name). `vendor.key` becomes the new key; the
/// old one is kept beside it as `vendor.key.retired-<key id>` until the operator removes it.
pub async fn keys_rotate_vendor(ctx: &Ctx, overlap: Option<&str>) -> CmdResult {
    use crate::datadir::CollectorFiles;
    let overlap = overlap_arg(overlap)?;
    let old = ctx.vendor_key("keys rotate --vendor")?;
    let old_id = tally_proto::keys::key_id(&old.verifying_key().to_bytes());
    let (newest, _) = keys::verified_chain(ctx.store.as_ref())
        .await?
        .ok_or_else(|| usage_err("no keyring yet"))?;
    newest
        .get(&old_id)
        .filter(|e| e.has(Purpose::Vendor) && e.is_current())
        .ok_or_else(|| {
            usage_err(format!(
                "vendor.key (key {old_id}) is not the current vendor key of the keyring"
            ))
        })?;
    // New online keys too: the next receipt every agent gets then names a key it does not
    // know, so it fetches the keyrings and follows the rotation at once (rather than trusting
    // the old root until some later rotation), and a vendor key that also signed receipts
    // and statements (a deployment from before keyrings) is replaced for those.
    let new_online = true;
    let new = tally_proto::keys::generate();
    let new_id = tally_proto::keys::key_id(&new.verifying_key().to_bytes());
    let now = ctx.store.clock().now();
    let until = now + chrono::Duration::seconds(overlap);
    let staged = ctx.dir.path().join(format!("vendor.key.new-{new_id}"));
    tally_proto::keys::write_new(&staged, &new).map_err(|e| usage_err(e.to_string()))?;
    let new_public = new.verifying_key();
    let id = old_id.clone();
    let result = keys::next_keyring(
        ctx.store.as_ref(),
        &ctx.dir,
        &[&old, &new],
        new_online,
        until,
        now,
        move |next| {
            let e = next
                .keys
                .iter_mut()
                .find(|e| e.key_id == id)
                .ok_or_else(|| keys::KeysError::Invalid(format!("key {id} vanished")))?;
            e.valid_until = Some(until.max(e.valid_from + chrono::Duration::seconds(1)));
            next.keys
                .push(KeyEntry::new(&new_public, &[Purpose::Vendor], now));
            Ok(())
        },
    )
    .await;
    let k = match result {
        Ok(k) => k,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(e.into());
        }
    };
    // The keyring is stored: the new key is the vendor key from now on.
    let retired = ctx.dir.path().join(format!("vendor.key.retired-{old_id}"));
    std::fs::rename(ctx.dir.vendor_key(), &retired)
        .and_then(|()| std::fs::rename(&staged, ctx.dir.vendor_key()))
        .map_err(|e| {
            super::CommandError::Runtime(format!(
                "the new keyring is stored, but the key files could not be renamed ({e}): the \
                 new vendor key is {}",
                staged.display()
            ))
        })?;
    ctx.audit(
        "keys rotate",
        &format!("keyring {}", k.version),
        &format!("ok vendor {old_id} -> {new_id}"),
    )
    .await?;
    let mut out = keyring_output(
        &k,
        &format!("rotated the vendor key: {old_id} -> {new_id}\n"),
    );
    out.text.push_str(&format!(
        "the old vendor key is kept as {} (remove it once backed up)\n",
        retired.display()
    ));
    Ok(out)
}

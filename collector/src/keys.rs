//! The collector's keys: the vendor key (the root, `vendor.key`: signs licenses and
//! keyrings, needed only by `init`, `licenses issue` and the `keys` commands) and the
//! online keys (`keys/<key id>.key`: the receipt key and the statement key `serve` signs
//! with), listed with their validity in the keyring the vendor key signs. Every keyring
//! version is kept in the store, so every collector of a database serves the same chain.
//!
//! Several collector nodes share the online keys (the operator copies `keys/` to each, as
//! `vendor.key` was copied before): agents then check one current receipt key, and a
//! rotation is one keyring for the whole deployment. The cost: a node's leak exposes the
//! shared online keys, which `keys revoke` then retires for every node at once.
//!
//! A deployment made before keyrings has only `vendor.key`: its first keyring lists that
//! one key for every purpose, so receipts and statements keep the key agents already know
//! until `keys rotate --collector` gives them their own.

use crate::datadir::{CollectorFiles, DataDir};
use crate::store::{Store, StoreError};
use ed25519_dalek::SigningKey;
use prost::Message;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tally_proto::keyring::{KeyEntry, Keyring, Purpose};
use tally_proto::pb;
use tally_proto::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the store's keyring {version} does not verify: {reason}")]
    BadKeyring { version: u64, reason: String },
    #[error(
        "the store has no keyring and {0} is missing: start this node once with the vendor key \
         (it writes the first keyring), or copy it from the node that ran init"
    )]
    NoKeyring(String),
    #[error(
        "{path} is missing: this node needs the {purpose} key {key_id} of the keyring (copy \
         keys/ from the node that ran `keys rotate` or init)"
    )]
    MissingKey {
        path: String,
        purpose: &'static str,
        key_id: String,
    },
    #[error("{0}")]
    KeyFile(String),
    #[error("the keyring has no current {0} key")]
    NoCurrentKey(&'static str),
    #[error(
        "{path} is missing: {what} signs with the vendor key (keep it offline and bring it to \
         the machine that runs this command)"
    )]
    NoVendorKey { path: String, what: &'static str },
    #[error("{0}")]
    Invalid(String),
}

/// Where the online keys live in a data directory.
pub fn keys_dir(dir: &DataDir) -> PathBuf {
    dir.path().join("keys")
}

fn key_path(dir: &DataDir, key_id: &str) -> PathBuf {
    keys_dir(dir).join(format!("{key_id}.key"))
}

/// Writes a new online key into `keys/` (0600, never over an existing file).
fn write_online_key(dir: &DataDir, key: &SigningKey) -> Result<String, KeysError> {
    let id = tally_proto::keys::key_id(&key.verifying_key().to_bytes());
    std::fs::create_dir_all(keys_dir(dir)).map_err(|e| {
        KeysError::KeyFile(format!("cannot create {}: {e}", keys_dir(dir).display()))
    })?;
    tally_proto::keys::write_new(&key_path(dir, &id), key)
        .map_err(|e| KeysError::KeyFile(e.to_string()))?;
    Ok(id)
}

/// The vendor key, for a command that signs with it (`what` names the command).
pub fn vendor_key(dir: &DataDir, what: &'static str) -> Result<SigningKey, KeysError> {
    let path = dir.vendor_key();
    if !path.exists() {
        return Err(KeysError::NoVendorKey {
            path: path.display().to_string(),
            what,
        });
    }
    tally_proto::keys::read(&path).map_err(|e| KeysError::KeyFile(e.to_string()))
}

/// Every keyring the store holds, verified as a chain from the first (which must be signed
/// by the deployment's first vendor key, the collector key the store records). Returns the
/// newest keyring with every signed version, oldest first.
pub async fn verified_chain(
    store: &dyn Store,
) -> Result<Option<(Keyring, Vec<(u64, Vec<u8>)>)>, KeysError> {
    let rows = store.keyrings_after(0).await?;
    let Some((_, first)) = rows.first() else {
        return Ok(None);
    };
    let root = store
        .collector_key()
        .await?
        .ok_or_else(|| KeysError::BadKeyring {
            version: 1,
            reason: "the store records no collector (first vendor) key".into(),
        })?;
    let root = tally_proto::signing::trusted_key(&root).map_err(|e| KeysError::BadKeyring {
        version: 1,
        reason: e.to_string(),
    })?;
    let bad = |version: u64, reason: String| KeysError::BadKeyring { version, reason };
    let decode = |v: u64, b: &[u8]| pb::SignedKeyring::decode(b).map_err(|e| bad(v, e.to_string()));
    let mut keyring =
        Keyring::verify_first(&decode(1, first)?, &root).map_err(|e| bad(1, e.to_string()))?;
    for (v, bytes) in &rows[1..] {
        keyring = keyring
            .verify_next(&decode(*v, bytes)?)
            .map_err(|e| bad(*v, e.to_string()))?;
    }
    Ok(Some((keyring, rows)))
}

/// The first keyring of a deployment, signed by `vendor`, stored as version 1. `online`:
/// the receipt and statement keys; `None` for a deployment made before keyrings, whose one
/// key signs everything.
pub async fn add_first_keyring(
    store: &dyn Store,
    vendor: &SigningKey,
    online: Option<(&SigningKey, &SigningKey)>,
    now: Instant,
) -> Result<Keyring, KeysError> {
    let keys = match online {
        Some((receipt, statement)) => vec![
            KeyEntry::new(&vendor.verifying_key(), &[Purpose::Vendor], now),
            KeyEntry::new(&receipt.verifying_key(), &[Purpose::Receipt], now),
            KeyEntry::new(&statement.verifying_key(), &[Purpose::Statement], now),
        ],
        None => vec![KeyEntry::new(
            &vendor.verifying_key(),
            &[Purpose::Vendor, Purpose::Receipt, Purpose::Statement],
            // Everything it ever signed is valid: it signed since the deployment began.
            chrono::DateTime::UNIX_EPOCH,
        )],
    };
    let keyring = Keyring::first(keys, now);
    store
        .add_keyring(1, keyring.sign(&[vendor]).encode_to_vec(), now)
        .await?;
    Ok(keyring)
}

/// Makes the new online keys of `init`: writes them to `keys/`.
pub fn new_online_keys(dir: &DataDir) -> Result<(SigningKey, SigningKey), KeysError> {
    let (receipt, statement) = (tally_proto::keys::generate(), tally_proto::keys::generate());
    write_online_key(dir, &receipt)?;
    write_online_key(dir, &statement)?;
    Ok((receipt, statement))
}

/// The keys a serving collector signs with, and the keyring that certifies them.
pub struct OnlineKeys {
    pub keyring: Keyring,
    /// Every keyring version as signed (for `GetKeyrings` and enrollment).
    pub signed: Vec<(u64, Vec<u8>)>,
    pub receipt: SigningKey,
    pub statement: SigningKey,
    /// The keyring is newer than the private keys: this node lacks the files of its
    /// current keys and signs with the previous ones only while the keyring lets them
    /// ([`OnlineKeys::signing_key`]).
    pub stale: bool,
}

impl OnlineKeys {
    /// One key for everything, as before keyrings (tests, tools, and deployments that
    /// never ran `keys rotate`): a keyring listing `key` for every purpose.
    pub fn single(key: &SigningKey) -> Self {
        let keyring = Keyring::first(
            vec![KeyEntry::new(
                &key.verifying_key(),
                &[Purpose::Vendor, Purpose::Receipt, Purpose::Statement],
                chrono::DateTime::UNIX_EPOCH,
            )],
            chrono::DateTime::UNIX_EPOCH,
        );
        let signed = vec![(1, keyring.sign(&[key]).encode_to_vec())];
        OnlineKeys {
            keyring,
            signed,
            receipt: key.clone(),
            statement: key.clone(),
            stale: false,
        }
    }

    /// The deployment's identity on the status feed: its first vendor key's id.
    pub fn deployment_id(&self) -> String {
        self.keyring
            .keys
            .iter()
            .filter(|k| k.has(Purpose::Vendor))
            .min_by_key(|k| (k.valid_from, k.key_id.clone()))
            .map(|k| k.key_id.clone())
            .unwrap_or_default()
    }

    /// The signed keyrings after `version`, oldest first.
    pub fn signed_after(&self, version: u64) -> Vec<pb::SignedKeyring> {
        self.signed
            .iter()
            .filter(|(v, _)| *v > version)
            .filter_map(|(_, b)| pb::SignedKeyring::decode(b.as_slice()).ok())
            .collect()
    }

    /// The key this node signs `purpose` with, if the keyring lets it sign at `at`: a node
    /// that has not loaded a newer keyring (its key files are missing) must not go on
    /// signing with a key that has ended or been revoked.
    pub fn signing_key(&self, purpose: Purpose, at: Instant) -> Result<&SigningKey, KeysError> {
        let key = match purpose {
            Purpose::Statement => &self.statement,
            _ => &self.receipt,
        };
        let id = tally_proto::keys::key_id(&key.verifying_key().to_bytes());
        self.keyring.key_for(purpose, &id, at).map_err(|e| {
            KeysError::Invalid(format!(
                "this node's {} key {id} may not sign now ({e}); copy the current keys/ \
                     to this node",
                purpose.as_str()
            ))
        })?;
        Ok(key)
    }

    /// The newest signed keyring.
    pub fn newest_signed(&self) -> Option<pb::SignedKeyring> {
        self.signed
            .last()
            .and_then(|(_, b)| pb::SignedKeyring::decode(b.as_slice()).ok())
    }
}

/// The private key of the current `purpose` key: from `keys/`, or `vendor.key` when the
/// current key is the vendor key itself (a deployment made before keyrings).
fn current_private(
    dir: &DataDir,
    keyring: &Keyring,
    purpose: Purpose,
) -> Result<SigningKey, KeysError> {
    // The newest current key for the purpose; a dedicated key before the vendor key.
    let current = keyring.current(purpose);
    let entry = current
        .iter()
        .find(|k| !k.has(Purpose::Vendor))
        .or(current.first())
        .ok_or(KeysError::NoCurrentKey(purpose.as_str()))?;
    let path = if entry.has(Purpose::Vendor) {
        dir.vendor_key()
    } else {
        key_path(dir, &entry.key_id)
    };
    if !path.exists() {
        return Err(KeysError::MissingKey {
            path: path.display().to_string(),
            purpose: purpose.as_str(),
            key_id: entry.key_id.clone(),
        });
    }
    let key = tally_proto::keys::read(&path).map_err(|e| KeysError::KeyFile(e.to_string()))?;
    if tally_proto::keys::key_id(&key.verifying_key().to_bytes()) != entry.key_id {
        return Err(KeysError::KeyFile(format!(
            "{} does not hold key {}",
            path.display(),
            entry.key_id
        )));
    }
    Ok(key)
}

/// Loads what `serve` signs with. A deployment without a keyring gets its first (from
/// `vendor.key`, which must then be here).
pub async fn load(store: &dyn Store, dir: &DataDir) -> Result<OnlineKeys, KeysError> {
    let chain = match verified_chain(store).await? {
        Some(c) => c,
        None => {
            let vendor = vendor_key(dir, "writing the first keyring")
                .map_err(|_| KeysError::NoKeyring(dir.vendor_key().display().to_string()))?;
            store
                .bind_collector_key(vendor.verifying_key().to_bytes())
                .await?;
            match add_first_keyring(store, &vendor, None, store.clock().now()).await {
                // Another node wrote it meanwhile: read theirs.
                Ok(_) | Err(KeysError::Store(StoreError::Conflict(_))) => {}
                Err(e) => return Err(e),
            }
            verified_chain(store)
                .await?
                .ok_or_else(|| KeysError::NoKeyring(dir.vendor_key().display().to_string()))?
        }
    };
    let (keyring, signed) = chain;
    let receipt = current_private(dir, &keyring, Purpose::Receipt)?;
    let statement = current_private(dir, &keyring, Purpose::Statement)?;
    Ok(OnlineKeys {
        keyring,
        signed,
        receipt,
        statement,
        stale: false,
    })
}

/// The online keys a running collector signs with, swapped when a newer keyring appears.
pub struct KeyHandle(RwLock<Arc<OnlineKeys>>);

impl KeyHandle {
    pub fn new(keys: OnlineKeys) -> Self {
        KeyHandle(RwLock::new(Arc::new(keys)))
    }

    pub fn current(&self) -> Arc<OnlineKeys> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, keys: OnlineKeys) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    /// Reloads from the store if it holds a newer keyring than this handle's (or this
    /// node still lacks the files of its keyring's current keys); returns whether it did.
    /// A newer keyring whose keys this node lacks is taken all the same, with the previous
    /// private keys (so agents are served it, and those keys sign only while it lets them),
    /// and the error is returned (logged by the caller).
    pub async fn refresh(&self, store: &dyn Store, dir: &DataDir) -> Result<bool, KeysError> {
        let held = self.current();
        let newer = store.keyrings_after(held.keyring.version).await?;
        if newer.is_empty() && !held.stale {
            return Ok(false);
        }
        let (keyring, signed) = verified_chain(store)
            .await?
            .ok_or_else(|| KeysError::NoKeyring(dir.vendor_key().display().to_string()))?;
        let private = current_private(dir, &keyring, Purpose::Receipt)
            .and_then(|r| current_private(dir, &keyring, Purpose::Statement).map(|s| (r, s)));
        match private {
            Ok((receipt, statement)) => {
                self.replace(OnlineKeys {
                    keyring,
                    signed,
                    receipt,
                    statement,
                    stale: false,
                });
                Ok(true)
            }
            Err(e) => {
                if keyring.version > held.keyring.version {
                    self.replace(OnlineKeys {
                        keyring,
                        signed,
                        receipt: held.receipt.clone(),
                        statement: held.statement.clone(),
                        stale: true,
                    });
                }
                Err(e)
            }
        }
    }
}

/// Removes the private files of online keys that can sign nothing any more (ended or
/// revoked by `now`): a copy of them on a node's disk could only be misused, and what they
/// signed is checked with their public keys, which the keyring keeps. Returns the ids of
/// the keys whose files it removed. Vendor keys are never touched (`keys rotate --vendor`
/// keeps the retired one on purpose, for the operator to back up).
pub fn remove_retired(dir: &DataDir, keyring: &Keyring, now: Instant) -> Vec<String> {
    let mut removed = Vec::new();
    for k in &keyring.keys {
        let ended =
            k.valid_until.is_some_and(|t| t <= now) || k.revoked_at.is_some_and(|t| t <= now);
        if !ended || k.has(Purpose::Vendor) {
            continue;
        }
        let path = key_path(dir, &k.key_id);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(k.key_id.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Cannot remove the private key of an ended online key.")
            }
        }
    }
    removed
}

/// How often `serve` looks for a newer keyring.
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Checks the keyring every `every` and swaps in newer keys until `stop` resolves.
pub async fn refresh_loop(
    store: Arc<dyn Store>,
    dir: DataDir,
    handle: Arc<KeyHandle>,
    every: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match handle.refresh(store.as_ref(), &dir).await {
                    Ok(true) => {
                        let k = handle.current();
                        tracing::info!(version = k.keyring.version, "Signing with the keys of a new keyring.");
                    }
                    Ok(false) => {}
                    Err(e @ KeysError::MissingKey { .. }) => tracing::error!(error = %e, "This node lacks the keys of the newest keyring; it signs with the previous keys only while the keyring lets them (copy keys/ here)."),
                    Err(e) => tracing::error!(error = %e, "A newer keyring cannot be used here; still signing with the previous keys."),
                }
                let keyring = handle.current().keyring.clone();
                for key_id in remove_retired(&dir, &keyring, store.clock().now()) {
                    tracing::info!(key_id = %key_id, "Removed the private key of an ended online key.");
                }
            }
            _ = &mut stop => break,
        }
    }
}

/// How long replaced online keys stay valid after a rotation: collectors switch within
/// [`REFRESH_EVERY`] once they have the new key files, and a receipt one signs meanwhile
/// with the old key must still be good. Copy `keys/` to every node within this time.
pub const DEFAULT_OVERLAP_SECS: i64 = 10 * 60;

/// The shortest overlap a rotation may have: five refresh periods. A serving node learns
/// of a new keyring only at its next refresh; with a shorter overlap it could sign a
/// receipt with a key that has already ended (one its agents, once they hold the new
/// keyring, refuse).
pub const MIN_OVERLAP_SECS: i64 = 5 * REFRESH_EVERY.as_secs() as i64;

/// What `keys rotate --collector` / `keys revoke` change: the next keyring from `newest`,
/// with new online keys (written to `keys/`) when `new_online`, the replaced ones valid
/// until `old_until`; `edit` applies the rest.
#[allow(clippy::too_many_arguments)]
pub async fn next_keyring(
    store: &dyn Store,
    dir: &DataDir,
    vendor_signers: &[&SigningKey],
    new_online: bool,
    old_until: Instant,
    now: Instant,
    edit: impl FnOnce(&mut Keyring) -> Result<(), KeysError>,
) -> Result<Keyring, KeysError> {
    let (newest, _) = verified_chain(store)
        .await?
        .ok_or_else(|| KeysError::NoKeyring(dir.vendor_key().display().to_string()))?;
    let mut next = newest.clone();
    next.version += 1;
    next.issued_at = now;
    edit(&mut next)?;
    if new_online {
        for k in &mut next.keys {
            // Dedicated online keys end now; a vendor key that also signed receipts and
            // statements (before keyrings) stays the root, and is simply no longer used
            // for them.
            if k.is_current() && !k.has(Purpose::Vendor) {
                k.valid_until = Some(old_until.max(k.valid_from + chrono::Duration::seconds(1)));
            }
        }
        let (receipt, statement) = (tally_proto::keys::generate(), tally_proto::keys::generate());
        write_online_key(dir, &receipt)?;
        write_online_key(dir, &statement)?;
        next.keys.push(KeyEntry::new(
            &receipt.verifying_key(),
            &[Purpose::Receipt],
            now,
        ));
        next.keys.push(KeyEntry::new(
            &statement.verifying_key(),
            &[Purpose::Statement],
            now,
        ));
    }
    next.keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    let signed = next.sign(vendor_signers);
    // The keyring this node makes must be one every agent accepts.
    newest
        .verify_next(&signed)
        .map_err(|e| KeysError::Invalid(format!("the new keyring would not verify: {e}")))?;
    store
        .add_keyring(next.version, signed.encode_to_vec(), now)
        .await?;
    Ok(next)
}

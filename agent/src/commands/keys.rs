//! `keys list` and `keys rotate`: the agent keys that signed this agent's chain, and
//! handing the chain to a new key.

use super::{CmdResult, Output, runtime, usage};
use crate::agent::Agent;
use crate::key_file;
use crate::store::StoreError;
use serde_json::json;
use tally_proto::keys::key_id;

/// `keys list`: every key, oldest first, with the seqs it signs and where its rotation
/// stands with the collector.
pub fn keys_list(agent: &Agent) -> CmdResult {
    let history = agent.key_history().map_err(runtime)?;
    let rotations = agent.store.rotations().map_err(runtime)?;
    let keys = history.keys();
    let mut rows = Vec::with_capacity(keys.len());
    let mut text = String::new();
    for (i, (k, from)) in keys.iter().enumerate() {
        let until = keys.get(i + 1).map(|(_, f)| *f);
        // The rotation that handed this key the chain (none for the enrolled key).
        let handed = i.checked_sub(1).and_then(|j| rotations.get(j));
        let (state, detail) =
            handed.map_or(("enrolled", ""), |r| (r.state.as_str(), r.detail.as_str()));
        let seqs = match until {
            Some(u) if u <= *from => "none".to_string(),
            Some(u) => format!("{from}-{}", u - 1),
            None => format!("{from}-"),
        };
        text += &format!(
            "{}  seqs {seqs}  {}{}{}\n",
            key_id(k),
            if until.is_none() {
                "current"
            } else {
                "retired"
            },
            if state == "enrolled" {
                String::new()
            } else {
                format!(", rotation {state}")
            },
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        );
        rows.push(json!({
            "key_id": key_id(k),
            "public_key": hex::encode(k),
            "from_seq": from,
            "until_seq": until,
            "current": until.is_none(),
            "rotation": if state == "enrolled" { serde_json::Value::Null } else { json!({"state": state, "detail": detail}) },
        }));
    }
    Ok(Output {
        json: json!({ "keys": rows }),
        text,
    })
}

/// `keys rotate`: a new agent key takes over the chain from the next report on. The old
/// key signs the hand-over and the new key proves it is held; the collector records it
/// before any report of the new key (the running agent sends it first). The old private
/// key is removed: what it signed stays verifiable by its public key, kept in the history.
pub async fn keys_rotate(agent: &Agent) -> CmdResult {
    let old = agent.signing_key();
    let new = tally_proto::keys::generate();
    let next = key_file::write_next(&agent.dir, &new).map_err(runtime)?;
    let started = agent
        .store
        .begin_rotation(
            old.clone(),
            new.clone(),
            agent.license.license_id.clone(),
            chrono::Utc::now().timestamp(),
        )
        .await;
    let rotation = match started {
        Ok(r) => r,
        Err(e) => {
            // Nothing names the new key: remove its file (named by the key: no other
            // rotation's).
            key_file::remove_next(&next);
            return Err(match e {
                StoreError::Invalid(m) => usage(m),
                other => runtime(other),
            });
        }
    };
    key_file::install(&agent.dir, &new).map_err(runtime)?;
    let r = &rotation.rotation;
    Ok(Output {
        json: json!({
            "old_key_id": r.old_key_id(),
            "new_key_id": r.new_key_id(),
            "from_seq": r.from_seq,
            "state": rotation.state.as_str(),
        }),
        text: format!(
            "rotated agent key {} -> {}: the new key signs seq {} and later\n\
             the running agent signs with it from its next window and sends the rotation to \
             the collector before its reports; list the new key id in your agent inventory\n",
            r.old_key_id(),
            r.new_key_id(),
            r.from_seq
        ),
    })
}

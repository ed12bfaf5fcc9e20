//! `init`: the agent key (0600), the license verified, and online enrollment (or, with
//! `--offline`, the public key to enroll by hand).

use super::{CmdResult, Output, runtime, usage};
use crate::datadir::{AgentFiles, DataDir};
use crate::store::AgentStore;
use serde_json::json;
use tally_proto::license::{License, parse_armored};
use tally_proto::pb;
use tally_proto::{enroll, keys};

pub struct InitArgs {
    pub license_file: std::path::PathBuf,
    pub collectors: Vec<String>,
    pub token: Option<String>,
    pub offline: bool,
    pub tls: crate::tls::TlsFiles,
}

/// `init`: key (0600), license verified, enrollment (or, `--offline`, the public key to
/// enroll by hand), everything stored.
pub async fn init(dir: &DataDir, a: InitArgs) -> CmdResult {
    if dir.key().exists() {
        return Err(usage(format!(
            "{} is already initialized",
            dir.path().display()
        )));
    }
    let text = std::fs::read(&a.license_file)
        .map_err(|e| usage(format!("cannot read {}: {e}", a.license_file.display())))?;
    let signed =
        parse_armored(&text).map_err(|e| usage(format!("{}: {e}", a.license_file.display())))?;
    let (license, vendor) = License::verify(&signed, None)
        .map_err(|e| usage(format!("{}: {e}", a.license_file.display())))?;
    for c in &a.collectors {
        if !(c.starts_with("http://") || c.starts_with("https://")) {
            return Err(usage(format!(
                "--collector {c}: must be an http:// or https:// URL"
            )));
        }
    }
    if !a.offline && a.token.as_deref().is_none_or(str::is_empty) {
        return Err(usage(
            "--token is required for online enrollment (or use --offline)",
        ));
    }
    let key = keys::generate();
    let collectors = if a.collectors.is_empty() {
        vec![license.collector_endpoint.clone()]
    } else {
        a.collectors.clone()
    };
    let mut keyrings: Vec<pb::SignedKeyring> = Vec::new();
    let license_bytes = if a.offline {
        prost::Message::encode_to_vec(&signed)
    } else {
        let token = a.token.clone().unwrap_or_default();
        let proof = enroll::prove(&key, &license.license_id, &token);
        let req = pb::EnrollRequest {
            license_id: license.license_id.clone(),
            enrollment_token: token,
            agent_key: key.verifying_key().to_bytes().to_vec(),
            proof: proof.to_vec(),
        };
        let mut last = String::new();
        let mut resp = None;
        let tls = a.tls.client_config().map_err(usage)?;
        for url in &collectors {
            match enroll_at(url, req.clone(), tls.as_ref()).await {
                Ok(r) => {
                    resp = Some(r);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let (resp, chain) = resp.ok_or_else(|| runtime(format!("enrollment failed: {last}")))?;
        // The key receipts will be signed with: the vendor key itself (a collector that
        // predates keyrings), or a current receipt key of the keyring chain the license's
        // vendor key starts.
        let receipt_key_ok = if chain.is_empty() {
            resp.collector_key == vendor.to_bytes()
        } else {
            let keyring = crate::trusted_keys::TrustedKeys::follow_from(vendor, &chain)
                .map_err(|e| runtime(format!("the collector's keyring: {e}")))?;
            let keyring = Some(keyring);
            keyring.is_some_and(|k| {
                k.current(tally_proto::keyring::Purpose::Receipt)
                    .iter()
                    .any(|e| e.public_key.as_slice() == resp.collector_key.as_slice())
            })
        };
        if !receipt_key_ok {
            return Err(runtime(
                "the collector's receipt key is not certified by the key that signed the \
                 license; refusing to enroll",
            ));
        }
        keyrings = chain;
        let l = resp
            .license
            .ok_or_else(|| runtime("the collector sent no license"))?;
        License::verify(&l, Some(&vendor))
            .map_err(|e| runtime(format!("license from the collector: {e}")))?;
        prost::Message::encode_to_vec(&l)
    };
    std::fs::create_dir_all(dir.path())
        .map_err(|e| runtime(format!("cannot create {}: {e}", dir.path().display())))?;
    keys::write_new(&dir.key(), &key).map_err(runtime)?;
    let store = AgentStore::open(&dir.db()).map_err(runtime)?;
    let now = chrono::Utc::now();
    let lease = (now + chrono::Duration::seconds(license.grace_secs as i64)).min(license.not_after);
    store
        .set_meta("license", license_bytes)
        .await
        .map_err(runtime)?;
    store
        .set_meta("collector_key", vendor.to_bytes().to_vec())
        .await
        .map_err(runtime)?;
    if !keyrings.is_empty() {
        crate::trusted_keys::TrustedKeys::load(&store, vendor)
            .map_err(runtime)?
            .accept(&store, keyrings)
            .await
            .map_err(runtime)?;
    }
    store
        .set_meta("collectors", collectors.join(",").into_bytes())
        .await
        .map_err(runtime)?;
    store
        .set_meta("initial_lease", lease.timestamp().to_string().into_bytes())
        .await
        .map_err(runtime)?;
    for (k, p) in [
        ("tls_ca", &a.tls.ca),
        ("tls_cert", &a.tls.cert),
        ("tls_key", &a.tls.key),
    ] {
        if let Some(p) = p {
            let abs = std::path::absolute(p).map_err(runtime)?;
            store
                .set_meta(k, abs.display().to_string().into_bytes())
                .await
                .map_err(runtime)?;
        }
    }
    let public = hex::encode(key.verifying_key().to_bytes());
    let text = if a.offline {
        format!(
            "agent key: {public}\nenroll it at the vendor with:\n  tally-collector agents add --license {} --key {public}\n",
            license.license_id
        )
    } else {
        format!(
            "enrolled for license {}\nagent key: {public}\n",
            license.license_id
        )
    };
    Ok(Output {
        json: json!({"agent_key": public, "license_id": license.license_id, "enrolled": !a.offline}),
        text,
    })
}

async fn enroll_at(
    url: &str,
    req: pb::EnrollRequest,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<(pb::EnrollResponse, Vec<pb::SignedKeyring>), String> {
    let ch = crate::tls::endpoint(url, tls)?
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("{url}: cannot connect: {e}"))?;
    let mut c = pb::ingest_client::IngestClient::new(ch);
    let mut resp = c
        .enroll(req)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{url}: {}", s.message()))?;
    // The chain from this license's vendor key: the newest keyring alone when that key
    // signed it, else every version (a license of an earlier vendor key: the newest keyring
    // is signed by a later one, reached through the rotations in between).
    if resp.keyring.is_some() {
        let all = c
            .get_keyrings(pb::GetKeyringsRequest { after_version: 0 })
            .await
            .map_err(|s| format!("{url}: GetKeyrings: {}", s.message()))?
            .into_inner()
            .keyrings;
        if !all.is_empty() {
            resp.keyring = None;
            return Ok((resp, all));
        }
    }
    let single = resp.keyring.take().into_iter().collect();
    Ok((resp, single))
}

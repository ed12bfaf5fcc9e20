//! The customer's audit of a whole closed statement: every agent line re-derived from the
//! signed reports it counts (its *evidence*), and every line's key checked against the
//! customer's own inventory of agent keys, so that no billed unit lacks a signature by a
//! key the customer holds.
//!
//! The statement itself must already have passed [`Statement::verify`] (vendor signature
//! and [`super::arithmetic`]); this module checks what only the evidence and the
//! inventory can show (`docs/protocol.md` §10):
//! - every line's key id is in the inventory (otherwise: a phantom install);
//! - the evidence has one entry per line, with the agent's full public key, which hashes to
//!   the line's key id and is a trusted key (canonical, no torsion);
//! - every report in it hashes to its digest, verifies under the agent's key with the one
//!   signature rule (`signing::verify`), decodes, names that key and the line's license,
//!   and has the seq it is listed under;
//! - the seqs are exactly the line's seq ranges, the Merkle root over the digests in seq
//!   order is the line's root, and the per-metric sums of the counters are its quantities.
//!
//! A report whose body retention removed is listed by seq and digest only: it still counts
//! in the seqs and the root, but its signature and counters cannot be checked, and the
//! outcome says so (a note, not a difference).

use super::{AgentLine, Statement, merkle_root, seq_ranges};
use crate::Digest;
use crate::keys::key_id;
use crate::report::Report;
use crate::signing::{self, Domain};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What `GET /v1/statements/{customer}/{month}/evidence` answers: per agent line of the
/// closed statement, the reports it counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    pub customer: String,
    /// `YYYY-MM`.
    pub period: String,
    pub agents: Vec<AgentEvidence>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEvidence {
    pub agent_id: String,
    pub key_id: String,
    /// Hex of the agent's 32-byte public key (the line's `key_id`).
    pub key: String,
    /// When the line names several keys (`key_ids`): hex of each earlier one, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_keys: Vec<String>,
    /// In seq order.
    pub reports: Vec<ReportEvidence>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportEvidence {
    pub seq: u64,
    /// Hex of the report's digest.
    pub digest: String,
    /// Base64 of the signed report bytes, exactly as received; absent when retention
    /// removed the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// Hex of the agent's 64-byte signature; absent with `report`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl ReportEvidence {
    /// A report as the collector holds it: `body` is its signed bytes and signature, `None`
    /// once retention removed them.
    pub fn new(seq: u64, digest: &Digest, body: Option<(&[u8], &[u8])>) -> ReportEvidence {
        ReportEvidence {
            seq,
            digest: digest.to_hex(),
            report: body.map(|(b, _)| STANDARD.encode(b)),
            signature: body.map(|(_, s)| hex::encode(s)),
        }
    }
}

/// What an audit found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditOutcome {
    /// Each way the bill is not backed by the evidence or the inventory; empty: it matches.
    pub differences: Vec<String>,
    /// What could not be checked, and why (bodies removed by retention), and inventory
    /// keys billed nothing.
    pub notes: Vec<String>,
    /// Reports whose signature was verified.
    pub verified: u64,
    /// Reports listed by digest only (body removed by retention).
    pub removed: u64,
}

impl AuditOutcome {
    pub fn matches(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Audits `statement` (already verified) against the customer's `inventory` of agent key
/// ids and the `evidence` the collector served for it.
pub fn audit(
    statement: &Statement,
    inventory: &BTreeSet<String>,
    evidence: &Evidence,
) -> AuditOutcome {
    let mut out = AuditOutcome::default();
    if evidence.customer != statement.customer || evidence.period != statement.period {
        out.differences.push(format!(
            "the evidence is for {} {}, the statement for {} {}",
            evidence.customer, evidence.period, statement.customer, statement.period
        ));
        return out;
    }
    let mut by_key: BTreeMap<&str, &AgentEvidence> = BTreeMap::new();
    for a in &evidence.agents {
        if by_key.insert(a.key_id.as_str(), a).is_some() {
            out.differences
                .push(format!("the evidence lists key {} twice", a.key_id));
        }
    }
    for line in &statement.agents {
        for k in line.signing_key_ids() {
            if !inventory.contains(k) {
                out.differences.push(format!(
                    "agent line {} ({}): key id {k} is not one of our agents (a phantom install)",
                    line.agent_id, line.license_id
                ));
            }
        }
        match by_key.remove(line.key_id.as_str()) {
            None => out.differences.push(format!(
                "agent line {}: the collector served no evidence for it",
                line.key_id
            )),
            Some(ev) => check_line(line, ev, &mut out),
        }
    }
    for key in by_key.keys() {
        out.differences.push(format!(
            "the evidence lists key {key}, which has no line on the statement"
        ));
    }
    let billed: BTreeSet<&str> = statement
        .agents
        .iter()
        .flat_map(|a| a.signing_key_ids())
        .collect();
    for key in inventory {
        if !billed.contains(key.as_str()) {
            out.notes.push(format!(
                "our agent {key} has no line: it is billed nothing this month"
            ));
        }
    }
    out
}

fn check_line(line: &AgentLine, ev: &AgentEvidence, out: &mut AuditOutcome) {
    let name = format!("agent line {}", line.key_id);
    // The line's keys, oldest first: the evidence's earlier keys, then its key.
    let mut keys: Vec<([u8; 32], VerifyingKey)> = Vec::new();
    for hex_key in ev.earlier_keys.iter().chain(std::iter::once(&ev.key)) {
        let Some(bytes) = hex::decode(hex_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            out.differences
                .push(format!("{name}: the evidence's key is not 32 bytes of hex"));
            return;
        };
        match signing::trusted_key(&bytes) {
            Ok(k) => keys.push((bytes, k)),
            Err(e) => {
                out.differences.push(format!("{name}: the agent key: {e}"));
                return;
            }
        }
    }
    let ids: Vec<String> = keys.iter().map(|(b, _)| key_id(b)).collect();
    if ids.iter().map(String::as_str).collect::<Vec<_>>() != line.signing_key_ids() {
        out.differences.push(format!(
            "{name}: the evidence's keys hash to key ids {ids:?}, not {:?}",
            line.signing_key_ids()
        ));
        return;
    }
    // Which key signed the previous report: the keys hold the chain one after another.
    let mut holder = 0usize;
    let mut seqs = Vec::with_capacity(ev.reports.len());
    let mut digests = Vec::with_capacity(ev.reports.len());
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    let mut removed = 0u64;
    for r in &ev.reports {
        let at = format!("{name}, seq {}", r.seq);
        if seqs.last().is_some_and(|&prev| prev >= r.seq) {
            out.differences
                .push(format!("{at}: the evidence is not in ascending seq order"));
        }
        seqs.push(r.seq);
        let Some(digest) = hex::decode(&r.digest)
            .ok()
            .and_then(|b| Digest::from_slice(&b))
        else {
            out.differences
                .push(format!("{at}: digest is not 32 bytes of hex"));
            continue;
        };
        digests.push(digest);
        let (Some(body), Some(sig)) = (&r.report, &r.signature) else {
            removed += 1;
            continue;
        };
        let Ok(bytes) = STANDARD.decode(body) else {
            out.differences.push(format!("{at}: report is not base64"));
            continue;
        };
        if Digest::of(&bytes) != digest {
            out.differences.push(format!(
                "{at}: the report's bytes do not hash to its digest"
            ));
            continue;
        }
        let Ok(sig) = hex::decode(sig) else {
            out.differences.push(format!("{at}: signature is not hex"));
            continue;
        };
        // The report names the key that signed it; it must be one of the line's keys,
        // no earlier than the key of the report before it.
        let named = Report::decode(&bytes).map(|rep| rep.agent_key);
        let Some(i) = named
            .as_ref()
            .ok()
            .and_then(|k| keys.iter().position(|(b, _)| b == k))
        else {
            out.differences.push(format!(
                "{at}: not signed by our agent's key (it names a key that is not the line's)"
            ));
            continue;
        };
        if let Err(e) = signing::verify(&keys[i].1, Domain::UsageReport, &bytes, &sig) {
            out.differences
                .push(format!("{at}: not signed by our agent's key ({e})"));
            continue;
        }
        out.verified += 1;
        if i < holder {
            out.differences.push(format!(
                "{at}: signed by key {}, which had handed the chain to key {} before",
                ids[i], ids[holder]
            ));
        }
        holder = holder.max(i);
        let report = match Report::decode(&bytes) {
            Ok(rep) => rep,
            Err(e) => {
                out.differences.push(format!("{at}: {e}"));
                continue;
            }
        };
        if report.seq != r.seq {
            out.differences.push(format!(
                "{at}: the signed report is seq {} of another key or seq",
                report.seq
            ));
        }
        if report.license_id != line.license_id {
            out.differences.push(format!(
                "{at}: the signed report is for license {}, the line for {}",
                report.license_id, line.license_id
            ));
        }
        for c in report.counters {
            let e = sums.entry(c.metric.clone()).or_insert(0);
            match e.checked_add(c.quantity) {
                Some(v) => *e = v,
                None => out.differences.push(format!(
                    "{name}: the total of {} overflows 64 bits",
                    c.metric
                )),
            }
        }
    }
    out.removed += removed;
    if seq_ranges(&seqs) != line.seqs || seqs.len() as u64 != line.reports {
        out.differences.push(format!(
            "{name}: the evidence holds {} reports, seqs {:?}; the line bills {} reports, seqs {:?}",
            seqs.len(),
            seq_ranges(&seqs),
            line.reports,
            line.seqs
        ));
    }
    if hex::encode(merkle_root(&digests).0) != line.root {
        out.differences.push(format!(
            "{name}: the Merkle root of the evidence's digests is not the line's root"
        ));
    }
    if removed > 0 {
        out.notes.push(format!(
            "{name}: {removed} report bodies were removed by retention: their seqs and digests \
             are in the root, their signatures and quantities could not be checked"
        ));
        return;
    }
    let billed: BTreeMap<String, u64> = line
        .quantities
        .iter()
        .map(|q| (q.metric.clone(), q.quantity))
        .collect();
    if billed != sums {
        let show = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.differences.push(format!(
            "{name}: the line bills [{}], the signed reports count [{}]",
            show(&billed),
            show(&sums)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Counter;
    use crate::statement::{Line, Quantity};
    use chrono::{TimeZone, Utc};
    use ed25519_dalek::SigningKey;

    struct Site {
        key: SigningKey,
        signed: Vec<crate::pb::SignedReport>,
    }

    /// An agent's `n` signed hourly reports of 3 api.convert each (seq 1..=n).
    fn site(seed: u8, n: u64) -> Site {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let t0 = Utc.with_ymd_and_hms(2026, 10, 5, 0, 0, 0).unwrap();
        let mut prev = None;
        let signed = (1..=n)
            .map(|seq| {
                let start = t0 + chrono::Duration::hours(seq as i64);
                let r = Report {
                    license_id: "lic_1".into(),
                    agent_key: key.verifying_key().to_bytes(),
                    seq,
                    prev_digest: prev,
                    window_start: start,
                    window_end: start + chrono::Duration::hours(1),
                    counters: vec![Counter {
                        metric: "api.convert".into(),
                        quantity: 3,
                    }],
                    created_at: start + chrono::Duration::hours(1),
                    agent_version: "test".into(),
                };
                let s = r.sign(&key);
                prev = Some(Digest::of(&s.report));
                s
            })
            .collect();
        Site { key, signed }
    }

    fn kid(s: &Site) -> String {
        key_id(&s.key.verifying_key().to_bytes())
    }

    fn line_of(s: &Site) -> AgentLine {
        let digests: Vec<Digest> = s.signed.iter().map(|r| Digest::of(&r.report)).collect();
        let seqs: Vec<u64> = (1..=s.signed.len() as u64).collect();
        AgentLine {
            agent_id: format!("agt_{}", kid(s)),
            key_id: kid(s),
            key_ids: Vec::new(),
            license_id: "lic_1".into(),
            first_seq: 1,
            last_seq: seqs.len() as u64,
            reports: seqs.len() as u64,
            seqs: seq_ranges(&seqs),
            quantities: vec![Quantity {
                metric: "api.convert".into(),
                quantity: 3 * seqs.len() as u64,
            }],
            root: hex::encode(merkle_root(&digests).0),
        }
    }

    fn evidence_of(s: &Site) -> AgentEvidence {
        AgentEvidence {
            agent_id: format!("agt_{}", kid(s)),
            key_id: kid(s),
            key: hex::encode(s.key.verifying_key().to_bytes()),
            earlier_keys: Vec::new(),
            reports: s
                .signed
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    ReportEvidence::new(
                        i as u64 + 1,
                        &Digest::of(&r.report),
                        Some((&r.report, &r.signature)),
                    )
                })
                .collect(),
        }
    }

    /// The honest statement of two sites, with its evidence and the customer's inventory.
    fn honest() -> (Statement, Evidence, BTreeSet<String>) {
        let (a, b) = (site(1, 3), site(2, 2));
        let mut agents = vec![line_of(&a), line_of(&b)];
        agents.sort_by(|x, y| x.key_id.cmp(&y.key_id));
        let s = Statement {
            customer: "cus_1".into(),
            period: "2026-10".into(),
            closed: true,
            closed_at: "2026-11-04T00:00:00Z".into(),
            key_id: "k".into(),
            lines: vec![Line {
                metric: "api.convert".into(),
                used: 15,
                limit: Some(10),
                overage: 5,
            }],
            adjustments: vec![],
            agents,
        };
        s.check_arithmetic().unwrap();
        let e = Evidence {
            customer: "cus_1".into(),
            period: "2026-10".into(),
            agents: vec![evidence_of(&a), evidence_of(&b)],
        };
        let inventory = [kid(&a), kid(&b)].into_iter().collect();
        (s, e, inventory)
    }

    fn differences(s: &Statement, e: &Evidence, inv: &BTreeSet<String>) -> Vec<String> {
        audit(s, inv, e).differences
    }

    fn names(found: &[String], words: &str) {
        assert!(
            found.iter().any(|f| f.contains(words)),
            "{found:?} should name {words:?}"
        );
    }

    /// A site whose agent signed seqs 1–2 with key 7 and, after rotating, 3–4 with key 8,
    /// with its one line (naming both keys) and evidence.
    fn rotated() -> (AgentLine, AgentEvidence, [SigningKey; 2]) {
        let keys = [
            SigningKey::from_bytes(&[7; 32]),
            SigningKey::from_bytes(&[8; 32]),
        ];
        let mut a = site(7, 4);
        // Re-sign seqs 3 and 4 with the new key, chained on.
        let t0 = Utc.with_ymd_and_hms(2026, 10, 5, 0, 0, 0).unwrap();
        for seq in 3..=4u64 {
            let start = t0 + chrono::Duration::hours(seq as i64);
            let r = Report {
                license_id: "lic_1".into(),
                agent_key: keys[1].verifying_key().to_bytes(),
                seq,
                prev_digest: Some(Digest::of(&a.signed[seq as usize - 2].report)),
                window_start: start,
                window_end: start + chrono::Duration::hours(1),
                counters: vec![Counter {
                    metric: "api.convert".into(),
                    quantity: 3,
                }],
                created_at: start + chrono::Duration::hours(1),
                agent_version: "test".into(),
            };
            a.signed[seq as usize - 1] = r.sign(&keys[1]);
        }
        let mut line = line_of(&a);
        let mut ev = evidence_of(&a);
        let ids: Vec<String> = keys
            .iter()
            .map(|k| key_id(&k.verifying_key().to_bytes()))
            .collect();
        line.key_id = ids[1].clone();
        line.key_ids = ids.clone();
        ev.key_id = ids[1].clone();
        ev.key = hex::encode(keys[1].verifying_key().to_bytes());
        ev.earlier_keys = vec![hex::encode(keys[0].verifying_key().to_bytes())];
        (line, ev, keys)
    }

    fn bill_of(line: AgentLine, ev: AgentEvidence) -> (Statement, Evidence) {
        let s = Statement {
            customer: "cus_1".into(),
            period: "2026-10".into(),
            closed: true,
            closed_at: "2026-11-04T00:00:00Z".into(),
            key_id: "k".into(),
            lines: vec![Line {
                metric: "api.convert".into(),
                used: 12,
                limit: None,
                overage: 0,
            }],
            adjustments: vec![],
            agents: vec![line],
        };
        s.check_arithmetic().unwrap();
        let e = Evidence {
            customer: "cus_1".into(),
            period: "2026-10".into(),
            agents: vec![ev],
        };
        (s, e)
    }

    #[test]
    fn a_line_across_an_agent_key_rotation_checks_each_report_with_its_key() {
        let (line, ev, keys) = rotated();
        let ids: BTreeSet<String> = line.key_ids.iter().cloned().collect();
        let (s, e) = bill_of(line.clone(), ev.clone());
        let out = audit(&s, &ids, &e);
        assert!(out.matches(), "{out:?}");
        assert_eq!(out.verified, 4);
        // Our inventory only lists the new key: the old key's reports are a phantom's.
        let only_new: BTreeSet<String> = [line.key_id.clone()].into_iter().collect();
        names(
            &differences(&s, &e, &only_new),
            &format!("key id {} is not one of our agents", line.key_ids[0]),
        );
        // The evidence leaves the old key out.
        let mut short = ev.clone();
        short.earlier_keys.clear();
        let (s2, e2) = bill_of(line.clone(), short);
        names(
            &differences(&s2, &e2, &ids),
            "the evidence's keys hash to key ids",
        );
        // The old key, which handed the chain over at seq 3, signs seq 4 (the vendor holds
        // a leaked old key and re-signs): named, though the signature itself verifies.
        let mut forged = ev.clone();
        let mut r = Report::decode(
            &STANDARD
                .decode(forged.reports[3].report.as_ref().unwrap())
                .unwrap(),
        )
        .unwrap();
        r.agent_key = keys[0].verifying_key().to_bytes();
        let signed = r.sign(&keys[0]);
        forged.reports[3] = ReportEvidence::new(
            4,
            &Digest::of(&signed.report),
            Some((&signed.report, &signed.signature)),
        );
        let mut l = line.clone();
        let digests: Vec<Digest> = forged
            .reports
            .iter()
            .map(|r| Digest::from_slice(&hex::decode(&r.digest).unwrap()).unwrap())
            .collect();
        l.root = hex::encode(merkle_root(&digests).0);
        let (s3, e3) = bill_of(l, forged);
        names(
            &differences(&s3, &e3, &ids),
            "which had handed the chain to key",
        );
    }

    #[test]
    fn an_honest_bill_matches_every_signature() {
        let (s, e, inv) = honest();
        let out = audit(&s, &inv, &e);
        assert!(out.matches(), "{out:?}");
        assert_eq!((out.verified, out.removed), (5, 0));
        // An agent of ours billed nothing is a note, not a difference.
        let mut more = inv.clone();
        more.insert("00000000000000ff".into());
        let out = audit(&s, &more, &e);
        assert!(out.matches() && out.notes.iter().any(|n| n.contains("billed nothing")));
    }

    #[test]
    fn a_phantom_install_is_named() {
        // A third site the customer never had, its total added to the bill: the statement
        // adds up, and the collector can even serve signed evidence for it.
        let (mut s, mut e, inv) = honest();
        let phantom = site(9, 4);
        s.agents.push(line_of(&phantom));
        s.agents.sort_by(|x, y| x.key_id.cmp(&y.key_id));
        s.lines[0].used += 12;
        s.lines[0].overage += 12;
        s.check_arithmetic().unwrap();
        e.agents.push(evidence_of(&phantom));
        let found = differences(&s, &e, &inv);
        names(
            &found,
            &format!("key id {} is not one of our agents", kid(&phantom)),
        );
        assert_eq!(found.len(), 1, "{found:?}");
    }

    #[test]
    fn a_line_that_signed_reports_do_not_back_is_named() {
        // The line's quantity raised (the bill re-signed to add up): the signatures count less.
        let (mut s, e, inv) = honest();
        s.agents[0].quantities[0].quantity += 1;
        s.lines[0].used += 1;
        s.lines[0].overage += 1;
        s.check_arithmetic().unwrap();
        names(
            &differences(&s, &e, &inv),
            "the signed reports count [api.convert",
        );

        // A report's counters changed by the collector: no longer the agent's signature.
        let (s, mut e, inv) = honest();
        let r = &mut e.agents[0].reports[1];
        let mut bytes = STANDARD.decode(r.report.as_ref().unwrap()).unwrap();
        let mut rep = Report::decode(&bytes).unwrap();
        rep.counters[0].quantity = 30;
        bytes = rep.encode();
        r.report = Some(STANDARD.encode(&bytes));
        r.digest = Digest::of(&bytes).to_hex();
        let found = differences(&s, &e, &inv);
        names(&found, "not signed by our agent's key");
        names(&found, "Merkle root");

        // A report dropped from the evidence, or a seq the line bills without a report.
        let (s, mut e, inv) = honest();
        e.agents[1].reports.pop();
        let found = differences(&s, &e, &inv);
        names(&found, "the evidence holds");
        names(&found, "Merkle root");

        // Another agent's key served for the line.
        let (s, mut e, inv) = honest();
        e.agents[0].key = e.agents[1].key.clone();
        names(
            &differences(&s, &e, &inv),
            "the evidence's keys hash to key ids",
        );

        // No evidence for a line; evidence for a key with no line.
        let (s, mut e, inv) = honest();
        let moved = e.agents.remove(0);
        names(&differences(&s, &e, &inv), "served no evidence");
        e.agents.push(moved.clone());
        e.agents.push(evidence_of(&site(9, 1)));
        names(
            &differences(&s, &e, &inv),
            "which has no line on the statement",
        );

        // Evidence of another customer or month.
        let (s, mut e, inv) = honest();
        e.period = "2026-09".into();
        names(
            &differences(&s, &e, &inv),
            "the evidence is for cus_1 2026-09",
        );
    }

    #[test]
    fn bodies_removed_by_retention_still_check_seqs_and_root() {
        let (s, mut e, inv) = honest();
        for r in &mut e.agents[0].reports {
            r.report = None;
            r.signature = None;
        }
        let out = audit(&s, &inv, &e);
        assert!(out.matches(), "{out:?}");
        assert!(out.removed > 0 && out.notes.iter().any(|n| n.contains("removed by retention")));
        // A removed report's digest changed: the root no longer matches.
        let (s, mut e, inv) = honest();
        e.agents[0].reports[0] = ReportEvidence::new(1, &Digest([7; 32]), None);
        names(&differences(&s, &e, &inv), "Merkle root");
    }
}

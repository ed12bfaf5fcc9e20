//! The ingest pipeline shared by gRPC `Submit`, `tally-collector import` and
//! `POST /v1/reports:import`: decode → look up the key → verify → store → sign receipts.
//!
//! The rule (docs/protocol.md §6): authentic reports are always stored; inauthentic ones never
//! are. Refusals happen here, before the store is touched (only a metric and a rate-limited
//! log line record them); everything that needs stored state happens in the store's
//! transaction.

use crate::metrics::Metrics;
use crate::store::{AuthenticReport, Source, Store, StoreError};
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tally_proto::Digest;
use tally_proto::batch_signer::BatchSigner;
use tally_proto::pb;
use tally_proto::reason::Reason;
use tally_proto::receipt::{Outcome, ReceiptBody};
use tally_proto::report::{Report, ReportError};
use tally_proto::signing::{self, Domain};
use tracing::Instrument;

/// How many parsed agent keys [`KeyCache`] keeps before it starts over.
const KEY_CACHE_MAX: usize = 100_000;

/// Parsed (decompressed) agent public keys by their 32 bytes. Parsing a key costs about as
/// much as a third of a batched signature verification, and an agent sends the same key
/// in every report. A pure function cache: a wrong entry is impossible, an evicted one
/// only costs a re-parse. Bounded: when full it is cleared, so a flood of random keys
/// cannot grow it. A std `Mutex`: held for one hash lookup, never across an `.await`.
#[derive(Default)]
struct KeyCache(Mutex<HashMap<[u8; 32], VerifyingKey>>);

impl KeyCache {
    fn parse(&self, bytes: &[u8; 32]) -> Option<VerifyingKey> {
        if let Ok(map) = self.0.lock()
            && let Some(k) = map.get(bytes)
        {
            return Some(*k);
        }
        let key = signing::verifying_key(bytes).ok()?;
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= KEY_CACHE_MAX {
                map.clear();
            }
            map.insert(*bytes, key);
        }
        Some(key)
    }
}

/// Runs the CPU-heavy steps (verification, receipt signing) on the blocking pool, at most
/// one per core at a time.
///
/// Why: the store's single writer thread is the one serial step of ingest. With every
/// in-flight Submit verifying or signing on its own blocking thread, the OS shared the
/// cores fairly among a dozen runnable threads and the writer got a small slice, so
/// batches queued for it while the CPU was busy with work that could wait (measured under
/// `tally-bench ingest`: ~70 of ~110 ms per Submit were spent waiting for the store).
/// Capping the crypto threads at the core count keeps a core's worth of time for the
/// writer and the async runtime.
struct CpuGate(Arc<tokio::sync::Semaphore>);

impl CpuGate {
    fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuGate(Arc::new(tokio::sync::Semaphore::new(cores)))
    }

    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, String> {
        let permit = self
            .0
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || {
            let r = f();
            drop(permit);
            r
        })
        .await
        .map_err(|e| e.to_string())
    }
}

/// What an import did with one agent key rotation of its bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationVerdict {
    /// Empty when the rotation does not decode or verify.
    pub old_key_id: String,
    pub new_key_id: String,
    pub from_seq: u64,
    /// `recorded`, `already_recorded` or `refused`.
    pub outcome: &'static str,
    pub detail: String,
}

/// Verifies and stores reports, and signs receipts for them.
pub struct Ingestor {
    store: Arc<dyn Store>,
    /// The keys receipts are signed with (swapped on a rotation).
    online: Arc<crate::keys::KeyHandle>,
    /// The current receipt key, expanded for batched signing, by its key id.
    signer: std::sync::Mutex<(String, Arc<BatchSigner>)>,
    keys: KeyCache,
    cpu: CpuGate,
    metrics: Arc<Metrics>,
    last_refusal_log: AtomicI64,
    /// Per-agent rate limit for online submissions (`None`: unlimited).
    pub limiter: Option<crate::ratelimit::AgentRateLimiter>,
}

/// Why a submission was not processed at all (nothing stored, no receipts).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An agent key exceeded its rate; the caller retries later.
    #[error("agent {0} is sending faster than its rate limit; retry later")]
    Throttled(String),
    /// This node's receipt key may not sign now (ended or revoked, and the keys that
    /// replace it are not on this node): nothing was stored; another node, or this one
    /// once its keys are copied, can take the reports.
    #[error("{0}")]
    NoValidKey(String),
}

/// What one report turned into, before signing.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub digest: Digest,
    pub outcome: Outcome,
    pub reason: String,
    pub detail: String,
}

enum Slot {
    Refused(Digest, Reason, String),
    Pending(Box<Candidate>),
}

struct Candidate {
    digest: Digest,
    report: Report,
    bytes: Vec<u8>,
    signature: Vec<u8>,
    agent_id: String,
    key: VerifyingKey,
}

impl Ingestor {
    /// An ingestor signing receipts with one key (see [`crate::keys::OnlineKeys::single`]).
    pub fn new(store: Arc<dyn Store>, key: SigningKey, metrics: Arc<Metrics>) -> Self {
        let online = Arc::new(crate::keys::KeyHandle::new(
            crate::keys::OnlineKeys::single(&key),
        ));
        Self::with_keys(store, online, metrics)
    }

    /// An ingestor signing receipts with the current receipt key of `online`.
    pub fn with_keys(
        store: Arc<dyn Store>,
        online: Arc<crate::keys::KeyHandle>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let key = online.current().receipt.clone();
        let id = tally_proto::keys::key_id(&key.verifying_key().to_bytes());
        Ingestor {
            store,
            signer: std::sync::Mutex::new((id, Arc::new(BatchSigner::new(&key)))),
            online,
            keys: KeyCache::default(),
            cpu: CpuGate::new(),
            metrics,
            last_refusal_log: AtomicI64::new(0),
            limiter: Some(crate::ratelimit::AgentRateLimiter::new(
                crate::ratelimit::DEFAULT_REPORTS_PER_SEC,
            )),
        }
    }

    /// The current receipt key.
    pub fn collector_key(&self) -> VerifyingKey {
        self.online.current().receipt.verifying_key()
    }

    /// The keys this ingestor signs with.
    pub fn online_keys(&self) -> Arc<crate::keys::KeyHandle> {
        self.online.clone()
    }

    /// The batch signer of the current receipt key (expanded once per key).
    fn receipt_signer(&self) -> Arc<BatchSigner> {
        let key = self.online.current().receipt.clone();
        let id = tally_proto::keys::key_id(&key.verifying_key().to_bytes());
        let mut g = self.signer.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 != id {
            *g = (id, Arc::new(BatchSigner::new(&key)));
        }
        g.1.clone()
    }

    /// Processes reports and returns one signed receipt per report, in order. Fails only
    /// when the store fails (a transient error: nothing was acknowledged).
    pub async fn submit(
        &self,
        reports: Vec<pb::SignedReport>,
        source: Source,
    ) -> Result<(Vec<pb::Receipt>, Vec<Verdict>), SubmitError> {
        let received_at = self.store.clock().now();
        self.online
            .current()
            .signing_key(tally_proto::keyring::Purpose::Receipt, received_at)
            .map_err(|e| SubmitError::NoValidKey(e.to_string()))?;
        let mut slots: Vec<Slot> = reports
            .into_iter()
            .map(|r| decode(r, &self.keys))
            .collect::<Vec<_>>();

        // Look up every key once.
        let keys: Vec<[u8; 32]> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Pending(c) => Some(c.report.agent_key),
                _ => None,
            })
            .collect();
        let agents = self.store.agents_by_keys(keys).await?;
        for slot in slots.iter_mut() {
            let Slot::Pending(c) = slot else { continue };
            let refusal = match agents.get(&c.report.agent_key) {
                None => Some((
                    Reason::UnknownAgent,
                    "the agent key is not enrolled".to_string(),
                )),
                Some(k) => match crate::rules::agent_keys::judge_report(
                    k,
                    &c.report.license_id,
                    c.report.seq,
                    received_at,
                ) {
                    Ok(()) => {
                        c.agent_id = k.agent_id.clone();
                        None
                    }
                    Err(refusal) => Some(refusal),
                },
            };
            if let Some((reason, detail)) = refusal {
                *slot = Slot::Refused(c.digest, reason, detail);
            }
        }

        // Verify signatures off the async runtime: this is the CPU-heavy step.
        let slots = self
            .cpu
            .run(move || verify_all(slots))
            .await
            .map_err(|e| StoreError::Database(format!("verification task failed: {e}")))?;

        // Charge each agent's rate budget for its authentic reports (online only).
        if let (Source::Online, Some(limiter)) = (source, &self.limiter) {
            let mut wants: std::collections::HashMap<[u8; 32], usize> = Default::default();
            for s in &slots {
                if let Slot::Pending(c) = s {
                    *wants.entry(c.report.agent_key).or_default() += 1;
                }
            }
            if !wants.is_empty() && !limiter.try_take(&wants) {
                self.metrics.report("throttled", "");
                let who = wants.keys().next().map(hex::encode).unwrap_or_default();
                return Err(SubmitError::Throttled(who[..16].to_string()));
            }
        }

        // Store the authentic ones in one group transaction.
        let mut authentic = Vec::new();
        let mut order = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Slot::Refused(d, reason, detail) => order.push(Err((d, reason, detail))),
                Slot::Pending(c) => {
                    order.push(Ok(authentic.len()));
                    authentic.push(AuthenticReport {
                        digest: c.digest,
                        bytes: c.bytes,
                        signature: c.signature,
                        report: c.report,
                        agent_id: c.agent_id,
                    });
                }
            }
        }
        let digests: Vec<Digest> = authentic.iter().map(|a| a.digest).collect();
        let started = std::time::Instant::now();
        let span = tracing::info_span!("store.ingest", reports = authentic.len());
        let mut stored = self
            .store
            .ingest(authentic, received_at, source)
            .instrument(span)
            .await?;
        self.metrics.store_transaction("ingest", started.elapsed());

        let mut bodies = Vec::with_capacity(order.len());
        for item in order {
            let body = match item {
                Err((digest, reason, detail)) => {
                    self.log_refusal(&digest, reason.as_str(), &detail);
                    ReceiptBody {
                        report_digest: digest,
                        outcome: Outcome::Refused,
                        reason: reason.as_str().to_string(),
                        detail,
                        received_at,
                        lease_until: None,
                        credits: Vec::new(),
                    }
                }
                Ok(i) => {
                    let s = &mut stored[i];
                    ReceiptBody {
                        report_digest: digests[i],
                        outcome: s.outcome,
                        reason: s.reason.map(Reason::as_str).unwrap_or_default().to_string(),
                        detail: std::mem::take(&mut s.detail),
                        received_at: s.received_at,
                        lease_until: s.lease_until,
                        credits: std::mem::take(&mut s.credits),
                    }
                }
            };
            self.metrics.report(body.outcome.as_str(), &body.reason);
            bodies.push(body);
        }
        // Signing is CPU work too (one signature per report, batched): off the runtime.
        let signer = self.receipt_signer();
        let (receipts, bodies) = self
            .cpu
            .run(move || {
                let receipts = ReceiptBody::sign_all(&bodies, &signer);
                (receipts, bodies)
            })
            .await
            .map_err(|e| StoreError::Database(format!("signing task failed: {e}")))?;
        let verdicts = bodies
            .into_iter()
            .map(|body| Verdict {
                digest: body.report_digest,
                outcome: body.outcome,
                reason: body.reason,
                detail: body.detail,
            })
            .collect();
        Ok((receipts, verdicts))
    }

    /// Imports an offline bundle (CLI `import` and `POST /v1/reports:import`): first its
    /// agent key rotations, each recorded as `RotateAgentKey` would (so reports of a
    /// rotated-to key are known), then its reports through the online path in chunks of
    /// one Submit, with import's longer `too_old` limit and no rate limit, so a report may
    /// travel both ways and still count once.
    pub async fn import(
        &self,
        bundle: pb::ReportBundle,
    ) -> Result<(Vec<pb::Receipt>, Vec<Verdict>, Vec<RotationVerdict>), StoreError> {
        use crate::agent_rotation::{Recorded, RotationError};
        let mut rotations = Vec::with_capacity(bundle.rotations.len());
        for signed in &bundle.rotations {
            let decoded = tally_proto::agent_key::Rotation::verify(signed).ok();
            let (outcome, detail) =
                match crate::agent_rotation::record(self.store.as_ref(), signed, "import").await {
                    Ok(Recorded::Now(_)) => ("recorded", String::new()),
                    Ok(Recorded::Before(_)) => ("already_recorded", String::new()),
                    Err(RotationError::Store(e)) => return Err(e),
                    Err(e) => ("refused", e.to_string()),
                };
            rotations.push(RotationVerdict {
                old_key_id: decoded.as_ref().map(|r| r.old_key_id()).unwrap_or_default(),
                new_key_id: decoded.as_ref().map(|r| r.new_key_id()).unwrap_or_default(),
                from_seq: decoded.as_ref().map_or(0, |r| r.from_seq),
                outcome,
                detail,
            });
        }
        let reports = bundle.reports;
        let mut receipts = Vec::with_capacity(reports.len());
        let mut verdicts = Vec::with_capacity(reports.len());
        let mut it = reports.into_iter().peekable();
        while it.peek().is_some() {
            let chunk: Vec<_> = it
                .by_ref()
                .take(tally_proto::limits::MAX_REPORTS_PER_SUBMIT)
                .collect();
            // Imports are never rate limited, so the only failure is the store's.
            let (r, v) = self
                .submit(chunk, Source::Import)
                .await
                .map_err(|e| match e {
                    SubmitError::Store(e) => e,
                    SubmitError::NoValidKey(m) => StoreError::Unavailable(m),
                    other => StoreError::Database(other.to_string()),
                })?;
            receipts.extend(r);
            verdicts.extend(v);
        }
        Ok((receipts, verdicts, rotations))
    }

    /// At most one refusal log line per second: a flood of garbage cannot flood the logs.
    fn log_refusal(&self, digest: &Digest, reason: &str, detail: &str) {
        let now = chrono::Utc::now().timestamp();
        let last = self.last_refusal_log.load(Ordering::Relaxed);
        if now > last
            && self
                .last_refusal_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(%digest, reason, detail, "Report refused.");
        }
    }
}

fn decode(s: pb::SignedReport, keys: &KeyCache) -> Slot {
    let digest = Digest::of(&s.report);
    let report = match Report::decode(&s.report) {
        Ok(r) => r,
        Err(ReportError::TooLarge(d)) => return Slot::Refused(digest, Reason::TooLarge, d),
        Err(ReportError::Malformed(d)) => return Slot::Refused(digest, Reason::Malformed, d),
    };
    if s.signature.len() != 64 {
        return Slot::Refused(
            digest,
            Reason::Malformed,
            format!("signature must be 64 bytes, got {}", s.signature.len()),
        );
    }
    let key = match keys.parse(&report.agent_key) {
        Some(k) => k,
        None => {
            return Slot::Refused(
                digest,
                Reason::Malformed,
                "agent_key is not a valid ed25519 key".into(),
            );
        }
    };
    Slot::Pending(Box::new(Candidate {
        digest,
        report,
        bytes: s.report,
        signature: s.signature,
        agent_id: String::new(),
        key,
    }))
}

/// Verifies every pending slot's signature, each alone under the one rule
/// ([`signing::verify_message`]); a failing one becomes `bad_signature`. No batch
/// equation: a report is never accepted by a check that its signature would fail alone.
fn verify_all(mut slots: Vec<Slot>) -> Vec<Slot> {
    for slot in &mut slots {
        let Slot::Pending(c) = slot else { continue };
        let ok = signing::signature(&c.signature).is_ok_and(|sig| {
            signing::verify_message(&c.key, &Domain::UsageReport.message(&c.bytes), &sig)
        });
        if !ok {
            *slot = Slot::Refused(
                c.digest,
                Reason::BadSignature,
                "the signature does not verify for the agent key".into(),
            );
        }
    }
    slots
}

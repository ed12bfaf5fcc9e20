//! The running agent: license, keys, store, and the two background loops — closing
//! windows into signed reports, and delivering the outbox with backoff.

use crate::datadir::{AgentFiles, DataDir};
use crate::store::DeliveryState;
use crate::store::{AgentStore, Event, Recorded, StoreError};
use backon::BackoffBuilder;
use ed25519_dalek::SigningKey;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tally_proto::license::License;
use tally_proto::metric::validate_metric_name;
use tally_proto::pb;
use tally_proto::receipt::Outcome;
use tokio::sync::Notify;

/// Largest quantity one event may carry: anything above is certainly a bug in the caller.
pub const MAX_EVENT_QUANTITY: u64 = 1_000_000_000;
/// Most events in one record call.
pub const MAX_EVENTS_PER_CALL: usize = 10_000;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Most reports per `Submit` when a backlog exists.
pub const DELIVERY_BATCH: u32 = 100;
/// Most backoff waits [`DeliveryStats`] keeps (the newest).
pub const RECORDED_WAITS: usize = 32;

/// Why an event was not recorded. Nothing of its call is counted.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Invalid(String),
    #[error("the agent could not commit the events: {0}")]
    Storage(String),
}

impl From<StoreError> for RecordError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => RecordError::Invalid(m),
            other => RecordError::Storage(other.to_string()),
        }
    }
}

/// Delivery counters, kept in memory and shown by `status`.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Submit calls started (each one a connection attempt when the collector is down).
    pub attempts: AtomicU64,
    pub failures: AtomicU64,
    pub delivered: AtomicU64,
    /// Unix seconds of the last successful Submit, 0 if none.
    pub last_success: AtomicU64,
    pub last_attempt_ok: std::sync::atomic::AtomicBool,
    pub last_error: Mutex<String>,
    /// The waits the delivery loop chose after each failure since the last success, in
    /// milliseconds, oldest first; only the newest [`RECORDED_WAITS`] are kept.
    pub backoff_ms: Mutex<VecDeque<u64>>,
}

impl DeliveryStats {
    /// Records a wait chosen after a failed delivery.
    pub fn record_wait(&self, wait: Duration) {
        let mut w = self.backoff_ms.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() == RECORDED_WAITS {
            w.pop_front();
        }
        w.push_back(wait.as_millis() as u64);
    }

    /// Forgets the recorded waits (a delivery succeeded).
    pub fn clear_waits(&self) {
        self.backoff_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The recorded waits in milliseconds, oldest first.
    pub fn waits_ms(&self) -> Vec<u64> {
        let w = self.backoff_ms.lock().unwrap_or_else(|p| p.into_inner());
        w.iter().copied().collect()
    }
}

/// Static configuration of a running agent.
pub struct AgentConfig {
    pub dir: DataDir,
    pub interval_secs: i64,
    pub collectors: Vec<String>,
    pub tls: crate::tls::TlsFiles,
}

pub struct Agent {
    pub store: AgentStore,
    /// The key the chain is held by; replaced when `keys rotate` hands it to a new key.
    key: std::sync::RwLock<SigningKey>,
    /// The agent's data directory (where its key file is).
    pub dir: DataDir,
    pub license: License,
    /// The vendor key of the license and the keyrings it certifies: what receipts and
    /// statements are checked with.
    pub keys: crate::trusted_keys::TrustedKeys,
    pub interval_secs: i64,
    /// How time is cut into windows: aligned to the interval, cut at the license's bounds.
    pub windows: crate::windows::Windows,
    pub collectors: Vec<String>,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    pub stats: DeliveryStats,
    /// What `GET /metrics` serves.
    pub metrics: crate::metrics::Metrics,
    /// Wakes the delivery loop when new reports are in the outbox.
    pub outbox_ready: Notify,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0} is not an initialized agent directory (hint: run 'tally-agent init' first)")]
    NotInitialized(String),
    #[error("{0}")]
    Corrupt(String),
    /// The TLS options are wrong (a CA missing, `--cert` without `--key`, a file that
    /// cannot be read): the caller's mistake, not the directory's.
    #[error("{0}")]
    Tls(String),
}

impl Agent {
    /// Loads an initialized agent directory.
    pub fn load(cfg: AgentConfig) -> Result<Agent, LoadError> {
        if !cfg.dir.is_initialized() {
            return Err(LoadError::NotInitialized(
                cfg.dir.path().display().to_string(),
            ));
        }
        let corrupt = |e: &dyn std::fmt::Display| LoadError::Corrupt(e.to_string());
        let store = AgentStore::open(&cfg.dir.db()).map_err(|e| corrupt(&e))?;
        let holder = store.rotated_key().map_err(|e| corrupt(&e))?;
        let key = crate::key_file::load(&cfg.dir, holder).map_err(|e| corrupt(&e))?;
        let ck = store
            .meta("collector_key")
            .map_err(|e| corrupt(&e))?
            .ok_or_else(|| LoadError::Corrupt("no collector key stored".into()))?;
        // The vendor key the license was verified with at init (named "collector_key" in
        // directories made before keyrings, when it also signed receipts).
        let collector_key = tally_proto::signing::verifying_key(&ck).map_err(|e| corrupt(&e))?;
        let lic = store
            .meta("license")
            .map_err(|e| corrupt(&e))?
            .ok_or_else(|| LoadError::Corrupt("no license stored".into()))?;
        let signed = <pb::SignedLicense as prost::Message>::decode(lic.as_slice())
            .map_err(|e| corrupt(&e))?;
        let (license, _) =
            License::verify(&signed, Some(&collector_key)).map_err(|e| corrupt(&e))?;
        let tls = cfg.tls.client_config().map_err(LoadError::Tls)?;
        let mut collectors = cfg.collectors;
        if collectors.is_empty() {
            collectors.push(license.collector_endpoint.clone());
        }
        let windows = crate::windows::Windows::for_license(cfg.interval_secs, &license);
        let keys = crate::trusted_keys::TrustedKeys::load(&store, collector_key)
            .map_err(|e| corrupt(&e))?;
        Ok(Agent {
            store,
            key: std::sync::RwLock::new(key),
            dir: cfg.dir,
            windows,
            license,
            keys,
            interval_secs: cfg.interval_secs,
            collectors,
            tls,
            stats: DeliveryStats::default(),
            metrics: crate::metrics::Metrics::default(),
            outbox_ready: Notify::new(),
        })
    }

    /// Validates events against the contract and the license, then counts them durably.
    /// Either every event of the call is acknowledged or none is counted.
    pub async fn record(&self, events: Vec<Event>) -> Result<Recorded, RecordError> {
        if events.is_empty() {
            return Err(RecordError::Invalid("no events".into()));
        }
        if events.len() > MAX_EVENTS_PER_CALL {
            return Err(RecordError::Invalid(format!(
                "{} events in one call; the limit is {MAX_EVENTS_PER_CALL}",
                events.len()
            )));
        }
        for (i, e) in events.iter().enumerate() {
            validate_event(&self.license, e).map_err(|err| match err {
                RecordError::Invalid(m) if events.len() > 1 => {
                    RecordError::Invalid(format!("events[{i}]: {m}"))
                }
                other => other,
            })?;
        }
        let now = chrono::Utc::now().timestamp();
        let recorded = self.store.record(events, now, self.windows).await?;
        self.metrics
            .recorded(recorded.recorded, recorded.duplicates);
        Ok(recorded)
    }

    /// The key reports are signed with now.
    pub fn signing_key(&self) -> SigningKey {
        self.key.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The keys that signed this agent's chain, oldest first (see
    /// `tally_proto::agent_key::KeyHistory`).
    pub fn key_history(&self) -> Result<tally_proto::agent_key::KeyHistory, StoreError> {
        self.store
            .key_history(self.signing_key().verifying_key().to_bytes())
    }

    /// Fetches keyrings newer than the one held from the first collector that answers;
    /// `false` when none did (offline: what is held is used).
    pub async fn refresh_keyrings(&self) -> bool {
        for url in &self.collectors {
            let Ok(mut client) = connect(self, url).await else {
                continue;
            };
            match crate::trusted_keys::refresh(&self.keys, &self.store, &mut client).await {
                Ok(_) => return true,
                Err(e) => tracing::warn!(collector = %url, error = %e, "Fetching keyrings failed."),
            }
        }
        false
    }

    /// Verifies a closed statement; when it names a statement key this agent does not know
    /// (a rotation since it last looked), fetches the newer keyrings from its collectors
    /// first and checks again. An unreachable collector leaves the first answer standing.
    pub async fn verify_statement(
        &self,
        document: &[u8],
    ) -> Result<tally_proto::statement::Statement, tally_proto::statement::StatementError> {
        use tally_proto::keyring::KeyError;
        use tally_proto::statement::StatementError;
        match self.keys.verify_statement(document) {
            Err(StatementError::Key(KeyError::Unknown(id))) => {
                if self.refresh_keyrings().await {
                    return self.keys.verify_statement(document);
                }
                Err(StatementError::Key(KeyError::Unknown(id)))
            }
            other => other,
        }
    }

    /// Closes finished windows (and with `flush`, the open one) into the outbox.
    pub async fn close_windows(&self, flush: bool) -> Result<u64, StoreError> {
        let now = chrono::Utc::now().timestamp();
        let close = |key| {
            self.store.close_windows(
                key,
                self.license.license_id.clone(),
                now,
                self.windows,
                flush,
            )
        };
        let n = match close(self.signing_key()).await {
            // `keys rotate` handed the chain to a new key since this agent loaded its key:
            // load the new key (finishing the rotation's rename if need be) and sign with it.
            Err(StoreError::KeyRotated(holder)) => {
                let key = crate::key_file::load(&self.dir, Some(holder))
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                tracing::info!(key_id = %tally_proto::keys::key_id(&holder), "Signing with the rotated agent key.");
                *self.key.write().unwrap_or_else(|p| p.into_inner()) = key.clone();
                close(key).await?
            }
            other => other?,
        };
        if n > 0 {
            self.outbox_ready.notify_one();
        }
        Ok(n)
    }
}

/// Checks one event: metric name, licensed, quantity, idempotency key.
pub fn validate_event(license: &License, e: &Event) -> Result<(), RecordError> {
    validate_metric_name(&e.metric).map_err(|err| RecordError::Invalid(err.to_string()))?;
    if license.metric(&e.metric).is_none() {
        return Err(RecordError::Invalid(format!(
            "metric {} is not licensed (licensed: {})",
            e.metric,
            license
                .metrics
                .iter()
                .map(|m| m.metric.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if e.quantity == 0 {
        return Err(RecordError::Invalid(format!(
            "quantity of {} must be at least 1",
            e.metric
        )));
    }
    if e.quantity > MAX_EVENT_QUANTITY {
        return Err(RecordError::Invalid(format!(
            "quantity {} is absurd (the limit per event is {MAX_EVENT_QUANTITY})",
            e.quantity
        )));
    }
    if let Some(k) = &e.idempotency_key
        && (k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY)
    {
        return Err(RecordError::Invalid(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"
        )));
    }
    Ok(())
}

/// Closes windows just after every boundary or license bound (flushes close the open
/// window directly).
pub async fn window_loop(agent: Arc<Agent>) {
    loop {
        if let Err(e) = agent.close_windows(false).await {
            tracing::error!(error = %e, "Closing a window failed; will retry at the next boundary.");
        }
        if let Err(e) = agent.store.prune(chrono::Utc::now().timestamp()).await {
            tracing::warn!(error = %e, "Pruning idempotency keys failed.");
        }
        let now = chrono::Utc::now();
        let next = agent.windows.end_of(now.timestamp());
        let ms = (next - now.timestamp()) * 1000 - now.timestamp_subsec_millis() as i64;
        tokio::time::sleep(Duration::from_millis(ms.max(1) as u64 + 20)).await;
    }
}

/// The delivery backoff schedule (docs/protocol.md §6.6): initial 1 s, factor 2, cap 5 min, jitter, no
/// give-up. backon's jitter adds `base × U[0, 1)` to each base delay, so the k-th wait
/// (k = 0, 1, 2…) lies in `[b, 2b)` with `b = min(2^k s, 300 s)`.
pub fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_factor(2.0)
        .with_max_delay(Duration::from_secs(300))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Delivers the outbox in sequence order, forever.
pub async fn delivery_loop(agent: Arc<Agent>) {
    let mut schedule = backoff();
    let mut endpoint = 0usize;
    loop {
        let pending = match agent.store.pending(DELIVERY_BATCH) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "Reading the outbox failed.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if pending.is_empty() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), agent.outbox_ready.notified()).await;
            continue;
        }
        let url = &agent.collectors[endpoint % agent.collectors.len()];
        agent.stats.attempts.fetch_add(1, Ordering::Relaxed);
        // A rotation goes first: the collector must know the new key before its reports.
        // While it cannot be recorded (the collector is old, or does not know the old key
        // yet), the reports the old key signed, below the rotation, still go.
        let sent = match send_rotations(&agent, url).await {
            Ok(()) => submit(&agent, url, pending.iter().map(|r| r.signed()).collect()).await,
            Err((e, from_seq)) => {
                let below: Vec<_> = pending
                    .iter()
                    .filter(|r| r.seq < from_seq)
                    .map(|r| r.signed())
                    .collect();
                if below.is_empty() {
                    Err(e)
                } else {
                    submit(&agent, url, below).await.and(Err(e))
                }
            }
        };
        match sent {
            Ok(n) => {
                agent.metrics.delivery(Some(n));
                schedule = backoff();
                agent.stats.clear_waits();
                agent.stats.delivered.fetch_add(n, Ordering::Relaxed);
                agent
                    .stats
                    .last_success
                    .store(chrono::Utc::now().timestamp() as u64, Ordering::Relaxed);
                agent.stats.last_attempt_ok.store(true, Ordering::Relaxed);
                // Recovered: the last error no longer describes delivery.
                agent
                    .stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
            Err(e) => {
                agent.metrics.delivery(None);
                agent.stats.failures.fetch_add(1, Ordering::Relaxed);
                agent.stats.last_attempt_ok.store(false, Ordering::Relaxed);
                *agent
                    .stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = e.clone();
                let delay = schedule.next().unwrap_or(Duration::from_secs(300));
                agent.stats.record_wait(delay);
                tracing::warn!(collector = %url, error = %e, retry_in_ms = delay.as_millis() as u64, "Delivery failed; will retry.");
                endpoint += 1; // fail over to the next collector, if several
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn connect(
    agent: &Agent,
    url: &str,
) -> Result<pb::ingest_client::IngestClient<tonic::transport::Channel>, String> {
    let endpoint = crate::tls::endpoint(url, agent.tls.as_ref())?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    Ok(pb::ingest_client::IngestClient::new(channel))
}

/// Sends the key rotations the collector has not recorded yet, oldest first. A refusal
/// (malformed, revoked, a conflict) is final and stored with its reason; anything else
/// (unreachable, not enrolled yet, unavailable) is an error to retry.
/// On an error, also the first seq it holds back (the rotation's `from_seq`).
async fn send_rotations(agent: &Agent, url: &str) -> Result<(), (String, u64)> {
    use crate::store::RotationState;
    let pending = agent
        .store
        .pending_rotations()
        .map_err(|e| (e.to_string(), 0))?;
    let Some(first) = pending.first() else {
        return Ok(());
    };
    let held_back = first.rotation.from_seq;
    let mut client = connect(agent, url).await.map_err(|e| (e, held_back))?;
    for r in pending {
        let answer = client
            .rotate_agent_key(pb::RotateAgentKeyRequest {
                rotation: Some(r.signed.clone()),
            })
            .await;
        let (state, detail) = match answer {
            Ok(_) => (RotationState::Recorded, String::new()),
            Err(s) => match s.code() {
                tonic::Code::InvalidArgument
                | tonic::Code::PermissionDenied
                | tonic::Code::FailedPrecondition => {
                    tracing::error!(
                        old_key = %r.rotation.old_key_id(),
                        new_key = %r.rotation.new_key_id(),
                        reason = %s.message(),
                        "The collector refused the agent key rotation; reports signed by the new key will wait until an operator acts."
                    );
                    (RotationState::Refused, s.message().to_string())
                }
                code => {
                    return Err((
                        format!("key rotation: {code}: {}", s.message()),
                        r.rotation.from_seq,
                    ));
                }
            },
        };
        agent
            .store
            .rotation_answered(r.rotation.from_seq, state, detail)
            .await
            .map_err(|e| (e.to_string(), r.rotation.from_seq))?;
    }
    Ok(())
}

/// One Submit call. Transient failures (unreachable, UNAVAILABLE, RESOURCE_EXHAUSTED,
/// deadline, bad receipts) are errors to retry; every receipt is verified and stored.
async fn submit(agent: &Agent, url: &str, reports: Vec<pb::SignedReport>) -> Result<u64, String> {
    let mut client = connect(agent, url).await?;
    let n = reports.len();
    let digests: Vec<_> = reports
        .iter()
        .map(|r| tally_proto::Digest::of(&r.report))
        .collect();
    let resp = client
        .submit(pb::SubmitRequest { reports })
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    let resp = resp.into_inner();
    if resp.keyring_version > agent.keys.version() {
        // A keyring this agent does not hold yet (a rotation or a revocation): follow it
        // before checking the receipts against it.
        crate::trusted_keys::refresh(&agent.keys, &agent.store, &mut client)
            .await
            .map_err(|e| format!("the collector holds a newer keyring; {e}"))?;
    }
    let receipts = resp.receipts;
    if receipts.len() != n {
        return Err(format!(
            "collector answered {} receipts for {n} reports",
            receipts.len()
        ));
    }
    let mut verified = Vec::with_capacity(n);
    let arrived = chrono::Utc::now();
    for (r, d) in receipts.into_iter().zip(digests) {
        let body = match agent.keys.verify_receipt(&r, Some(arrived)) {
            // Signed by a key this agent does not know yet (a rotation since it last
            // looked, or a first keyring): follow the keyrings, then check again.
            Err(e) if crate::trusted_keys::unknown_key(&e) => {
                crate::trusted_keys::refresh(&agent.keys, &agent.store, &mut client)
                    .await
                    .map_err(|e| format!("receipt names an unknown key; {e}"))?;
                agent.keys.verify_receipt(&r, Some(arrived))
            }
            other => other,
        }
        .map_err(|e| format!("receipt does not verify: {e}"))?;
        if body.report_digest != d {
            return Err("a receipt names another report".into());
        }
        if matches!(body.outcome, Outcome::Quarantined | Outcome::Refused) {
            tracing::warn!(digest = %d, outcome = body.outcome.as_str(), reason = %body.reason, "Report not counted by the collector.");
        }
        verified.push((body, r));
    }
    let not_enrolled = verified
        .iter()
        .filter(|(b, _)| DeliveryState::after(b.outcome, &b.reason) == DeliveryState::Pending)
        .count();
    agent
        .store
        .store_receipts(verified)
        .await
        .map_err(|e| e.to_string())?;
    if not_enrolled > 0 {
        // Kept for another try, with backoff: resending at once would only be refused again.
        return Err(format!(
            "the collector does not know this agent's key yet (unknown_agent): {not_enrolled} \
             report(s) wait until the vendor enrolls it ('tally-collector agents add')"
        ));
    }
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interval the k-th wait of a fresh schedule lies in: `[b, 2b)`, `b = min(2^k, 300) s`
    /// (backon 1.6 adds `b × rng.f32()`, `f32()` in `[0, 1)`).
    fn wait_bounds(k: u32) -> (Duration, Duration) {
        let b = Duration::from_secs(2u64.saturating_pow(k).min(300));
        (b, 2 * b)
    }

    #[test]
    fn backoff_follows_the_schedule_with_jitter() {
        const FIRST: usize = 15;
        let mut seen = vec![(Duration::MAX, Duration::ZERO); FIRST];
        for _ in 0..2000 {
            let mut s = backoff();
            for (k, (lo, hi)) in seen.iter_mut().enumerate() {
                let d = s.next().expect("the schedule never ends");
                let (min, max) = wait_bounds(k as u32);
                assert!(
                    min <= d && d < max,
                    "wait {k} is {d:?}, not in [{min:?}, {max:?})"
                );
                *lo = (*lo).min(d);
                *hi = (*hi).max(d);
            }
        }
        // The jitter is there: over 2000 schedules each wait spreads over most of its interval.
        for (k, (lo, hi)) in seen.iter().enumerate() {
            let (min, _) = wait_bounds(k as u32);
            assert!(*hi - *lo > min / 2, "wait {k} only spans {lo:?}..{hi:?}");
        }
    }

    #[test]
    fn backoff_never_ends_and_stays_capped() {
        let mut s = backoff();
        for k in 0..10_000u32 {
            let d = s
                .next()
                .unwrap_or_else(|| panic!("the schedule ended after {k} waits"));
            let (min, max) = wait_bounds(k);
            assert!(min <= d && d < max, "wait {k} is {d:?}");
        }
    }

    #[test]
    fn backoff_waits_recorded_are_bounded_and_cleared() {
        let s = DeliveryStats::default();
        for i in 0..(RECORDED_WAITS as u64 + 5) {
            s.record_wait(Duration::from_millis(i));
        }
        let w = s.waits_ms();
        assert_eq!(w.len(), RECORDED_WAITS);
        assert_eq!(
            (w[0], w[RECORDED_WAITS - 1]),
            (5, RECORDED_WAITS as u64 + 4)
        );
        s.clear_waits();
        assert!(s.waits_ms().is_empty());
    }
}

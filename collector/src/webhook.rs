//! Usage alert webhooks: each alert (a threshold crossing, recorded with the report that
//! crossed it) is POSTed as JSON to `serve --webhook URL` until the receiver answers 2xx.
//!
//! - **Signed**: `X-Tally-Signature: sha256=<hex HMAC-SHA256 of the body>` with the secret
//!   from `--webhook-secret-file`, so a receiver can tell the vendor's collector sent it.
//! - **At least once**: the undelivered alerts in the database are the outbox, so a
//!   collector killed before delivering delivers after its restart, and several collectors
//!   may each deliver one. Every delivery of one alert carries the same id (`id` in the
//!   body, `Idempotency-Key` header): a receiver keeps the first and ignores the rest.
//! - **Retried with backoff** (1 s doubling to 5 min, with jitter), never given up.

use crate::metrics::Metrics;
use crate::store::{AlertRecord, Store, StoreResult};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tally_proto::time::Instant;

/// How often the outbox is looked at.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// One delivery's time limit.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("--webhook: {0}")]
    Url(String),
    #[error("--webhook-secret-file {path}: {reason}")]
    Secret { path: String, reason: String },
}

pub struct Webhook {
    url: reqwest::Url,
    secret: Vec<u8>,
    client: reqwest::Client,
}

impl Webhook {
    /// A webhook to `url` (http or https) signing with the secret in `secret_file` (its
    /// content, without a trailing newline; at least 16 bytes).
    pub fn new(url: &str, secret_file: &std::path::Path) -> Result<Webhook, WebhookError> {
        // The URL is never echoed or logged: receivers often put a secret in it.
        let url = reqwest::Url::parse(url).map_err(|e| WebhookError::Url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(WebhookError::Url(
                "must be an http:// or https:// URL".into(),
            ));
        }
        let secret_err = |reason: String| WebhookError::Secret {
            path: secret_file.display().to_string(),
            reason,
        };
        let mut secret = std::fs::read(secret_file).map_err(|e| secret_err(e.to_string()))?;
        while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            secret.pop();
        }
        if secret.len() < 16 {
            return Err(secret_err("the secret must be at least 16 bytes".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .build()
            .map_err(|e| WebhookError::Url(e.to_string()))?;
        Ok(Webhook {
            url,
            secret,
            client,
        })
    }

    /// Delivers one alert; `Err` says why it was not accepted.
    pub async fn deliver(&self, a: &AlertRecord) -> Result<(), String> {
        let body = body(a);
        let r = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("x-tally-signature", signature(&self.secret, &body))
            .header("idempotency-key", &a.id)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("cannot reach the receiver: {}", e.without_url()))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {}", r.status()))
        }
    }
}

/// The JSON body of an alert's delivery.
pub fn body(a: &AlertRecord) -> Vec<u8> {
    let mut v = crate::views::alert(a);
    if let Some(m) = v.as_object_mut() {
        m.remove("delivered_at");
        m.insert("event".into(), "usage.threshold_crossed".into());
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length: this never fails.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The wait before the next attempt after `attempts` failed ones: 1 s doubling, at most
/// 5 min, scaled by `jitter` (0.8 to 1.2, drawn by the caller).
pub fn backoff(attempts: u32, jitter: f64) -> Duration {
    let base = 1u64
        .checked_shl(attempts.min(16))
        .unwrap_or(u64::MAX)
        .min(300);
    Duration::from_secs_f64(base as f64 * jitter.clamp(0.8, 1.2))
}

fn jitter() -> f64 {
    let r = rand_core::RngCore::next_u32(&mut rand_core::OsRng);
    0.8 + 0.4 * (f64::from(r) / f64::from(u32::MAX))
}

/// Delivers every due alert once (what one poll does), counting each attempt in
/// `metrics`. Returns how many were delivered.
pub async fn deliver_due(
    store: &dyn Store,
    hook: &Webhook,
    metrics: &Metrics,
    status: &crate::status::StatusBoard,
    now: Instant,
) -> StoreResult<usize> {
    // Claimed for longer than one delivery can take, so no other collector sends them
    // meanwhile; a claim this process does not settle (it died) lapses.
    let lease = now
        + chrono::Duration::from_std(DELIVERY_TIMEOUT + Duration::from_secs(5))
            .unwrap_or(chrono::Duration::seconds(15));
    let due = store.claim_due_alerts(now, lease, 50).await?;
    let mut delivered = 0;
    for a in due {
        let result = hook.deliver(&a).await;
        metrics.webhook_delivery(result.is_ok());
        status.observe(
            crate::status::Component::Webhook,
            result.is_ok(),
            store.clock().now(),
        );
        match result {
            Ok(()) => {
                store
                    .alert_attempted(a.id.clone(), store.clock().now(), None)
                    .await?;
                tracing::info!(alert = %a.id, customer = %a.customer_id, "Delivered a usage alert.");
                delivered += 1;
            }
            Err(why) => {
                let wait = backoff(a.attempts, jitter());
                let next = store.clock().now()
                    + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(300));
                store
                    .alert_attempted(a.id.clone(), store.clock().now(), Some(next))
                    .await?;
                tracing::warn!(alert = %a.id, attempts = a.attempts + 1, error = %why, "Usage alert not delivered; will retry.");
            }
        }
    }
    Ok(delivered)
}

/// Runs [`deliver_due`] every [`POLL_EVERY`] until `stop` resolves.
pub async fn delivery_loop(
    store: Arc<dyn Store>,
    hook: Arc<Webhook>,
    metrics: Arc<Metrics>,
    status: Arc<crate::status::StatusBoard>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(POLL_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = deliver_due(store.as_ref(), &hook, &metrics, &status, store.clock().now()).await {
                    tracing::error!(error = %e, "Reading the alert outbox failed; will retry.");
                }
            }
            _ = &mut stop => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let secs = |n| backoff(n, 1.0).as_secs();
        assert_eq!(
            [secs(0), secs(1), secs(2), secs(8), secs(9), secs(40)],
            [1, 2, 4, 256, 300, 300]
        );
        assert_eq!(backoff(0, 1.2), Duration::from_secs_f64(1.2));
        assert_eq!(
            backoff(3, 5.0),
            Duration::from_secs_f64(8.0 * 1.2),
            "jitter is bounded"
        );
    }
}

//! What the seeded soaks share: their settings (`TALLY_SOAK_SECS`, `TALLY_SOAK_SEED`), a
//! tiny deterministic generator, and callers that record usage into agents with
//! idempotent retries and count what was acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// xorshift64*: tiny, deterministic for a seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

/// `TALLY_SOAK_SECS` (default 20) and `TALLY_SOAK_SEED` (default: from the clock), printed
/// with the command line that replays the run.
pub fn settings(name: &str) -> (u64, u64) {
    let secs: u64 = std::env::var("TALLY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("TALLY_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!(
        "{name}: seed {seed}, {secs} s (replay with TALLY_SOAK_SEED={seed} TALLY_SOAK_SECS={secs})"
    );
    (secs, seed)
}

const METRICS: [&str; 2] = ["api.convert", "api.render"];

/// Callers recording random usage into agents until stopped; each event is retried until
/// acknowledged (a retry after an unacknowledged commit is a duplicate the agent drops by
/// its idempotency key), and only acknowledged quantities are counted.
pub struct Callers {
    stop: Arc<AtomicBool>,
    acked: Arc<[AtomicU64; 2]>,
    events: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Callers {
    /// One caller per agent URL in `urls`, each with its own stream from `seed`.
    pub fn start(urls: &[String], seed: u64) -> Callers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let events = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (caller, url) in urls.iter().enumerate() {
            let (url, stop, acked, events) =
                (url.clone(), stop.clone(), acked.clone(), events.clone());
            let mut rng = Rng(seed ^ (caller as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("http client");
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let m = (rng.next_u64() % 2) as usize;
                    let q = rng.range(1, 10);
                    let metric = METRICS[m];
                    let body = serde_json::json!({
                        "metric": metric,
                        "quantity": q,
                        "idempotency_key": format!("soak-{caller}-{i}"),
                    });
                    loop {
                        match http
                            .post(format!("{url}/v1/events"))
                            .json(&body)
                            .send()
                            .await
                        {
                            Ok(r) if r.status().is_success() => break,
                            Ok(r) if r.status().is_client_error() => {
                                panic!("rejected: {}", r.text().await.unwrap_or_default())
                            }
                            _ => tokio::time::sleep(Duration::from_millis(30)).await,
                        }
                    }
                    acked[m].fetch_add(q, Ordering::SeqCst);
                    events.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(rng.range(0, 20))).await;
                }
            }));
        }
        Callers {
            stop,
            acked,
            events,
            tasks,
        }
    }

    /// Stops the callers and returns (events acknowledged, acknowledged totals per metric,
    /// metrics with none left out).
    pub async fn finish(self) -> (u64, BTreeMap<String, u64>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("caller task");
        }
        let totals = METRICS
            .iter()
            .zip(self.acked.iter())
            .map(|(m, q)| (m.to_string(), q.load(Ordering::SeqCst)))
            .filter(|(_, q)| *q > 0)
            .collect();
        (self.events.load(Ordering::SeqCst), totals)
    }
}

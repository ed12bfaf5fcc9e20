//! A batching Rust client for products: concurrent `record` calls are gathered into one
//! `Record` RPC (one agent transaction), and each call returns only after its event is
//! committed.
//!
//! Callers append to the open batch under a short std `Mutex` (never held across an
//! `.await`) and wait on the batch's shared outcome; one sender task takes whole batches
//! and keeps a few RPCs in flight. There is no per-event channel or oneshot: the per-call
//! cost is a push, an `Arc` clone and one wake-up. Each caller still awaits its own commit,
//! so the rate is at most (concurrent callers) / (commit latency) — see BENCHMARKS.md.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use tally_proto::pb;
use tally_proto::pb::recorder_client::RecorderClient;
use tokio::sync::{Notify, Semaphore};
use tonic::transport::Channel;

/// Most events gathered into one RPC.
const MAX_BATCH: usize = 10_000;

/// RPCs in flight at once: while one batch commits at the agent, the next one fills.
const IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the agent: {0}")]
    Connect(String),
    #[error("the agent refused the events: {0}")]
    Rejected(String),
    #[error("the agent did not confirm the events (retry with the same idempotency key): {0}")]
    Unconfirmed(String),
}

/// What happened to a batch: one answer for all, or (after a rejection was retried event
/// by event) one per event.
enum Answer {
    All(Result<(), ClientError>),
    Each(Vec<Result<(), ClientError>>),
}

#[derive(Default)]
struct Outcome {
    answer: OnceLock<Answer>,
    done: Notify,
}

impl Outcome {
    fn settle(&self, answer: Answer) {
        let _ = self.answer.set(answer);
        self.done.notify_waiters();
    }

    fn of(&self, i: usize) -> Option<Result<(), ClientError>> {
        Some(match self.answer.get()? {
            Answer::All(r) => r.clone(),
            Answer::Each(v) => v
                .get(i)
                .cloned()
                .unwrap_or_else(|| Err(ClientError::Unconfirmed("no answer".into()))),
        })
    }
}

struct Batch {
    events: Vec<pb::Event>,
    outcome: Arc<Outcome>,
}

impl Drop for Batch {
    /// A batch dropped unanswered (its RPC task was cancelled, the client stopped) must
    /// still wake its callers: they are told the events are unconfirmed, and retry.
    fn drop(&mut self) {
        if self.outcome.answer.get().is_none() {
            self.outcome
                .settle(Answer::All(Err(ClientError::Unconfirmed(
                    "client stopped".into(),
                ))));
        }
    }
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<Batch>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
pub struct BatchingClient {
    shared: Arc<Shared>,
}

impl BatchingClient {
    /// Connects to an agent's listen address, e.g. `http://127.0.0.1:7071`.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let ch = Channel::from_shared(url.to_string())
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .connect()
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
        });
        tokio::spawn(run(RecorderClient::new(ch), shared.clone()));
        Ok(BatchingClient { shared })
    }

    /// Records one event; returns after the agent committed it.
    pub async fn record(
        &self,
        metric: &str,
        quantity: u64,
        idempotency_key: Option<&str>,
    ) -> Result<(), ClientError> {
        let ev = pb::Event {
            metric: metric.to_string(),
            quantity,
            idempotency_key: idempotency_key.unwrap_or_default().to_string(),
        };
        let (outcome, index) = {
            let mut q = self.shared.lock();
            if q.closed {
                return Err(ClientError::Unconfirmed("client stopped".into()));
            }
            let open = match q.batches.back_mut() {
                Some(b) if b.events.len() < MAX_BATCH => b,
                _ => {
                    q.batches.push_back(Batch {
                        events: Vec::new(),
                        outcome: Arc::new(Outcome::default()),
                    });
                    match q.batches.back_mut() {
                        Some(b) => b,
                        None => return Err(ClientError::Unconfirmed("client stopped".into())),
                    }
                }
            };
            open.events.push(ev);
            (open.outcome.clone(), open.events.len() - 1)
        };
        self.shared.ready.notify_one();
        loop {
            let notified = outcome.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = outcome.of(index) {
                return r;
            }
            notified.await;
        }
    }
}

/// Closes the queue when the sender task ends, for whatever reason: queued batches are
/// dropped (answering their callers) and new calls fail at once.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let drained: Vec<Batch> = {
            let mut q = self.0.lock();
            q.closed = true;
            q.batches.drain(..).collect()
        };
        drop(drained);
    }
}

async fn run(client: RecorderClient<Channel>, shared: Arc<Shared>) {
    let _close = CloseOnDrop(shared.clone());
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        shared.ready.notified().await;
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let Some(batch) = shared.lock().batches.pop_front() else {
                break;
            };
            let client = client.clone();
            tokio::spawn(async move {
                send_batch(client, batch).await;
                drop(permit);
            });
        }
    }
}

fn outcome(
    r: Result<tonic::Response<pb::RecordResponse>, tonic::Status>,
) -> Result<(), ClientError> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::InvalidArgument => {
            Err(ClientError::Rejected(s.message().to_string()))
        }
        Err(s) => Err(ClientError::Unconfirmed(s.message().to_string())),
    }
}

async fn send_batch(mut client: RecorderClient<Channel>, batch: Batch) {
    let result = outcome(
        client
            .record(pb::RecordRequest {
                events: batch.events.clone(),
            })
            .await,
    );
    // One invalid event rejects its whole batch; retry the others one by one so a bad
    // event never takes good ones down with it.
    if matches!(result, Err(ClientError::Rejected(_))) && batch.events.len() > 1 {
        let mut each = Vec::with_capacity(batch.events.len());
        for e in &batch.events {
            each.push(outcome(
                client
                    .record(pb::RecordRequest {
                        events: vec![e.clone()],
                    })
                    .await,
            ));
        }
        batch.outcome.settle(Answer::Each(each));
        return;
    }
    batch.outcome.settle(Answer::All(result));
}

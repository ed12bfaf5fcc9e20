//! A batching Rust client for products: concurrent `record` calls are gathered into one
//! `Record` RPC (one agent transaction), and each call returns only after its event is
//! committed.

use tally_proto::pb;
use tally_proto::pb::recorder_client::RecorderClient;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

/// Most events gathered into one RPC.
const MAX_BATCH: usize = 10_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the agent: {0}")]
    Connect(String),
    #[error("the agent refused the events: {0}")]
    Rejected(String),
    #[error("the agent did not confirm the events (retry with the same idempotency key): {0}")]
    Unconfirmed(String),
}

type Pending = (pb::Event, oneshot::Sender<Result<(), ClientError>>);

#[derive(Clone)]
pub struct BatchingClient {
    tx: mpsc::Sender<Pending>,
}

impl BatchingClient {
    /// Connects to an agent's listen address, e.g. `http://127.0.0.1:7071`.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let ch = Channel::from_shared(url.to_string())
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .connect()
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run(RecorderClient::new(ch), rx));
        Ok(BatchingClient { tx })
    }

    /// Records one event; returns after the agent committed it.
    pub async fn record(
        &self,
        metric: &str,
        quantity: u64,
        idempotency_key: Option<&str>,
    ) -> Result<(), ClientError> {
        let (done, wait) = oneshot::channel();
        let ev = pb::Event {
            metric: metric.to_string(),
            quantity,
            idempotency_key: idempotency_key.unwrap_or_default().to_string(),
        };
        self.tx
            .send((ev, done))
            .await
            .map_err(|_| ClientError::Unconfirmed("client stopped".into()))?;
        wait.await
            .map_err(|_| ClientError::Unconfirmed("client stopped".into()))?
    }
}

/// RPCs in flight at once: while one batch commits at the agent, the next one fills.
const IN_FLIGHT: usize = 4;

async fn run(client: RecorderClient<Channel>, mut rx: mpsc::Receiver<Pending>) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let client = client.clone();
        tokio::spawn(async move {
            send_batch(client, batch).await;
            drop(permit);
        });
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

async fn send_batch(mut client: RecorderClient<Channel>, batch: Vec<Pending>) {
    let events = batch.iter().map(|(e, _)| e.clone()).collect();
    let result = outcome(client.record(pb::RecordRequest { events }).await);
    // One invalid event rejects its whole batch; retry the others one by one so a bad
    // event never takes good ones down with it.
    if matches!(result, Err(ClientError::Rejected(_))) && batch.len() > 1 {
        for (e, done) in batch {
            let r = outcome(client.record(pb::RecordRequest { events: vec![e] }).await);
            let _ = done.send(r);
        }
        return;
    }
    for (_, done) in batch {
        let _ = done.send(result.clone());
    }
}

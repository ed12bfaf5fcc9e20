//! `tally.v1.Recorder` over gRPC: `Record`, client-streaming `RecordStream`,
//! `GetLicenseStatus`. Prost types end here.

use crate::agent::{Agent, RecordError};
use crate::store::Event;
use std::sync::Arc;
use tally_proto::pb;
use tally_proto::pb::recorder_server::Recorder;
use tonic::{Request, Response, Status, Streaming};

pub struct RecorderService {
    pub agent: Arc<Agent>,
}

fn to_events(r: pb::RecordRequest) -> Vec<Event> {
    r.events
        .into_iter()
        .map(|e| Event {
            metric: e.metric,
            quantity: if e.quantity == 0 { 1 } else { e.quantity },
            idempotency_key: (!e.idempotency_key.is_empty()).then_some(e.idempotency_key),
        })
        .collect()
}

fn status(e: RecordError) -> Status {
    match e {
        RecordError::Invalid(m) => Status::invalid_argument(m),
        RecordError::Storage(m) => {
            tracing::error!(error = %m, "Events could not be committed.");
            Status::unavailable("the agent could not commit the events; nothing was counted, retry")
        }
    }
}

#[tonic::async_trait]
impl Recorder for RecorderService {
    async fn record(
        &self,
        request: Request<pb::RecordRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let r = self
            .agent
            .record(to_events(request.into_inner()))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RecordResponse {
            recorded: r.recorded,
            duplicates: r.duplicates,
        }))
    }

    /// Each batch of the stream is committed as it arrives; the answer comes after the
    /// last. If a batch fails, the error says how many earlier events were already counted.
    async fn record_stream(
        &self,
        request: Request<Streaming<pb::RecordRequest>>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let mut stream = request.into_inner();
        let mut total = pb::RecordResponse::default();
        while let Some(batch) = stream.message().await? {
            match self.agent.record(to_events(batch)).await {
                Ok(r) => {
                    total.recorded += r.recorded;
                    total.duplicates += r.duplicates;
                }
                Err(e) => {
                    let s = status(e);
                    return Err(Status::new(
                        s.code(),
                        format!(
                            "{} ({} events of earlier batches were recorded)",
                            s.message(),
                            total.recorded + total.duplicates
                        ),
                    ));
                }
            }
        }
        Ok(Response::new(total))
    }

    async fn get_license_status(
        &self,
        _: Request<pb::GetLicenseStatusRequest>,
    ) -> Result<Response<pb::LicenseStatus>, Status> {
        let s = crate::status::license_status(&self.agent, chrono::Utc::now());
        Ok(Response::new(pb::LicenseStatus {
            license_id: s.license_id,
            state: s.state.as_str().to_string(),
            lease_until: s.lease_until.map(tally_proto::time::to_timestamp),
            credits: s
                .credits
                .into_iter()
                .map(|c| pb::MetricCredit {
                    metric: c.metric,
                    limit: c.limit,
                    used: c.used,
                })
                .collect(),
        }))
    }
}

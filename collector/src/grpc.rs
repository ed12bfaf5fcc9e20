//! The `tally.v1.Ingest` gRPC service, plus health and reflection.
//!
//! Prost types stop here: requests are turned into domain calls on the `Ingestor` and the
//! `Store`, and their errors into gRPC statuses with readable messages.

use crate::ids;
use crate::ingest::{Ingestor, SubmitError};
use crate::metrics::Metrics;
use crate::store::{Source, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tally_proto::enroll::verify_proof;
use tally_proto::limits::{MAX_REPORTS_PER_SUBMIT, MAX_SHORT_STRING, MAX_SUBMIT_BYTES};
use tally_proto::pb;
use tally_proto::pb::ingest_server::{Ingest, IngestServer};
use tally_proto::signing;
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub struct IngestService {
    pub ingestor: Arc<Ingestor>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// How long one `Enroll` or `Submit` may take.
    pub call_deadline: Duration,
}

/// Default for [`IngestService::call_deadline`].
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `call` for at most `deadline`; past it the caller gets `DEADLINE_EXCEEDED`. Done
/// here rather than with tonic's server-wide timeout, which answers `CANCELLED` (a status
/// clients read as "the caller gave up", not "the server ran out of time").
async fn within<T>(
    deadline: Duration,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "the collector did not finish the call within {} s; retry",
                deadline.as_secs()
            )))
        })
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::Conflict(m) => Status::failed_precondition(m),
        StoreError::Invalid(m) => Status::permission_denied(m),
        StoreError::Unavailable(m) | StoreError::Contended(m) | StoreError::Database(m) => {
            tracing::error!(error = %m, "Store failed during a gRPC call.");
            Status::unavailable("the collector's storage is unavailable; retry later")
        }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        within(self.call_deadline, self.enroll_call(request)).await
    }

    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        within(self.call_deadline, self.submit_call(request)).await
    }

    /// Served from memory (the keys this collector signs with and their chain), never a
    /// store query: agents ask when a receipt names a key they do not know.
    async fn get_keyrings(
        &self,
        request: Request<pb::GetKeyringsRequest>,
    ) -> Result<Response<pb::GetKeyringsResponse>, Status> {
        let after = request.into_inner().after_version;
        let keyrings = self.ingestor.online_keys().current().signed_after(after);
        Ok(Response::new(pb::GetKeyringsResponse { keyrings }))
    }

    async fn rotate_agent_key(
        &self,
        request: Request<pb::RotateAgentKeyRequest>,
    ) -> Result<Response<pb::RotateAgentKeyResponse>, Status> {
        use crate::agent_rotation::RotationError;
        use crate::rules::agent_keys::RotationRefusal;
        let signed = request
            .into_inner()
            .rotation
            .ok_or_else(|| Status::invalid_argument("rotation: missing"))?;
        let call = async {
            match crate::agent_rotation::record(self.store.as_ref(), &signed, "grpc").await {
                Ok(_) => Ok(Response::new(pb::RotateAgentKeyResponse {})),
                Err(RotationError::Invalid(e)) => Err(Status::invalid_argument(e.to_string())),
                Err(RotationError::Refused(r)) => Err(match &r {
                    RotationRefusal::UnknownKey(_) => Status::not_found(r.to_string()),
                    RotationRefusal::Revoked(_) | RotationRefusal::LicenseMismatch { .. } => {
                        Status::permission_denied(r.to_string())
                    }
                    RotationRefusal::Conflict(_) => Status::failed_precondition(r.to_string()),
                }),
                Err(RotationError::Store(e)) => Err(store_status(e)),
            }
        };
        within(self.call_deadline, call).await
    }
}

impl IngestService {
    async fn enroll_call(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let r = request.into_inner();
        if !ids::is_valid_id(&r.license_id) {
            return Err(Status::invalid_argument(
                "license_id is not a valid license id",
            ));
        }
        if r.enrollment_token.is_empty() || r.enrollment_token.len() > MAX_SHORT_STRING {
            return Err(Status::invalid_argument(
                "enrollment_token must be 1 to 128 bytes",
            ));
        }
        let key = signing::trusted_key(&r.agent_key)
            .map_err(|e| Status::invalid_argument(format!("agent_key: {e}")))?;
        verify_proof(&key, &r.license_id, &r.enrollment_token, &r.proof)
            .map_err(|e| Status::permission_denied(format!("enrollment proof: {e}")))?;
        let hash = ids::hash_secret(&r.enrollment_token);
        let key_id = tally_proto::keys::key_id(&key.to_bytes());
        let enrolled = self
            .store
            .enroll(
                r.license_id.clone(),
                hash,
                key.to_bytes(),
                self.store.clock().now(),
            )
            .await;
        // Every enrollment that proved its key is in the audit log, granted or not (the
        // actor is the agent key's id: the token is a secret and never written).
        let outcome = match &enrolled {
            Ok((agent_id, _)) => format!("ok {agent_id}"),
            Err(e) => format!("refused: {e}"),
        };
        let audit = self
            .store
            .audit(crate::store::AuditEntry {
                at: self.store.clock().now(),
                actor: format!("agent key {key_id}"),
                action: "Enroll".into(),
                target: r.license_id.clone(),
                outcome: outcome.chars().take(200).collect(),
            })
            .await;
        let (agent_id, signed) = enrolled.map_err(store_status)?;
        audit.map_err(store_status)?;
        let license = <pb::SignedLicense as prost::Message>::decode(signed.as_slice())
            .map_err(|_| Status::internal("stored license does not decode"))?;
        self.metrics.enrollment();
        tracing::info!(%agent_id, license_id = %r.license_id, "Agent enrolled.");
        let online = self.ingestor.online_keys().current();
        Ok(Response::new(pb::EnrollResponse {
            collector_key: online.receipt.verifying_key().to_bytes().to_vec(),
            license: Some(license),
            keyring: online.newest_signed(),
        }))
    }

    async fn submit_call(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        self.metrics.submit_call();
        let started = std::time::Instant::now();
        let reports = request.into_inner().reports;
        if reports.len() > MAX_REPORTS_PER_SUBMIT {
            return Err(Status::invalid_argument(format!(
                "{} reports in one call; the limit is {MAX_REPORTS_PER_SUBMIT}",
                reports.len()
            )));
        }
        // One trace span per Submit (exported when traces are on, see
        // `tally_runtime::traces`); the store's transaction is a child of it.
        let span = tracing::info_span!("submit", reports = reports.len());
        let (receipts, _) = self
            .ingestor
            .submit(reports, Source::Online)
            .instrument(span)
            .await
            .map_err(|e| match e {
                SubmitError::Store(e) => store_status(e),
                SubmitError::Throttled(m) => Status::resource_exhausted(m),
                SubmitError::NoValidKey(m) => Status::unavailable(m),
            })?;
        self.metrics.submit_duration(started.elapsed());
        // The newest keyring this node holds: an agent holding an older one fetches it, so
        // a revocation reaches agents even when no receipt names an unknown key.
        let keyring_version = self.ingestor.online_keys().current().keyring.version;
        Ok(Response::new(pb::SubmitResponse {
            receipts,
            keyring_version,
        }))
    }
}

/// Why the gRPC router could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("gRPC TLS: {0}")]
    Tls(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// How often gRPC health asks the store whether it answers.
const HEALTH_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The gRPC router: Ingest, health and reflection.
pub fn router(
    service: IngestService,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<tonic::transport::server::Router, RouterError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // The Ingest service (and the server as a whole, service "") is SERVING while the store
    // answers: a gRPC load balancer then stops sending agents to a collector that cannot
    // store their reports (HTTP's `/readyz` says the same). Checked every few seconds; the
    // task holds the store weakly and ends when the server (its last holder) is gone.
    let store = Arc::downgrade(&service.store);
    let ingest = IngestServer::new(service)
        .max_decoding_message_size(MAX_SUBMIT_BYTES)
        .max_encoding_message_size(MAX_SUBMIT_BYTES);
    tokio::spawn(async move {
        let mut serving = None;
        loop {
            let Some(store) = store.upgrade() else { break };
            let ok = store.ping().await.is_ok();
            drop(store);
            if serving != Some(ok) {
                serving = Some(ok);
                if ok {
                    health_reporter
                        .set_serving::<IngestServer<IngestService>>()
                        .await;
                    health_reporter
                        .set_service_status("", tonic_health::ServingStatus::Serving)
                        .await;
                } else {
                    tracing::warn!("Store unreachable; gRPC health reports NOT_SERVING.");
                    health_reporter
                        .set_not_serving::<IngestServer<IngestService>>()
                        .await;
                    health_reporter
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                }
            }
            tokio::time::sleep(HEALTH_CHECK_EVERY).await;
        }
    });
    // Reflection in both versions: v1, and v1alpha for the many tools that speak only it
    // (Postman, Python's grpcio-reflection, older grpcurl).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    // Limits against misbehaving clients: a deadline per call (Ingest's own, see `within`;
    // the server-wide one is a backstop for health and reflection and answers CANCELLED),
    // a cap on concurrent streams per connection so one client cannot monopolise the
    // server, keepalives that drop dead or stalled peers, and a bounded header list.
    Ok(builder
        .timeout(std::time::Duration::from_secs(300))
        .max_concurrent_streams(64)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .http2_max_header_list_size(16 * 1024)
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ingest))
}

//! Traces over OTLP: a real collector process with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing
//! at a small OTLP/gRPC trace receiver run by this test exports a span per Submit, a child
//! span per store transaction and a span per billing query, named and with their
//! attributes, under the service name `tally-collector`; the same collector without the
//! variable exports nothing.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_tests::*;
use tonic::{Request, Response, Status};

/// One received span: its service, name, ids and string/int attributes.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: Vec<(String, String)>,
}

#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Span {
                        service: service.clone(),
                        name: s.name,
                        span_id: s.span_id,
                        parent_span_id: s.parent_span_id,
                        attributes: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn start_receiver() -> (Receiver, String) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (receiver, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_exports_spans_for_submits_store_transactions_and_queries() {
    let (receiver, endpoint) = start_receiver().await;
    // The deployment's collector runs without the variable: it serves the enrollment and
    // exports nothing.
    let mut d = Deployment::new(&["api.convert"], Some(""));
    let http = reqwest::Client::new();
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let statement = format!("/v1/statements/{}/{month}", d.customer);
    let r = http
        .get(format!("http://{}{statement}", d.collector.http))
        .bearer_auth(&d.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    sigterm(&d.collector.child);
    d.collector.child.wait().unwrap();
    assert!(
        receiver.spans.lock().unwrap().is_empty(),
        "spans exported with traces off"
    );

    // The same data directory, served with traces on.
    let mut collector = CollectorProcess::spawn_with_env(
        &d.cdata,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    );
    let agent = AgentProcess::spawn(
        &d.adata,
        &[
            "--listen",
            "127.0.0.1:0",
            "--collector",
            &format!("http://{}", collector.grpc),
        ],
    );
    for _ in 0..3 {
        let r = http
            .post(format!("{}/v1/events", agent.url()))
            .json(&serde_json::json!({"metric": "api.convert"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    agent.drain(120).await;
    let r = http
        .get(format!("http://{}{statement}", collector.http))
        .bearer_auth(&d.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Stopping sends what the exporter still buffers.
    sigterm(&collector.child);
    let status = collector.child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    // The receiver may still be handling the last export for a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = receiver.spans.lock().unwrap().clone();
        if spans.iter().any(|s| s.name == "billing_query") || std::time::Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let named = |n: &str| spans.iter().filter(|s| s.name == n).collect::<Vec<_>>();
    assert!(
        spans.iter().all(|s| s.service == "tally-collector"),
        "{spans:?}"
    );
    let submits = named("submit");
    assert!(!submits.is_empty(), "no submit span: {spans:?}");
    let stored = named("store.ingest");
    assert!(!stored.is_empty(), "no store.ingest span: {spans:?}");
    // Each store transaction is a child of a Submit, and counts the same reports.
    for s in &stored {
        let parent = submits
            .iter()
            .find(|p| p.span_id == s.parent_span_id)
            .unwrap_or_else(|| panic!("store.ingest without its submit: {s:?}"));
        let reports = |x: &Span| {
            x.attributes
                .iter()
                .find(|(k, _)| k == "reports")
                .map(|(_, v)| v.clone())
        };
        assert!(
            reports(s).is_some() && reports(s) == reports(parent),
            "{s:?} {parent:?}"
        );
    }
    let queries = named("billing_query");
    assert_eq!(queries.len(), 1, "{spans:?}");
    assert!(
        queries[0]
            .attributes
            .contains(&("query".to_string(), "statement".to_string())),
        "{:?}",
        queries[0]
    );
}

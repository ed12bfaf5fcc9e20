//! `run(agent, listener, shutdown)`: the recording API (HTTP and gRPC on one port) plus
//! the window and delivery loops, until `shutdown` resolves.

use crate::agent::{Agent, delivery_loop, window_loop};
use crate::grpc::RecorderService;
use std::future::Future;
use std::sync::Arc;
use tally_proto::pb::recorder_server::RecorderServer;
use tokio::net::TcpListener;

pub async fn run(
    agent: Arc<Agent>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let windows = tokio::spawn(window_loop(agent.clone()));
    let delivery = tokio::spawn(delivery_loop(agent.clone()));
    // gRPC and HTTP share the one listen port: gRPC calls are routed by their path.
    let recorder = RecorderServer::new(RecorderService {
        agent: agent.clone(),
    });
    let app = crate::http::app(agent.clone()).route_service("/tally.v1.Recorder/{*rest}", recorder);
    let r = tally_runtime::http_serve::serve(listener, app, shutdown).await;
    windows.abort();
    delivery.abort();
    r
}

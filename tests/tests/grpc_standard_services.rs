//! Standard gRPC tools work against the collector: health checking (`grpc.health.v1`)
//! reports SERVING for `tally.v1.Ingest`, and server reflection lists the services.
//! The HTTP/2 limits a client meets are checked here too (concurrent streams).

use tally_tests::InProcessCollector;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection() {
    let c = InProcessCollector::start().await;
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", c.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(ch.clone());
    let mut status = ServingStatus::Unknown as i32;
    for _ in 0..50 {
        if let Ok(r) = health
            .check(HealthCheckRequest {
                service: "tally.v1.Ingest".into(),
            })
            .await
        {
            status = r.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, ServingStatus::Serving as i32);
    let err = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected {resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"tally.v1.Ingest".to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

/// One connection holds at most 64 concurrent streams (DESIGN.md §9 limits): the collector
/// advertises the cap, a 65th request waits while 64 calls are open, and it proceeds as
/// soon as one of them ends.
#[tokio::test(flavor = "multi_thread")]
async fn one_connection_holds_at_most_64_streams() {
    use std::time::Duration;
    let c = InProcessCollector::start().await;
    let tcp = tokio::net::TcpStream::connect(c.grpc).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // Until the server's SETTINGS arrive, HTTP/2 allows unlimited streams; wait for them.
    let mut send = send.ready().await.unwrap();
    for _ in 0..250 {
        if send.current_max_send_streams() != usize::MAX {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        send = send.ready().await.unwrap();
    }
    assert_eq!(send.current_max_send_streams(), 64);

    // 64 Submit calls whose request bodies never end: the server holds each one open.
    let submit = || {
        http::Request::post(format!("http://{}/tally.v1.Ingest/Submit", c.grpc))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    };
    let mut open = Vec::new();
    for _ in 0..64 {
        send = send.ready().await.unwrap();
        open.push(send.send_request(submit(), false).unwrap());
    }
    // A 65th, complete call (empty body) is not answered while the 64 are open. (The wait
    // below cannot make the test fail spuriously: a slow machine only makes an early
    // answer less likely to be seen; the deterministic checks are the SETTINGS value above
    // and the answer after a stream frees, below.)
    send = send.ready().await.unwrap();
    let (extra, _) = send.send_request(submit(), true).unwrap();
    let extra = tokio::spawn(extra);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !extra.is_finished(),
        "a 65th call ran while 64 streams were open"
    );

    // ...until one of them ends: it is answered, its stream closes, and the 65th runs.
    let (response, mut body) = open.pop().unwrap();
    body.send_data(bytes_put::Bytes::new(), true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("the ended call is answered");
    let answer = tokio::time::timeout(Duration::from_secs(30), extra)
        .await
        .expect("the 65th call runs once a stream frees")
        .unwrap()
        .expect("the 65th call gets a response");
    assert_eq!(answer.status(), 200);
}

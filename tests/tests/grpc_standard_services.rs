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

/// Reflection `v1alpha` too: Postman, Python's `grpcio-reflection` and older tools speak
/// only that version. A v1alpha client lists the services and fetches the file that
/// defines `tally.v1.Ingest`.
#[tokio::test(flavor = "multi_thread")]
async fn reflection_v1alpha_for_older_tools() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let c = InProcessCollector::start().await;
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", c.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut refl = ServerReflectionClient::new(ch);
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "tally.v1.Ingest".into(),
            )),
        },
    ];
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .expect("the v1alpha reflection service answers")
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected {first:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"tally.v1.Ingest".to_string()), "{names:?}");
    let second = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!("unexpected {second:?}")
    };
    let decoded: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost::Message::decode(b.as_slice()).unwrap())
        .collect();
    assert!(
        decoded
            .iter()
            .any(|f| f.service.iter().any(|s| s.name() == "Ingest")),
        "{:?}",
        decoded.iter().map(|f| f.name()).collect::<Vec<_>>()
    );
}

/// One connection holds at most 64 concurrent streams (a limit against misbehaving
/// clients). A well-behaved client queues its 65th call itself (h2's client does), so that
/// proves nothing about the server; this client ignores the server's SETTINGS and opens 65
/// streams at once over a raw socket. The server must refuse the 65th (`RST_STREAM` with
/// `REFUSED_STREAM`) and none of the first 64.
#[tokio::test(flavor = "multi_thread")]
async fn one_connection_holds_at_most_64_streams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = InProcessCollector::start().await;
    let mut tcp = tokio::net::TcpStream::connect(c.grpc).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]); // our (empty) SETTINGS
    let block = submit_headers(&c.grpc.to_string());
    // 65 streams (ids 1, 3, … 129), each HEADERS without END_STREAM: all open at once.
    for i in 0..65u32 {
        frame(&mut out, 0x1, 0x4, 2 * i + 1, &block);
    }
    tcp.write_all(&out).await.unwrap();
    // Read the server's frames until the 65th stream is reset (or the connection ends).
    let deadline = std::time::Duration::from_secs(30);
    let mut resets: Vec<(u32, u32)> = Vec::new();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if tcp.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if tcp.read_exact(&mut payload).await.is_err() {
                break;
            }
            match head[3] {
                // RST_STREAM: (stream, error code)
                0x3 => {
                    let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                    resets.push((id, code));
                    if id == 129 {
                        break;
                    }
                }
                // GOAWAY ends the connection.
                0x7 => break,
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(deadline, read).await;
    const REFUSED_STREAM: u32 = 0x7;
    assert_eq!(
        resets,
        vec![(129, REFUSED_STREAM)],
        "the 65th stream (id 129) must be refused, and only it"
    );
}

/// Appends one HTTP/2 frame.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK header block for a gRPC `Submit` call: every field a literal without indexing
/// (no Huffman), which any HPACK decoder accepts.
fn submit_headers(authority: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/tally.v1.Ingest/Submit"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        b.push(0x00);
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

//! TLS between agent and collector, with real processes and a private CA: the agent
//! refuses a collector whose certificate is not from its CA; with mutual TLS on, a client
//! without a certificate is refused; with valid certificates everything flows.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::path::Path;
use tally_tests::{AgentProcess, CollectorProcess, agent_cmd, agent_json, collector_json};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    Ca { cert, key }
}

fn leaf(dir: &Path, name: &str, sans: &[&str], ca: &Ca) {
    let p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_ca_and_mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca1 = ca(&pki, "ca1");
    let _ca2 = ca(&pki, "ca2");
    leaf(&pki, "server", &["localhost", "127.0.0.1"], &ca1);
    leaf(&pki, "agent", &["agent-1"], &ca1);
    let f = |n: &str| pki.join(n).display().to_string();

    let cdata = tmp.path().join("collector");
    let admin = collector_json(&cdata, &["init"])["admin_token"]
        .as_str()
        .unwrap()
        .to_string();
    let customer = collector_json(&cdata, &["customers", "add", "Acme"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let collector = CollectorProcess::spawn_with_args(
        &cdata,
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &f("server.pem"),
            "--tls-key",
            &f("server.key"),
            "--client-ca",
            &f("ca1.pem"),
        ],
    );
    let url = format!("https://127.0.0.1:{}", collector.grpc.port());
    let lic = collector_json(
        &cdata,
        &[
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert",
            "--expires",
            "2099-01-01",
            "--endpoint",
            &url,
            "--enrollments",
            "5",
        ],
    );
    let (file, token) = (
        lic["file"].as_str().unwrap(),
        lic["enrollment_token"].as_str().unwrap(),
    );
    let adata = tmp.path().join("agent");
    let a = adata.to_str().unwrap();
    let _ = a;

    // 1. A collector certificate from another CA is refused.
    let (code, _, err) = agent_cmd(
        &adata,
        &[
            "init",
            "--license",
            file,
            "--token",
            token,
            "--ca",
            &f("ca2.pem"),
            "--cert",
            &f("agent.pem"),
            "--key",
            &f("agent.key"),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("enrollment failed"), "{err}");
    assert!(!adata.join("agent.key").exists());

    // 2. Mutual TLS: the right CA but no client certificate is refused.
    let (code, _, err) = agent_cmd(
        &adata,
        &[
            "init",
            "--license",
            file,
            "--token",
            token,
            "--ca",
            &f("ca1.pem"),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(!adata.join("agent.key").exists());

    // Plain text to the TLS port is refused too.
    let (code, out, err) = agent_cmd(
        &adata,
        &[
            "init",
            "--license",
            file,
            "--token",
            token,
            "--collector",
            &format!("http://{}", collector.grpc),
        ],
    );
    assert_eq!(code, 1, "{out} {err} {}", collector.stderr());

    // Plain HTTP to the HTTPS billing port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", collector.http))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // 3. Valid certificates: enrollment, recording and delivery flow.
    agent_json(
        &adata,
        &[
            "init",
            "--license",
            file,
            "--token",
            token,
            "--ca",
            &f("ca1.pem"),
            "--cert",
            &f("agent.pem"),
            "--key",
            &f("agent.key"),
        ],
    );
    let agent = AgentProcess::spawn(&adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/events", agent.url()))
        .json(&serde_json::json!({"metric": "api.convert", "quantity": 7}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    agent.drain(60).await;
    // The billing API is served over HTTPS with the same certificate.
    let body = https_get(
        collector.http,
        &pki.join("ca1.pem"),
        "/v1/usage?granularity=month",
        &admin,
    )
    .await;
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["rows"][0]["quantity"], 7, "{v}");

    // The agent fetches a statement from that HTTPS billing API: with another CA it cannot
    // connect; with --ca, or by default the CA given to init, it gets an answer (this
    // month's statement is open: not signed, which the agent says).
    let api = format!("https://localhost:{}", collector.http.port());
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let verify = |ca: Option<&str>| {
        let mut args = vec!["statements", "verify", "--fetch", &month, "--api", &api];
        if let Some(ca) = ca {
            args.extend(["--ca", ca]);
        }
        let env = [
            ("TALLY_API_TOKEN", Some(admin.as_str())),
            ("TALLY_CA", None),
        ];
        let (code, _, err) = tally_tests::agent_cmd_env(&adata, &args, &env);
        (code, err)
    };
    let (code, err) = verify(Some(&f("ca2.pem")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the billing API"), "{err}");
    for ca in [Some(f("ca1.pem")), None] {
        let (code, err) = verify(ca.as_deref());
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("open statement"), "--ca {ca:?}: {err}");
    }
    let (code, err) = verify(Some(&f("agent.key")));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ca") && err.contains("certificate"), "{err}");
}

/// A minimal HTTPS GET with a private CA (raw tokio-rustls, ring provider), returning the
/// response body. Plain HTTP to the same port must fail.
async fn https_get(addr: std::net::SocketAddr, ca: &Path, path: &str, token: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the billing API");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

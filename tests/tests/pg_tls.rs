//! TLS to PostgreSQL: with `sslmode=require` the collector speaks TLS (rustls, ring) to a
//! real server whose certificate a test CA signed, trusting that CA through
//! `PGSSLROOTCERT`; without the CA the same URL is refused (so TLS and its certificate
//! check were really in play), and a server without TLS is refused too, never silently
//! used in plain text.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use tally_tests::pg::PgServer;
use tally_tests::workspace_bin;

/// Runs a collector command with `extra_env`; returns (code, stdout, stderr).
fn collector(data: &Path, args: &[&str], extra_env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = Command::new(workspace_bin("tally-collector"));
    cmd.arg("--data")
        .arg(data)
        .args(args)
        .env_remove("PGSSLROOTCERT");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn sslmode_require_uses_verified_tls_and_never_falls_back() {
    let pg = PgServer::start();
    let db = pg.fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();

    // A test CA and a server certificate for 127.0.0.1.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tally test db CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_file = tmp.path().join("db-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();

    // A server without TLS first: `sslmode=require` must refuse it, not fall back.
    let tls_url = format!("{db}?sslmode=require");
    let plain = tmp.path().join("plain");
    let (code, out, err) = collector(
        &plain,
        &["--database", &tls_url, "init"],
        &[("PGSSLROOTCERT", &ca_file)],
    );
    assert_eq!(code, 1, "no TLS on the server, sslmode=require: {out}{err}");
    assert!(!plain.exists(), "nothing written");

    // Now turn TLS on: the key and certificate belong to the server's own user, mode 0600.
    let data = pg.data_dir();
    let meta = std::fs::metadata(&data).unwrap();
    for (name, body) in [
        ("server.crt", leaf.pem()),
        ("server.key", leaf_key.serialize_pem()),
    ] {
        let f = data.join(name);
        std::fs::write(&f, body).unwrap();
        std::os::unix::fs::chown(&f, Some(meta.uid()), Some(meta.gid())).unwrap();
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(&conf, text).unwrap();
    pg.stop("fast");
    pg.start_again();

    // Without the CA the certificate cannot be verified: refused.
    let untrusted = tmp.path().join("untrusted");
    let (code, out, err) = collector(&untrusted, &["--database", &tls_url, "init"], &[]);
    assert_eq!(
        code, 1,
        "an unverifiable certificate must be refused: {out}{err}"
    );
    assert!(!untrusted.exists(), "nothing written");

    // With it: init and a command work over TLS.
    let node = tmp.path().join("node");
    let (code, out, err) = collector(
        &node,
        &["--json", "--database", &tls_url, "init"],
        &[("PGSSLROOTCERT", &ca_file)],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = collector(
        &node,
        &["--json", "--database", &tls_url, "customers", "add", "Acme"],
        &[("PGSSLROOTCERT", &ca_file)],
    );
    assert_eq!(code, 0, "{out}{err}");

    // What went over TLS is in the database (read back on a plain test connection).
    let (client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = client
        .query_one("SELECT count(*) FROM customers WHERE name = 'Acme'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

//! TLS for the gRPC ingest server: certificate and key from PEM files, and optionally a
//! client CA that makes certificates mandatory for agents (mutual TLS). One crypto provider
//! (ring, through tonic's `tls-ring`) for the whole build.

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// PEM files given on the command line.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With a client CA, agents must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct TlsFileError {
    path: String,
    source: std::io::Error,
}

fn read(p: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(p).map_err(|source| TlsFileError {
        path: p.display().to_string(),
        source,
    })
}

impl TlsFiles {
    /// Reads the files into a server TLS configuration. Malformed PEM is reported when the
    /// server starts (tonic parses it then).
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsFileError> {
        let identity = Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        let mut cfg = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            cfg = cfg.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(cfg)
    }
}

/// Why the HTTPS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpTlsError(String);

impl TlsFiles {
    /// A TLS acceptor for the billing API, from the same certificate and key as gRPC.
    /// Billing clients authenticate with bearer tokens, so no client certificate is asked
    /// for here. Uses the ring provider explicitly (one provider for the whole build).
    pub fn http_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, HttpTlsError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls;
        let err = |what: &str, e: &dyn std::fmt::Display| HttpTlsError(format!("{what}: {e}"));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| err(&self.cert.display().to_string(), &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(&self.cert.display().to_string(), &e))?;
        if certs.is_empty() {
            return Err(HttpTlsError(format!(
                "{}: no certificate in the file",
                self.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| err(&self.key.display().to_string(), &e))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err("TLS versions", &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| err("certificate and key", &e))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg)))
    }
}

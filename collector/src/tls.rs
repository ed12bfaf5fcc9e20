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

//! TLS towards the collector: the private CA the agent trusts (`--ca`) and, for mutual
//! TLS, the agent's own certificate and key (`--cert`, `--key`). Paths given to `init` are
//! remembered, so `run` uses them too.

use std::path::PathBuf;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// The client configuration, or `None` when no TLS file was given.
    pub fn client_config(&self) -> Result<Option<ClientTlsConfig>, String> {
        if self.is_empty() {
            return Ok(None);
        }
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let mut cfg = ClientTlsConfig::new();
        match &self.ca {
            Some(ca) => cfg = cfg.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => {
                return Err(
                    "--cert/--key need --ca (the CA that signed the collector's certificate)"
                        .into(),
                );
            }
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => cfg = cfg.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => return Err("--cert and --key go together".into()),
        }
        Ok(Some(cfg))
    }
}

/// An endpoint for `url`, with TLS when the URL is `https://`.
pub fn endpoint(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    let ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad collector URL {url}: {e}"))?;
    if url.starts_with("https://") {
        let cfg = tls.cloned().ok_or_else(|| {
            format!(
                "{url} uses TLS: give --ca FILE (the CA that signed the collector's certificate)"
            )
        })?;
        return ep
            .tls_config(cfg)
            .map_err(|e| format!("TLS for {url}: {e}"));
    }
    Ok(ep)
}

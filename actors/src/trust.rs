//! Builds the rustls client configurations used for LDAPS/StartTLS and HTTPS.
//!
//! Verification is always on. With a CA file, only that file's certificates are trusted (a private
//! AD CS or lab CA); without one, the Mozilla roots from `webpki-roots`. The `ring` provider is passed
//! explicitly, so nothing depends on a process-wide default provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::disposition::{Classified, Disposition};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read CA file {path}: {source}; fix: point ca_file at a readable PEM file")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {path} holds no PEM certificate; fix: use the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)")]
    Empty { path: PathBuf },
    #[error("CA file {path} has a certificate rustls cannot use: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("cannot build a TLS configuration: {0}")]
    Config(String),
}

impl Classified for TrustError {
    fn disposition(&self) -> Disposition {
        Disposition::Fatal
    }
}

/// A client configuration trusting `ca_file` (PEM, one or more certificates) or, when `None`, the
/// Mozilla root set.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TrustError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| TrustError::Read {
                path: path.into(),
                source,
            })?;
            let certs = parse_pem_certificates(&pem).map_err(|detail| TrustError::Invalid {
                path: path.into(),
                detail,
            })?;
            if certs.is_empty() {
                return Err(TrustError::Empty { path: path.into() });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| TrustError::Invalid {
                    path: path.into(),
                    detail: e.to_string(),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut reader = pem;
    rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_ca_files_are_named_in_the_error() {
        let missing = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/ca.pem"),
            "{missing}"
        );

        let dir = std::env::temp_dir().join(format!("forestsync-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err();
        assert!(matches!(err, TrustError::Empty { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_roots_build() {
        assert!(client_config(None).is_ok());
    }
}

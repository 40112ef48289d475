//! Errors of `Emulator::start`.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("generating the TLS certificates: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("configuring TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("writing the CA certificate to {path}: {source}")]
    CaOut {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening the request log {path}: {source}")]
    RequestLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the OpenAPI specs from {path}: {message}")]
    Spec { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

//! The store's error type and its classification.

use std::path::PathBuf;

use crate::disposition::{Classified, Disposition};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory/file {path}: {source}; fix: make the state directory writable by the forestsync user")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store {path}: {source}; fix: stop any other forestsync using this state directory, or restore the file from a backup")]
    Open {
        path: PathBuf,
        source: Box<redb::DatabaseError>,
    },
    #[error("store: {0}")]
    Db(Box<redb::Error>),
    #[error("store: cannot encode a value: {0}")]
    Encode(String),
    #[error("store: stored {what} {key:?} cannot be read: {detail}")]
    Corrupt {
        what: &'static str,
        key: String,
        detail: String,
    },
    #[error("the watermark of domain {domain:?} moved since it was read (another writer); nothing was written: reload and retry")]
    WatermarkMoved { domain: String },
    #[error("operation {seq} is not in the outbox (already completed or quarantined)")]
    NoSuchOp { seq: u64 },
    #[error("the outbox sequence numbers are exhausted")]
    SequenceExhausted,
    #[error("store: a blocking store task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// Another process (or handle) holds the store open: a short wait may see it released (a
    /// `forestsync status` reading the store of a stopped agent).
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Open { source, .. } if matches!(**source, redb::DatabaseError::DatabaseAlreadyOpen))
    }

    pub(super) fn db(e: impl Into<redb::Error>) -> StoreError {
        StoreError::Db(Box::new(e.into()))
    }
}

impl Classified for StoreError {
    fn disposition(&self) -> Disposition {
        match self {
            // Another writer moved the watermark: reload the domain and run the batch again.
            StoreError::WatermarkMoved { .. } => Disposition::Retry,
            StoreError::NoSuchOp { .. } => Disposition::BadInput,
            // Disk, permissions, corruption: an operator must act; retrying in a loop cannot help.
            StoreError::Io { .. }
            | StoreError::Open { .. }
            | StoreError::Db(_)
            | StoreError::Encode(_)
            | StoreError::Corrupt { .. }
            | StoreError::SequenceExhausted => Disposition::Fatal,
            StoreError::Task(_) => Disposition::Retry,
        }
    }
}

//! The executor's error type: what went wrong with one operation, classified so `drain` knows whether
//! to quarantine the operation (BadInput), stop and alert (Fatal) or leave it queued (Retry).

use crate::cloud::CloudError;
use crate::disposition::{Classified, Disposition};
use crate::model::Anchor;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// JumpCloud answered with an error that retrying did not (or cannot) fix.
    #[error("{op}: {source}")]
    Cloud { op: String, source: CloudError },
    /// Temporary errors (429, 5xx, time-outs) outlasted the retry budget; the operation stays queued.
    #[error("{op}: still failing after {attempts} attempts, left queued: {source}")]
    GaveUp {
        op: String,
        attempts: u32,
        source: CloudError,
    },
    /// The JumpCloud object forestsync would create or take over belongs to someone else.
    #[error("{op}: {detail}")]
    Collision { op: String, detail: String },
    /// The operation names an object forestsync has no link for (never created, or its create was
    /// quarantined).
    #[error("{op}: no JumpCloud {role} is linked to {anchor} (its create has not completed or was quarantined); fix: resolve the quarantined create, then re-plan")]
    MissingLink {
        op: String,
        role: &'static str,
        anchor: Anchor,
    },
    /// JumpCloud no longer holds an object forestsync linked.
    #[error("{op}: {detail}")]
    Vanished { op: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stopped by shutdown")]
    Shutdown,
    #[error("executor task failed: {0}")]
    Task(String),
}

impl Classified for ExecError {
    fn disposition(&self) -> Disposition {
        match self {
            ExecError::Cloud { source, .. } => source.disposition(),
            ExecError::GaveUp { .. } | ExecError::Shutdown => Disposition::Retry,
            ExecError::Collision { .. }
            | ExecError::MissingLink { .. }
            | ExecError::Vanished { .. } => Disposition::BadInput,
            ExecError::Store(e) => e.disposition(),
            ExecError::Task(_) => Disposition::Fatal,
        }
    }
}

impl ExecError {
    /// The JumpCloud error behind this one, if any.
    pub fn cloud(&self) -> Option<&CloudError> {
        match self {
            ExecError::Cloud { source, .. } | ExecError::GaveUp { source, .. } => Some(source),
            _ => None,
        }
    }
}

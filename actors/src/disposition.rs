//! The classification every engine error carries, so callers decide what to do without parsing messages.
//!
//! Each module keeps its own error type (thiserror) and implements [`Classified`] for it.

use std::time::Duration;

/// What the caller should do about a failed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: the same operation against the same peer may succeed after a backoff.
    Retry,
    /// The peer (a DC) is unusable right now: move to the next one in the configured order.
    FailOver,
    /// The peer asked us to slow down; wait at least `retry_after` when it said so.
    Throttled { retry_after: Option<Duration> },
    /// Configuration or credential problem: retrying cannot help; an operator must act.
    Fatal,
    /// The input (config, LDAP data, API response) is wrong for this one object or request.
    BadInput,
}

/// Implemented by every module error type.
pub trait Classified {
    fn disposition(&self) -> Disposition;
}

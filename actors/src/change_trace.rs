//! Trace context that crosses actors: one trace per change.
//!
//! A change read from AD is planned by the import coordinator into outbox operations; the API actor
//! runs them later, in another task. When the coordinator commits a batch it opens, per operation, a
//! root span `sync.change` (domain, object id, operation) linked to the batch's read-and-plan span,
//! and parks it here under the operation's outbox sequence number; the executor takes it back and
//! runs the operation, API requests included, inside it. So a trace is one change, not one actor's
//! lifetime, and the batch (LDAP search, plan) is one link away.
//!
//! Only spans that are enabled (an OTLP export is configured) are parked, at most [`MAX_PARKED`]
//! at a time; an operation without a parked span gets a fresh root span when it runs.

use std::sync::OnceLock;

use dashmap::DashMap;
use tracing::Span;

use crate::model::Op;

/// The most spans parked at once (bounded memory during an initial sync of a large domain).
pub const MAX_PARKED: usize = 10_000;

fn parked() -> &'static DashMap<u64, Span> {
    static PARKED: OnceLock<DashMap<u64, Span>> = OnceLock::new();
    PARKED.get_or_init(DashMap::new)
}

fn change_span(domain: &str, seq: u64, op: &Op) -> Span {
    let subject = op.subject();
    tracing::info_span!(
        parent: None,
        "sync.change",
        domain = %domain,
        object.id = %subject,
        operation = op.kind(),
        outbox.seq = seq,
    )
}

/// Opens the change span of each committed operation, linked to `batch` (the read-and-plan span).
pub fn planned(domain: &str, batch: &Span, ops: impl IntoIterator<Item = (u64, Op)>) {
    if batch.is_disabled() {
        return;
    }
    let map = parked();
    for (seq, op) in ops {
        if map.len() >= MAX_PARKED {
            return;
        }
        let span = change_span(domain, seq, &op);
        span.follows_from(batch);
        map.insert(seq, span);
    }
}

/// The span to run operation `seq` in: the parked one, or a fresh root span.
pub fn take(seq: u64, op: &Op) -> Span {
    match parked().remove(&seq) {
        Some((_, span)) => span,
        None => change_span(&op.subject().domain, seq, op),
    }
}

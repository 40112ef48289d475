//! Counters of the initial sync's progress (objects read, operations planned and written), for the
//! progress line `run` shows on a terminal. Process-wide, like the metrics; plain atomics.

use std::sync::atomic::{AtomicU64, Ordering};

static READ: AtomicU64 = AtomicU64::new(0);
static PLANNED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);
static FULL_READS: AtomicU64 = AtomicU64::new(0);

/// A full read of a domain returned `objects` objects.
pub fn read_full(objects: usize) {
    READ.fetch_add(objects as u64, Ordering::Relaxed);
    FULL_READS.fetch_add(1, Ordering::Relaxed);
}

/// `ops` operations were queued.
pub fn planned(ops: usize) {
    PLANNED.fetch_add(ops as u64, Ordering::Relaxed);
}

/// One queued operation was written (or set aside as bad input: it is done either way).
pub fn written() {
    WRITTEN.fetch_add(1, Ordering::Relaxed);
}

/// The counters now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub read: u64,
    pub full_reads: u64,
    pub planned: u64,
    pub written: u64,
}

pub fn now() -> Progress {
    Progress {
        read: READ.load(Ordering::Relaxed),
        full_reads: FULL_READS.load(Ordering::Relaxed),
        planned: PLANNED.load(Ordering::Relaxed),
        written: WRITTEN.load(Ordering::Relaxed),
    }
}

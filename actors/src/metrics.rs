//! The engine's metrics, recorded through the OpenTelemetry API. The binary installs the meter
//! provider (`/metrics` and OTLP); without one every instrument is a no-op. Labels are domain names,
//! DC URLs, operations and outcomes: never user data, never secrets.
//!
//! Instruments are created once, on first use, from the global meter provider: the binary must
//! install its provider before the actors start.

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Histogram, Meter, UpDownCounter};
use opentelemetry::KeyValue;

use crate::disposition::Disposition;
use crate::health::{self, Direction};

pub struct Instruments {
    /// Changes the engine processed (objects read from AD or JumpCloud that needed work).
    pub changes: Counter<u64>,
    /// JumpCloud API requests by operation and status.
    pub api_requests: Counter<u64>,
    /// HTTP semantic conventions: client request duration.
    pub api_duration: Histogram<f64>,
    /// Time an operation waited for the rate limiter.
    pub rate_wait: Histogram<f64>,
    /// 429 answers.
    pub throttled: Counter<u64>,
    /// Retries of API operations.
    pub retries: Counter<u64>,
    /// Messages sent to an actor and not yet handled.
    pub queue: UpDownCounter<i64>,
    /// A domain moved from one DC to another.
    pub failovers: Counter<u64>,
    /// A supervised actor was restarted.
    pub restarts: Counter<u64>,
    /// Per-object errors by class.
    pub object_errors: Counter<u64>,
    /// Passwords forwarded and rejected (counts only).
    pub passwords: Counter<u64>,
    /// LDAP searches and their duration.
    pub ldap_duration: Histogram<f64>,
}

fn meter() -> Meter {
    opentelemetry::global::meter("forestsync")
}

/// The instruments (created on first use).
pub fn get() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let m = meter();
        observe_health(&m);
        Instruments {
            changes: m
                .u64_counter("forestsync.changes")
                .with_description("Changes processed, by domain, direction and object kind")
                .build(),
            api_requests: m
                .u64_counter("forestsync.api.requests")
                .with_description(
                    "JumpCloud API requests, by operation and HTTP status (0 = no answer)",
                )
                .build(),
            api_duration: m
                .f64_histogram("http.client.request.duration")
                .with_unit("s")
                .with_description("Duration of JumpCloud API requests")
                .with_boundaries(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .build(),
            rate_wait: m
                .f64_histogram("forestsync.ratelimit.wait")
                .with_unit("s")
                .with_description("Time an API operation waited for the rate limiter")
                .with_boundaries(vec![0.0, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0])
                .build(),
            throttled: m
                .u64_counter("forestsync.api.throttled")
                .with_description("429 answers from JumpCloud")
                .build(),
            retries: m
                .u64_counter("forestsync.api.retries")
                .with_description("API operations retried")
                .build(),
            queue: m
                .i64_up_down_counter("forestsync.actor.queue")
                .with_description("Messages sent to an actor and not yet handled")
                .build(),
            failovers: m
                .u64_counter("forestsync.dc.failovers")
                .with_description("A domain moved its requests from one DC to another")
                .build(),
            restarts: m
                .u64_counter("forestsync.actor.restarts")
                .with_description("Supervised actors restarted")
                .build(),
            object_errors: m
                .u64_counter("forestsync.object.errors")
                .with_description(
                    "Per-object errors, by class (retry, fail_over, throttled, fatal, bad_input)",
                )
                .build(),
            passwords: m
                .u64_counter("forestsync.passwords")
                .with_description(
                    "Passwords forwarded or rejected, by direction and outcome (counts only)",
                )
                .build(),
            ldap_duration: m
                .f64_histogram("forestsync.ldap.search.duration")
                .with_unit("s")
                .with_description("Duration of LDAP change reads, by DC")
                .with_boundaries(vec![0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0])
                .build(),
        }
    })
}

/// Gauges read from the health registry when metrics are collected: DC up, sync lag, objects in scope.
fn observe_health(m: &Meter) {
    let _ = m
        .u64_observable_gauge("forestsync.dc.up")
        .with_description("1 when the DC answered last time it was asked, 0 when it failed")
        .with_callback(|obs| {
            for d in health::snapshot().domains {
                for dc in d.dcs {
                    if let Some(up) = dc.up {
                        obs.observe(
                            u64::from(up),
                            &[
                                KeyValue::new("domain", d.name.clone()),
                                KeyValue::new("dc", dc.url.clone()),
                                KeyValue::new(
                                    "in_use",
                                    d.in_use.as_deref() == Some(dc.url.as_str()),
                                ),
                            ],
                        );
                    }
                }
            }
        })
        .build();
    let _ = m
        .f64_observable_gauge("forestsync.sync.lag")
        .with_unit("s")
        .with_description("Seconds since the domain last completed a sync in this direction")
        .with_callback(|obs| {
            let now = health::now_unix();
            for d in health::snapshot().domains {
                for (direction, at) in d.last_sync_unix {
                    obs.observe(
                        now.saturating_sub(at) as f64,
                        &[
                            KeyValue::new("domain", d.name.clone()),
                            KeyValue::new("direction", direction.as_str()),
                        ],
                    );
                }
            }
        })
        .build();
    let _ = m
        .u64_observable_gauge("forestsync.scope.objects")
        .with_description("Objects in scope, by domain and kind")
        .with_callback(|obs| {
            for (domain, kind, n) in health::scope_counts() {
                obs.observe(
                    n,
                    &[KeyValue::new("domain", domain), KeyValue::new("kind", kind)],
                );
            }
        })
        .build();
}

/// One change processed.
pub fn change(domain: &str, direction: Direction, kind: &'static str) {
    get().changes.add(
        1,
        &[
            KeyValue::new("domain", domain.to_string()),
            KeyValue::new("direction", direction.as_str()),
            KeyValue::new("kind", kind),
        ],
    );
}

/// The class label of an error's disposition.
pub fn class(d: &Disposition) -> &'static str {
    match d {
        Disposition::Retry => "retry",
        Disposition::FailOver => "fail_over",
        Disposition::Throttled { .. } => "throttled",
        Disposition::Fatal => "fatal",
        Disposition::BadInput => "bad_input",
    }
}

/// One per-object error.
pub fn object_error(domain: &str, d: &Disposition) {
    get().object_errors.add(
        1,
        &[
            KeyValue::new("domain", domain.to_string()),
            KeyValue::new("class", class(d)),
        ],
    );
}

/// A password forwarded (`outcome` = "forwarded") or refused ("rejected", "not_owner"…).
pub fn password(direction: Direction, outcome: &'static str) {
    get().passwords.add(
        1,
        &[
            KeyValue::new("direction", direction.as_str()),
            KeyValue::new("outcome", outcome),
        ],
    );
}

/// A supervised actor restarted.
pub fn restarted(actor: &'static str) {
    get().restarts.add(1, &[KeyValue::new("actor", actor)]);
}

/// A domain failed over from one DC to another.
pub fn failover(domain: &str) {
    get()
        .failovers
        .add(1, &[KeyValue::new("domain", domain.to_string())]);
}

/// Counts a message into an actor's queue until the guard drops (the message was handled).
pub struct Queued(&'static str);

pub fn queued(actor: &'static str) -> Queued {
    get().queue.add(1, &[KeyValue::new("actor", actor)]);
    Queued(actor)
}

impl Drop for Queued {
    fn drop(&mut self) {
        get().queue.add(-1, &[KeyValue::new("actor", self.0)]);
    }
}

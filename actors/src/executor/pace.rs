//! Pacing: the one client-side rate limiter every JumpCloud request passes, the pause a `Retry-After`
//! imposes on every request, the slower rate after a 429, the cap on concurrent requests, and the
//! capped exponential backoff with full jitter between attempts.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::ExecError;
use crate::cloud::CloudError;
use crate::disposition::{Classified, Disposition};

/// The client-side request budget (JumpCloud publishes no number: it comes from configuration).
#[derive(Clone, Debug)]
pub struct RateLimits {
    /// Sustained requests per minute.
    pub per_minute: NonZeroU32,
    /// Requests that may go at once after a quiet period.
    pub burst: NonZeroU32,
    /// After a 429 the rate is divided by this for `slowdown_for` (on top of any `Retry-After`).
    pub slowdown_divisor: NonZeroU32,
    pub slowdown_for: Duration,
    /// Requests in flight at once (the drain runs one operation at a time; password sets may overlap).
    pub max_concurrent: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_minute: NonZeroU32::new(600).expect("non-zero"),
            burst: NonZeroU32::new(10).expect("non-zero"),
            slowdown_divisor: NonZeroU32::new(4).expect("non-zero"),
            slowdown_for: Duration::from_secs(60),
            max_concurrent: 4,
        }
    }
}

/// Retries of temporary failures (429, 5xx, time-outs, connection errors): attempt `n` (0-based) waits a
/// random time in `[0, min(max, base * 2^n)]`; a `Retry-After` (capped at `max_retry_after`) holds every
/// request until it has passed.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    /// Attempts per operation step before it is left queued for the next drain.
    pub max_attempts: u32,
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
            max_attempts: 8,
            max_retry_after: Duration::from_secs(300),
        }
    }
}

pub(super) struct Pacer {
    limiter: DefaultDirectRateLimiter,
    slow: DefaultDirectRateLimiter,
    slowdown_for: Duration,
    max_retry_after: Duration,
    gate: Mutex<Gate>,
    in_flight: Semaphore,
    pub(super) requests: AtomicU64,
    pub(super) throttled: AtomicU64,
}

#[derive(Default)]
struct Gate {
    /// No request starts before this (a server's `Retry-After`).
    pause_until: Option<Instant>,
    /// Until this, requests also pass the slower limiter.
    slow_until: Option<Instant>,
}

impl Pacer {
    pub(super) fn new(limits: &RateLimits, retry: &RetryPolicy) -> Pacer {
        let (steady, burst) = window_quota(limits.per_minute, limits.burst);
        let quota = Quota::per_minute(steady).allow_burst(burst);
        let slow_rate = NonZeroU32::new(limits.per_minute.get() / limits.slowdown_divisor.get())
            .unwrap_or(NonZeroU32::MIN);
        // A restarted agent cannot know what its predecessor sent in the current minute, so it starts
        // with the burst spent: sequential processes then never exceed the budget together (each adds
        // at most its steady rate over its own lifetime; only the first can bring a saved-up burst).
        let limiter = RateLimiter::direct(quota);
        let _ = limiter.check_n(burst);
        Pacer {
            limiter,
            slow: RateLimiter::direct(Quota::per_minute(slow_rate).allow_burst(NonZeroU32::MIN)),
            slowdown_for: limits.slowdown_for,
            max_retry_after: retry.max_retry_after,
            gate: Mutex::new(Gate::default()),
            in_flight: Semaphore::new(limits.max_concurrent.max(1)),
            requests: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        }
    }

    /// Runs one request when the budget allows it, and learns from a 429.
    pub(super) async fn request<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, CloudError>>,
    ) -> Result<T, CloudError> {
        let waiting = Instant::now();
        let _permit = self.in_flight.acquire().await.ok();
        loop {
            let (pause, slow) = {
                let g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
                (g.pause_until, g.slow_until)
            };
            let now = Instant::now();
            match pause {
                Some(until) if until > now => tokio::time::sleep_until(until).await,
                _ => {
                    self.limiter.until_ready().await;
                    if slow.is_some_and(|until| until > Instant::now()) {
                        self.slow.until_ready().await;
                    }
                    break;
                }
            }
        }
        crate::metrics::get()
            .rate_wait
            .record(waiting.elapsed().as_secs_f64(), &[]);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let result = fut.await;
        if let Err(CloudError::Throttled { retry_after, .. }) = &result {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let mut g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            g.slow_until = Some(now + self.slowdown_for);
            if let Some(wait) = retry_after {
                let until = now + (*wait).min(self.max_retry_after);
                if g.pause_until.is_none_or(|p| p < until) {
                    g.pause_until = Some(until);
                }
            }
        }
        result
    }
}

/// The retry state of one operation step.
pub(super) struct Backoff<'a> {
    policy: &'a RetryPolicy,
    attempt: u32,
    shutdown: Option<&'a watch::Receiver<bool>>,
}

impl<'a> Backoff<'a> {
    pub(super) fn new(
        policy: &'a RetryPolicy,
        shutdown: Option<&'a watch::Receiver<bool>>,
    ) -> Self {
        Backoff {
            policy,
            attempt: 0,
            shutdown,
        }
    }

    /// How many attempts failed so far.
    pub(super) fn failures(&self) -> u32 {
        self.attempt
    }

    /// After a failed attempt: waits and returns `Ok` when another attempt should be made, or returns
    /// the error to give up with (not retryable, budget spent, shutdown).
    pub(super) async fn retry_after_failure(&mut self, err: ExecError) -> Result<(), ExecError> {
        let retryable = matches!(
            err.disposition(),
            Disposition::Retry | Disposition::Throttled { .. } | Disposition::FailOver
        ) && !matches!(err, ExecError::Shutdown | ExecError::GaveUp { .. });
        if !retryable {
            return Err(err);
        }
        self.attempt += 1;
        if self.attempt < self.policy.max_attempts {
            crate::metrics::get().retries.add(
                1,
                &[opentelemetry::KeyValue::new(
                    "class",
                    crate::metrics::class(&err.disposition()),
                )],
            );
        }
        if self.attempt >= self.policy.max_attempts {
            return Err(match err {
                ExecError::Cloud { op, source } => ExecError::GaveUp {
                    op,
                    attempts: self.attempt,
                    source,
                },
                other => other,
            });
        }
        let exp = self
            .policy
            .base
            .saturating_mul(1u32.checked_shl(self.attempt - 1).unwrap_or(u32::MAX));
        let cap = exp.min(self.policy.max);
        let wait = cap.mul_f64(unit_random());
        tracing::debug!(attempt = self.attempt, wait_ms = wait.as_millis() as u64, error = %err, "retrying");
        match self.shutdown {
            Some(rx) => {
                let mut rx = rx.clone();
                if *rx.borrow() {
                    return Err(ExecError::Shutdown);
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => Ok(()),
                    Ok(_) = rx.wait_for(|stop| *stop) => Err(ExecError::Shutdown),
                }
            }
            None => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
        }
    }
}

/// The limiter's steady rate and burst for a budget of `per_minute` requests in any minute: the
/// burst is taken out of the budget (a GCRA at `per_minute` plus a burst would allow `per_minute +
/// burst` in the first minute, and JumpCloud answers 429 over its budget). The burst is at most half
/// the budget.
fn window_quota(per_minute: NonZeroU32, burst: NonZeroU32) -> (NonZeroU32, NonZeroU32) {
    let budget = per_minute.get();
    let burst = burst.get().min(budget / 2).max(1);
    let steady = NonZeroU32::new(budget.saturating_sub(burst)).unwrap_or(NonZeroU32::MIN);
    (steady, NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

/// A uniform random number in `[0, 1)` (jitter needs no cryptographic quality; std's SipHash keys are
/// random per process).
fn unit_random() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_spread_over_the_unit_interval() {
        let xs: Vec<f64> = (0..1000).map(|_| unit_random()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let low = xs.iter().filter(|x| **x < 0.5).count();
        assert!((350..650).contains(&low), "{low}");
    }

    #[test]
    fn no_minute_holds_more_requests_than_the_budget() {
        let n = |v: u32| NonZeroU32::new(v).unwrap();
        for (budget, burst) in [(600, 20), (600, 600), (60_000, 200), (1, 1), (3, 10)] {
            let (steady, b) = window_quota(n(budget), n(burst));
            assert!(
                steady.get() + b.get() <= budget.max(2),
                "{budget}/{burst} -> {steady}+{b}"
            );
        }
        assert_eq!(window_quota(n(600), n(20)), (n(580), n(20)));
    }

    #[test]
    fn a_new_pacer_starts_with_its_burst_spent() {
        let n = |v: u32| NonZeroU32::new(v).unwrap();
        let limits = RateLimits {
            per_minute: n(600),
            burst: n(20),
            slowdown_divisor: n(4),
            slowdown_for: Duration::from_secs(60),
            max_concurrent: 4,
        };
        let pacer = Pacer::new(&limits, &RetryPolicy::default());
        // 580/min steady: the next request is ~100 ms away, not 20 at once.
        assert!(pacer.limiter.check().is_err());
    }

    #[tokio::test]
    async fn a_retry_after_holds_every_request_and_a_429_slows_the_rate() {
        let limits = RateLimits {
            per_minute: NonZeroU32::new(60_000).unwrap(),
            burst: NonZeroU32::new(100).unwrap(),
            slowdown_divisor: NonZeroU32::new(600).unwrap(),
            slowdown_for: Duration::from_secs(5),
            max_concurrent: 2,
        };
        let retry = RetryPolicy {
            max_retry_after: Duration::from_millis(200),
            ..RetryPolicy::default()
        };
        let pacer = Pacer::new(&limits, &retry);
        let throttled = pacer
            .request(async {
                Err::<(), _>(CloudError::Throttled {
                    url: "u".into(),
                    retry_after: Some(Duration::from_secs(30)),
                })
            })
            .await;
        assert!(throttled.is_err());
        let start = std::time::Instant::now();
        pacer
            .request(async { Ok::<_, CloudError>(()) })
            .await
            .unwrap();
        let first = start.elapsed();
        // Retry-After 30 s, capped at 200 ms.
        assert!(
            first >= Duration::from_millis(150) && first < Duration::from_secs(5),
            "{first:?}"
        );
        // Slowed to 100/min: the next request waits ~600 ms.
        pacer
            .request(async { Ok::<_, CloudError>(()) })
            .await
            .unwrap();
        assert!(
            start.elapsed() - first >= Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(pacer.requests.load(Ordering::Relaxed), 3);
        assert_eq!(pacer.throttled.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn backoff_gives_up_after_the_budget_and_never_retries_bad_input() {
        let policy = RetryPolicy {
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
            max_attempts: 3,
            max_retry_after: Duration::from_millis(1),
        };
        let server = || ExecError::Cloud {
            op: "op".into(),
            source: CloudError::Server {
                url: "u".into(),
                status: 502,
                message: String::new(),
            },
        };
        let mut b = Backoff::new(&policy, None);
        b.retry_after_failure(server()).await.unwrap();
        b.retry_after_failure(server()).await.unwrap();
        let e = b.retry_after_failure(server()).await.unwrap_err();
        assert!(matches!(e, ExecError::GaveUp { attempts: 3, .. }), "{e}");
        let mut b = Backoff::new(&policy, None);
        let bad = ExecError::Cloud {
            op: "op".into(),
            source: CloudError::Rejected {
                url: "u".into(),
                status: 400,
                message: "no".into(),
            },
        };
        assert!(matches!(
            b.retry_after_failure(bad).await,
            Err(ExecError::Cloud { .. })
        ));
        let (tx, rx) = watch::channel(true);
        let mut b = Backoff::new(&policy, Some(&rx));
        assert!(matches!(
            b.retry_after_failure(server()).await,
            Err(ExecError::Shutdown)
        ));
        drop(tx);
    }
}

//! Latency samples and their percentiles.

use std::time::Duration;

use serde_json::{json, Value};

/// The value at quantile `p` (0..=1) of ascending `sorted` (nearest rank); 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Latencies in milliseconds.
#[derive(Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn record(&mut self, latency: Duration) {
        self.0.push(latency.as_secs_f64() * 1000.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn summary(&self) -> Summary {
        let mut sorted = self.0.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        Summary {
            samples: sorted.len(),
            p50: percentile(&sorted, 0.50),
            p95: percentile(&sorted, 0.95),
            p99: percentile(&sorted, 0.99),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

/// Percentiles of one set of samples, in milliseconds.
pub struct Summary {
    pub samples: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// `{"samples", "change_latency_ms_p50", …_p95, …_p99, …_max}`, rounded to 0.01 ms.
    pub fn change_latency_json(&self) -> Value {
        let ms = |v: f64| (v * 100.0).round() / 100.0;
        json!({
            "samples": self.samples,
            "change_latency_ms_p50": ms(self.p50),
            "change_latency_ms_p95": ms(self.p95),
            "change_latency_ms_p99": ms(self.p99),
            "change_latency_ms_max": ms(self.max),
        })
    }

    /// One line for a human: `p50 … ms, p95 …, p99 …, max …`.
    pub fn human(&self) -> String {
        format!(
            "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.p50, self.p95, self.p99, self.max
        )
    }
}

/// The figures line of the one-directional latency benchmarks: `{"scenario", "samples", "p50_ms",
/// "p99_ms", "max_ms"}`.
pub fn figures(scenario: &str, samples: &Samples) -> Value {
    let s = samples.summary();
    json!({
        "scenario": scenario,
        "samples": s.samples,
        "p50_ms": s.p50,
        "p99_ms": s.p99,
        "max_ms": s.max,
    })
}

//! The figures every scenario prints as its last line (one JSON object; absent figures are left out),
//! and what is read off the agent's process: resident memory (now and peak) and CPU time, from /proc.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Map, Value};

/// One scenario's figures, in the order the issue names them. Latency keys are per direction:
/// `change_latency_ms_{p50,p95,p99}_{ad_to_jumpcloud,jumpcloud_to_ad}`.
#[derive(Default)]
pub struct Figures(Map<String, Value>);

impl Figures {
    pub fn new(scenario: &str) -> Figures {
        let mut f = Figures::default();
        f.set("scenario", scenario);
        f
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    /// A float rounded to 2 decimals.
    pub fn num(&mut self, key: &str, value: f64) -> &mut Self {
        self.set(key, (value * 100.0).round() / 100.0)
    }

    /// The process figures: peak and current RSS, CPU seconds, binary size.
    pub fn process(&mut self, p: &ProcessSample, binary: &Path) -> &mut Self {
        self.num("peak_rss_mb", p.peak_rss_kb as f64 / 1024.0);
        self.num("cpu_seconds", p.cpu_seconds);
        if let Ok(m) = std::fs::metadata(binary) {
            self.num("binary_size_mb", m.len() as f64 / (1024.0 * 1024.0));
        }
        self
    }

    pub fn line(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }
}

/// What /proc says about a process at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessSample {
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
    pub cpu_seconds: f64,
}

/// Reads `/proc/<pid>/status` (VmRSS, VmHWM) and `/proc/<pid>/stat` (utime + stime).
pub fn sample(pid: u32) -> Result<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after ')' the first field is field 3.
    let ticks = |i: usize| -> u64 { fields.get(i - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ProcessSample {
        rss_kb: kb("VmRSS:"),
        peak_rss_kb: kb("VmHWM:"),
        cpu_seconds: (ticks(14) + ticks(15)) as f64 / hz,
    })
}

/// Prometheus text: the sum of every sample of `metric` (a `name` or `name{…}` prefix), or `None`.
pub fn prom_sum(text: &str, metric: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (name, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let bare = name.split('{').next().unwrap_or(name);
        if bare == metric {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// Prometheus text: the samples of `metric` whose labels contain `label` (e.g. `domain="alpha"`).
pub fn prom_with(text: &str, metric: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if name.split('{').next() == Some(metric) && name.contains(label) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// GET `http://<addr><path>` as text (the agent's ops endpoint).
pub async fn ops_get(http: &reqwest::Client, port: u16, path: &str) -> Result<String> {
    Ok(http
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await?
        .text()
        .await?)
}

/// A free loopback port for the agent's ops endpoint.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_are_summed_by_name_and_label() {
        let text = "# TYPE x counter\nforestsync_changes_total{domain=\"alpha\",kind=\"a\"} 3\nforestsync_changes_total{domain=\"beta\",kind=\"a\"} 4\nforestsync_outbox_pending 0\n";
        assert_eq!(prom_sum(text, "forestsync_changes_total"), Some(7.0));
        assert_eq!(prom_sum(text, "forestsync_outbox_pending"), Some(0.0));
        assert_eq!(prom_sum(text, "missing"), None);
        assert_eq!(
            prom_with(text, "forestsync_changes_total", "domain=\"beta\""),
            Some(4.0)
        );
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kb > 0 && s.peak_rss_kb >= s.rss_kb);
    }
}

//! The initial sync's progress on a terminal: one line on stderr, redrawn every second — objects
//! read, operations planned and written, the write rate and the time left — until every domain has
//! been read and every planned operation written. Nothing is drawn when stderr is not a terminal
//! (journald, containers): the logs and metrics say the same there.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use forestsync_actors::progress::{self, Progress};

/// How far back the write rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// One progress line. `rate` is operations written per second (recent).
pub fn render(p: &Progress, domains: usize, elapsed: Duration, rate: f64) -> String {
    let read = if (p.full_reads as usize) < domains {
        format!(
            "reading ({} of {domains} domains done, {} objects)",
            p.full_reads,
            group(p.read)
        )
    } else {
        format!("read {} objects", group(p.read))
    };
    let left = p.planned.saturating_sub(p.written);
    let eta = if left == 0 {
        String::new()
    } else if rate > 0.0 {
        format!(
            ", ETA {}",
            // Saturating: `from_secs_f64` panics on an ETA beyond `Duration::MAX` (a tiny rate).
            duration(Duration::try_from_secs_f64(left as f64 / rate).unwrap_or(Duration::MAX))
        )
    } else {
        ", ETA unknown".into()
    };
    format!(
        "initial sync {}: {read} · planned {} operations · written {} ({rate:.0}/s{eta})",
        duration(elapsed),
        group(p.planned),
        group(p.written),
    )
}

/// 12345 → "12,345".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 3725 s → "1h02m05s"; 65 s → "1m05s"; 5 s → "5s".
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

/// Draws the line every second until the initial sync of `domains` domains is done.
pub fn spawn(domains: usize) {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return;
    }
    actix::spawn(async move {
        let started = Instant::now();
        let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let p = progress::now();
            let now = Instant::now();
            samples.push_back((now, p.written));
            while samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
            {
                samples.pop_front();
            }
            let rate = match (samples.front(), samples.back()) {
                (Some((t0, w0)), Some((t1, w1))) if t1 > t0 => {
                    w1.saturating_sub(*w0) as f64 / t1.duration_since(*t0).as_secs_f64()
                }
                _ => 0.0,
            };
            let line = render(&p, domains, started.elapsed(), rate);
            let done = p.full_reads as usize >= domains && p.written >= p.planned;
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            if done {
                let _ = writeln!(
                    err,
                    "\r\x1b[2Kinitial sync done in {}: {} objects read, {} operations written",
                    duration(started.elapsed()),
                    group(p.read),
                    group(p.written)
                );
                return;
            }
            let _ = err.flush();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_rate_gives_a_long_eta_not_a_panic() {
        let p = Progress {
            read: 1,
            full_reads: 1,
            planned: u64::MAX,
            written: 0,
        };
        let line = render(&p, 1, Duration::from_secs(1), 1e-300);
        assert!(line.contains("ETA "), "{line}");
    }

    #[test]
    fn the_line_shows_counts_rate_and_time_left() {
        let p = Progress {
            read: 20_000,
            full_reads: 1,
            planned: 20_400,
            written: 5_000,
        };
        assert_eq!(
            render(&p, 2, Duration::from_secs(65), 100.0),
            "initial sync 1m05s: reading (1 of 2 domains done, 20,000 objects) · planned 20,400 operations · written 5,000 (100/s, ETA 2m34s)"
        );
        let done = Progress {
            full_reads: 2,
            written: 20_400,
            ..p
        };
        assert_eq!(
            render(&done, 2, Duration::from_secs(3725), 0.0),
            "initial sync 1h02m05s: read 20,000 objects · planned 20,400 operations · written 20,400 (0/s)"
        );
        let stalled = Progress { written: 0, ..done };
        assert!(render(&stalled, 2, Duration::from_secs(5), 0.0).ends_with("(0/s, ETA unknown)"));
    }
}

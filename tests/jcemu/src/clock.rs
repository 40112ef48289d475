//! The emulator clock: real time plus a settable offset (`POST /__emulator/clock`). Used for `created`,
//! `password_date`, `updatedAt`, agent `contactAt` and connect-key expiry.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub struct Clock {
    offset_ms: AtomicI64,
}

fn real_now_ms() -> i64 {
    system_time_ms(SystemTime::now())
}

pub fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

impl Clock {
    pub fn new(start: Option<SystemTime>) -> Clock {
        let offset = start
            .map(|s| system_time_ms(s).saturating_sub(real_now_ms()))
            .unwrap_or(0);
        Clock {
            offset_ms: AtomicI64::new(offset),
        }
    }

    pub fn now_ms(&self) -> i64 {
        real_now_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    pub fn advance_ms(&self, ms: i64) {
        let _ = self
            .offset_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
                Some(o.saturating_add(ms))
            });
    }

    pub fn set_ms(&self, ms: i64) {
        self.offset_ms
            .store(ms.saturating_sub(real_now_ms()), Ordering::Relaxed);
    }

    pub fn now_string(&self) -> String {
        format_ms(self.now_ms())
    }
}

/// RFC 3339, UTC, millisecond precision: `2026-08-21T19:22:05.123Z`.
pub fn format_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_parse() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        let ms = 1_787_340_125_123;
        assert_eq!(parse_rfc3339_ms(&format_ms(ms)), Some(ms));
        assert_eq!(
            parse_rfc3339_ms("2026-01-02T03:04:05+01:00"),
            Some(1_767_319_445_000)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn clock_moves() {
        let c = Clock::new(None);
        let a = c.now_ms();
        c.advance_ms(86_400_000);
        assert!(c.now_ms() - a >= 86_400_000);
        c.set_ms(1000);
        assert!((c.now_ms() - 1000).abs() < 5_000);
    }
}

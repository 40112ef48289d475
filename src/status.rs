//! `forestsync status`: what the agent recorded per domain — two-way conflicts and changes on the
//! non-owning side, and objects JumpCloud → AD could not write (with AD's reason). Reads the state
//! store, so today it runs while the agent is stopped (the store is locked by a running agent);
//! issue #6 extends it to a running agent and to DC health, watermarks and queues.

use std::io::Write;

use forestsync_actors::store::Store;
use forestsync_actors::two_way::{self, RecordKind};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot open the state store in {dir} (is the agent running? it holds the store; stop it first): {source}")]
    Store {
        dir: String,
        #[source]
        source: forestsync_actors::store::StoreError,
    },
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
}

/// Writes the report for every configured domain to `out`.
pub fn report(config: &Config, out: &mut dyn Write) -> Result<(), StatusError> {
    let store = Store::open(&config.state_dir).map_err(|source| StatusError::Store {
        dir: config.state_dir.display().to_string(),
        source,
    })?;
    let read = |r: Result<Vec<(String, String)>, _>| -> Result<Vec<(String, String)>, StatusError> {
        r.map_err(|source| StatusError::Store {
            dir: config.state_dir.display().to_string(),
            source,
        })
    };
    writeln!(out, "mode: {}", config.mode)?;
    for d in &config.domains {
        writeln!(out, "domain {}:", d.name)?;
        let records = two_way::records(&store, &d.name).map_err(|source| StatusError::Store {
            dir: config.state_dir.display().to_string(),
            source,
        })?;
        for (kind, label) in [
            (RecordKind::Conflict, "conflicts"),
            (RecordKind::NonOwnerChange, "changes on the non-owning side"),
        ] {
            let of_kind: Vec<_> = records.iter().filter(|r| r.kind == kind).collect();
            writeln!(out, "  {label}: {}", of_kind.len())?;
            for r in of_kind {
                let at = utc(r.at_unix);
                writeln!(out, "    {at} {} {}: {}", r.object, r.what, r.detail)?;
            }
        }
        let errors = read(store.meta_with_prefix(&format!("to_ad/{}/error/", d.name)))?;
        writeln!(out, "  not written to AD: {}", errors.len())?;
        for (k, v) in &errors {
            let id = k.rsplit('/').next().unwrap_or_default();
            writeln!(out, "    {id}: {v}")?;
        }
        let rejected =
            read(store.meta_with_prefix(&format!("to_ad/{}/password_rejected/", d.name)))?;
        writeln!(out, "  passwords AD rejected: {}", rejected.len())?;
        for (k, v) in &rejected {
            let id = k.rsplit('/').next().unwrap_or_default();
            let reason = v.split_once('\t').map(|(_, r)| r).unwrap_or(v);
            writeln!(out, "    {id}: {reason}")?;
        }
    }
    Ok(())
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
fn utc(at_unix: u64) -> String {
    let (days, secs) = ((at_unix / 86_400) as i64, at_unix % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn record_times_are_shown_in_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_825_600), "2000-02-29T12:00:00Z");
        assert_eq!(utc(1_795_689_075), "2026-11-26T10:31:15Z");
    }
}

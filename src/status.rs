//! `forestsync status`: per domain the DC in use and each DC's health, the watermark's age, the last
//! successful sync per direction, pending operations (the outbox), failed (quarantined) operations
//! with their reasons, and what the agent recorded — two-way conflicts and changes on the non-owning
//! side, objects and passwords AD refused.
//!
//! One code path builds the report ([`collect`]) and one renders it ([`render`]), whichever side
//! built it: the running agent answers over its admin socket (`crate::admin`) with live health; with
//! the agent stopped the CLI opens the store itself and there is no live health.

use std::collections::HashMap;
use std::io::Write;

use forestsync_actors::health::{ApiHealth, Direction, HealthSnapshot};
use forestsync_actors::model::{Anchor, ObjectGuid, Op};
use forestsync_actors::store::{Store, StoreError};
use forestsync_actors::two_way::{self, RecordKind};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Mode};

/// How many pending operations per domain the report lists (all are counted).
pub const PENDING_LISTED: usize = 20;
/// Outbox page size while counting.
const OUTBOX_PAGE: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read the state store in {dir}: {source}")]
    Store {
        dir: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
}

/// Everything `status` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub mode: String,
    pub generated_unix: u64,
    /// Set when a running agent built the report (its live health); `None`: read from the store with
    /// the agent stopped.
    pub live: Option<Live>,
    pub domains: Vec<DomainStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    pub started_unix: u64,
    pub api: ApiHealth,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainStatus {
    pub name: String,
    /// The DC requests go to now (live only).
    pub dc_in_use: Option<String>,
    /// Every configured DC (plus any other the agent reported), in preference order.
    pub dcs: Vec<DcStatus>,
    /// When the domain's AD change watermark was committed: `None` = no watermark (no initial read
    /// committed); `Some(0)` = a watermark from a store written before the time was recorded.
    pub watermark_taken_unix: Option<u64>,
    /// AD objects in the store's snapshot.
    pub objects: usize,
    /// The directions this mode syncs, with the last completed sync (live only; `None` = none yet).
    pub last_sync: Vec<LastSync>,
    pub pending_count: u64,
    /// The first [`PENDING_LISTED`] pending operations.
    pub pending: Vec<OpLine>,
    pub quarantined: Vec<OpLine>,
    pub conflicts: Vec<RecordLine>,
    pub non_owner_changes: Vec<RecordLine>,
    /// JumpCloud id → AD's reason (JumpCloud → AD objects AD refused).
    pub not_written_to_ad: Vec<IdReason>,
    /// JumpCloud id → AD's reason.
    pub passwords_rejected: Vec<IdReason>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSync {
    pub direction: Direction,
    /// `None`: none completed since the agent started (or the agent is not running).
    pub at_unix: Option<u64>,
}

/// A JumpCloud id and AD's reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdReason {
    pub id: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcStatus {
    pub url: String,
    /// `None`: unknown (agent stopped, or not tried yet).
    pub up: Option<bool>,
    pub since_unix: u64,
    pub error: Option<String>,
}

/// One outbox or quarantine entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpLine {
    pub seq: u64,
    pub kind: String,
    /// The subject's name (sAMAccountName, group name or DN) when the store knows it, else its anchor.
    pub object: String,
    /// The quarantine's error (empty for pending operations).
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordLine {
    pub at_unix: u64,
    pub object: String,
    pub what: String,
    pub detail: String,
}

/// The directions mode `mode` syncs.
pub fn directions(mode: Mode) -> Vec<Direction> {
    match mode {
        Mode::AdAuthoritative => vec![Direction::AdToJumpcloud],
        Mode::JumpcloudAuthoritative => vec![Direction::JumpcloudToAd],
        Mode::TwoWay => vec![Direction::AdToJumpcloud, Direction::JumpcloudToAd],
    }
}

/// Builds the report from the store and, on a running agent, its live health.
pub fn collect(
    config: &Config,
    store: &Store,
    health: Option<HealthSnapshot>,
    now_unix: u64,
) -> Result<StatusReport, StatusError> {
    let err = |source| StatusError::Store {
        dir: config.state_dir.display().to_string(),
        source,
    };
    let quarantine = store.quarantined().map_err(err)?;
    let mut pending_by_domain: HashMap<String, (u64, Vec<(u64, Op)>)> = HashMap::new();
    let mut after = None;
    loop {
        let page = store.pending_ops(after, OUTBOX_PAGE).map_err(err)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        let full = page.len() == OUTBOX_PAGE;
        for (seq, op) in page {
            let entry = pending_by_domain
                .entry(op.subject().domain.clone())
                .or_default();
            entry.0 += 1;
            if entry.1.len() < PENDING_LISTED {
                entry.1.push((seq, op));
            }
        }
        if !full {
            break;
        }
    }
    let mut domains = Vec::new();
    for d in &config.domains {
        let (objects, watermark) = store.load_domain(&d.name).map_err(err)?;
        let names: HashMap<ObjectGuid, String> = objects
            .iter()
            .map(|o| {
                let name = o
                    .first("samaccountname")
                    .or_else(|| o.first("name"))
                    .unwrap_or(&o.dn);
                (o.guid, name.to_owned())
            })
            .collect();
        let name_of = |a: &Anchor| names.get(&a.guid).cloned().unwrap_or_else(|| a.to_string());
        let live_domain = health
            .as_ref()
            .and_then(|h| h.domains.iter().find(|x| x.name == d.name));
        let mut dcs: Vec<DcStatus> = d
            .dcs
            .iter()
            .map(|url| DcStatus {
                url: url.clone(),
                up: None,
                since_unix: 0,
                error: None,
            })
            .collect();
        if let Some(h) = live_domain {
            for dc in &h.dcs {
                let row = match dcs.iter().position(|x| x.url == dc.url) {
                    Some(i) => &mut dcs[i],
                    None => {
                        dcs.push(DcStatus {
                            url: dc.url.clone(),
                            up: None,
                            since_unix: 0,
                            error: None,
                        });
                        let last = dcs.len() - 1;
                        &mut dcs[last]
                    }
                };
                row.up = dc.up;
                row.since_unix = dc.since_unix;
                row.error = dc.error.clone();
            }
        }
        let last_sync = directions(config.mode)
            .into_iter()
            .map(|direction| LastSync {
                direction,
                at_unix: live_domain.and_then(|h| h.last_sync_unix.get(&direction).copied()),
            })
            .collect();
        let (pending_count, pending) = pending_by_domain.remove(&d.name).unwrap_or_default();
        let pending = pending
            .into_iter()
            .map(|(seq, op)| OpLine {
                seq,
                kind: op.kind().to_owned(),
                object: name_of(op.subject()),
                error: String::new(),
            })
            .collect();
        let quarantined = quarantine
            .iter()
            .filter(|(_, op, _)| op.subject().domain == d.name)
            .map(|(seq, op, error)| OpLine {
                seq: *seq,
                kind: op.kind().to_owned(),
                object: name_of(op.subject()),
                error: error.clone(),
            })
            .collect();
        let records = two_way::records(store, &d.name).map_err(err)?;
        let of_kind = |kind: RecordKind| -> Vec<RecordLine> {
            records
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| RecordLine {
                    at_unix: r.at_unix,
                    object: r.object.clone(),
                    what: r.what.clone(),
                    detail: r.detail.clone(),
                })
                .collect()
        };
        let by_id = |rows: Vec<(String, String)>, strip_seq: bool| -> Vec<IdReason> {
            rows.into_iter()
                .map(|(k, v)| {
                    let id = k.rsplit('/').next().unwrap_or_default().to_owned();
                    let reason = if strip_seq {
                        v.split_once('\t').map(|(_, r)| r.to_owned()).unwrap_or(v)
                    } else {
                        v
                    };
                    IdReason { id, reason }
                })
                .collect()
        };
        let errors = store
            .meta_with_prefix(&format!("to_ad/{}/error/", d.name))
            .map_err(err)?;
        let rejected = store
            .meta_with_prefix(&format!("to_ad/{}/password_rejected/", d.name))
            .map_err(err)?;
        domains.push(DomainStatus {
            name: d.name.clone(),
            dc_in_use: live_domain.and_then(|h| h.in_use.clone()),
            dcs,
            watermark_taken_unix: watermark.map(|w| w.taken_unix),
            objects: objects.len(),
            last_sync,
            pending_count,
            pending,
            quarantined,
            conflicts: of_kind(RecordKind::Conflict),
            non_owner_changes: of_kind(RecordKind::NonOwnerChange),
            not_written_to_ad: by_id(errors, false),
            passwords_rejected: by_id(rejected, true),
        });
    }
    Ok(StatusReport {
        mode: config.mode.to_string(),
        generated_unix: now_unix,
        live: health.map(|h| Live {
            started_unix: h.started_unix,
            api: h.api,
        }),
        domains,
    })
}

/// The one renderer.
pub fn render(r: &StatusReport, out: &mut dyn Write) -> Result<(), StatusError> {
    let now = r.generated_unix;
    writeln!(out, "mode: {}", r.mode)?;
    match &r.live {
        Some(live) => {
            writeln!(
                out,
                "agent: running since {} ({})",
                utc(live.started_unix),
                ago(now, live.started_unix)
            )?;
            let api = match &live.api {
                ApiHealth::Unknown => "no answer yet".to_owned(),
                ApiHealth::Ok { since_unix } => format!("accepted since {}", utc(*since_unix)),
                ApiHealth::KeyRefused { since_unix, error } => {
                    format!("REFUSED since {}: {error}", utc(*since_unix))
                }
            };
            writeln!(out, "JumpCloud API key: {api}")?;
        }
        None => writeln!(
            out,
            "agent not running: live DC health unknown (report read from the state store)"
        )?,
    }
    for d in &r.domains {
        writeln!(out, "domain {}:", d.name)?;
        match (&r.live, &d.dc_in_use) {
            (_, Some(dc)) => writeln!(out, "  DC in use: {dc}")?,
            (Some(_), None) => writeln!(out, "  DC in use: none yet")?,
            (None, None) => writeln!(out, "  DC in use: unknown (agent not running)")?,
        }
        writeln!(out, "  DCs:")?;
        for dc in &d.dcs {
            let state = match (dc.up, &dc.error) {
                (Some(true), _) => format!("up since {}", utc(dc.since_unix)),
                (Some(false), Some(e)) => format!("DOWN since {}: {e}", utc(dc.since_unix)),
                (Some(false), None) => format!("DOWN since {}", utc(dc.since_unix)),
                (None, _) if r.live.is_some() => "not tried yet".to_owned(),
                (None, _) => "unknown".to_owned(),
            };
            writeln!(out, "    {} {state}", dc.url)?;
        }
        match d.watermark_taken_unix {
            None => writeln!(out, "  watermark: none (no initial read committed yet)")?,
            Some(0) => writeln!(
                out,
                "  watermark: present, age unknown (committed before forestsync recorded the time)"
            )?,
            Some(t) => writeln!(
                out,
                "  watermark: committed {} (age {})",
                utc(t),
                ago(now, t)
            )?,
        }
        writeln!(out, "  AD objects in the store: {}", d.objects)?;
        for LastSync { direction, at_unix } in &d.last_sync {
            let label = match direction {
                Direction::AdToJumpcloud => "AD → JumpCloud",
                Direction::JumpcloudToAd => "JumpCloud → AD",
            };
            let when = match (at_unix, &r.live) {
                (Some(t), _) => format!("{} ({} ago)", utc(*t), ago(now, *t)),
                (None, Some(_)) => "none yet since the agent started".to_owned(),
                (None, None) => "unknown (agent not running)".to_owned(),
            };
            writeln!(out, "  last successful sync {label}: {when}")?;
        }
        writeln!(out, "  pending operations: {}", d.pending_count)?;
        for p in &d.pending {
            writeln!(out, "    #{} {} {}", p.seq, p.kind, p.object)?;
        }
        if d.pending_count > d.pending.len() as u64 {
            writeln!(
                out,
                "    … and {} more",
                d.pending_count - d.pending.len() as u64
            )?;
        }
        writeln!(
            out,
            "  failed operations (quarantined): {}",
            d.quarantined.len()
        )?;
        for q in &d.quarantined {
            writeln!(out, "    #{} {} {}: {}", q.seq, q.kind, q.object, q.error)?;
        }
        for (rows, label) in [
            (&d.conflicts, "conflicts"),
            (&d.non_owner_changes, "changes on the non-owning side"),
        ] {
            writeln!(out, "  {label}: {}", rows.len())?;
            for x in rows {
                let at = utc(x.at_unix);
                writeln!(out, "    {at} {} {}: {}", x.object, x.what, x.detail)?;
            }
        }
        writeln!(out, "  not written to AD: {}", d.not_written_to_ad.len())?;
        for x in &d.not_written_to_ad {
            writeln!(out, "    {}: {}", x.id, x.reason)?;
        }
        writeln!(
            out,
            "  passwords AD rejected: {}",
            d.passwords_rejected.len()
        )?;
        for x in &d.passwords_rejected {
            writeln!(out, "    {}: {}", x.id, x.reason)?;
        }
    }
    Ok(())
}

/// `now - then` as `42s`, `5m 3s`, `2h 10m`, `3d 4h`.
pub fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m {}s", s / 60, s % 60),
        3_600..=86_399 => format!("{}h {}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn utc(at_unix: u64) -> String {
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
    use super::*;

    #[test]
    fn record_times_are_shown_in_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_825_600), "2000-02-29T12:00:00Z");
        assert_eq!(utc(1_795_689_075), "2026-11-26T10:31:15Z");
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(ago(100, 58), "42s");
        assert_eq!(ago(1_000, 1_000 - 303), "5m 3s");
        assert_eq!(ago(10_000, 10_000 - 7_800), "2h 10m");
        assert_eq!(ago(5, 10), "0s", "a clock step back is not negative");
    }

    fn report(live: Option<Live>, dc: DcStatus, in_use: Option<&str>) -> StatusReport {
        StatusReport {
            mode: "ad-authoritative".into(),
            generated_unix: 1_000_000,
            live,
            domains: vec![DomainStatus {
                name: "alpha".into(),
                dc_in_use: in_use.map(str::to_owned),
                dcs: vec![dc],
                watermark_taken_unix: Some(1_000_000 - 75),
                objects: 3,
                last_sync: vec![LastSync {
                    direction: Direction::AdToJumpcloud,
                    at_unix: Some(1_000_000 - 2),
                }],
                pending_count: 0,
                pending: vec![],
                quarantined: vec![OpLine {
                    seq: 7,
                    kind: "create user".into(),
                    object: "ann".into(),
                    error: "400 bad email".into(),
                }],
                conflicts: vec![],
                non_owner_changes: vec![],
                not_written_to_ad: vec![],
                passwords_rejected: vec![],
            }],
        }
    }

    #[test]
    fn live_and_stopped_reports_render_what_each_knows() {
        let dc = DcStatus {
            url: "ldaps://dc1".into(),
            up: Some(false),
            since_unix: 999_990,
            error: Some("timeout".into()),
        };
        let live = Live {
            started_unix: 999_000,
            api: ApiHealth::Ok {
                since_unix: 999_001,
            },
        };
        let mut out = Vec::new();
        render(
            &report(Some(live), dc.clone(), Some("ldaps://dc2")),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("agent: running since"), "{text}");
        assert!(text.contains("DC in use: ldaps://dc2"), "{text}");
        assert!(text.contains("ldaps://dc1 DOWN since"), "{text}");
        assert!(text.contains(": timeout"), "{text}");
        assert!(
            text.contains("watermark: committed") && text.contains("age 1m 15s"),
            "{text}"
        );
        assert!(
            text.contains("last successful sync AD → JumpCloud:") && text.contains("(2s ago)"),
            "{text}"
        );
        assert!(text.contains("#7 create user ann: 400 bad email"), "{text}");

        let stopped = DcStatus {
            up: None,
            error: None,
            ..dc
        };
        let mut out = Vec::new();
        render(&report(None, stopped, None), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("agent not running: live DC health unknown"),
            "{text}"
        );
        assert!(text.contains("ldaps://dc1 unknown"), "{text}");
        assert!(!text.contains("running since"), "{text}");
    }

    #[test]
    fn the_report_survives_its_json_round_trip() {
        let dc = DcStatus {
            url: "ldaps://dc1".into(),
            up: Some(true),
            since_unix: 5,
            error: None,
        };
        let r = report(None, dc, None);
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<StatusReport>(&text).unwrap(), r);
    }

    #[test]
    fn collect_merges_the_store_with_live_health() {
        use forestsync_actors::health::{DcHealth, DomainHealth};
        use forestsync_actors::model::{Anchor, ObjectGuid, RemoveAction, Watermark};
        use std::collections::BTreeMap;

        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("forestsync-status-{}-{nanos}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "mode = \"ad-authoritative\"\nstate_dir = \"{}\"\n[jumpcloud]\nbase_url = \"https://127.0.0.1:8443\"\napi_key = \"k\"\n[[domain]]\nname = \"alpha\"\ndcs = [\"ldaps://dc1\", \"ldaps://dc2\"]\nbind_dn = \"CN=svc,DC=a\"\nbind_password = \"p\"\nbase_dn = \"DC=a\"\nroot_group_dn = \"CN=Root,DC=a\"\n",
            dir.display()
        );
        let config = Config::parse(&dir.join("c.toml"), &text).unwrap();
        let store = Store::open(&dir).unwrap();
        let anchor = |n: u8| Anchor {
            domain: "alpha".into(),
            guid: ObjectGuid::from_bytes(&[n; 16]).unwrap(),
        };
        let remove = |n| Op::RemoveUser {
            anchor: anchor(n),
            action: RemoveAction::Suspend,
        };
        let wm = Watermark {
            taken_unix: 900,
            ..Watermark::default()
        };
        let seqs = store
            .commit_batch(
                "alpha",
                None,
                &wm,
                &[],
                &[],
                &[remove(1), remove(2), remove(3)],
            )
            .unwrap();
        store.quarantine_op(seqs[1], "404 gone").unwrap();

        let stopped = collect(&config, &store, None, 1_000).unwrap();
        let d = &stopped.domains[0];
        assert!(stopped.live.is_none());
        assert_eq!(d.watermark_taken_unix, Some(900));
        assert_eq!(d.pending_count, 2);
        assert_eq!(d.quarantined.len(), 1);
        assert_eq!(d.quarantined[0].error, "404 gone");
        assert_eq!(d.dcs.iter().map(|x| x.up).collect::<Vec<_>>(), [None, None]);

        let health = HealthSnapshot {
            started_unix: 10,
            api: ApiHealth::Ok { since_unix: 11 },
            store_error: None,
            domains: vec![DomainHealth {
                name: "alpha".into(),
                in_use: Some("ldaps://dc2".into()),
                dcs: vec![
                    DcHealth {
                        url: "ldaps://dc1".into(),
                        up: Some(false),
                        since_unix: 20,
                        error: Some("timeout".into()),
                    },
                    DcHealth {
                        url: "ldaps://dc2".into(),
                        up: Some(true),
                        since_unix: 21,
                        error: None,
                    },
                ],
                last_sync_unix: BTreeMap::from([(Direction::AdToJumpcloud, 990)]),
            }],
        };
        let live = collect(&config, &store, Some(health), 1_000).unwrap();
        let d = &live.domains[0];
        assert_eq!(d.dc_in_use.as_deref(), Some("ldaps://dc2"));
        assert_eq!(d.dcs[0].up, Some(false));
        assert_eq!(d.dcs[0].error.as_deref(), Some("timeout"));
        assert_eq!(d.dcs[1].up, Some(true));
        assert_eq!(
            d.last_sync,
            vec![LastSync {
                direction: Direction::AdToJumpcloud,
                at_unix: Some(990)
            }]
        );
        assert_eq!(live.live.as_ref().map(|l| l.started_unix), Some(10));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

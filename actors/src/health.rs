//! This process's live health: which DC each domain uses and whether each DC answers, whether
//! JumpCloud accepts the API key, and when each domain last completed a sync in each direction.
//!
//! Process-wide, like the metrics: the actors write it as they learn things; `/healthz`, `/readyz`
//! and `forestsync status` read a [`HealthSnapshot`]. Nothing here is persisted or secret (reasons are
//! error texts, which never carry credentials).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Which way a sync went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// AD → JumpCloud (the import).
    AdToJumpcloud,
    /// JumpCloud → AD.
    JumpcloudToAd,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::AdToJumpcloud => "ad_to_jumpcloud",
            Direction::JumpcloudToAd => "jumpcloud_to_ad",
        }
    }
}

/// One DC as last seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcHealth {
    pub url: String,
    /// `None` until the agent has tried it.
    pub up: Option<bool>,
    /// When `up` last changed (Unix seconds; 0 = never tried).
    pub since_unix: u64,
    /// Why it is down.
    pub error: Option<String>,
}

/// One domain as last seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainHealth {
    pub name: String,
    /// The DC requests go to now.
    pub in_use: Option<String>,
    pub dcs: Vec<DcHealth>,
    /// Direction → when its last sync completed (Unix seconds).
    pub last_sync_unix: BTreeMap<Direction, u64>,
}

/// What JumpCloud last said about the API key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ApiHealth {
    /// No answer yet.
    Unknown,
    /// The last request was authenticated.
    Ok { since_unix: u64 },
    /// JumpCloud refused the key (401/403).
    KeyRefused { since_unix: u64, error: String },
}

/// Everything at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSnapshot {
    pub started_unix: u64,
    pub api: ApiHealth,
    pub domains: Vec<DomainHealth>,
    /// The last store write failed with this (disk full, file unwritable); cleared by the next
    /// successful write.
    #[serde(default)]
    pub store_error: Option<String>,
}

impl HealthSnapshot {
    /// Ready = every domain has a DC that answers, and JumpCloud has not refused the key. The
    /// reasons otherwise, one per problem, each naming the domain or the key.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(e) = &self.store_error {
            reasons.push(format!(
                "the state store cannot be written (nothing advances until it can): {e}"
            ));
        }
        if let ApiHealth::KeyRefused { error, .. } = &self.api {
            reasons.push(format!("JumpCloud refuses the API key: {error}"));
        }
        for d in &self.domains {
            if !d.dcs.iter().any(|dc| dc.up == Some(true)) {
                let why: Vec<String> = d
                    .dcs
                    .iter()
                    .map(|dc| match (&dc.up, &dc.error) {
                        (None, _) => format!("{} not tried yet", dc.url),
                        (_, Some(e)) => format!("{}: {e}", dc.url),
                        _ => format!("{} down", dc.url),
                    })
                    .collect();
                reasons.push(format!(
                    "domain {}: no DC reachable ({})",
                    d.name,
                    why.join("; ")
                ));
            }
        }
        reasons
    }
}

struct State {
    started_unix: u64,
    api: ApiHealth,
    domains: Vec<DomainHealth>,
    scope: BTreeMap<(String, &'static str), u64>,
    store_error: Option<String>,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        Mutex::new(State {
            started_unix: now_unix(),
            api: ApiHealth::Unknown,
            domains: Vec::new(),
            scope: BTreeMap::new(),
            store_error: None,
        })
    })
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
    let mut guard = state().lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn domain<'a>(s: &'a mut State, name: &str) -> &'a mut DomainHealth {
    if let Some(i) = s.domains.iter().position(|d| d.name == name) {
        return &mut s.domains[i];
    }
    s.domains.push(DomainHealth {
        name: name.to_string(),
        in_use: None,
        dcs: Vec::new(),
        last_sync_unix: BTreeMap::new(),
    });
    let last = s.domains.len() - 1;
    &mut s.domains[last]
}

fn dc<'a>(d: &'a mut DomainHealth, url: &str) -> &'a mut DcHealth {
    if let Some(i) = d.dcs.iter().position(|dc| dc.url == url) {
        return &mut d.dcs[i];
    }
    d.dcs.push(DcHealth {
        url: url.to_string(),
        up: None,
        since_unix: 0,
        error: None,
    });
    let last = d.dcs.len() - 1;
    &mut d.dcs[last]
}

/// Declares a domain and its DCs (in preference order), so readiness waits for them. True the
/// first time the domain is declared.
pub fn register_domain(name: &str, dcs: &[String]) -> bool {
    with(|s| {
        let new = !s.domains.iter().any(|d| d.name == name);
        let d = domain(s, name);
        for url in dcs {
            dc(d, url);
        }
        new
    })
}

/// The DC the domain uses now, if known.
pub fn in_use(domain_name: &str) -> Option<String> {
    with(|s| {
        s.domains
            .iter()
            .find(|d| d.name == domain_name)
            .and_then(|d| d.in_use.clone())
    })
}

/// The DC answered (a bind or a request succeeded).
pub fn dc_up(domain_name: &str, url: &str) {
    with(|s| {
        let entry = dc(domain(s, domain_name), url);
        if entry.up != Some(true) {
            entry.up = Some(true);
            entry.since_unix = now_unix();
        }
        entry.error = None;
    })
}

/// The DC failed (connect, bind, timeout or a broken connection).
pub fn dc_down(domain_name: &str, url: &str, error: &str) {
    with(|s| {
        let entry = dc(domain(s, domain_name), url);
        if entry.up != Some(false) {
            entry.up = Some(false);
            entry.since_unix = now_unix();
        }
        entry.error = Some(error.to_string());
    })
}

/// The domain now sends its requests to `url`.
pub fn dc_in_use(domain_name: &str, url: &str) {
    with(|s| domain(s, domain_name).in_use = Some(url.to_string()))
}

/// A sync of `domain_name` in `direction` completed now.
pub fn synced(domain_name: &str, direction: Direction) {
    with(|s| {
        domain(s, domain_name)
            .last_sync_unix
            .insert(direction, now_unix());
    })
}

/// A store write failed (logged once per failure streak, as an error).
pub fn store_failed(error: &str) {
    let first = with(|s| s.store_error.replace(error.to_string()).is_none());
    if first {
        tracing::error!(error, "the state store cannot be written: syncing stops advancing until it can (free disk space, fix permissions); nothing is lost");
    }
}

/// A store write succeeded.
pub fn store_ok() {
    let was_failing = with(|s| s.store_error.take().is_some());
    if was_failing {
        tracing::info!("the state store is writable again; syncing resumes");
    }
}

/// JumpCloud authenticated a request.
pub fn api_ok() {
    with(|s| {
        if !matches!(s.api, ApiHealth::Ok { .. }) {
            s.api = ApiHealth::Ok {
                since_unix: now_unix(),
            };
        }
    })
}

/// JumpCloud refused the API key (401 or 403).
pub fn api_key_refused(error: &str) {
    with(|s| {
        let since_unix = match &s.api {
            ApiHealth::KeyRefused { since_unix, .. } => *since_unix,
            _ => now_unix(),
        };
        s.api = ApiHealth::KeyRefused {
            since_unix,
            error: error.to_string(),
        };
    })
}

/// How many objects of `kind` ("users", "groups") the domain has in scope now.
pub fn set_scope(domain_name: &str, kind: &'static str, count: u64) {
    with(|s| {
        s.scope.insert((domain_name.to_string(), kind), count);
    })
}

/// (domain, kind, count) for every domain whose scope is known.
pub fn scope_counts() -> Vec<(String, &'static str, u64)> {
    with(|s| {
        s.scope
            .iter()
            .map(|((d, k), n)| (d.clone(), *k, *n))
            .collect()
    })
}

/// The current state.
pub fn snapshot() -> HealthSnapshot {
    with(|s| HealthSnapshot {
        started_unix: s.started_unix,
        api: s.api.clone(),
        domains: s.domains.clone(),
        store_error: s.store_error.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(api: ApiHealth, dcs: Vec<DcHealth>) -> HealthSnapshot {
        HealthSnapshot {
            started_unix: 0,
            api,
            domains: vec![DomainHealth {
                name: "ALPHA".into(),
                in_use: None,
                dcs,
                last_sync_unix: BTreeMap::new(),
            }],
            store_error: None,
        }
    }

    fn dc(url: &str, up: Option<bool>, error: Option<&str>) -> DcHealth {
        DcHealth {
            url: url.into(),
            up,
            since_unix: 1,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn ready_needs_one_answering_dc_per_domain_and_an_accepted_key() {
        let one_up = vec![
            dc("ldap://dc1", Some(false), Some("timeout")),
            dc("ldap://dc2", Some(true), None),
        ];
        assert!(snap(ApiHealth::Unknown, one_up.clone())
            .not_ready_reasons()
            .is_empty());
        let refused = ApiHealth::KeyRefused {
            since_unix: 1,
            error: "401 Unauthorized".into(),
        };
        let reasons = snap(refused, one_up).not_ready_reasons();
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("API key"), "{reasons:?}");

        let none_up = vec![
            dc("ldap://dc1", Some(false), Some("timeout")),
            dc("ldap://dc2", None, None),
        ];
        let reasons = snap(ApiHealth::Ok { since_unix: 1 }, none_up).not_ready_reasons();
        assert_eq!(reasons.len(), 1);
        assert!(
            reasons[0].contains("domain ALPHA")
                && reasons[0].contains("ldap://dc1: timeout")
                && reasons[0].contains("ldap://dc2 not tried yet"),
            "{reasons:?}"
        );
    }
}

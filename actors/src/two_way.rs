//! Two-way mode's shared rules: who owns what, how forestsync recognises its own writes coming back
//! (echoes), and the records an admin sees when the two sides disagreed.
//!
//! Authority, per object and per attribute:
//! - An object is owned by the side it was created on. AD-owned: an AD object in the import scope
//!   without forestsync's JumpCloud marker; its JumpCloud user carries the `forestsync_anchor` back-link.
//!   JumpCloud-owned: a JumpCloud user or group without that back-link, bound to the AD instance; its AD
//!   object carries the marker `adminDescription = forestsync:jc=<id>`. Each direction writes only the
//!   objects its source owns, so the profile of an object has exactly one writer.
//! - The password has its own owner per user: the JumpCloud custom attribute
//!   [`PASSWORD_AUTHORITY_ATTRIBUTE`] (`ad` or `jumpcloud`), else the configured default. A password
//!   flows only from its owner: DC-captured passwords of JumpCloud-authority users and JumpCloud
//!   passwords of AD-authority users are not propagated, and are reported.
//!
//! Changes on the side that does not own them (non-owner changes) are reverted (the owner's value is
//! written back) or ignored, as configured, and always recorded. A conflict (both sides changed the
//! same attribute before forestsync saw either) is decided by one rule: **the owner's value wins**; the
//! other value is recorded with the conflict. Records live in the store under `two_way/<domain>/…` and
//! are shown by `forestsync status`.
//!
//! Echoes: a profile write is never echoed because the other direction does not write that object (it
//! compares, finds both sides equal, and stops). A password write comes back through the other path
//! (a password set in AD is captured by the DC's hook; one set in JumpCloud is a channel event): the
//! [`EchoLedger`] remembers a keyed digest of each password forestsync wrote, per user, for
//! [`ECHO_TTL`], and the returning copy is consumed silently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use std::collections::BTreeMap;

use crate::cloud::{state_name, JcProfile, UserUpdate};
use crate::model::DesiredUser;
use crate::secret::Secret;
use crate::store::{Store, StoreError};

/// The JumpCloud custom attribute that sets one user's password authority (`ad` or `jumpcloud`).
pub const PASSWORD_AUTHORITY_ATTRIBUTE: &str = "forestsync_password_authority";

/// How long a written password is remembered as "ours" when it comes back.
pub const ECHO_TTL: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Ad,
    JumpCloud,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Ad => "AD",
            Side::JumpCloud => "JumpCloud",
        }
    }

    /// `ad` / `jumpcloud` (case-insensitive; `activedirectory`, `active directory` accepted).
    pub fn parse(v: &str) -> Option<Side> {
        match v
            .trim()
            .to_ascii_lowercase()
            .replace([' ', '-', '_'], "")
            .as_str()
        {
            "ad" | "activedirectory" => Some(Side::Ad),
            "jumpcloud" | "jc" => Some(Side::JumpCloud),
            _ => None,
        }
    }
}

/// What happens to a change made on the side that does not own it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonOwnerChange {
    /// The owner's value is written back (and the change recorded).
    Revert,
    /// Left as it is (and recorded); the owner's next change to the object re-asserts its values.
    Ignore,
}

#[derive(Clone, Copy, Debug)]
pub struct TwoWaySettings {
    pub default_password_authority: Side,
    pub non_owner_change: NonOwnerChange,
}

/// A user's password authority: the custom attribute when it names a side, else the default.
pub fn password_authority(profile: &JcProfile, default: Side) -> Side {
    custom_attribute(profile, PASSWORD_AUTHORITY_ATTRIBUTE)
        .and_then(|v| Side::parse(&v))
        .unwrap_or(default)
}

/// The value of JumpCloud custom attribute `name` on a user read through the API.
pub fn custom_attribute(profile: &JcProfile, name: &str) -> Option<String> {
    profile
        .fields
        .get("attributes")?
        .as_array()?
        .iter()
        .find(|a| a.get("name").and_then(|n| n.as_str()) == Some(name))
        .and_then(|a| match a.get("value")? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        })
}

/// Keyed digests of passwords forestsync wrote, per user, so their return trip is recognised. The key
/// is random per process and the digests live only in memory: nothing here can be used to test a
/// guess offline, and nothing survives a restart (one echo after a restart is possible and harmless:
/// the same password written again).
pub struct EchoLedger {
    key: hmac::Key,
    entries: Mutex<HashMap<String, Vec<(hmac::Tag, Instant)>>>,
}

impl std::fmt::Debug for EchoLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoLedger").finish_non_exhaustive()
    }
}

impl Default for EchoLedger {
    fn default() -> Self {
        let mut key = [0u8; 32];
        // A failing system RNG leaves a zero key: digests are still per-process and in memory only.
        let _ = SystemRandom::new().fill(&mut key);
        EchoLedger {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl EchoLedger {
    fn tag(&self, user: &str, password: &Secret) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.expose().as_bytes());
        ctx.sign()
    }

    /// Remembers that forestsync is writing `password` for JumpCloud user `user` (call before the write).
    pub fn record(&self, user: &str, password: &Secret) {
        let tag = self.tag(user, password);
        let now = Instant::now();
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, v| {
            v.retain(|(_, at)| now.duration_since(*at) < ECHO_TTL);
            !v.is_empty()
        });
        m.entry(user.to_owned()).or_default().push((tag, now));
    }

    /// True (and forgotten) when `password` for `user` is one forestsync wrote within [`ECHO_TTL`].
    pub fn take(&self, user: &str, password: &Secret) -> bool {
        let tag = self.tag(user, password);
        let now = Instant::now();
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(v) = m.get_mut(user) else {
            return false;
        };
        let found = v
            .iter()
            .position(|(t, at)| now.duration_since(*at) < ECHO_TTL && t.as_ref() == tag.as_ref());
        if let Some(i) = found {
            v.remove(i);
        }
        if v.is_empty() {
            m.remove(user);
        }
        found.is_some()
    }
}

/// The JumpCloud fields forestsync writes for an AD-owned user, as last applied (`state` stands
/// for the suspension).
pub fn applied_fields(u: &DesiredUser) -> BTreeMap<String, String> {
    let mut m = BTreeMap::from([
        ("username".to_owned(), u.username.clone()),
        ("email".to_owned(), u.email.clone()),
        ("firstname".to_owned(), u.firstname.clone()),
        ("lastname".to_owned(), u.lastname.clone()),
        ("state".to_owned(), state_name(u.suspended).to_owned()),
    ]);
    for (k, v) in &u.extra {
        m.insert(k.clone(), v.clone());
    }
    m
}

/// Fields of `applied` whose value in JumpCloud (`now`) differs: (field, JumpCloud's value, AD's).
/// Compared as JumpCloud compares: e-mail case-insensitively, everything else exactly; a staged user
/// counts as active.
pub fn drift(applied: &DesiredUser, now: &JcProfile) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (field, want) in applied_fields(applied) {
        let have = match field.as_str() {
            "username" => now.username.clone(),
            "email" => now.email.clone(),
            "firstname" => now.firstname.clone(),
            "lastname" => now.lastname.clone(),
            "state" => state_name(now.is_suspended()).to_owned(),
            other => now.field(other).to_owned(),
        };
        let same = if field == "email" {
            have.eq_ignore_ascii_case(&want)
        } else {
            have == want
        };
        if !same {
            out.push((field, have, want));
        }
    }
    out
}

/// The update that writes AD's values back over `drifted` fields.
pub fn revert_update(applied: &DesiredUser, drifted: &[(String, String, String)]) -> UserUpdate {
    let mut u = UserUpdate::default();
    for (field, _, _) in drifted {
        match field.as_str() {
            "username" => u.username = Some(applied.username.clone()),
            "email" => u.email = Some(applied.email.clone()),
            "firstname" => u.firstname = Some(applied.firstname.clone()),
            "lastname" => u.lastname = Some(applied.lastname.clone()),
            "state" => u.suspended = Some(applied.suspended),
            other => {
                u.extra
                    .insert(other.to_owned(), applied.extra.get(other).cloned());
            }
        }
    }
    u
}

/// What kind of disagreement a record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// The side that does not own it changed it.
    NonOwnerChange,
    /// Both sides changed it before forestsync saw either; the owner won.
    Conflict,
}

impl RecordKind {
    fn key(self) -> &'static str {
        match self {
            RecordKind::NonOwnerChange => "non_owner",
            RecordKind::Conflict => "conflict",
        }
    }
}

/// The store key prefix of every two-way record of `domain`.
pub fn record_prefix(domain: &str) -> String {
    format!("two_way/{domain}/")
}

/// Everything two-way's two directions share.
pub struct TwoWay {
    pub settings: TwoWaySettings,
    pub echoes: EchoLedger,
    store: Store,
}

impl std::fmt::Debug for TwoWay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoWay")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TwoWay {
    pub fn new(settings: TwoWaySettings, store: Store) -> Arc<TwoWay> {
        Arc::new(TwoWay {
            settings,
            echoes: EchoLedger::default(),
            store,
        })
    }

    /// Records (and logs) a disagreement about `object` (a JumpCloud id) in `domain`. `what` names
    /// the attribute; `detail` says what was kept and what was not (never a password).
    pub fn record(
        &self,
        domain: &str,
        kind: RecordKind,
        object: &str,
        what: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match kind {
            RecordKind::Conflict => {
                tracing::warn!(
                    domain,
                    object,
                    attribute = what,
                    "two-way conflict: {detail}"
                )
            }
            RecordKind::NonOwnerChange => {
                tracing::warn!(
                    domain,
                    object,
                    attribute = what,
                    "two-way: change on the non-owning side: {detail}"
                )
            }
        }
        self.store.set_meta(
            &format!("{}{}/{object}/{what}", record_prefix(domain), kind.key()),
            &format!("{at}\t{detail}"),
        )
    }
}

/// One record as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub domain: String,
    pub kind: RecordKind,
    pub object: String,
    pub what: String,
    pub at_unix: u64,
    pub detail: String,
}

/// Every two-way record of `domain` in the store, oldest first.
pub fn records(store: &Store, domain: &str) -> Result<Vec<Record>, StoreError> {
    let prefix = record_prefix(domain);
    let mut out: Vec<Record> = store
        .meta_with_prefix(&prefix)?
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(&prefix)?;
            let mut parts = rest.splitn(3, '/');
            let kind = match parts.next()? {
                "non_owner" => RecordKind::NonOwnerChange,
                "conflict" => RecordKind::Conflict,
                _ => return None,
            };
            let (object, what) = (parts.next()?.to_owned(), parts.next()?.to_owned());
            let (at, detail) = v.split_once('\t')?;
            Some(Record {
                domain: domain.to_owned(),
                kind,
                object,
                what,
                at_unix: at.parse().unwrap_or(0),
                detail: detail.to_owned(),
            })
        })
        .collect();
    out.sort_by_key(|r| r.at_unix);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(attrs: serde_json::Value) -> JcProfile {
        JcProfile {
            id: "u1".into(),
            username: "a".into(),
            email: String::new(),
            firstname: String::new(),
            lastname: String::new(),
            displayname: String::new(),
            state: "ACTIVATED".into(),
            fields: serde_json::json!({ "attributes": attrs })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    #[test]
    fn the_password_authority_is_the_users_attribute_else_the_default() {
        let p = profile(
            serde_json::json!([{"name": "forestsync_password_authority", "value": "JumpCloud"}]),
        );
        assert_eq!(password_authority(&p, Side::Ad), Side::JumpCloud);
        let p = profile(
            serde_json::json!([{"name": "forestsync_password_authority", "value": "Active Directory"}]),
        );
        assert_eq!(password_authority(&p, Side::JumpCloud), Side::Ad);
        let p = profile(
            serde_json::json!([{"name": "forestsync_password_authority", "value": "both"}]),
        );
        assert_eq!(password_authority(&p, Side::JumpCloud), Side::JumpCloud);
        let p = profile(serde_json::json!([{"name": "other", "value": "jumpcloud"}]));
        assert_eq!(password_authority(&p, Side::Ad), Side::Ad);
    }

    #[test]
    fn a_written_password_is_recognised_once_per_user_and_value() {
        let l = EchoLedger::default();
        let (pw, other) = (
            Secret::new("Correct-Horse-1"),
            Secret::new("Correct-Horse-2"),
        );
        l.record("u1", &pw);
        assert!(
            !l.take("u2", &pw),
            "another user's identical password is not an echo"
        );
        assert!(!l.take("u1", &other), "another value is not an echo");
        assert!(l.take("u1", &pw));
        assert!(!l.take("u1", &pw), "an echo is consumed once");
    }
}

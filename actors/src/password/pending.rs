//! Captured passwords waiting for AD to confirm it committed them. Pure: no I/O, time passed in.
//!
//! Samba runs the hook before it commits the password and before its history check, so a capture is
//! a candidate. The caller inserts each capture with the user's `pwdLastSet` as it read it, then
//! reports every `pwdLastSet` value it sees for that user ([`PendingPasswords::observe_pwd_last_set`]).
//!
//! The commit test, per candidate (`value` = the observed `pwdLastSet`, a FILETIME; `lead` =
//! [`DEFAULT_STAMP_LEAD`] unless set):
//!
//! | observed value | meaning | forwarded? |
//! |---|---|---|
//! | a time at or after `captured_at - lead` | AD set a password in the request the hook ran for | yes |
//! | a time before `captured_at - lead` | an earlier change (e.g. this one was refused for history) | no, keep waiting |
//! | `0`, and the value at capture was not `0` | set with "must change at next logon" | yes |
//! | `0`, and it was already `0` | nothing to tell | no, keep waiting |
//!
//! Why a time test and not just "the value changed since the caller read it": the agent reads
//! `pwdLastSet` after the hook handed the password over, usually after AD committed it, so "changed
//! since I read it" would miss most commits. Why the lead: Samba takes the `pwdLastSet` timestamp
//! *before* it runs the hook (measured on the lab: 174 ms before the hook's `captured_at` for a
//! kpasswd change on a loaded 2-core machine), so the committed value is slightly older than the
//! capture. Both come from the capturing DC's clock (the hook runs there; `pwdLastSet` replicates
//! unchanged), so no clock-skew allowance is needed. The lead is the one blind spot: a password
//! refused for history less than `lead` after an accepted change of the same account would be taken
//! for committed. Under the default domain policy (minimum age 1 day for self changes; admin resets
//! skip history) that sequence cannot happen.
//!
//! A candidate is dropped, never forwarded, when its confirmation window (counted on the monotonic
//! clock from when it was inserted, so a wall-clock jump changes nothing; so captures replayed from the spool after an outage get a full window) passes
//! ([`PendingPasswords::expire`]), or when a newer capture for the same account replaces it.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::CapturedPassword;

/// How long a candidate waits for its `pwdLastSet` confirmation by default.
pub const DEFAULT_CONFIRM_WINDOW: Duration = Duration::from_secs(120);

/// How much older than the hook's `captured_at` the committed `pwdLastSet` may be (Samba stamps it
/// before running the hook; see the module doc).
pub const DEFAULT_STAMP_LEAD: Duration = Duration::from_secs(5);

/// 100-ns intervals between 1601-01-01 and 1970-01-01.
const FILETIME_UNIX_EPOCH: i64 = 116_444_736_000_000_000;

struct Candidate {
    captured: CapturedPassword,
    pwd_last_set_at_capture: i64,
    /// Monotonic: a wall-clock jump neither drops a candidate early nor keeps it for ever.
    deadline: Instant,
}

/// Candidates per (domain, account); domain and account compare case-insensitively.
pub struct PendingPasswords {
    window: Duration,
    stamp_lead: Duration,
    candidates: HashMap<(String, String), Candidate>,
}

impl Default for PendingPasswords {
    fn default() -> Self {
        Self::new(DEFAULT_CONFIRM_WINDOW)
    }
}

impl std::fmt::Debug for PendingPasswords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingPasswords")
            .field("window", &self.window)
            .field("stamp_lead", &self.stamp_lead)
            .field("candidates", &self.candidates.len())
            .finish()
    }
}

fn key(domain: &str, account: &str) -> (String, String) {
    (domain.to_lowercase(), account.to_lowercase())
}

/// `pwdLastSet` (FILETIME) as a time; `None` for 0 ("must change") and other non-times.
pub fn filetime_to_system_time(value: i64) -> Option<SystemTime> {
    let since_unix = value.checked_sub(FILETIME_UNIX_EPOCH)?;
    if value <= 0 || since_unix < 0 {
        return None;
    }
    let since_unix = since_unix as u64;
    UNIX_EPOCH.checked_add(
        Duration::from_secs(since_unix / 10_000_000)
            + Duration::from_nanos((since_unix % 10_000_000) * 100),
    )
}

impl PendingPasswords {
    pub fn new(confirm_window: Duration) -> Self {
        PendingPasswords {
            window: confirm_window,
            stamp_lead: DEFAULT_STAMP_LEAD,
            candidates: HashMap::new(),
        }
    }

    /// Sets how much older than `captured_at` a committed `pwdLastSet` may be (default 5 s).
    pub fn with_stamp_lead(mut self, lead: Duration) -> Self {
        self.stamp_lead = lead;
        self
    }

    pub fn confirm_window(&self) -> Duration {
        self.window
    }

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The id of the candidate held for this account, if any.
    pub fn pending_id(&self, domain: &str, account: &str) -> Option<&str> {
        self.candidates
            .get(&key(domain, account))
            .map(|c| c.captured.id.as_str())
    }

    /// The earliest deadline, for scheduling the next [`PendingPasswords::expire`].
    pub fn next_deadline(&self) -> Option<Instant> {
        self.candidates.values().map(|c| c.deadline).min()
    }

    /// Holds `captured` until its commit is observed or `now + confirm_window` passes.
    /// `pwd_last_set_at_capture` is the user's `pwdLastSet` as the caller read it (0 when the user
    /// has none or does not exist yet). Returns the id of the capture that lost: the one held before
    /// for the same account, or `captured` itself when it is older than the one held.
    pub fn insert(
        &mut self,
        captured: CapturedPassword,
        pwd_last_set_at_capture: i64,
        now: Instant,
    ) -> Option<String> {
        let k = key(&captured.domain, &captured.account);
        if let Some(held) = self.candidates.get(&k) {
            if held.captured.id == captured.id {
                return None; // the same capture delivered twice (socket and spool): keep the first
            }
            if held.captured.captured_at > captured.captured_at {
                return Some(captured.id);
            }
        }
        let candidate = Candidate {
            captured,
            pwd_last_set_at_capture,
            deadline: now + self.window,
        };
        self.candidates
            .insert(k, candidate)
            .map(|old| old.captured.id.clone())
    }

    /// Reports the user's current `pwdLastSet`. Returns the candidate to forward when the value shows
    /// AD committed it (see the module table); the candidate then leaves the set. A candidate whose
    /// window has passed is dropped instead (its id is then no longer pending: ack it via
    /// [`PendingPasswords::expire`]'s caller, which sees it gone).
    pub fn observe_pwd_last_set(
        &mut self,
        domain: &str,
        account: &str,
        new_value: i64,
        now: Instant,
    ) -> Option<CapturedPassword> {
        let k = key(domain, account);
        let candidate = self.candidates.get(&k)?;
        if now > candidate.deadline {
            return None; // expire() reports and drops it
        }
        let committed = match filetime_to_system_time(new_value) {
            Some(set_at) => {
                set_at + self.stamp_lead >= truncate_to_millis(candidate.captured.captured_at)
            }
            None => new_value == 0 && candidate.pwd_last_set_at_capture != 0,
        };
        if !committed {
            return None;
        }
        self.candidates.remove(&k).map(|c| c.captured)
    }

    /// Drops the candidates whose window passed at `now` (AD did not commit them, e.g. history)
    /// and returns their ids, so the caller can acknowledge (delete) them. They are never forwarded.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        self.candidates.retain(|_, c| {
            let keep = now <= c.deadline;
            if !keep {
                gone.push(c.captured.id.clone());
            }
            keep
        });
        gone.sort();
        gone
    }
}

/// The hook's timestamp travels in milliseconds; compare at that precision.
fn truncate_to_millis(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_millis(d.as_millis() as u64),
        Err(_) => t,
    }
}

/// `t` as a `pwdLastSet` FILETIME value (for tests and callers that fake AD).
pub fn system_time_to_filetime(t: SystemTime) -> i64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    // Saturating: a time past FILETIME's range (year 30828) overflowed.
    i64::try_from(since.as_nanos() / 100)
        .unwrap_or(i64::MAX)
        .saturating_add(FILETIME_UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn a_time_past_filetime_range_saturates_instead_of_overflowing() {
        let far = UNIX_EPOCH + Duration::from_secs(1 << 60);
        assert_eq!(system_time_to_filetime(far), i64::MAX);
        assert_eq!(system_time_to_filetime(UNIX_EPOCH), FILETIME_UNIX_EPOCH);
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    /// The monotonic clock `secs` seconds after a fixed start.
    fn tick(secs: u64) -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now) + Duration::from_secs(secs)
    }

    fn ft(secs: u64) -> i64 {
        system_time_to_filetime(at(secs))
    }

    fn capture(id: &str, account: &str, captured_secs: u64) -> CapturedPassword {
        CapturedPassword {
            id: id.into(),
            domain: "alpha".into(),
            account: account.into(),
            upn: None,
            captured_at: at(captured_secs),
            password: Secret::new(format!("pw-{id}")),
        }
    }

    #[test]
    fn filetime_conversion_round_trips() {
        assert_eq!(filetime_to_system_time(ft(5)), Some(at(5)));
        assert_eq!(filetime_to_system_time(0), None);
        assert_eq!(filetime_to_system_time(-1), None);
        let _far_future_does_not_panic = filetime_to_system_time(i64::MAX);
        // 2009-02-13T23:31:30Z as AD writes it
        assert_eq!(
            filetime_to_system_time(128_790_414_900_000_000),
            Some(UNIX_EPOCH + Duration::from_secs(1_234_567_890))
        );
    }

    /// Captured at t=100 with pwdLastSet `baseline` (inserted at t=101, window 120 s); then
    /// `observed` is reported at `observed_at`. Does the candidate get forwarded?
    #[test]
    fn commit_rule_table() {
        // (case, baseline, observed, observed_at, forwarded)
        let cases: &[(&str, i64, i64, u64, bool)] = &[
            ("committed, seen as a change", ft(10), ft(102), 103, true),
            (
                "committed before the agent read the baseline",
                ft(102),
                ft(102),
                103,
                true,
            ),
            ("committed in the same second", ft(10), ft(100), 103, true),
            (
                "stamped by Samba just before the hook ran",
                ft(10),
                ft(96),
                103,
                true,
            ),
            ("an accepted change 6 s earlier", ft(10), ft(94), 103, false),
            ("unchanged: refused for history", ft(10), ft(10), 103, false),
            (
                "an earlier change replicated late",
                ft(10),
                ft(50),
                103,
                false,
            ),
            ("set with must-change (pwdLastSet 0)", ft(10), 0, 103, true),
            ("still 0 (new user, no commit yet)", 0, 0, 103, false),
            ("new user created with this password", 0, ft(101), 103, true),
            (
                "committed, but seen after the window",
                ft(10),
                ft(102),
                222,
                false,
            ),
            ("seen exactly at the deadline", ft(10), ft(102), 221, true),
        ];
        for (case, baseline, observed, observed_at, forwarded) in cases {
            let mut p = PendingPasswords::new(Duration::from_secs(120));
            assert_eq!(
                p.insert(capture("c1", "jdoe", 100), *baseline, tick(101)),
                None
            );
            let got = p.observe_pwd_last_set("alpha", "jdoe", *observed, tick(*observed_at));
            assert_eq!(got.is_some(), *forwarded, "{case}");
            if let Some(c) = got {
                assert_eq!(c.password.expose(), "pw-c1", "{case}");
                assert!(p.is_empty(), "{case}: a forwarded candidate leaves the set");
            }
        }
    }

    #[test]
    fn the_stamp_lead_is_compared_at_sub_second_precision() {
        let mut p = PendingPasswords::default().with_stamp_lead(Duration::from_millis(500));
        let mut c = capture("c1", "jdoe", 100);
        c.captured_at = at(100) + Duration::from_millis(700);
        p.insert(c, ft(10), tick(101));
        let too_early = system_time_to_filetime(at(100) + Duration::from_millis(199));
        let in_lead = system_time_to_filetime(at(100) + Duration::from_millis(200));
        assert!(p
            .observe_pwd_last_set("alpha", "jdoe", too_early, tick(101))
            .is_none());
        assert!(p
            .observe_pwd_last_set("alpha", "jdoe", in_lead, tick(101))
            .is_some());
    }

    #[test]
    fn accounts_and_domains_are_matched_case_insensitively_and_kept_apart() {
        let mut p = PendingPasswords::default();
        p.insert(capture("c1", "JDoe", 100), ft(10), tick(100));
        let mut beta = capture("c2", "jdoe", 100);
        beta.domain = "beta".into();
        p.insert(beta, ft(10), tick(100));
        assert_eq!(p.len(), 2);
        assert!(p
            .observe_pwd_last_set("alpha", "other", ft(101), tick(101))
            .is_none());
        let got = p
            .observe_pwd_last_set("ALPHA", "jdoe", ft(101), tick(101))
            .unwrap();
        assert_eq!(got.id, "c1");
        assert_eq!(p.pending_id("beta", "JDOE"), Some("c2"));
    }

    #[test]
    fn a_newer_capture_replaces_an_older_one_and_never_the_reverse() {
        let mut p = PendingPasswords::default();
        assert_eq!(
            p.insert(capture("old", "jdoe", 100), ft(10), tick(100)),
            None
        );
        assert_eq!(
            p.insert(capture("new", "jdoe", 105), ft(10), tick(105)),
            Some("old".into())
        );
        // a late spool replay of an even older capture loses
        assert_eq!(
            p.insert(capture("older", "jdoe", 90), ft(10), tick(106)),
            Some("older".into())
        );
        assert_eq!(p.pending_id("alpha", "jdoe"), Some("new"));
        // the same capture again (delivered by socket and spool) displaces nothing
        assert_eq!(
            p.insert(capture("new", "jdoe", 105), ft(10), tick(106)),
            None
        );
        // the committed value is from "old"'s change, more than the lead before "new" was captured
        let mut p = p.with_stamp_lead(Duration::from_secs(2));
        assert!(p
            .observe_pwd_last_set("alpha", "jdoe", ft(101), tick(107))
            .is_none());
        let got = p
            .observe_pwd_last_set("alpha", "jdoe", ft(106), tick(107))
            .unwrap();
        assert_eq!(got.id, "new");
    }

    #[test]
    fn expire_drops_only_candidates_past_their_window() {
        let mut p = PendingPasswords::new(Duration::from_secs(60));
        p.insert(capture("a", "u1", 100), ft(10), tick(100));
        p.insert(capture("b", "u2", 130), ft(10), tick(130));
        assert_eq!(p.next_deadline(), Some(tick(160)));
        assert!(
            p.expire(tick(160)).is_empty(),
            "the deadline itself is still inside"
        );
        assert_eq!(p.expire(tick(161)), vec!["a".to_string()]);
        assert_eq!(p.len(), 1);
        // an expired candidate is never forwarded, even if its commit shows up later
        assert!(p
            .observe_pwd_last_set("alpha", "u1", ft(150), tick(162))
            .is_none());
        assert_eq!(p.expire(tick(500)), vec!["b".to_string()]);
        assert!(p.is_empty());
    }
}

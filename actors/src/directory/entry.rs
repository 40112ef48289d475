//! What the JumpCloud-authoritative mode needs from a DC beyond add/modify/rename/delete: paged
//! searches that return whole entries ([`DcSession::find_entries`], with complete ranged `member`),
//! admin password resets ([`DcSession::set_password`]) and chunked member changes
//! ([`DcSession::change_members`]).
//!
//! # What Samba 4.17 does (measured on the lab as the least-privilege service account)
//!
//! - **Password rejections** are all `constraintViolation` (19), with these diagnostic texts:
//!   - complexity (or the `check password script` said no): `0000052D: Constraint violation -
//!     check_password_restrictions: the password does not meet the complexity criteria!`
//!   - length: `0000052D: Constraint violation - check_password_restrictions: the password is too
//!     short. It should be equal or longer than 7 characters!`
//!   - history (own change only, see below): `0000052D: Constraint violation -
//!     check_password_restrictions: the password was already used (in history)!`
//!   - minimum age (own change only): `0000052D: Constraint violation - check_password_restrictions:
//!     password is too young to change!`
//! - **Samba cannot enforce the password history on an admin reset.** Its LDAP server does not know
//!   LDAP_SERVER_POLICY_HINTS (1.2.840.113556.1.4.2239) nor the deprecated OID (…2066): neither is in
//!   `supportedControl`; sent critical
//!   both are refused with `unavailableCriticalExtension` (12, empty text) and nothing is written; sent
//!   non-critical they are ignored and a password from the history is accepted. Its `acl` module
//!   (`acl_check_password_rights`) marks every `unicodePwd` replace as a reset, and `password_hash.c`
//!   (`check_password_restrictions`) returns success for resets before its history check. The
//!   history is enforced only on a change (old and new password in one modify). Windows (2008 R2:
//!   …2066, 2012 and later: …2239) enforces it on a reset when the control is sent.
//! - **Member already present** on add: `entryAlreadyExists` (68), `Attribute member already exists
//!   for target GUID <guid>` (Windows: 68, `00000562: … ENTRY_EXISTS`). **Member already absent** on
//!   delete: `unwillingToPerform` (53), `Attribute member already deleted for target GUID <guid>`
//!   (Windows: 53, `00000561: … WILL_NOT_PERFORM`). A member DN that names no object: on add
//!   `noSuchObject` (32) `00000525: specified dn doesn't exist …` (the text does not say which value);
//!   on delete 53 `00002035: Unable to find GUID for DN <dn>`, and the member stays (a stale DN of a
//!   renamed member): that one is an error, not "already absent". Several values in one modify apply
//!   atomically: one bad value fails the whole modify. The same DN twice in one add is accepted.
//! - Neither paging nor range limits are enforced by Samba, so the page size and range windows here
//!   are always explicit; `member;range=` must be lower case (Samba matches it case-sensitively).

use std::collections::{BTreeMap, HashSet};

use ldap3::controls::{PagedResults, RawControl};
use ldap3::{Mod, Scope};

use super::error::{MEMBER_CHANGE, PASSWORD_RESET};
use super::read::{
    absorb_member_window, continue_members, guid_dn, malformed, parse_attr_desc, raw_search,
    split_member_windows, RangeOption, RangeStep,
};
use super::{DcSession, DirectoryError};
use crate::model::ObjectGuid;
use crate::secret::Secret;

/// Entries per page of [`DcSession::find_entries`] (explicit: Samba enforces no MaxPageSize).
pub const FIND_PAGE_SIZE: i32 = 500;
/// Values per `member;range=` window when [`DcSession::find_entries`] completes `member`.
pub const MEMBER_RANGE_SIZE: usize = 1000;
/// Pages per search before giving up (500 million entries at 500 per page).
const MAX_PAGES: usize = 1_000_000;

pub const PAGED_RESULTS_OID: &str = "1.2.840.113556.1.4.319";
/// LDAP_SERVER_POLICY_HINTS_OID: a password set enforces the history as a user's own change does.
pub const POLICY_HINTS_OID: &str = "1.2.840.113556.1.4.2239";
/// LDAP_SERVER_POLICY_HINTS_DEPRECATED_OID: the same, for DCs older than Windows 2012.
pub const POLICY_HINTS_DEPRECATED_OID: &str = "1.2.840.113556.1.4.2066";
/// `PolicyHintsRequestValue ::= SEQUENCE { Flags INTEGER }` with Flags = 1 (enforce).
const POLICY_HINTS_ENFORCE: [u8; 5] = [0x30, 0x03, 0x02, 0x01, 0x01];

/// Binary attributes never turned into strings, even when their bytes happen to be valid UTF-8.
const BINARY_ATTRIBUTES: [&str; 16] = [
    "ntsecuritydescriptor",
    "usercertificate",
    "usersmimecertificate",
    "cacertificate",
    "thumbnailphoto",
    "jpegphoto",
    "logonhours",
    "sidhistory",
    "tokengroups",
    "ms-ds-consistencyguid",
    "msexchmailboxguid",
    "invocationid",
    "parentguid",
    "msds-generationid",
    "unicodepwd",
    "dbcspwd",
];

/// One directory entry as [`DcSession::find_entries`] returns it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdEntry {
    pub dn: String,
    /// From the binary `objectGUID` (always requested); `None` only if the DC sent none or a bad one.
    pub guid: Option<ObjectGuid>,
    /// Requested attributes with UTF-8 values, by lower-case name. `objectSid` is given in its
    /// `S-1-5-21-…` form; other binary attributes, and attributes with a value that is not UTF-8, are
    /// left out. `objectGUID` is in [`AdEntry::guid`]; with `members`, `member` is in [`AdEntry::members`].
    pub attrs: BTreeMap<String, Vec<String>>,
    /// The complete `member` list (ranged reads) when `find_entries` was called with `members`;
    /// empty otherwise, and for entries without members.
    pub members: Vec<String>,
}

impl AdEntry {
    /// All values of `attr` (any case); empty when absent.
    pub fn values(&self, attr: &str) -> &[String] {
        self.attrs
            .get(&attr.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The first non-empty value of `attr` (any case).
    pub fn first(&self, attr: &str) -> Option<&str> {
        self.values(attr)
            .first()
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn int(&self, attr: &str) -> Option<i64> {
        self.first(attr).and_then(|v| v.trim().parse().ok())
    }

    /// `userAccountControl` (also accepted in its signed 32-bit form).
    pub fn uac(&self) -> Option<u32> {
        let v = self.int("userAccountControl")?;
        u32::try_from(v)
            .ok()
            .or_else(|| i32::try_from(v).ok().map(|s| s as u32))
    }

    /// `pwdLastSet`, the raw FILETIME (100 ns since 1601; 0 = must change at next logon).
    pub fn pwd_last_set(&self) -> Option<i64> {
        self.int("pwdLastSet")
    }

    /// `adminCount=1` (protected by SDProp on Windows) or `isCriticalSystemObject=TRUE`: objects the
    /// agent must never write. Only meaningful when both attributes were requested.
    pub fn is_privileged(&self) -> bool {
        self.int("adminCount") == Some(1)
            || self
                .first("isCriticalSystemObject")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("TRUE"))
    }

    /// Whether `objectClass` (requested) contains `class`, case-insensitively.
    pub fn has_class(&self, class: &str) -> bool {
        self.values("objectClass")
            .iter()
            .any(|c| c.eq_ignore_ascii_case(class))
    }
}

/// How far below the base a search looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindScope {
    /// The base object only; a base that does not exist gives no entry (not an error).
    Base,
    /// The base and everything below it; a base that does not exist is an error (`noSuchObject`).
    Subtree,
}

/// `objectSid` in its string form (`S-1-5-21-…`); `None` when the bytes are not a well-formed SID.
pub fn sid_string(sid: &[u8]) -> Option<String> {
    let (&revision, rest) = sid.split_first()?;
    let (&count, rest) = rest.split_first()?;
    if revision != 1 || sid.len() != 8 + 4 * usize::from(count) {
        return None;
    }
    let authority = rest
        .get(..6)?
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let mut out = format!("S-1-{authority}");
    for sub in rest.get(6..)?.chunks_exact(4) {
        let bytes: [u8; 4] = sub.try_into().ok()?;
        out.push_str(&format!("-{}", u32::from_le_bytes(bytes)));
    }
    Some(out)
}

/// The cookie of a paged-results response control (`SEQUENCE { size INTEGER, cookie OCTET STRING }`);
/// `None` for another control or undecodable BER (ldap3's own parser panics on that).
pub fn paged_cookie(control: &RawControl) -> Option<Vec<u8>> {
    use ldap3::asn1::{parse_tag, TagClass, Types, PL};
    if control.ctype != PAGED_RESULTS_OID {
        return None;
    }
    let (_, tag) = parse_tag(control.val.as_deref()?).ok()?;
    if tag.class != TagClass::Universal || tag.id != Types::Sequence as u64 {
        return None;
    }
    let PL::C(items) = tag.payload else {
        return None;
    };
    let [size, cookie] = items.as_slice() else {
        return None;
    };
    if size.id != Types::Integer as u64 || !matches!(size.payload, PL::P(_)) {
        return None;
    }
    match &cookie.payload {
        PL::P(bytes) if cookie.id == Types::OctetString as u64 => Some(bytes.clone()),
        _ => None,
    }
}

/// The policy-hints request control (flags 1: enforce the password history), non-critical.
pub fn policy_hints_control(oid: &str) -> RawControl {
    RawControl {
        ctype: oid.to_owned(),
        crit: false,
        val: Some(POLICY_HINTS_ENFORCE.to_vec()),
    }
}

/// `unicodePwd`'s value: the password in double quotes, UTF-16LE.
pub fn quoted_utf16(password: &Secret) -> zeroize::Zeroizing<Vec<u8>> {
    let mut bytes = Vec::with_capacity(2 * password.expose().len() + 4);
    for unit in "\""
        .encode_utf16()
        .chain(password.expose().encode_utf16())
        .chain("\"".encode_utf16())
    {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    zeroize::Zeroizing::new(bytes)
}

/// Member adds or removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberOp {
    Add,
    Remove,
}

/// A chunk that failed with this is retried value by value: the failure may be one value that is
/// already present / already absent (or, for 32 and 53, one value that names no object: retrying
/// one by one tells which).
pub fn retry_one_by_one(op: MemberOp, e: &DirectoryError) -> bool {
    matches!(
        (op, e),
        (
            MemberOp::Add,
            DirectoryError::Refused {
                rc: 20 | 68 | 32,
                ..
            }
        ) | (
            MemberOp::Remove,
            DirectoryError::Refused {
                rc: 16 | 53 | 32,
                ..
            }
        )
    )
}

/// Whether a single-value member change failed only because it is already in effect: present on add
/// (20, or 68 as Samba and Windows answer), absent on remove (16, or 53 with Samba's "already
/// deleted" / Windows' `00000561` ERROR_MEMBER_NOT_IN_GROUP). A 53 for a DN that names no object
/// (`00002035: Unable to find GUID for DN`) is *not*: a stale DN of a renamed member leaves it in.
pub fn already_in_effect(op: MemberOp, e: &DirectoryError) -> bool {
    let DirectoryError::Refused { rc, text, .. } = e else {
        return false;
    };
    match op {
        MemberOp::Add => matches!(rc, 20 | 68),
        MemberOp::Remove => {
            *rc == 16
                || (*rc == 53
                    && (text.to_ascii_lowercase().contains("already deleted")
                        || text.starts_with("00000561")))
        }
    }
}

/// The same modification, borrowing its bytes.
fn borrowed_mod(m: &Mod<Vec<u8>>) -> Mod<&[u8]> {
    fn set(values: &HashSet<Vec<u8>>) -> HashSet<&[u8]> {
        values.iter().map(Vec::as_slice).collect()
    }
    match m {
        Mod::Add(name, values) => Mod::Add(name.as_slice(), set(values)),
        Mod::Delete(name, values) => Mod::Delete(name.as_slice(), set(values)),
        Mod::Replace(name, values) => Mod::Replace(name.as_slice(), set(values)),
        Mod::Increment(name, by) => Mod::Increment(name.as_slice(), by.as_slice()),
    }
}

/// Names the member value in a refusal of a single-value change (the server's text may not).
fn naming_member(e: DirectoryError, value: &str) -> DirectoryError {
    match e {
        DirectoryError::Refused {
            url,
            operation,
            target,
            rc,
            name,
            text,
            hint,
        } => DirectoryError::Refused {
            url,
            operation,
            target: format!("{target} (member value {value})"),
            rc,
            name,
            text,
            hint,
        },
        other => other,
    }
}

impl DcSession {
    /// Paged search (pages of [`FIND_PAGE_SIZE`]) returning whole entries. `objectGUID` is always
    /// requested and parsed from its binary value; an empty `attrs` asks for all user attributes.
    /// With `members`, each entry's `member` is read completely (a first window with the search,
    /// then explicit ranged reads, [`MEMBER_RANGE_SIZE`] values each) into [`AdEntry::members`]; a
    /// group deleted between the search and its ranged read is left out. Attributes whose values are
    /// not UTF-8 are skipped, the entry still returned. Continuation references are skipped.
    pub async fn find_entries(
        &mut self,
        base: &str,
        scope: FindScope,
        filter: &str,
        attrs: &[&str],
        members: bool,
    ) -> Result<Vec<AdEntry>, DirectoryError> {
        let mut request: Vec<String> = vec!["objectGUID".to_owned()];
        if attrs.is_empty() {
            request.push("*".to_owned());
        }
        let mut seen: HashSet<String> = HashSet::from(["objectguid".to_owned()]);
        for attr in attrs.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            let lower = attr.to_ascii_lowercase();
            if members && parse_attr_desc(&lower).0 == "member" {
                continue;
            }
            if seen.insert(lower) {
                request.push(attr.to_owned());
            }
        }
        if members {
            request.push(format!("member;range=0-{}", MEMBER_RANGE_SIZE - 1));
        }
        let ldap_scope = match scope {
            FindScope::Base => Scope::Base,
            FindScope::Subtree => Scope::Subtree,
        };

        let mut raw = Vec::new();
        let mut cookie: Vec<u8> = Vec::new();
        let mut pages = 0usize;
        loop {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(malformed(
                    self,
                    format!("paged search of {base} did not end after {MAX_PAGES} pages"),
                ));
            }
            let paging: RawControl = PagedResults {
                size: FIND_PAGE_SIZE,
                cookie: cookie.clone(),
            }
            .into();
            let answer = raw_search(
                self,
                base,
                ldap_scope,
                filter,
                &request,
                vec![paging],
                "search",
            )
            .await;
            let (entries, controls) = match answer {
                Err(DirectoryError::Refused { rc: 32, .. }) if scope == FindScope::Base => {
                    return Ok(Vec::new())
                }
                other => other?,
            };
            let returned = entries.len();
            raw.extend(entries);
            // No paging control in the answer: the server sent everything at once.
            match controls.iter().find_map(|c| paged_cookie(&c.1)) {
                None => break,
                Some(next) if next.is_empty() => break,
                Some(next) => {
                    if returned == 0 && next == cookie {
                        return Err(malformed(
                            self,
                            format!("paged search of {base} returned no entry and the same cookie"),
                        ));
                    }
                    cookie = next;
                }
            }
        }

        let mut out = Vec::with_capacity(raw.len());
        let mut unfinished = Vec::new();
        for entry in raw {
            let (windows, rest) = if members {
                split_member_windows(entry.attrs)
            } else {
                (Vec::new(), entry.attrs)
            };
            let mut found = AdEntry {
                dn: entry.dn,
                ..AdEntry::default()
            };
            for (desc, values) in rest {
                absorb_attribute(&mut found, &desc, values);
            }
            if members {
                let mut list = Vec::new();
                match absorb_member_window(self, &found.dn, 0, windows, &mut list)? {
                    RangeStep::Done => found.members = list,
                    RangeStep::Next(low) => unfinished.push((out.len(), low, list)),
                }
            }
            out.push(found);
        }
        let mut gone = Vec::new();
        for (index, low, list) in unfinished {
            let target = out[index]
                .guid
                .map(|g| guid_dn(&g))
                .unwrap_or_else(|| out[index].dn.clone());
            match continue_members(self, &target, MEMBER_RANGE_SIZE, low, list).await {
                Ok(all) => out[index].members = all,
                Err(DirectoryError::Refused { rc: 32, .. }) => {
                    tracing::warn!(dn = %out[index].dn, "group gone before its members could be read; left out");
                    gone.push(index);
                }
                Err(e) => return Err(e),
            }
        }
        if !gone.is_empty() {
            let mut index = 0usize;
            out.retain(|_| {
                let keep = !gone.contains(&index);
                index += 1;
                keep
            });
        }
        Ok(out)
    }

    /// Admin reset of `unicodePwd` (one replace, the quoted UTF-16LE value). With `enforce_history`
    /// the LDAP_SERVER_POLICY_HINTS control (non-critical, flags 1) asks the DC to apply the password
    /// history as for a user's own change. **Samba 4.17 does not know it** (see the module docs) and
    /// resets without a history check; a critical control would make it refuse every reset. A rejected password is `Refused` with rc 19 and
    /// the DC's reason in [`DirectoryError::ad_reason`] (`BadInput`). The password is never logged.
    pub async fn set_password(
        &mut self,
        dn: &str,
        password: &Secret,
        enforce_history: bool,
    ) -> Result<(), DirectoryError> {
        self.set_password_and(dn, password, enforce_history, &[])
            .await
    }

    /// [`DcSession::set_password`] with `also` applied in the same LDAP modify: the password and
    /// these changes are written together or not at all.
    pub async fn set_password_and(
        &mut self,
        dn: &str,
        password: &Secret,
        enforce_history: bool,
        also: &[Mod<Vec<u8>>],
    ) -> Result<(), DirectoryError> {
        let value = quoted_utf16(password);
        // Non-critical: Windows (2012 R2 and later) then enforces history and minimum age as for the
        // user's own change; Samba 4.17 knows neither OID and would refuse a critical control
        // (unavailableCriticalExtension, nothing written), so there the reset goes through without
        // a history check — measured in tests/it/ad_writes.rs.
        let hints = enforce_history.then_some(POLICY_HINTS_OID);
        self.password_replace(dn, &value, also, hints).await
    }

    async fn password_replace(
        &mut self,
        dn: &str,
        value: &[u8],
        also: &[Mod<Vec<u8>>],
        hints: Option<&str>,
    ) -> Result<(), DirectoryError> {
        let mut mods = vec![Mod::Replace(&b"unicodePwd"[..], HashSet::from([value]))];
        mods.extend(also.iter().map(borrowed_mod));
        let controls = hints.map(policy_hints_control).into_iter().collect();
        self.modify_with(PASSWORD_RESET, dn, mods, controls).await
    }

    /// Adds and removes `member` values in modifies of at most `chunk` values each (removes first).
    /// A chunk refused because a value is already present / already absent (or names no object) is
    /// retried value by value, tolerating exactly "already present" on add and "already absent" on
    /// remove ([`already_in_effect`]); any other refusal of a single value is returned with that
    /// value named in its target. Earlier chunks stay applied when a later one fails.
    pub async fn change_members(
        &mut self,
        group_dn: &str,
        add: &[String],
        remove: &[String],
        chunk: usize,
    ) -> Result<(), DirectoryError> {
        let chunk = chunk.max(1);
        for part in remove.chunks(chunk) {
            self.member_chunk(group_dn, MemberOp::Remove, part).await?;
        }
        for part in add.chunks(chunk) {
            self.member_chunk(group_dn, MemberOp::Add, part).await?;
        }
        Ok(())
    }

    async fn member_chunk(
        &mut self,
        group_dn: &str,
        op: MemberOp,
        values: &[String],
    ) -> Result<(), DirectoryError> {
        let first = match self.member_modify(group_dn, op, values).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if values.len() == 1 {
            return if already_in_effect(op, &first) {
                tracing::debug!(group = %group_dn, member = %values[0], ?op, "member change already in effect");
                Ok(())
            } else {
                Err(naming_member(first, &values[0]))
            };
        }
        if !retry_one_by_one(op, &first) {
            return Err(first);
        }
        tracing::debug!(group = %group_dn, ?op, values = values.len(), error = %first, "member chunk refused; retrying value by value");
        let mut skipped = 0usize;
        for value in values {
            match self
                .member_modify(group_dn, op, std::slice::from_ref(value))
                .await
            {
                Ok(()) => {}
                Err(e) if already_in_effect(op, &e) => skipped += 1,
                Err(e) => return Err(naming_member(e, value)),
            }
        }
        tracing::debug!(group = %group_dn, ?op, skipped, "member values already in effect");
        Ok(())
    }

    async fn member_modify(
        &mut self,
        group_dn: &str,
        op: MemberOp,
        values: &[String],
    ) -> Result<(), DirectoryError> {
        let set: HashSet<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        let m = match op {
            MemberOp::Add => Mod::Add(&b"member"[..], set),
            MemberOp::Remove => Mod::Delete(&b"member"[..], set),
        };
        self.modify_with(MEMBER_CHANGE, group_dn, vec![m], Vec::new())
            .await
    }

    /// One modify with optional request controls, under the operation timeout.
    async fn modify_with(
        &mut self,
        operation: &'static str,
        dn: &str,
        mods: Vec<Mod<&[u8]>>,
        controls: Vec<RawControl>,
    ) -> Result<(), DirectoryError> {
        let url = self.endpoint.url.clone();
        let ldap = self.ldap.with_timeout(self.timeouts.operation);
        if !controls.is_empty() {
            ldap.with_controls(controls);
        }
        let res = ldap
            .modify(dn, mods)
            .await
            .map_err(|e| DirectoryError::from_ldap(&url, operation, e))?;
        self.expect_success(operation, dn, res)
    }
}

/// Files one attribute of a search answer into `entry` (see [`AdEntry::attrs`]).
fn absorb_attribute(entry: &mut AdEntry, desc: &str, values: Vec<Vec<u8>>) {
    let (name, range) = parse_attr_desc(desc);
    if name == "objectguid" {
        match values.first().map(|v| ObjectGuid::from_bytes(v)) {
            Some(Ok(guid)) => entry.guid = Some(guid),
            Some(Err(e)) => {
                tracing::warn!(dn = %entry.dn, error = %e, "unusable objectGUID ignored")
            }
            None => {}
        }
        return;
    }
    if range != RangeOption::Absent {
        // Only `member` is completed by ranged reads (and only when asked); a partial window of any
        // attribute is never filed under its plain name.
        tracing::warn!(dn = %entry.dn, attribute = %desc, "ranged attribute window skipped");
        return;
    }
    if name == "objectsid" {
        let sids: Option<Vec<String>> = values.iter().map(|v| sid_string(v)).collect();
        match sids {
            Some(sids) => {
                entry.attrs.entry(name).or_default().extend(sids);
            }
            None => tracing::warn!(dn = %entry.dn, "objectSid is not a well-formed SID; skipped"),
        }
        return;
    }
    if BINARY_ATTRIBUTES.contains(&name.as_str()) {
        tracing::debug!(dn = %entry.dn, attribute = %desc, "binary attribute skipped");
        return;
    }
    match values
        .into_iter()
        .map(String::from_utf8)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(v) => entry.attrs.entry(name).or_default().extend(v),
        Err(_) => {
            tracing::debug!(dn = %entry.dn, attribute = %desc, "attribute with a non-UTF-8 value skipped")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(attrs: &[(&str, &[&str])]) -> AdEntry {
        AdEntry {
            dn: "CN=x,DC=y".into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            ..AdEntry::default()
        }
    }

    #[test]
    fn entry_helpers_read_lower_case_attributes_by_any_case() {
        let e = entry(&[
            ("useraccountcontrol", &["514"]),
            ("pwdlastset", &["134401497493899360"]),
            (
                "objectclass",
                &["top", "person", "organizationalPerson", "user"],
            ),
            ("mail", &[""]),
            ("givenname", &["Ada"]),
        ]);
        assert_eq!(e.uac(), Some(514));
        assert_eq!(e.pwd_last_set(), Some(134_401_497_493_899_360));
        assert!(e.has_class("User") && e.has_class("person") && !e.has_class("group"));
        assert_eq!(e.first("givenName"), Some("Ada"));
        assert_eq!(e.first("mail"), None, "empty values count as absent");
        assert_eq!(e.first("sn"), None);
        assert!(!e.is_privileged());
        assert!(entry(&[("admincount", &["1"])]).is_privileged());
        assert!(!entry(&[("admincount", &["0"])]).is_privileged());
        assert!(entry(&[("iscriticalsystemobject", &["TRUE"])]).is_privileged());
        assert!(!entry(&[("iscriticalsystemobject", &["FALSE"])]).is_privileged());
        assert_eq!(
            entry(&[("useraccountcontrol", &["-2147483136"])]).uac(),
            Some(0x8000_0200)
        );
        assert_eq!(entry(&[("useraccountcontrol", &["x"])]).uac(), None);
    }

    #[test]
    fn attributes_are_filed_as_strings_except_binary_ones() {
        let mut e = AdEntry::default();
        let guid = b"0123456789abcdef".to_vec();
        absorb_attribute(&mut e, "objectGUID", vec![guid.clone()]);
        assert_eq!(e.guid, Some(ObjectGuid::from_bytes(&guid).unwrap()));
        let mut sid = vec![1u8, 5, 0, 0, 0, 0, 0, 5];
        for sub in [21u32, 2_927_008_512, 1_413_978_361, 1_388_879_005, 1105] {
            sid.extend(sub.to_le_bytes());
        }
        absorb_attribute(&mut e, "objectSid", vec![sid]);
        assert_eq!(
            e.attrs["objectsid"],
            vec!["S-1-5-21-2927008512-1413978361-1388879005-1105"]
        );
        absorb_attribute(&mut e, "displayName", vec![b"Ada L".to_vec()]);
        absorb_attribute(
            &mut e,
            "description",
            vec![b"ok".to_vec(), vec![0xff, 0xfe]],
        );
        absorb_attribute(&mut e, "thumbnailPhoto", vec![b"looks like text".to_vec()]);
        absorb_attribute(&mut e, "member;range=0-1", vec![b"CN=a".to_vec()]);
        assert_eq!(e.attrs["displayname"], vec!["Ada L"]);
        assert!(!e.attrs.contains_key("description"), "non-UTF-8: skipped");
        assert!(!e.attrs.contains_key("thumbnailphoto"));
        assert!(!e.attrs.contains_key("member"));
        assert!(!e.attrs.contains_key("objectguid"));
        absorb_attribute(&mut e, "objectSid", vec![vec![1, 2, 3]]);
        absorb_attribute(&mut e, "objectGUID", vec![vec![1, 2, 3]]);
        assert_eq!(e.attrs["objectsid"].len(), 1, "a bad SID is skipped");
        assert!(e.guid.is_some(), "a bad GUID does not replace a good one");
    }

    #[test]
    fn sids_format_and_malformed_ones_are_rejected() {
        assert_eq!(
            sid_string(&[1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0]).as_deref(),
            Some("S-1-5-18")
        );
        assert_eq!(
            sid_string(&[1, 0, 0, 0, 0, 0, 0, 1]).as_deref(),
            Some("S-1-1")
        );
        assert_eq!(sid_string(&[1, 1, 0, 0, 0, 0, 0, 5, 18]), None);
        assert_eq!(sid_string(&[2, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(sid_string(&[]), None);
    }

    #[test]
    fn paged_cookies_parse_without_panicking_on_bad_ber() {
        let ok = RawControl {
            ctype: PAGED_RESULTS_OID.into(),
            crit: false,
            val: Some(vec![0x30, 0x07, 0x02, 0x01, 0x00, 0x04, 0x02, 0xaa, 0xbb]),
        };
        assert_eq!(paged_cookie(&ok), Some(vec![0xaa, 0xbb]));
        let last = RawControl {
            val: Some(vec![0x30, 0x05, 0x02, 0x01, 0x00, 0x04, 0x00]),
            ..ok.clone()
        };
        assert_eq!(paged_cookie(&last), Some(vec![]));
        for bad in [
            vec![],
            vec![0x30],
            vec![0x30, 0x03, 0x02, 0x01, 0x00],
            vec![0x04, 0x00],
            vec![0x30, 0x05, 0x04, 0x01, 0x00, 0x04, 0x00],
        ] {
            let c = RawControl {
                val: Some(bad),
                ..ok.clone()
            };
            assert_eq!(paged_cookie(&c), None);
        }
        let other = RawControl {
            ctype: "1.2.3".into(),
            ..ok
        };
        assert_eq!(paged_cookie(&other), None);
    }

    #[test]
    fn policy_hints_and_password_values_are_encoded_as_ad_wants() {
        let c = policy_hints_control(POLICY_HINTS_OID);
        assert_eq!(c.ctype, "1.2.840.113556.1.4.2239");
        assert!(
            !c.crit,
            "non-critical: a DC that does not know it (Samba) still resets"
        );
        assert_eq!(c.val.as_deref(), Some(&[0x30, 0x03, 0x02, 0x01, 0x01][..]));
        let v = quoted_utf16(&Secret::new("Aé1"));
        assert_eq!(
            v.as_slice(),
            &[0x22, 0, b'A', 0, 0xe9, 0, b'1', 0, 0x22, 0][..]
        );
    }

    fn refused(rc: u32, text: &str) -> DirectoryError {
        DirectoryError::from_result("ldaps://dc", MEMBER_CHANGE, "CN=g", rc, text)
    }

    #[test]
    fn member_refusals_are_tolerated_exactly_when_already_in_effect() {
        let exists = refused(
            68,
            "Attribute member already exists for target GUID 0bc4df96-14c8-4e80-91b0-8fefaced1f84",
        );
        let deleted = refused(
            53,
            "Attribute member already deleted for target GUID 0bc4df96-14c8-4e80-91b0-8fefaced1f84",
        );
        let windows_absent = refused(
            53,
            "00000561: SvcErr: DSID-031A1021, problem 5003 (WILL_NOT_PERFORM), data 0",
        );
        let stale = refused(
            53,
            "00002035: Unable to find GUID for DN CN=x,OU=ForestSync,DC=alpha,DC=test",
        );
        let missing = refused(32, "00000525: specified dn doesn't exist");
        assert!(already_in_effect(MemberOp::Add, &exists));
        assert!(already_in_effect(MemberOp::Add, &refused(20, "")));
        assert!(!already_in_effect(MemberOp::Add, &missing));
        assert!(!already_in_effect(MemberOp::Add, &deleted));
        assert!(already_in_effect(MemberOp::Remove, &deleted));
        assert!(already_in_effect(MemberOp::Remove, &windows_absent));
        assert!(already_in_effect(MemberOp::Remove, &refused(16, "")));
        assert!(!already_in_effect(MemberOp::Remove, &stale));
        assert!(!already_in_effect(MemberOp::Remove, &exists));
        assert!(retry_one_by_one(MemberOp::Add, &exists));
        assert!(retry_one_by_one(MemberOp::Add, &missing));
        assert!(retry_one_by_one(MemberOp::Remove, &stale));
        assert!(!retry_one_by_one(MemberOp::Add, &refused(50, "")));
        assert!(!retry_one_by_one(MemberOp::Remove, &refused(51, "")));
        let named = naming_member(stale, "CN=x,OU=ForestSync,DC=alpha,DC=test");
        assert!(
            named
                .to_string()
                .contains("CN=g (member value CN=x,OU=ForestSync,DC=alpha,DC=test)"),
            "{named}"
        );
    }
}

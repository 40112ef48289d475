//! Reading users and groups: DirSync rounds with INCREMENTAL_VALUES ([`changes_since`]), explicit
//! ranged reads of `member` ([`read_members`]), the DC's `invocationId` ([`invocation_id`]) and the
//! full read that combines them ([`full_read`]).
//!
//! Entries are decoded here from the raw BER, never with `SearchEntry::construct`: that panics on
//! malformed data, and files a binary value that happens to be valid UTF-8 (an objectGUID can be)
//! under the string attributes. Odd data is skipped and logged, never a panic.
//!
//! # What Samba 4.17 returns (verified on the lab, DirSync with INCREMENTAL_VALUES, filter [`CHANGE_FILTER`])
//!
//! Every entry carries `objectGUID` and `instanceType`, most also `parentGUID` (both unrequested
//! extras are dropped here). Only changed, *requested* attributes come back; never `objectClass` on
//! a change, so the kind of a changed object is looked up by GUID (one OR-filter search per 100).
//!
//! - **Full read (empty cookie):** every matching user and group with every requested attribute it
//!   has (`objectClass`, `objectSid`, `name` …). A group's members come as `member;range=1-1` (all
//!   reported as "added", never plain `member`); a group without members has no `member` at all.
//!   `moreResults` is 0 and max-bytes is ignored: one round, a 108-byte cookie.
//! - **Member add:** the group only: `member;range=1-1: <added DN>`. Nothing for the user
//!   (`memberOf` is a back link).
//! - **Member remove:** the group only: `member;range=0-0: <removed DN>`.
//! - **Rename (modrdn) of a user:** the user with its new DN, the same objectGUID, `parentGUID` and
//!   `name` (the new RDN value). Groups it is a member of are **not** reported, although their
//!   `member` value now reads the new DN: resolve member DNs through the renamed object's GUID.
//! - **Move between OUs:** the same: new DN, same objectGUID, `parentGUID` of the new parent, and
//!   `name` (unchanged value).
//! - **Delete:** only readers that may read `CN=Deleted Objects` see it. As Administrator: the
//!   tombstone, DN `CN=<name>\0ADEL:<guid>,CN=Deleted Objects,<domain>`, `isDeleted: TRUE`, the same
//!   objectGUID, `name`, `parentGUID`; no `objectClass`. The groups the object was in are **not**
//!   reported (the link removal never shows): drop a deleted object's memberships locally.
//!   **A service account with only Replicating Directory Changes sees nothing at all**: Samba's
//!   DirSync stays subject to the read ACL of `CN=Deleted Objects`. The service account therefore
//!   also needs List Contents + Read Property on that container (the lab grants it; on Windows
//!   `dsacls … /G svc:LCRP /I:T`; inherited, or Samba hides tombstones that replicated in from another
//!   DC), and `forestsync check` reports when it is missing.
//! - **`description` changed while not requested:** nothing (the object does not appear).
//! - **Disable (userAccountControl 544 → 546):** the user with `userAccountControl: 546` only.
//! - **Cookies:** a cookie taken on ALPHA DC1 works on DC2 (it carries an up-to-dateness vector):
//!   DC2 returned just the changed group, no resend. A cookie Samba cannot parse is refused with
//!   `unavailableCriticalExtension` (12), "Unable to unmarshall cookie" (`DirectoryError::Refused`
//!   with `rc: 12`): the domain actor treats it as "cookie rejected" and reads the domain in full.
//!
//! Range retrieval on Samba: a window that reaches the last value is labelled `low-*` (3 values,
//! `member;range=0-2` → `member;range=0-*`); a window starting past the end returns no attribute;
//! the option is matched case-sensitively (`Member;Range=0-1` is ignored and the whole plain
//! `member` comes back), so requests always use lower case. `<GUID=…>` works as a base DN.

use std::collections::{BTreeMap, HashMap, HashSet};

use ldap3::asn1::{StructureTag, PL};
use ldap3::controls::{Control, RawControl};
use ldap3::{Scope, SearchEntry};

use super::dirsync::{DirSyncRequest, DirSyncResponse, INCREMENTAL_VALUES};
use super::{DcSession, DirectoryError};
use crate::model::{DirChange, MemberDelta, ObjectGuid, ObjectKind, RawObject};

/// Entries skipped because their data was unusable (undecodable BER, no or a malformed
/// objectGUID), since the process started: each is also logged with its DN. The rest of the batch
/// goes on.
static UNREADABLE_ENTRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many entries were skipped as unusable since the process started.
pub fn unreadable_entries() -> u64 {
    UNREADABLE_ENTRIES.load(std::sync::atomic::Ordering::Relaxed)
}

fn count_unreadable() {
    UNREADABLE_ENTRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Attributes every read requests (the model's vocabulary); [`ReadSpec::extra_attrs`] adds to them.
pub const BASE_ATTRIBUTES: [&str; 18] = [
    "objectGUID",
    "objectSid",
    "objectClass",
    "sAMAccountName",
    "userPrincipalName",
    "givenName",
    "sn",
    "mail",
    "displayName",
    "userAccountControl",
    "adminCount",
    "primaryGroupID",
    "pwdLastSet",
    "groupType",
    "member",
    "isDeleted",
    "name",
    // forestsync's JumpCloud marker: objects created from JumpCloud are never imported back.
    "adminDescription",
];

/// Users (not computers, which are users too) and groups. On `objectClass`, not `objectCategory`:
/// tombstones lose `objectCategory`, so a filter on it would never match a deletion.
pub const CHANGE_FILTER: &str =
    "(|(&(objectClass=user)(!(objectClass=computer)))(objectClass=group))";

/// DirSync rounds per call before giving up (a server that keeps saying "more" is broken; Samba
/// never says it, Windows needs a round per max-bytes worth of objects).
pub const MAX_DIRSYNC_ROUNDS: usize = 10_000;

/// Requested bytes per DirSync round (the .NET default; Windows caps it, Samba ignores it).
const DIRSYNC_MAX_BYTES: i32 = 1_048_576;

/// Ranged windows per group before giving up (2^31 members at range size 1 000 is far beyond AD).
const MAX_RANGE_ROUNDS: usize = 5_000_000;

/// GUIDs per object-class lookup (one OR filter).
const KIND_LOOKUP_BATCH: usize = 100;

/// Show Deleted: the object-class lookup also finds an object deleted since the DirSync round.
const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";

/// What to read and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadSpec {
    /// The naming context root (DirSync works only there, subtree scope).
    pub base_dn: String,
    /// Mapped attributes beyond [`BASE_ATTRIBUTES`] (`title`, `department` …). DirSync reports a
    /// change only for requested attributes, so every mapped attribute must be here.
    pub extra_attrs: Vec<String>,
    /// Page size for paged searches (entries per page). DirSync itself cannot be paged (it has its
    /// own max-bytes rounds), so the reads in this module do not use it.
    pub page_size: i32,
    /// Values per `member;range=` window in [`read_members`].
    pub range_size: usize,
}

impl ReadSpec {
    pub fn new(base_dn: impl Into<String>) -> Self {
        ReadSpec {
            base_dn: base_dn.into(),
            extra_attrs: Vec::new(),
            page_size: 500,
            range_size: 1000,
        }
    }

    /// The attribute list sent: [`BASE_ATTRIBUTES`] then `extra_attrs`, lower-case, without duplicates.
    pub fn attributes(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        BASE_ATTRIBUTES
            .iter()
            .map(|a| a.to_ascii_lowercase())
            .chain(
                self.extra_attrs
                    .iter()
                    .map(|a| a.trim().to_ascii_lowercase()),
            )
            .filter(|a| !a.is_empty() && seen.insert(a.clone()))
            .collect()
    }
}

/// The RID of a binary objectSid: its last sub-authority (little-endian u32). `None` when the bytes
/// are not a well-formed SID (revision 1, sub-authority count matching the length, at least one).
pub fn sid_rid(sid: &[u8]) -> Option<u32> {
    let (&revision, rest) = sid.split_first()?;
    let (&count, _) = rest.split_first()?;
    if revision != 1 || count == 0 || sid.len() != 8 + 4 * usize::from(count) {
        return None;
    }
    let last: [u8; 4] = sid[sid.len() - 4..].try_into().ok()?;
    Some(u32::from_le_bytes(last))
}

/// The `range=` option of an attribute description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeOption {
    /// No `range=` option: the attribute's complete value list.
    Absent,
    /// `range=low-high`; `high` is `None` for `*` (the last window).
    Range { low: u64, high: Option<u64> },
    /// A `range=` option that does not parse.
    Malformed,
}

/// Splits an attribute description (`Member;Range=0-999`) into its lower-case base name and its
/// range option. Option names are case-insensitive; other options (`;binary`) are ignored.
pub fn parse_attr_desc(desc: &str) -> (String, RangeOption) {
    let mut parts = desc.split(';');
    let base = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut range = RangeOption::Absent;
    for option in parts {
        let option = option.trim();
        let Some(spec) = option
            .get(..6)
            .filter(|p| p.eq_ignore_ascii_case("range="))
            .map(|_| &option[6..])
        else {
            continue;
        };
        range = match spec.split_once('-') {
            Some((low, high)) => match (low.parse::<u64>(), high) {
                (Ok(low), "*") => RangeOption::Range { low, high: None },
                (Ok(low), high) => match high.parse::<u64>() {
                    Ok(high) if high >= low => RangeOption::Range {
                        low,
                        high: Some(high),
                    },
                    _ => RangeOption::Malformed,
                },
                _ => RangeOption::Malformed,
            },
            None => RangeOption::Malformed,
        };
    }
    (base, range)
}

/// One search result entry, decoded without trusting the server: DN and (description, values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawEntry {
    pub dn: String,
    pub attrs: Vec<(String, Vec<Vec<u8>>)>,
}

impl RawEntry {
    /// Values of the attribute named exactly `name` (no options), case-insensitively.
    fn values(&self, name: &str) -> Option<&[Vec<u8>]> {
        self.attrs
            .iter()
            .find(|(desc, _)| desc.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn first(&self, name: &str) -> Option<&[u8]> {
        self.values(name).and_then(|v| v.first()).map(Vec::as_slice)
    }
}

/// Decodes a SearchResultEntry (`[APPLICATION 4] SEQUENCE { objectName, attributes }`) as the DC sent
/// it; an error (never a panic) for anything else. Public for the fuzz targets (tests/fuzz).
pub fn decode_entry(tag: StructureTag) -> Result<RawEntry, &'static str> {
    if tag.id != 4 {
        return Err("not a search result entry");
    }
    let PL::C(items) = tag.payload else {
        return Err("entry is not constructed");
    };
    let mut items = items.into_iter();
    let dn = match items.next().map(|t| t.payload) {
        Some(PL::P(bytes)) => String::from_utf8(bytes).map_err(|_| "DN is not UTF-8")?,
        _ => return Err("entry has no DN"),
    };
    let list = match items.next().map(|t| t.payload) {
        Some(PL::C(list)) => list,
        Some(PL::P(bytes)) if bytes.is_empty() => Vec::new(),
        _ => return Err("entry has no attribute list"),
    };
    let mut attrs = Vec::with_capacity(list.len());
    for attr in list {
        let PL::C(parts) = attr.payload else {
            return Err("attribute is not constructed");
        };
        let mut parts = parts.into_iter();
        let desc = match parts.next().map(|t| t.payload) {
            Some(PL::P(bytes)) => {
                String::from_utf8(bytes).map_err(|_| "attribute name is not UTF-8")?
            }
            _ => return Err("attribute has no name"),
        };
        let values = match parts.next().map(|t| t.payload) {
            Some(PL::C(values)) => values
                .into_iter()
                .map(|v| match v.payload {
                    PL::P(bytes) => Ok(bytes),
                    PL::C(_) => Err("attribute value is constructed"),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(PL::P(bytes)) if bytes.is_empty() => Vec::new(),
            _ => return Err("attribute has no value set"),
        };
        attrs.push((desc, values));
    }
    Ok(RawEntry { dn, attrs })
}

/// An entry filed as ldap3's `SearchEntry::construct` files it (an attribute with a value that is not
/// UTF-8 goes to `bin_attrs` with all its values, the others to `attrs`), but decoded with
/// [`decode_entry`]: malformed BER from the DC is an error here, where `construct` panics. An
/// attribute the DC lists twice is merged first, so it is filed in one map only (`construct` may
/// file it in both).
pub fn search_entry(tag: StructureTag) -> Result<SearchEntry, &'static str> {
    let raw = decode_entry(tag)?;
    let mut merged: Vec<(String, Vec<Vec<u8>>)> = Vec::with_capacity(raw.attrs.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    for (desc, values) in raw.attrs {
        match index.get(&desc) {
            Some(&i) => merged[i].1.extend(values),
            None => {
                index.insert(desc.clone(), merged.len());
                merged.push((desc, values));
            }
        }
    }
    let mut attrs: HashMap<String, Vec<String>> = HashMap::new();
    let mut bin_attrs: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for (desc, values) in merged {
        let texts = values
            .iter()
            .map(|v| std::str::from_utf8(v).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>();
        // Descriptions are unique after the merge: each lands in one map, once.
        match texts {
            Ok(texts) => {
                attrs.insert(desc, texts);
            }
            Err(_) => {
                bin_attrs.insert(desc, values);
            }
        }
    }
    Ok(SearchEntry {
        dn: raw.dn,
        attrs,
        bin_attrs,
    })
}

/// A search with the session's operation timeout and optional controls, entries decoded from the raw
/// BER (undecodable entries and continuation references are skipped). Returns the response controls.
pub(super) async fn raw_search(
    session: &mut DcSession,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: &[String],
    controls: Vec<RawControl>,
    what: &'static str,
) -> Result<(Vec<RawEntry>, Vec<Control>), DirectoryError> {
    let url = session.endpoint.url.clone();
    let ldap = session.ldap.with_timeout(session.timeouts.operation);
    if !controls.is_empty() {
        ldap.with_controls(controls);
    }
    let result = ldap
        .search(base, scope, filter, attrs.to_vec())
        .await
        .map_err(|e| DirectoryError::from_ldap(&url, what, e))?;
    let (entries, res) = (result.0, result.1);
    if res.rc != 0 {
        return Err(DirectoryError::from_result(
            &url, what, base, res.rc, &res.text,
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        if entry.is_ref() {
            continue;
        }
        match decode_entry(entry.0) {
            Ok(e) => out.push(e),
            Err(why) => {
                count_unreadable();
                tracing::warn!(dc = %url, operation = what, reason = why, "undecodable search entry skipped")
            }
        }
    }
    Ok((out, res.ctrls))
}

pub(super) fn malformed(session: &DcSession, detail: String) -> DirectoryError {
    DirectoryError::Malformed {
        url: session.endpoint.url.clone(),
        detail,
    }
}

/// An `Upsert` whose kind may still be unknown (DirSync omits `objectClass` on modifications).
#[derive(Debug)]
struct Partial {
    object: RawObject,
    kind: Option<ObjectKind>,
    /// The `member` values came in a form that cannot be merged: read them again, ranged.
    reread_members: bool,
}

#[derive(Debug)]
enum Slot {
    Deleted(ObjectGuid),
    Object(Partial),
}

enum KindOf {
    Known(ObjectKind),
    /// Neither user nor group, or a computer: not ours.
    Other,
    /// No `objectClass` in the entry.
    Unknown,
}

fn kind_of(entry: &RawEntry) -> KindOf {
    let Some(classes) = entry.values("objectClass") else {
        return KindOf::Unknown;
    };
    let has = |c: &str| classes.iter().any(|v| v.eq_ignore_ascii_case(c.as_bytes()));
    if has("computer") {
        KindOf::Other
    } else if has("group") {
        KindOf::Known(ObjectKind::Group)
    } else if has("user") {
        KindOf::Known(ObjectKind::User)
    } else {
        KindOf::Other
    }
}

/// Attributes that are not copied into `RawObject::attrs` (they have their own fields, or are the kind).
const STRUCTURAL: [&str; 5] = [
    "objectguid",
    "objectsid",
    "objectclass",
    "member",
    "isdeleted",
];

fn parse_entry(entry: RawEntry, requested: &HashSet<String>) -> Option<Slot> {
    let guid = match entry.first("objectGUID").map(ObjectGuid::from_bytes) {
        Some(Ok(g)) => g,
        Some(Err(e)) => {
            count_unreadable();
            tracing::warn!(dn = %entry.dn, error = %e, "entry with an unusable objectGUID skipped");
            return None;
        }
        None => {
            count_unreadable();
            tracing::warn!(dn = %entry.dn, "entry without objectGUID skipped");
            return None;
        }
    };
    if entry
        .first("isDeleted")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"TRUE"))
    {
        return Some(Slot::Deleted(guid));
    }
    let kind = match kind_of(&entry) {
        KindOf::Known(k) => Some(k),
        KindOf::Unknown => None,
        KindOf::Other => {
            tracing::debug!(dn = %entry.dn, "neither user nor group: skipped");
            return None;
        }
    };
    let rid = match entry.first("objectSid") {
        Some(sid) => {
            let rid = sid_rid(sid);
            if rid.is_none() {
                tracing::warn!(dn = %entry.dn, "objectSid is not a well-formed SID; RID left unknown");
            }
            rid
        }
        None => None,
    };
    let mut attrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut replace: Option<Vec<String>> = None;
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let mut reread_members = false;
    for (desc, values) in entry.attrs {
        let (name, range) = parse_attr_desc(&desc);
        if name == "member" {
            let Ok(dns) = values
                .into_iter()
                .map(String::from_utf8)
                .collect::<Result<Vec<_>, _>>()
            else {
                tracing::warn!(dn = %entry.dn, attribute = %desc, "member value is not UTF-8; members will be re-read");
                reread_members = true;
                continue;
            };
            match range {
                RangeOption::Absent => replace.get_or_insert_with(Vec::new).extend(dns),
                RangeOption::Range {
                    low: 1,
                    high: Some(1),
                } => added.extend(dns),
                RangeOption::Range {
                    low: 0,
                    high: Some(0),
                } => removed.extend(dns),
                _ => {
                    tracing::warn!(dn = %entry.dn, attribute = %desc, "unexpected member range in a DirSync answer; members will be re-read");
                    reread_members = true;
                }
            }
            continue;
        }
        if STRUCTURAL.contains(&name.as_str()) || !requested.contains(&name) {
            continue;
        }
        if range != RangeOption::Absent {
            tracing::warn!(dn = %entry.dn, attribute = %desc, "value-level change of a non-member attribute cannot be represented; skipped");
            continue;
        }
        match values
            .into_iter()
            .map(String::from_utf8)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(v) => attrs.entry(name).or_default().extend(v),
            Err(_) => {
                tracing::debug!(dn = %entry.dn, attribute = %desc, "binary attribute skipped")
            }
        }
    }
    let members = match replace {
        Some(all) => MemberDelta::Replace(all),
        None if !added.is_empty() || !removed.is_empty() => {
            MemberDelta::Incremental { added, removed }
        }
        None => MemberDelta::Unchanged,
    };
    Some(Slot::Object(Partial {
        object: RawObject {
            guid,
            // Provisional until the kind is known (resolved before anything is returned).
            kind: kind.unwrap_or(ObjectKind::User),
            dn: entry.dn,
            attrs,
            rid,
            members,
        },
        kind,
        reread_members,
    }))
}

/// Looks up the kind (user or group) of objects by GUID, deleted ones included. Objects not found
/// (or neither user nor group) are absent from the answer.
async fn lookup_kinds(
    session: &mut DcSession,
    base_dn: &str,
    guids: &[ObjectGuid],
) -> Result<HashMap<ObjectGuid, ObjectKind>, DirectoryError> {
    let mut kinds = HashMap::new();
    let attrs = ["objectGUID".to_owned(), "objectClass".to_owned()];
    for chunk in guids.chunks(KIND_LOOKUP_BATCH) {
        let filter = format!(
            "(|{})",
            chunk
                .iter()
                .map(|g| format!("(objectGUID={})", g.ldap_filter_value()))
                .collect::<String>()
        );
        let show_deleted = RawControl {
            ctype: SHOW_DELETED_OID.to_owned(),
            crit: false,
            val: None,
        };
        let (entries, _) = raw_search(
            session,
            base_dn,
            Scope::Subtree,
            &filter,
            &attrs,
            vec![show_deleted],
            "object class lookup",
        )
        .await?;
        for entry in entries {
            let Some(Ok(guid)) = entry.first("objectGUID").map(ObjectGuid::from_bytes) else {
                continue;
            };
            if let KindOf::Known(kind) = kind_of(&entry) {
                kinds.insert(guid, kind);
            }
        }
    }
    Ok(kinds)
}

/// The base DN that names an object by GUID (`<GUID=…>`, AD and Samba): survives renames and moves.
pub(super) fn guid_dn(guid: &ObjectGuid) -> String {
    format!("<GUID={guid}>")
}

/// Runs DirSync rounds from `cookie` and turns the entries into changes. `reread_flagged`: re-read
/// (ranged) the members of groups whose `member` came in a form that cannot be merged.
async fn dirsync_changes(
    session: &mut DcSession,
    spec: &ReadSpec,
    cookie: &[u8],
    reread_flagged: bool,
) -> Result<(Vec<DirChange>, Vec<u8>), DirectoryError> {
    let attrs = spec.attributes();
    let requested: HashSet<String> = attrs.iter().cloned().collect();
    let mut cookie = cookie.to_vec();
    let mut slots = Vec::new();
    let mut rounds = 0usize;
    loop {
        rounds += 1;
        if rounds > MAX_DIRSYNC_ROUNDS {
            return Err(malformed(
                session,
                format!("DirSync still reported more results after {MAX_DIRSYNC_ROUNDS} rounds"),
            ));
        }
        let request = DirSyncRequest {
            flags: INCREMENTAL_VALUES,
            max_bytes: DIRSYNC_MAX_BYTES,
            cookie: cookie.clone(),
        };
        let (entries, controls) = raw_search(
            session,
            &spec.base_dn,
            Scope::Subtree,
            CHANGE_FILTER,
            &attrs,
            vec![request.to_control()],
            "DirSync search",
        )
        .await?;
        let response = controls
            .iter()
            .find_map(|c| DirSyncResponse::from_control(&c.1))
            .ok_or_else(|| {
                malformed(
                    session,
                    "DirSync answer without a readable DirSync response control".into(),
                )
            })?;
        let returned = entries.len();
        slots.extend(
            entries
                .into_iter()
                .filter_map(|e| parse_entry(e, &requested)),
        );
        let progressed = returned > 0 || response.cookie != cookie;
        cookie = response.cookie;
        if !response.more_results {
            break;
        }
        if !progressed {
            return Err(malformed(
                session,
                "DirSync reported more results but returned no entry and the same cookie".into(),
            ));
        }
    }

    let unknown: Vec<ObjectGuid> = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Object(p) if p.kind.is_none() => Some(p.object.guid),
            _ => None,
        })
        .collect();
    let kinds = if unknown.is_empty() {
        HashMap::new()
    } else {
        lookup_kinds(session, &spec.base_dn, &unknown).await?
    };

    let mut changes = Vec::with_capacity(slots.len());
    for slot in slots {
        match slot {
            Slot::Deleted(guid) => changes.push(DirChange::Deleted { guid }),
            Slot::Object(mut p) => {
                let Some(kind) = p.kind.or_else(|| kinds.get(&p.object.guid).copied()) else {
                    // Gone since the round (the next round reports the tombstone) or not ours.
                    tracing::warn!(dn = %p.object.dn, guid = %p.object.guid, "changed object's kind not found; skipped");
                    continue;
                };
                p.object.kind = kind;
                if kind == ObjectKind::Group && p.reread_members && reread_flagged {
                    match read_members(session, &guid_dn(&p.object.guid), spec.range_size).await {
                        Ok(all) => p.object.members = MemberDelta::Replace(all),
                        Err(DirectoryError::Refused { rc: 32, .. }) => {
                            tracing::warn!(dn = %p.object.dn, "group gone before its members could be re-read");
                            p.object.members = MemberDelta::Unchanged;
                        }
                        Err(e) => return Err(e),
                    }
                }
                changes.push(DirChange::Upsert(p.object));
            }
        }
    }
    Ok((changes, cookie))
}

/// The changes since `cookie` (empty: everything), in server order, and the cookie to pass next time.
///
/// DirSync with INCREMENTAL_VALUES on `spec.base_dn` (the NC root), filter [`CHANGE_FILTER`].
/// Rounds repeat while the server reports more results. Only changed attributes are present in an
/// `Upsert`; `member;range=1-1` / `member;range=0-0` become `MemberDelta::Incremental`, a plain
/// `member` becomes `MemberDelta::Replace`; a tombstone becomes `DirChange::Deleted`. Entries without
/// a usable objectGUID are skipped and logged. Needs Replicating Directory Changes.
pub async fn changes_since(
    session: &mut DcSession,
    spec: &ReadSpec,
    cookie: &[u8],
) -> Result<(Vec<DirChange>, Vec<u8>), DirectoryError> {
    dirsync_changes(session, spec, cookie, true).await
}

/// Every member DN of a group, read with explicit `member;range=` windows of `range_size` values
/// until the server labels a window `low-*`. An empty group has no `member` attribute and gives an
/// empty list. Any gap or inconsistency is an error: never a partial list.
pub async fn read_members(
    session: &mut DcSession,
    group_dn: &str,
    range_size: usize,
) -> Result<Vec<String>, DirectoryError> {
    continue_members(session, group_dn, range_size, 0, Vec::new()).await
}

/// One `member` window of an answer: its range option, its attribute description, its values.
pub(super) type MemberWindow = (RangeOption, String, Vec<Vec<u8>>);

/// An entry's attributes as decoded: (description, values).
pub(super) type RawAttrs = Vec<(String, Vec<Vec<u8>>)>;

/// Where a ranged member read stands after one answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RangeStep {
    /// `members` is complete.
    Done,
    /// Read on from this value index.
    Next(u64),
}

/// Splits an entry's attributes into its `member` windows (any range option) and the rest.
pub(super) fn split_member_windows(attrs: RawAttrs) -> (Vec<MemberWindow>, RawAttrs) {
    let mut windows = Vec::new();
    let mut rest = Vec::new();
    for (desc, values) in attrs {
        match parse_attr_desc(&desc) {
            (base, range) if base == "member" => windows.push((range, desc, values)),
            _ => rest.push((desc, values)),
        }
    }
    (windows, rest)
}

/// Folds the `member` windows of one answer, asked from value index `low`, into `members`.
/// The one place that interprets range answers (the ranged read below and `find_entries` use it).
pub(super) fn absorb_member_window(
    session: &DcSession,
    group_dn: &str,
    low: u64,
    windows: Vec<MemberWindow>,
    members: &mut Vec<String>,
) -> Result<RangeStep, DirectoryError> {
    if windows.len() > 1 {
        return Err(malformed(
            session,
            format!("ranged member read of {group_dn} returned several member windows"),
        ));
    }
    let Some((range, desc, values)) = windows.into_iter().next() else {
        if low == 0 {
            return Ok(RangeStep::Done); // no member attribute at all: an empty group
        }
        return Err(malformed(
            session,
            format!(
                "ranged member read of {group_dn} stopped after {} values without a final window (expected {low}-*)",
                members.len()
            ),
        ));
    };
    let count = values.len() as u64;
    let values = values
        .into_iter()
        .map(String::from_utf8)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| malformed(session, format!("{group_dn}: a member value is not UTF-8")))?;
    match range {
        // A server that ignores the range option and sends everything, at the first window only.
        RangeOption::Absent if low == 0 => {
            *members = values;
            Ok(RangeStep::Done)
        }
        RangeOption::Range { low: got, high } if got == low => {
            match high.map(|high| window_next(got, high, count)) {
                None => {
                    members.extend(values);
                    Ok(RangeStep::Done)
                }
                Some(Some(next)) => {
                    members.extend(values);
                    Ok(RangeStep::Next(next))
                }
                Some(None) => Err(malformed(
                    session,
                    format!("{group_dn}: window {desc:?} carries {count} values"),
                )),
            }
        }
        _ => Err(malformed(
            session,
            format!("{group_dn}: asked for member;range={low}-…, got {desc:?}"),
        )),
    }
}

/// The index after the window `got-high` when it holds exactly `count` values; `None` otherwise,
/// including a window the server sent backwards (`member;range=5-3`) or ending at `u64::MAX` (the
/// unchecked `high - got + 1` used to panic on those).
fn window_next(got: u64, high: u64, count: u64) -> Option<u64> {
    if high < got {
        return None;
    }
    let next = high.checked_add(1)?;
    (next.checked_sub(got)? == count).then_some(next)
}

/// Continues a ranged member read at value index `low`, `members` holding the values before it.
pub(super) async fn continue_members(
    session: &mut DcSession,
    group_dn: &str,
    range_size: usize,
    mut low: u64,
    mut members: Vec<String>,
) -> Result<Vec<String>, DirectoryError> {
    let step = range_size.max(1) as u64;
    for _ in 0..MAX_RANGE_ROUNDS {
        let high = low.saturating_add(step - 1);
        let (entries, _) = raw_search(
            session,
            group_dn,
            Scope::Base,
            "(objectClass=*)",
            &[format!("member;range={low}-{high}")],
            Vec::new(),
            "ranged member read",
        )
        .await?;
        let Some(entry) = entries.into_iter().next() else {
            return Err(malformed(
                session,
                format!("ranged member read of {group_dn} returned no entry"),
            ));
        };
        let (windows, _) = split_member_windows(entry.attrs);
        match absorb_member_window(session, group_dn, low, windows, &mut members)? {
            RangeStep::Done => return Ok(members),
            RangeStep::Next(next) => low = next,
        }
    }
    Err(malformed(
        session,
        format!("ranged member read of {group_dn} did not end after {MAX_RANGE_ROUNDS} windows"),
    ))
}

/// The DC's invocationId (its database identity; it changes when the DC is restored), read from the
/// NTDS Settings object named by the rootDSE's `dsServiceName`, in GUID text form.
pub async fn invocation_id(
    session: &mut DcSession,
    ds_service_name: &str,
) -> Result<String, DirectoryError> {
    let (entries, _) = raw_search(
        session,
        ds_service_name,
        Scope::Base,
        "(objectClass=*)",
        &["invocationId".to_owned()],
        Vec::new(),
        "invocationId read",
    )
    .await?;
    let value = entries
        .first()
        .and_then(|e| e.first("invocationId"))
        .ok_or_else(|| malformed(session, format!("{ds_service_name} has no invocationId")))?;
    ObjectGuid::from_bytes(value)
        .map(|g| g.to_string())
        .map_err(|e| malformed(session, format!("{ds_service_name}: invocationId: {e}")))
}

/// Everything (DirSync from an empty cookie), with every group's members replaced by a complete
/// explicit ranged read, so large groups are never truncated. Returns the DirSync cookie.
pub async fn full_read(
    session: &mut DcSession,
    spec: &ReadSpec,
) -> Result<(Vec<DirChange>, Vec<u8>), DirectoryError> {
    let (mut changes, cookie) = dirsync_changes(session, spec, &[], false).await?;
    for change in &mut changes {
        let DirChange::Upsert(object) = change else {
            continue;
        };
        if object.kind != ObjectKind::Group {
            continue;
        }
        match read_members(session, &guid_dn(&object.guid), spec.range_size).await {
            Ok(all) => object.members = MemberDelta::Replace(all),
            Err(DirectoryError::Refused { rc: 32, .. }) => {
                // Deleted since the DirSync round; the next round reports the tombstone.
                tracing::warn!(dn = %object.dn, "group gone before its members could be read");
            }
            Err(e) => return Err(e),
        }
    }
    Ok((changes, cookie))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3::asn1::{write, ASNTag, OctetString, Sequence, Set, Tag, TagClass};

    #[test]
    fn rid_is_the_last_sub_authority_little_endian() {
        // S-1-5-21-1004336348-1177238915-682003330-1104
        let mut sid = vec![1u8, 5, 0, 0, 0, 0, 0, 5];
        for sub in [21u32, 1_004_336_348, 1_177_238_915, 682_003_330, 1104] {
            sid.extend(sub.to_le_bytes());
        }
        assert_eq!(sid_rid(&sid), Some(1104));
        // Domain Users, S-1-5-21-…-513
        let n = sid.len();
        sid[n - 4..].copy_from_slice(&513u32.to_le_bytes());
        assert_eq!(sid_rid(&sid), Some(513));
        // Malformed: truncated, count mismatch, no sub-authority, wrong revision, empty.
        assert_eq!(sid_rid(&sid[..n - 1]), None);
        let mut wrong_count = sid.clone();
        wrong_count[1] = 6;
        assert_eq!(sid_rid(&wrong_count), None);
        assert_eq!(sid_rid(&[1, 0, 0, 0, 0, 0, 0, 5]), None);
        let mut wrong_revision = sid.clone();
        wrong_revision[0] = 2;
        assert_eq!(sid_rid(&wrong_revision), None);
        assert_eq!(sid_rid(&[]), None);
        assert_eq!(sid_rid(&[1]), None);
    }

    #[test]
    fn attribute_descriptions_parse_case_insensitively() {
        assert_eq!(
            parse_attr_desc("member"),
            ("member".into(), RangeOption::Absent)
        );
        assert_eq!(
            parse_attr_desc("Member;Range=0-999"),
            (
                "member".into(),
                RangeOption::Range {
                    low: 0,
                    high: Some(999)
                }
            )
        );
        assert_eq!(
            parse_attr_desc("member;RANGE=1000-*"),
            (
                "member".into(),
                RangeOption::Range {
                    low: 1000,
                    high: None
                }
            )
        );
        assert_eq!(
            parse_attr_desc("member;range=1-1").1,
            RangeOption::Range {
                low: 1,
                high: Some(1)
            }
        );
        assert_eq!(
            parse_attr_desc("member;binary;range=0-0"),
            (
                "member".into(),
                RangeOption::Range {
                    low: 0,
                    high: Some(0)
                }
            )
        );
        assert_eq!(
            parse_attr_desc("objectGUID;binary"),
            ("objectguid".into(), RangeOption::Absent)
        );
        for bad in [
            "member;range=",
            "member;range=x-1",
            "member;range=5-2",
            "member;range=1",
            "member;range=1-",
            "member;range=-1-2",
        ] {
            assert_eq!(parse_attr_desc(bad).1, RangeOption::Malformed, "{bad}");
        }
        assert_eq!(parse_attr_desc("").0, "");
    }

    #[test]
    fn attribute_list_has_the_base_attributes_then_extras_lower_case_without_duplicates() {
        let mut spec = ReadSpec::new("DC=alpha,DC=test");
        assert_eq!((spec.page_size, spec.range_size), (500, 1000));
        spec.extra_attrs = vec![
            "Title".into(),
            "MAIL".into(),
            "department".into(),
            "title".into(),
            " ".into(),
        ];
        let attrs = spec.attributes();
        assert_eq!(attrs.len(), BASE_ATTRIBUTES.len() + 2);
        assert_eq!(attrs[0], "objectguid");
        assert_eq!(&attrs[BASE_ATTRIBUTES.len()..], ["title", "department"]);
        for base in BASE_ATTRIBUTES {
            assert!(attrs.contains(&base.to_ascii_lowercase()), "{base}");
        }
    }

    fn octets(bytes: &[u8]) -> Tag {
        Tag::OctetString(OctetString {
            inner: bytes.to_vec(),
            ..Default::default()
        })
    }

    /// Builds a SearchResultEntry as the wire has it and parses it back into a StructureTag.
    fn wire_entry(dn: &str, attrs: &[(&str, Vec<Vec<u8>>)]) -> StructureTag {
        let tag = Tag::Sequence(Sequence {
            class: TagClass::Application,
            id: 4,
            inner: vec![
                octets(dn.as_bytes()),
                Tag::Sequence(Sequence {
                    inner: attrs
                        .iter()
                        .map(|(name, values)| {
                            Tag::Sequence(Sequence {
                                inner: vec![
                                    octets(name.as_bytes()),
                                    Tag::Set(Set {
                                        inner: values.iter().map(|v| octets(v)).collect(),
                                        ..Default::default()
                                    }),
                                ],
                                ..Default::default()
                            })
                        })
                        .collect(),
                    ..Default::default()
                }),
            ],
        })
        .into_structure();
        let mut buf = bytes::BytesMut::new();
        write::encode_into(&mut buf, tag).unwrap();
        ldap3::asn1::parse_tag(&buf).unwrap().1
    }

    fn requested() -> HashSet<String> {
        ReadSpec::new("DC=x").attributes().into_iter().collect()
    }

    // A GUID whose 16 bytes are valid UTF-8 (ldap3's SearchEntry would file it as a string).
    const ASCII_GUID: &[u8; 16] = b"0123456789abcdef";

    #[test]
    fn a_group_delta_entry_becomes_an_incremental_upsert() {
        let sid: Vec<u8> = [1u8, 2, 0, 0, 0, 0, 0, 5]
            .into_iter()
            .chain(21u32.to_le_bytes())
            .chain(1234u32.to_le_bytes())
            .collect();
        let tag = wire_entry(
            "CN=g,OU=x,DC=x",
            &[
                ("objectGUID", vec![ASCII_GUID.to_vec()]),
                ("instanceType", vec![b"4".to_vec()]),
                ("objectClass", vec![b"top".to_vec(), b"group".to_vec()]),
                ("objectSid", vec![sid]),
                ("sAMAccountName", vec![b"g".to_vec()]),
                ("member;range=1-1", vec![b"CN=a,DC=x".to_vec()]),
                ("Member;Range=0-0", vec![b"CN=b,DC=x".to_vec()]),
            ],
        );
        let entry = decode_entry(tag).unwrap();
        let Some(Slot::Object(p)) = parse_entry(entry, &requested()) else {
            panic!("not an object")
        };
        assert_eq!(p.kind, Some(ObjectKind::Group));
        assert_eq!(p.object.guid, ObjectGuid::from_bytes(ASCII_GUID).unwrap());
        assert_eq!(p.object.rid, Some(1234));
        assert_eq!(
            p.object.members,
            MemberDelta::Incremental {
                added: vec!["CN=a,DC=x".into()],
                removed: vec!["CN=b,DC=x".into()]
            }
        );
        // Requested string attributes only; instanceType (unrequested) and the structural ones dropped.
        assert_eq!(
            p.object.attrs.keys().collect::<Vec<_>>(),
            vec!["samaccountname"]
        );
        assert!(!p.reread_members);
    }

    #[test]
    fn tombstones_plain_members_and_odd_entries() {
        let tomb = wire_entry(
            "CN=u\\0ADEL:x,CN=Deleted Objects,DC=x",
            &[
                ("objectGUID", vec![ASCII_GUID.to_vec()]),
                ("isDeleted", vec![b"TRUE".to_vec()]),
            ],
        );
        assert!(matches!(
            parse_entry(decode_entry(tomb).unwrap(), &requested()),
            Some(Slot::Deleted(_))
        ));

        let plain = wire_entry(
            "CN=g,DC=x",
            &[
                ("objectGUID", vec![vec![0xff; 16]]),
                ("member", vec![b"CN=a,DC=x".to_vec(), b"CN=b,DC=x".to_vec()]),
                ("member;range=0-*", vec![b"CN=c,DC=x".to_vec()]),
                ("userAccountControl", vec![b"546".to_vec()]),
                ("name", vec![vec![0xff, 0xfe]]),
            ],
        );
        let Some(Slot::Object(p)) = parse_entry(decode_entry(plain).unwrap(), &requested()) else {
            panic!("not an object")
        };
        assert_eq!(p.kind, None, "no objectClass: the kind is looked up later");
        assert_eq!(
            p.object.members,
            MemberDelta::Replace(vec!["CN=a,DC=x".into(), "CN=b,DC=x".into()])
        );
        assert!(p.reread_members, "an unexpected range asks for a re-read");
        assert_eq!(p.object.attrs["useraccountcontrol"], vec!["546"]);
        assert!(
            !p.object.attrs.contains_key("name"),
            "binary values are skipped"
        );

        let no_guid = wire_entry("CN=n,DC=x", &[("name", vec![b"n".to_vec()])]);
        assert!(parse_entry(decode_entry(no_guid).unwrap(), &requested()).is_none());
        let short_guid = wire_entry("CN=n,DC=x", &[("objectGUID", vec![vec![1, 2, 3]])]);
        assert!(parse_entry(decode_entry(short_guid).unwrap(), &requested()).is_none());
        let computer = wire_entry(
            "CN=c,DC=x",
            &[
                ("objectGUID", vec![ASCII_GUID.to_vec()]),
                ("objectClass", vec![b"user".to_vec(), b"computer".to_vec()]),
            ],
        );
        assert!(parse_entry(decode_entry(computer).unwrap(), &requested()).is_none());
    }

    /// A batch as a DC could send it, odd entries among good ones: each bad one is skipped (and
    /// counted) or kept with what is usable; the rest of the batch goes on; nothing panics.
    #[test]
    fn a_batch_with_bad_entries_keeps_the_good_ones() {
        let guid = |n: u8| {
            let mut g = [0x11u8; 16];
            g[0] = n;
            g.to_vec()
        };
        let user_classes = || {
            vec![
                b"top".to_vec(),
                b"person".to_vec(),
                b"organizationalPerson".to_vec(),
                b"user".to_vec(),
            ]
        };
        let huge = "Zoë Ørsted ".repeat(100_000); // 1.2 MB, multi-byte
        let escaped_dns = [
            r"CN=Doe\, John,OU=T,DC=x",
            r"CN=A\+B,OU=T,DC=x",
            r#"CN=\"Quoted\",OU=T,DC=x"#,
            r"CN=Back\\slash,OU=T,DC=x",
            r"CN=\#hash,OU=T,DC=x",
            r"CN=\ lead,OU=T,DC=x",
            r"CN=x\=y,OU=T,DC=x",
            "CN=Zoë Ørsted,OU=T,DC=x",
            r"CN=Esc\2C hex,OU=T,DC=x",
        ];
        let mut wire = Vec::new();
        for (i, dn) in escaped_dns.iter().enumerate() {
            wire.push(wire_entry(
                dn,
                &[
                    ("objectGUID", vec![guid(i as u8)]),
                    ("objectClass", user_classes()),
                    ("sAMAccountName", vec![format!("u{i}").into_bytes()]),
                ],
            ));
        }
        let n_good = escaped_dns.len();
        // Kept, with what is usable:
        wire.push(wire_entry(
            "CN=Huge,OU=T,DC=x",
            &[
                ("objectGUID", vec![guid(100)]),
                ("objectClass", user_classes()),
                ("sAMAccountName", vec![b"huge".to_vec()]),
                ("description", vec![huge.clone().into_bytes()]),
            ],
        ));
        wire.push(wire_entry(
            "CN=Bad Utf8,OU=T,DC=x",
            &[
                ("objectGUID", vec![guid(101)]),
                ("objectClass", user_classes()),
                ("givenName", vec![vec![0xc3, 0x28]]),
                ("sAMAccountName", vec![b"badutf8".to_vec()]),
            ],
        ));
        wire.push(wire_entry(
            "CN=No Sam,OU=T,DC=x",
            &[
                ("objectGUID", vec![guid(102)]),
                ("objectClass", user_classes()),
            ],
        ));
        wire.push(wire_entry(
            "CN=Two Sams,OU=T,DC=x",
            &[
                ("objectGUID", vec![guid(103)]),
                ("objectClass", user_classes()),
                ("sAMAccountName", vec![b"one".to_vec(), b"two".to_vec()]),
                ("givenName", vec![]),
                ("userAccountControl", vec![b"not a number".to_vec()]),
                ("objectSid", vec![vec![1, 2, 3]]),
                ("member;range=7-9", vec![b"CN=z,DC=x".to_vec()]),
            ],
        ));
        wire.push(wire_entry(
            "CN=t\\0ADEL:0123,CN=Deleted Objects,DC=x",
            &[
                ("objectGUID", vec![guid(104)]),
                ("isDeleted", vec![b"TRUE".to_vec()]),
            ],
        ));
        let kept = 5;
        // Skipped (and counted):
        wire.push(wire_entry(
            "CN=No Guid,OU=T,DC=x",
            &[
                ("objectClass", user_classes()),
                ("sAMAccountName", vec![b"ng".to_vec()]),
            ],
        ));
        wire.push(wire_entry(
            "CN=Tomb Without Guid\\0ADEL:x,CN=Deleted Objects,DC=x",
            &[("isDeleted", vec![b"TRUE".to_vec()])],
        ));
        wire.push(wire_entry(
            "CN=Long Guid,OU=T,DC=x",
            &[
                ("objectGUID", vec![vec![7; 17]]),
                ("objectClass", user_classes()),
            ],
        ));
        wire.push(wire_entry(
            "CN=Empty Guid,OU=T,DC=x",
            &[("objectGUID", vec![]), ("objectClass", user_classes())],
        ));
        wire.push(StructureTag {
            class: TagClass::Application,
            id: 4,
            payload: PL::C(vec![StructureTag {
                class: TagClass::Universal,
                id: 4,
                payload: PL::P(vec![b'C', b'N', b'=', 0xff]),
            }]),
        });
        let skipped = 5;
        let total = wire.len();

        let mut spec = ReadSpec::new("DC=x");
        spec.extra_attrs = vec!["description".into()];
        let requested: HashSet<String> = spec.attributes().into_iter().collect();
        let before = unreadable_entries();
        let slots: Vec<Slot> = wire
            .into_iter()
            .filter_map(|t| decode_entry(t).ok())
            .filter_map(|e| parse_entry(e, &requested))
            .collect();
        assert_eq!(slots.len(), n_good + kept, "{slots:#?}");
        assert!(unreadable_entries() - before >= (skipped - 1) as u64);
        let objects: Vec<&RawObject> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Object(p) => Some(&p.object),
                Slot::Deleted(_) => None,
            })
            .collect();
        // The DNs come through exactly as the DC wrote them (escapes kept: the DN is an identifier
        // for logs and external_dn, never parsed back).
        for (i, dn) in escaped_dns.iter().enumerate() {
            assert_eq!(objects[i].dn, *dn);
            assert_eq!(objects[i].attrs["samaccountname"], vec![format!("u{i}")]);
        }
        let by_dn = |dn: &str| *objects.iter().find(|o| o.dn == dn).unwrap();
        assert_eq!(by_dn("CN=Huge,OU=T,DC=x").attrs["description"], vec![huge]);
        let bad = by_dn("CN=Bad Utf8,OU=T,DC=x");
        assert!(
            !bad.attrs.contains_key("givenname"),
            "a non-UTF-8 value is dropped"
        );
        assert_eq!(bad.attrs["samaccountname"], vec!["badutf8"]);
        assert!(!by_dn("CN=No Sam,OU=T,DC=x")
            .attrs
            .contains_key("samaccountname"));
        let two = by_dn("CN=Two Sams,OU=T,DC=x");
        assert_eq!(two.attrs["samaccountname"], vec!["one", "two"]);
        assert_eq!(two.rid, None, "a malformed SID gives no RID");
        assert!(matches!(
            slots.last(),
            Some(Slot::Deleted(g)) if *g == ObjectGuid::from_bytes(&guid(104)).unwrap()
        ));
        eprintln!("LDAP entries tried: {total}");
    }

    #[test]
    fn member_windows_from_the_server_are_checked_without_overflow() {
        assert_eq!(window_next(0, 999, 1000), Some(1000));
        assert_eq!(window_next(1000, 1499, 500), Some(1500));
        assert_eq!(window_next(0, 999, 999), None);
        assert_eq!(window_next(5, 3, 0), None);
        assert_eq!(window_next(6, 5, 0), None);
        assert_eq!(window_next(0, u64::MAX, 0), None);
        assert_eq!(window_next(1, u64::MAX, 5), None);
    }

    #[test]
    fn search_entries_are_filed_like_ldap3_but_malformed_ones_do_not_panic() {
        let guid = vec![0xff, 0x00, 0xfe, 0x01];
        let good = wire_entry(
            "CN=x,DC=alpha,DC=test",
            &[
                ("cn", vec![b"x".to_vec()]),
                ("objectGUID", vec![guid.clone()]),
            ],
        );
        let ours = search_entry(good.clone()).unwrap();
        let theirs = SearchEntry::construct(ldap3::ResultEntry::new(good));
        assert_eq!(
            (&ours.dn, &ours.attrs, &ours.bin_attrs),
            (&theirs.dn, &theirs.attrs, &theirs.bin_attrs)
        );
        assert_eq!(ours.bin_attrs["objectGUID"], vec![guid.clone()]);

        // Found by the ber_controls fuzz target: an attribute listed twice, once with a binary value,
        // was filed in both maps; merged, it is binary with both values.
        let twice = wire_entry(
            "CN=x,DC=alpha,DC=test",
            &[
                ("pwdLastSet", vec![guid.clone()]),
                ("pwdLastSet", vec![b"0".to_vec()]),
                ("cn", vec![b"x".to_vec()]),
                ("cn", vec![b"y".to_vec()]),
            ],
        );
        let merged = search_entry(twice).unwrap();
        assert_eq!(merged.bin_attrs["pwdLastSet"], vec![guid, b"0".to_vec()]);
        assert!(!merged.attrs.contains_key("pwdLastSet"));
        assert_eq!(merged.attrs["cn"], vec!["x", "y"]);

        // Found by the ber_controls fuzz target: an attribute whose value set is an empty primitive
        // (ldap3: "values"), a DN that is not UTF-8 (ldap3: "dn"). DcSession::search, the DirSync probe
        // and the Deleted Objects check used SearchEntry::construct and panicked on either.
        let octets = |b: &[u8]| StructureTag {
            class: TagClass::Universal,
            id: 4,
            payload: PL::P(b.to_vec()),
        };
        let empty_primitive_values = StructureTag {
            class: TagClass::Application,
            id: 4,
            payload: PL::C(vec![
                octets(b"CN=x"),
                StructureTag {
                    class: TagClass::Universal,
                    id: 16,
                    payload: PL::C(vec![StructureTag {
                        class: TagClass::Universal,
                        id: 16,
                        payload: PL::C(vec![
                            octets(b"cn"),
                            StructureTag {
                                class: TagClass::Universal,
                                id: 17,
                                payload: PL::P(vec![]),
                            },
                        ]),
                    }]),
                },
            ]),
        };
        let bad_dn = StructureTag {
            class: TagClass::Application,
            id: 4,
            payload: PL::C(vec![octets(&[0xff, 0xfe]), octets(&[])]),
        };
        for (tag, decodes) in [(empty_primitive_values, true), (bad_dn, false)] {
            let copy = tag.clone();
            let ldap3 =
                std::panic::catch_unwind(|| SearchEntry::construct(ldap3::ResultEntry::new(copy)));
            assert!(
                ldap3.is_err(),
                "ldap3's SearchEntry::construct no longer panics here"
            );
            assert_eq!(search_entry(tag).is_ok(), decodes);
        }
    }

    #[test]
    fn malformed_entries_are_rejected_without_panic() {
        let not_entry = StructureTag {
            class: TagClass::Application,
            id: 5,
            payload: PL::C(vec![]),
        };
        assert!(decode_entry(not_entry).is_err());
        for payload in [
            PL::P(vec![1, 2]),
            PL::C(vec![]),
            PL::C(vec![StructureTag {
                class: TagClass::Universal,
                id: 4,
                payload: PL::C(vec![]),
            }]),
            PL::C(vec![
                StructureTag {
                    class: TagClass::Universal,
                    id: 4,
                    payload: PL::P(b"CN=x".to_vec()),
                },
                StructureTag {
                    class: TagClass::Universal,
                    id: 16,
                    payload: PL::C(vec![StructureTag {
                        class: TagClass::Universal,
                        id: 16,
                        payload: PL::P(vec![]),
                    }]),
                },
            ]),
            PL::C(vec![StructureTag {
                class: TagClass::Universal,
                id: 4,
                payload: PL::P(vec![0xff, 0xfe]),
            }]),
        ] {
            let tag = StructureTag {
                class: TagClass::Application,
                id: 4,
                payload,
            };
            assert!(decode_entry(tag).is_err());
        }
    }
}

//! The engine's vocabulary: AD objects as read, the JumpCloud shapes forestsync wants, the operations
//! that move one to the other. No I/O and no clock here: time is passed in.

mod guid;
pub mod snapshot;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use guid::{GuidError, ObjectGuid};
pub use snapshot::{normalize_dn, DomainSnapshot, SnapshotDelta};

/// The stable identity of an AD object: its domain (the config's `name`) and its objectGUID.
/// Never a DN or a name: renames and moves keep the anchor.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Anchor {
    pub domain: String,
    pub guid: ObjectGuid,
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.domain, self.guid)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    User,
    Group,
}

/// One AD object as the agent last saw it (merged from full reads and DirSync deltas).
/// Attribute names are lower-case; values are UTF-8 strings except the few binary ones decoded on read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdObject {
    pub guid: ObjectGuid,
    pub kind: ObjectKind,
    pub dn: String,
    /// Single- and multi-valued string attributes, lower-case names (`samaccountname`, `givenname`, `useraccountcontrol` …).
    pub attrs: BTreeMap<String, Vec<String>>,
    /// Groups only: members resolved to objectGUIDs.
    pub members: BTreeSet<ObjectGuid>,
    /// Groups only: member DNs that name no known user or group (computers, foreign principals, other NCs).
    pub unresolved_members: BTreeSet<String>,
    /// The RID from objectSid: a group's `primaryGroupToken` equals it, and users name their primary group by it.
    pub rid: Option<u32>,
}

impl AdObject {
    pub fn first(&self, attr: &str) -> Option<&str> {
        self.attrs
            .get(attr)
            .and_then(|v| v.first())
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn int(&self, attr: &str) -> Option<i64> {
        self.first(attr).and_then(|v| v.trim().parse().ok())
    }

    /// userAccountControl bit 0x2.
    pub fn is_disabled(&self) -> bool {
        self.int("useraccountcontrol")
            .is_some_and(|uac| uac & 0x2 != 0)
    }

    /// adminCount = 1 (set on protected accounts and groups by SDProp on Windows).
    pub fn is_protected(&self) -> bool {
        self.int("admincount") == Some(1)
    }

    /// A security group (groupType bit 0x80000000); distribution groups are not synced.
    /// Created (or taken over) by forestsync for a JumpCloud object: its `adminDescription` holds the
    /// marker `forestsync:jc=<id>` (see `plan::to_ad`).
    pub fn is_jumpcloud_owned(&self) -> bool {
        self.jumpcloud_id().is_some()
    }

    /// The JumpCloud id in the object's marker, if it carries one.
    pub fn jumpcloud_id(&self) -> Option<String> {
        self.first("admindescription")
            .and_then(crate::plan::to_ad::parse_marker)
            .map(|m| m.id)
    }

    pub fn is_security_group(&self) -> bool {
        // groupType is a 32-bit signed value; AD may also show it unsigned (2147483650): the truncating
        // cast reads both the same way, bit 31 being "security group".
        self.int("grouptype").is_some_and(|t| (t as i32) < 0)
    }

    pub fn primary_group_id(&self) -> Option<u32> {
        self.int("primarygroupid")
            .and_then(|v| u32::try_from(v).ok())
    }

    pub fn pwd_last_set(&self) -> Option<i64> {
        self.int("pwdlastset")
    }
}

/// The JumpCloud user forestsync wants for one AD user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredUser {
    pub anchor: Anchor,
    pub username: String,
    pub email: String,
    pub firstname: String,
    pub lastname: String,
    /// Extra JumpCloud fields from the attribute map (`jobTitle`, `department` …).
    pub extra: BTreeMap<String, String>,
    pub suspended: bool,
    pub external_dn: String,
}

/// The JumpCloud user group forestsync wants for one AD security group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredGroup {
    pub anchor: Anchor,
    pub name: String,
    /// Flattened: every in-scope user reachable through nesting, plus primary-group members.
    pub members: BTreeSet<Anchor>,
}

/// What to do to JumpCloud. Operations name objects by anchor; the executor resolves JumpCloud ids
/// from the store when it runs them, so an operation stays valid across restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create the user (or adopt the one an earlier, interrupted attempt created) and link it.
    CreateUser {
        user: DesiredUser,
    },
    /// Link an existing JumpCloud user (username collision, take-over policy), then update it.
    TakeOverUser {
        user: DesiredUser,
        jumpcloud_id: String,
    },
    UpdateUser {
        user: DesiredUser,
    },
    /// Leave scope with the configured action.
    RemoveUser {
        anchor: Anchor,
        action: RemoveAction,
    },
    CreateGroup {
        group: DesiredGroup,
    },
    RenameGroup {
        anchor: Anchor,
        name: String,
    },
    DeleteGroup {
        anchor: Anchor,
    },
    AddMember {
        group: Anchor,
        user: Anchor,
    },
    RemoveMember {
        group: Anchor,
        user: Anchor,
    },
}

impl Op {
    /// The object whose order this operation must keep (operations on one object run in sequence).
    pub fn subject(&self) -> &Anchor {
        match self {
            Op::CreateUser { user } | Op::TakeOverUser { user, .. } | Op::UpdateUser { user } => {
                &user.anchor
            }
            Op::CreateGroup { group } => &group.anchor,
            Op::RemoveUser { anchor, .. }
            | Op::RenameGroup { anchor, .. }
            | Op::DeleteGroup { anchor } => anchor,
            Op::AddMember { group, .. } | Op::RemoveMember { group, .. } => group,
        }
    }

    /// A short name for logs and tables.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CreateUser { .. } => "create user",
            Op::TakeOverUser { .. } => "take over user",
            Op::UpdateUser { .. } => "update user",
            Op::RemoveUser {
                action: RemoveAction::Delete,
                ..
            } => "delete user",
            Op::RemoveUser {
                action: RemoveAction::Suspend,
                ..
            } => "suspend user",
            Op::RemoveUser {
                action: RemoveAction::Unbind,
                ..
            } => "unbind user",
            Op::CreateGroup { .. } => "create group",
            Op::RenameGroup { .. } => "rename group",
            Op::DeleteGroup { .. } => "delete group",
            Op::AddMember { .. } => "add member",
            Op::RemoveMember { .. } => "remove member",
        }
    }

    /// Deletes or suspends something in JumpCloud (counted by the mass-removal guard).
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            Op::RemoveUser {
                action: RemoveAction::Delete | RemoveAction::Suspend,
                ..
            } | Op::DeleteGroup { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoveAction {
    Delete,
    Suspend,
    Unbind,
}

/// One change read from a DC (DirSync round or full read), before it is merged into the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirChange {
    /// The object exists; only the attributes present here changed (DirSync returns changed attributes only).
    Upsert(RawObject),
    /// A tombstone (isDeleted): the object is gone.
    Deleted { guid: ObjectGuid },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawObject {
    pub guid: ObjectGuid,
    pub kind: ObjectKind,
    /// The current DN (a rename or move shows up as a new DN with the same objectGUID).
    pub dn: String,
    /// Attributes present in this read, lower-case names, string values (objectGUID/objectSid are not here).
    pub attrs: BTreeMap<String, Vec<String>>,
    /// RID of objectSid when it was read.
    pub rid: Option<u32>,
    pub members: MemberDelta,
}

/// How a read reports a group's `member` attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MemberDelta {
    /// Not part of this read.
    #[default]
    Unchanged,
    /// The complete current member list (DNs), e.g. from a ranged full read.
    Replace(Vec<String>),
    /// DirSync INCREMENTAL_VALUES: values added and removed since the cookie.
    Incremental {
        added: Vec<String>,
        removed: Vec<String>,
    },
}

/// Where a domain's change stream stands. The DirSync cookie is portable between the domain's DCs;
/// USNs are per DC and only meaningful with that DC's invocationId.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Watermark {
    #[serde(with = "hex_bytes")]
    pub dirsync_cookie: Vec<u8>,
    /// DC URL → (invocationId, highestCommittedUSN seen when the cookie was taken).
    pub dc_usns: BTreeMap<String, DcUsn>,
    /// When this watermark was committed (Unix seconds; 0 in stores written before it was recorded).
    /// Passed in by the coordinator: the model reads no clock.
    #[serde(default)]
    pub taken_unix: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcUsn {
    pub invocation_id: String,
    pub usn: u64,
}

/// What forestsync last applied to JumpCloud for one anchor (the store keeps one per linked object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub anchor: Anchor,
    pub kind: ObjectKind,
    pub jumpcloud_id: String,
    /// Users: the desired state last pushed successfully.
    pub applied_user: Option<DesiredUser>,
    /// Groups: the name last pushed.
    pub applied_group_name: Option<String>,
    /// Groups: the members (user anchors) last pushed.
    pub applied_members: BTreeSet<Anchor>,
}

/// How a completed operation changes the links (recorded in the same transaction that removes the
/// operation from the outbox).
// Short-lived (one per completed operation), so the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkEffect {
    None,
    Upsert(Link),
    Remove(Anchor),
    AddMember { group: Anchor, user: Anchor },
    RemoveMember { group: Anchor, user: Anchor },
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd-length hex"));
        }
        // Byte-wise: slicing the text two bytes at a time panicked inside a multi-byte character.
        crate::sealed::hex_decode(&text).ok_or_else(|| serde::de::Error::custom("not hexadecimal"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watermark_cookie_that_is_not_hex_is_an_error_not_a_panic() {
        let ok: Watermark =
            serde_json::from_str(r#"{"dirsync_cookie":"0aFf","dc_usns":{}}"#).unwrap();
        assert_eq!(ok.dirsync_cookie, vec![0x0a, 0xff]);
        // "a" + "é" (two bytes) + "a": an even number of bytes, a character across the pairs.
        for cookie in ["aéa", "éé", "+a", "zz", "abc"] {
            let text = format!(r#"{{"dirsync_cookie":"{cookie}","dc_usns":{{}}}}"#);
            assert!(
                serde_json::from_str::<Watermark>(&text).is_err(),
                "{cookie}"
            );
        }
    }
}

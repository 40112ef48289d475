//! Which AD users and groups are in scope: the ADI root group's members, nested to any depth, with
//! primary-group membership counted; privileged accounts excluded. Pure: snapshot in, scope out.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::model::{DomainSnapshot, ObjectGuid, ObjectKind};

/// Why an object forestsync created from JumpCloud is not imported back (it carries the marker).
pub const JUMPCLOUD_OWNED: &str =
    "created from JumpCloud (carries forestsync's JumpCloud marker): JumpCloud owns it";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]

pub enum ScopeError {
    #[error("root group {dn} not found in the directory; fix: create it or correct root_group_dn (nothing is removed while it is missing)")]
    RootGroupMissing { dn: String },
    #[error("root group {dn} is not a group")]
    RootNotGroup { dn: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// In-scope users (privileged ones removed).
    pub users: BTreeSet<ObjectGuid>,
    /// In-scope security groups (not the root group itself) with their flattened in-scope user members.
    pub groups: BTreeMap<ObjectGuid, BTreeSet<ObjectGuid>>,
    /// Privileged objects reached through the root group and left out, with the reason.
    pub excluded: Vec<(ObjectGuid, String, &'static str)>,
}

impl Scope {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }
}

pub fn resolve_scope(snap: &DomainSnapshot, root_group_dn: &str) -> Result<Scope, ScopeError> {
    let root = snap
        .by_dn(root_group_dn)
        .ok_or_else(|| ScopeError::RootGroupMissing {
            dn: root_group_dn.into(),
        })?;
    if root.kind != ObjectKind::Group {
        return Err(ScopeError::RootNotGroup {
            dn: root_group_dn.into(),
        });
    }
    let primary = snap.users_by_primary_group();
    let privileged = privileged_users(snap, &primary);

    // Walk the group graph from the root (cycles are legal in AD).
    let (reached_groups, reached_users) = reach(snap, root.guid, &primary);
    let mut scope = Scope::default();
    for guid in &reached_users {
        if let Some(o) = snap.get(guid).filter(|o| o.is_jumpcloud_owned()) {
            scope.excluded.push((*guid, o.dn.clone(), JUMPCLOUD_OWNED));
            continue;
        }
        if privileged.contains(guid) {
            if let Some(o) = snap.get(guid) {
                scope.excluded.push((
                    *guid,
                    o.dn.clone(),
                    "privileged account (adminCount=1 or member of a protected group)",
                ));
            }
        } else {
            scope.users.insert(*guid);
        }
    }
    for guid in reached_groups.iter().filter(|g| **g != root.guid) {
        let Some(group) = snap.get(guid) else {
            continue;
        };
        if group.is_jumpcloud_owned() {
            scope
                .excluded
                .push((*guid, group.dn.clone(), JUMPCLOUD_OWNED));
            continue;
        }
        if group.is_protected() {
            scope
                .excluded
                .push((*guid, group.dn.clone(), "protected group (adminCount=1)"));
            continue;
        }
        if !group.is_security_group() {
            continue;
        }
        let (_, members) = reach(snap, *guid, &primary);
        scope
            .groups
            .insert(*guid, members.intersection(&scope.users).copied().collect());
    }
    Ok(scope)
}

/// Groups reachable from `start` (including it) through nested security/distribution membership, and
/// the users reachable through them (direct members plus primary-group members).
fn reach(
    snap: &DomainSnapshot,
    start: ObjectGuid,
    primary: &HashMap<u32, Vec<ObjectGuid>>,
) -> (BTreeSet<ObjectGuid>, BTreeSet<ObjectGuid>) {
    let mut groups = BTreeSet::from([start]);
    let mut users = BTreeSet::new();
    let mut queue = VecDeque::from([start]);
    while let Some(g) = queue.pop_front() {
        let Some(group) = snap.get(&g) else { continue };
        if let Some(rid) = group.rid {
            users.extend(primary.get(&rid).into_iter().flatten().copied());
        }
        for member in &group.members {
            let kind = snap.get(member).map(|o| o.kind);
            if kind == Some(ObjectKind::User) {
                users.insert(*member);
            } else if kind == Some(ObjectKind::Group) && groups.insert(*member) {
                queue.push_back(*member);
            }
        }
    }
    (groups, users)
}

/// Users with adminCount=1, and every user reachable from a protected group (Samba has no SDProp, so
/// membership is checked directly rather than trusting adminCount alone).
fn privileged_users(
    snap: &DomainSnapshot,
    primary: &HashMap<u32, Vec<ObjectGuid>>,
) -> BTreeSet<ObjectGuid> {
    let mut out: BTreeSet<ObjectGuid> = snap
        .objects()
        .filter(|o| o.kind == ObjectKind::User && o.is_protected())
        .map(|o| o.guid)
        .collect();
    for g in snap
        .objects()
        .filter(|o| o.kind == ObjectKind::Group && o.is_protected())
    {
        out.extend(reach(snap, g.guid, primary).1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::tests::{group, guid, user};
    use crate::model::MemberDelta;

    const SEC: (&str, &str) = ("grouptype", "-2147483646");

    fn members(dns: &[&str]) -> MemberDelta {
        MemberDelta::Replace(dns.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn nested_three_deep_with_a_cycle_and_primary_group() {
        let mut s = DomainSnapshot::default();
        s.apply(&[
            user(10, "CN=a,DC=x", &[]),
            user(11, "CN=b,DC=x", &[]),
            user(12, "CN=c,DC=x", &[("primarygroupid", "1003")]),
            user(13, "CN=outside,DC=x", &[]),
            group(1, "CN=JumpCloud,DC=x", members(&["CN=L1,DC=x"]), &[SEC]),
            group(
                2,
                "CN=L1,DC=x",
                members(&["CN=L2,DC=x", "CN=a,DC=x"]),
                &[SEC],
            ),
            group(3, "CN=L2,DC=x", members(&["CN=L3,DC=x"]), &[SEC]),
            group(
                4,
                "CN=L3,DC=x",
                members(&["CN=b,DC=x", "CN=L1,DC=x"]),
                &[SEC],
            ),
        ]);
        let scope = resolve_scope(&s, "cn=jumpcloud,dc=x").unwrap();
        // user 12's primary group is L2 (rid 1003)
        assert_eq!(scope.users, BTreeSet::from([guid(10), guid(11), guid(12)]));
        assert_eq!(
            scope.groups.keys().copied().collect::<Vec<_>>(),
            vec![guid(2), guid(3), guid(4)]
        );
        assert_eq!(
            scope.groups[&guid(3)],
            BTreeSet::from([guid(10), guid(11), guid(12)]),
            "cycle L3→L1 followed"
        );
        assert_eq!(
            scope.groups[&guid(4)],
            BTreeSet::from([guid(10), guid(11), guid(12)])
        );
        assert!(
            !scope.groups.contains_key(&guid(1)),
            "the root group itself is not synced"
        );
    }

    #[test]
    fn privileged_users_are_excluded_and_reported() {
        let mut s = DomainSnapshot::default();
        s.apply(&[
            user(10, "CN=admin,DC=x", &[("admincount", "1")]),
            user(11, "CN=da-member,DC=x", &[]),
            user(12, "CN=normal,DC=x", &[]),
            group(
                5,
                "CN=Domain Admins,DC=x",
                members(&["CN=da-member,DC=x"]),
                &[SEC, ("admincount", "1")],
            ),
            group(
                1,
                "CN=JumpCloud,DC=x",
                members(&[
                    "CN=admin,DC=x",
                    "CN=da-member,DC=x",
                    "CN=normal,DC=x",
                    "CN=Domain Admins,DC=x",
                ]),
                &[SEC],
            ),
        ]);
        let scope = resolve_scope(&s, "CN=JumpCloud,DC=x").unwrap();
        assert_eq!(scope.users, BTreeSet::from([guid(12)]));
        let excluded: BTreeSet<_> = scope.excluded.iter().map(|e| e.0).collect();
        assert_eq!(excluded, BTreeSet::from([guid(10), guid(11), guid(5)]));
    }

    #[test]
    fn a_missing_root_group_is_an_error_not_an_empty_scope() {
        let s = DomainSnapshot::default();
        assert!(matches!(
            resolve_scope(&s, "CN=JumpCloud,DC=x"),
            Err(ScopeError::RootGroupMissing { .. })
        ));
    }

    #[test]
    fn distribution_groups_are_traversed_but_not_synced() {
        let mut s = DomainSnapshot::default();
        s.apply(&[
            user(10, "CN=a,DC=x", &[]),
            group(
                2,
                "CN=Dist,DC=x",
                members(&["CN=a,DC=x"]),
                &[("grouptype", "8")],
            ),
            group(1, "CN=JumpCloud,DC=x", members(&["CN=Dist,DC=x"]), &[SEC]),
        ]);
        let scope = resolve_scope(&s, "CN=JumpCloud,DC=x").unwrap();
        assert_eq!(scope.users, BTreeSet::from([guid(10)]));
        assert!(scope.groups.is_empty());
    }
}

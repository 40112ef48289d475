//! A domain's AD objects as last read, kept current by merging full reads and DirSync deltas.
//!
//! Group members are held as objectGUIDs, resolved from DNs when a change is merged: AD rewrites a
//! member's DN inside every group when the member is renamed or moved, without reporting the group
//! as changed, so a DN-based member list would go stale.

use std::collections::{BTreeSet, HashMap};

use super::{AdObject, DirChange, MemberDelta, ObjectGuid, ObjectKind};

#[derive(Clone, Debug, Default)]
pub struct DomainSnapshot {
    objects: HashMap<ObjectGuid, AdObject>,
    by_dn: HashMap<String, ObjectGuid>,
}

/// Which objects a merge touched (for persisting exactly those).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotDelta {
    pub upserted: BTreeSet<ObjectGuid>,
    pub removed: BTreeSet<ObjectGuid>,
}

impl SnapshotDelta {
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }
}

/// DNs compare case-insensitively.
pub fn normalize_dn(dn: &str) -> String {
    dn.trim().to_lowercase()
}

impl DomainSnapshot {
    pub fn from_objects(objects: impl IntoIterator<Item = AdObject>) -> Self {
        let mut snap = DomainSnapshot::default();
        for o in objects {
            snap.by_dn.insert(normalize_dn(&o.dn), o.guid);
            snap.objects.insert(o.guid, o);
        }
        snap
    }

    pub fn get(&self, guid: &ObjectGuid) -> Option<&AdObject> {
        self.objects.get(guid)
    }

    pub fn by_dn(&self, dn: &str) -> Option<&AdObject> {
        self.by_dn
            .get(&normalize_dn(dn))
            .and_then(|g| self.objects.get(g))
    }

    pub fn objects(&self) -> impl Iterator<Item = &AdObject> {
        self.objects.values()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Merges a batch of changes in order. Member DNs are resolved after every object of the batch is
    /// known, so a group may name a user created later in the same batch.
    pub fn apply(&mut self, changes: &[DirChange]) -> SnapshotDelta {
        let mut delta = SnapshotDelta::default();
        let mut member_changes: Vec<(ObjectGuid, &MemberDelta)> = Vec::new();
        // DNs objects had before a rename or move in this batch: a member change in the same batch may
        // still name the old DN.
        let mut former_dns: HashMap<String, ObjectGuid> = HashMap::new();
        for change in changes {
            match change {
                DirChange::Upsert(raw) => {
                    let entry = self.objects.entry(raw.guid).or_insert_with(|| AdObject {
                        guid: raw.guid,
                        kind: raw.kind,
                        dn: raw.dn.clone(),
                        attrs: Default::default(),
                        members: Default::default(),
                        unresolved_members: Default::default(),
                        rid: None,
                    });
                    if entry.dn != raw.dn {
                        let old = normalize_dn(&entry.dn);
                        if self.by_dn.get(&old) == Some(&raw.guid) {
                            self.by_dn.remove(&old);
                        }
                        former_dns.insert(old, raw.guid);
                        entry.dn = raw.dn.clone();
                    }
                    self.by_dn.insert(normalize_dn(&raw.dn), raw.guid);
                    entry.kind = raw.kind;
                    for (name, values) in &raw.attrs {
                        if values.is_empty() {
                            entry.attrs.remove(name);
                        } else {
                            entry.attrs.insert(name.clone(), values.clone());
                        }
                    }
                    if raw.rid.is_some() {
                        entry.rid = raw.rid;
                    }
                    if raw.members != MemberDelta::Unchanged {
                        member_changes.push((raw.guid, &raw.members));
                    }
                    delta.removed.remove(&raw.guid);
                    delta.upserted.insert(raw.guid);
                }
                DirChange::Deleted { guid } => {
                    if let Some(gone) = self.objects.remove(guid) {
                        let dn = normalize_dn(&gone.dn);
                        if self.by_dn.get(&dn) == Some(guid) {
                            self.by_dn.remove(&dn);
                        }
                    }
                    for group in self.objects.values_mut() {
                        if group.members.remove(guid) {
                            delta.upserted.insert(group.guid);
                        }
                    }
                    delta.upserted.remove(guid);
                    delta.removed.insert(*guid);
                }
            }
        }
        for (group_guid, members) in member_changes {
            let resolve = |dn: &String| {
                let key = normalize_dn(dn);
                self.by_dn
                    .get(&key)
                    .or_else(|| former_dns.get(&key))
                    .copied()
                    .ok_or_else(|| dn.clone())
            };
            let (replace, added, removed): (bool, Vec<_>, Vec<_>) = match members {
                MemberDelta::Unchanged => continue,
                MemberDelta::Replace(all) => (true, all.iter().map(resolve).collect(), Vec::new()),
                MemberDelta::Incremental { added, removed } => (
                    false,
                    added.iter().map(resolve).collect(),
                    removed.iter().map(resolve).collect(),
                ),
            };
            let Some(group) = self.objects.get_mut(&group_guid) else {
                continue;
            };
            if replace {
                group.members.clear();
                group.unresolved_members.clear();
            }
            for m in added {
                match m {
                    Ok(guid) => {
                        group.members.insert(guid);
                    }
                    Err(dn) => {
                        group.unresolved_members.insert(dn);
                    }
                }
            }
            for m in removed {
                match m {
                    Ok(guid) => {
                        group.members.remove(&guid);
                    }
                    Err(dn) => {
                        group.unresolved_members.remove(&dn);
                    }
                }
            }
        }
        delta
    }

    /// Users whose primaryGroupID names each RID (the primary group is not in the group's `member`).
    pub fn users_by_primary_group(&self) -> HashMap<u32, Vec<ObjectGuid>> {
        let mut map: HashMap<u32, Vec<ObjectGuid>> = HashMap::new();
        for o in self.objects.values().filter(|o| o.kind == ObjectKind::User) {
            if let Some(rid) = o.primary_group_id() {
                map.entry(rid).or_default().push(o.guid);
            }
        }
        map
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::RawObject;

    pub fn guid(n: u8) -> ObjectGuid {
        ObjectGuid([n; 16])
    }

    pub fn user(n: u8, dn: &str, attrs: &[(&str, &str)]) -> DirChange {
        DirChange::Upsert(RawObject {
            guid: guid(n),
            kind: ObjectKind::User,
            dn: dn.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
            rid: Some(1000 + n as u32),
            members: MemberDelta::Unchanged,
        })
    }

    pub fn group(n: u8, dn: &str, members: MemberDelta, attrs: &[(&str, &str)]) -> DirChange {
        DirChange::Upsert(RawObject {
            guid: guid(n),
            kind: ObjectKind::Group,
            dn: dn.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
            rid: Some(1000 + n as u32),
            members,
        })
    }

    #[test]
    fn members_resolve_within_a_batch_and_survive_a_member_rename() {
        let mut s = DomainSnapshot::default();
        s.apply(&[
            group(
                1,
                "CN=G,OU=A,DC=x",
                MemberDelta::Replace(vec!["cn=u,ou=a,dc=x".into(), "CN=PC,OU=A,DC=x".into()]),
                &[],
            ),
            user(2, "CN=U,OU=A,DC=x", &[("samaccountname", "u")]),
        ]);
        let g = s.get(&guid(1)).unwrap();
        assert_eq!(g.members, BTreeSet::from([guid(2)]));
        assert_eq!(
            g.unresolved_members.len(),
            1,
            "a computer stays unresolved, not dropped"
        );

        // Rename: DirSync reports only the user; the group still holds it by GUID.
        let delta = s.apply(&[user(2, "CN=U2,OU=B,DC=x", &[("samaccountname", "u2")])]);
        assert_eq!(delta.upserted, BTreeSet::from([guid(2)]));
        assert!(s.get(&guid(1)).unwrap().members.contains(&guid(2)));
        assert!(s.by_dn("CN=U,OU=A,DC=x").is_none());
        assert_eq!(
            s.by_dn("cn=u2,ou=b,dc=x").unwrap().first("samaccountname"),
            Some("u2")
        );
    }

    #[test]
    fn a_member_removal_naming_the_old_dn_of_a_user_moved_in_the_same_batch_still_applies() {
        let mut s = DomainSnapshot::default();
        s.apply(&[
            user(2, "CN=U,OU=A,DC=x", &[]),
            group(
                1,
                "CN=G,DC=x",
                MemberDelta::Replace(vec!["CN=U,OU=A,DC=x".into()]),
                &[],
            ),
        ]);
        s.apply(&[
            user(2, "CN=U,OU=Out,DC=x", &[]),
            group(
                1,
                "CN=G,DC=x",
                MemberDelta::Incremental {
                    added: vec![],
                    removed: vec!["CN=U,OU=A,DC=x".into()],
                },
                &[],
            ),
        ]);
        assert!(s.get(&guid(1)).unwrap().members.is_empty());
    }

    #[test]
    fn incremental_members_and_tombstones() {
        let mut s = DomainSnapshot::default();
        s.apply(&[
            user(2, "CN=U,DC=x", &[]),
            user(3, "CN=V,DC=x", &[]),
            group(
                1,
                "CN=G,DC=x",
                MemberDelta::Replace(vec!["CN=U,DC=x".into()]),
                &[],
            ),
        ]);
        s.apply(&[group(
            1,
            "CN=G,DC=x",
            MemberDelta::Incremental {
                added: vec!["CN=V,DC=x".into()],
                removed: vec!["CN=U,DC=x".into()],
            },
            &[],
        )]);
        assert_eq!(s.get(&guid(1)).unwrap().members, BTreeSet::from([guid(3)]));
        let delta = s.apply(&[DirChange::Deleted { guid: guid(3) }]);
        assert!(s.get(&guid(3)).is_none());
        assert!(
            s.get(&guid(1)).unwrap().members.is_empty(),
            "a deleted member leaves every group"
        );
        assert_eq!(delta.removed, BTreeSet::from([guid(3)]));
        assert!(delta.upserted.contains(&guid(1)));
    }

    #[test]
    fn partial_attribute_updates_merge_and_empty_values_clear() {
        let mut s = DomainSnapshot::default();
        s.apply(&[user(
            2,
            "CN=U,DC=x",
            &[
                ("givenname", "Ann"),
                ("sn", "Lee"),
                ("useraccountcontrol", "512"),
            ],
        )]);
        s.apply(&[user(2, "CN=U,DC=x", &[("useraccountcontrol", "514")])]);
        let u = s.get(&guid(2)).unwrap();
        assert!(u.is_disabled());
        assert_eq!(u.first("givenname"), Some("Ann"));
        let mut clear = RawObject {
            guid: guid(2),
            kind: ObjectKind::User,
            dn: "CN=U,DC=x".into(),
            attrs: Default::default(),
            rid: None,
            members: MemberDelta::Unchanged,
        };
        clear.attrs.insert("sn".into(), vec![]);
        s.apply(&[DirChange::Upsert(clear)]);
        assert_eq!(s.get(&guid(2)).unwrap().first("sn"), None);
        assert_eq!(
            s.get(&guid(2)).unwrap().rid,
            Some(1002),
            "a read without objectSid keeps the RID"
        );
    }
}

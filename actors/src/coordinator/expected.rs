//! The links as they will be once every queued operation has run: the planner diffs against this,
//! so an operation still in the outbox is never planned twice.

use std::collections::BTreeMap;

use crate::model::{Anchor, Link, ObjectKind, Op};
use crate::store::{Store, StoreError};

/// What was applied (the store's links) plus every operation still queued in the outbox.
pub fn expected_links(store: &Store) -> Result<BTreeMap<Anchor, Link>, StoreError> {
    let mut links: BTreeMap<Anchor, Link> = store
        .links()?
        .into_iter()
        .map(|l| (l.anchor.clone(), l))
        .collect();
    let mut after = None;
    loop {
        let page = store.pending_ops(after, 1000)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        for (_, op) in &page {
            expect(&mut links, op);
        }
    }
    Ok(links)
}

/// Applies `op` to `links` as if it had completed (JumpCloud ids of new objects are not known yet:
/// empty; the executor resolves ids from the store when it runs later operations).
pub fn expect(links: &mut BTreeMap<Anchor, Link>, op: &Op) {
    match op {
        Op::CreateUser { user } | Op::TakeOverUser { user, .. } | Op::UpdateUser { user } => {
            let id = match op {
                Op::TakeOverUser { jumpcloud_id, .. } => jumpcloud_id.clone(),
                _ => links
                    .get(&user.anchor)
                    .map(|l| l.jumpcloud_id.clone())
                    .unwrap_or_default(),
            };
            links.insert(
                user.anchor.clone(),
                Link {
                    anchor: user.anchor.clone(),
                    kind: ObjectKind::User,
                    jumpcloud_id: id,
                    applied_user: Some(user.clone()),
                    applied_group_name: None,
                    applied_members: Default::default(),
                },
            );
        }
        Op::CreateGroup { group } => {
            let members = links
                .get(&group.anchor)
                .map(|l| l.applied_members.clone())
                .unwrap_or_default();
            links.insert(
                group.anchor.clone(),
                Link {
                    anchor: group.anchor.clone(),
                    kind: ObjectKind::Group,
                    jumpcloud_id: String::new(),
                    applied_user: None,
                    applied_group_name: Some(group.name.clone()),
                    applied_members: members,
                },
            );
        }
        Op::RenameGroup { anchor, name } => {
            if let Some(l) = links.get_mut(anchor) {
                l.applied_group_name = Some(name.clone());
            }
        }
        Op::AddMember { group, user } => {
            if let Some(l) = links.get_mut(group) {
                l.applied_members.insert(user.clone());
            }
        }
        Op::RemoveMember { group, user } => {
            if let Some(l) = links.get_mut(group) {
                l.applied_members.remove(user);
            }
        }
        Op::RemoveUser { anchor, .. } | Op::DeleteGroup { anchor } => {
            links.remove(anchor);
        }
    }
}

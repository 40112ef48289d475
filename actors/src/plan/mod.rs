//! Planning: desired state (AD scope, mapped) + what was applied (links) + what JumpCloud holds →
//! the operations to run. Pure functions: no I/O, no clock. `forestsync plan` and the daemon run the
//! same code; only the executor differs.

pub mod mapping;
pub mod scope;
pub mod to_ad;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{
    Anchor, DesiredGroup, DesiredUser, DomainSnapshot, Link, ObjectKind, Op, RemoveAction,
};
pub use mapping::{desired_group, desired_user, MappingRules, Problem, UsernameFrom};
pub use scope::{resolve_scope, Scope, ScopeError};

/// What to do when an AD user's username already belongs to a JumpCloud user forestsync does not manage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collision {
    ReportAndSkip,
    TakeOver,
}

pub struct DomainInput<'a> {
    pub name: &'a str,
    pub snapshot: &'a DomainSnapshot,
    pub root_group_dn: &'a str,
    pub rules: &'a MappingRules,
    pub leave_action: RemoveAction,
    pub collision: Collision,
}

/// A JumpCloud user or group that exists, as the planner needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    pub id: String,
    /// Username (users) or name (groups).
    pub name: String,
    /// The `forestsync_anchor` back-link, when forestsync created it.
    pub anchor_marker: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guard {
    pub max_removals: u32,
    pub max_removal_percent: u32,
    /// Removals an operator approved for this run (one-shot override).
    pub approved: u32,
}

pub struct PlanInput<'a> {
    pub domains: &'a [DomainInput<'a>],
    pub links: &'a BTreeMap<Anchor, Link>,
    pub jumpcloud_users: &'a [Existing],
    pub jumpcloud_groups: &'a [Existing],
    pub guard: Guard,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardTrip {
    pub removals: usize,
    pub limit: usize,
    /// The destructive operations held back until approved.
    pub held: Vec<Op>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub problems: Vec<Problem>,
    /// Domains whose scope could not be determined: nothing in them is removed this round.
    pub domain_errors: Vec<(String, String)>,
    pub excluded: Vec<(Anchor, String, &'static str)>,
    pub guard: Option<GuardTrip>,
    /// Per domain whose scope was resolved: (domain, users in scope, groups in scope).
    pub scope_sizes: Vec<(String, usize, usize)>,
}

pub fn plan(input: &PlanInput) -> Plan {
    let mut out = Plan::default();
    let mut users: Vec<DesiredUser> = Vec::new();
    let mut groups: Vec<DesiredGroup> = Vec::new();
    // Linked objects kept as they are (a data problem never removes anything).
    let mut held: BTreeSet<Anchor> = BTreeSet::new();
    let mut frozen_domains: BTreeSet<&str> = BTreeSet::new();

    for d in input.domains {
        let scope = match resolve_scope(d.snapshot, d.root_group_dn) {
            Ok(s) => s,
            Err(e) => {
                out.domain_errors.push((d.name.to_owned(), e.to_string()));
                frozen_domains.insert(d.name);
                continue;
            }
        };
        out.scope_sizes
            .push((d.name.to_owned(), scope.users.len(), scope.groups.len()));
        let linked_here = input.links.keys().any(|a| a.domain == d.name);
        if scope.is_empty() && linked_here {
            out.domain_errors.push((
                d.name.to_owned(),
                format!(
                    "the scope under {} reads as empty while {} objects are linked; treated as an error, nothing is removed",
                    d.root_group_dn,
                    input.links.keys().filter(|a| a.domain == d.name).count()
                ),
            ));
            frozen_domains.insert(d.name);
            continue;
        }
        for (guid, dn, why) in &scope.excluded {
            out.excluded.push((
                Anchor {
                    domain: d.name.into(),
                    guid: *guid,
                },
                dn.clone(),
                why,
            ));
        }
        let mut ok_users = BTreeSet::new();
        for guid in &scope.users {
            let Some(obj) = d.snapshot.get(guid) else {
                continue;
            };
            match desired_user(d.name, obj, d.rules) {
                Ok(u) => {
                    ok_users.insert(u.anchor.clone());
                    users.push(u);
                }
                Err(p) => {
                    held.insert(p.anchor.clone());
                    out.problems.push(p);
                }
            }
        }
        for (guid, members) in &scope.groups {
            let Some(obj) = d.snapshot.get(guid) else {
                continue;
            };
            let anchors = members
                .iter()
                .map(|g| Anchor {
                    domain: d.name.into(),
                    guid: *g,
                })
                .filter(|a| {
                    ok_users.contains(a) || (held.contains(a) && input.links.contains_key(a))
                })
                .collect();
            match desired_group(d.name, obj, anchors) {
                Ok(g) => groups.push(g),
                Err(p) => {
                    held.insert(p.anchor.clone());
                    out.problems.push(p);
                }
            }
        }
    }

    // The same username (or group name) from several domains: never merged. A side already linked keeps it.
    let users = drop_conflicts(
        users,
        |u| u.username.clone(),
        |u| (&u.anchor, &u.external_dn),
        input.links,
        "username",
        &mut held,
        &mut out.problems,
    );
    // Members that lost a conflict are not synced, so they are not group members in JumpCloud either.
    let member_ok: BTreeSet<Anchor> = users
        .iter()
        .map(|u| u.anchor.clone())
        .chain(
            held.iter()
                .filter(|a| input.links.contains_key(*a))
                .cloned(),
        )
        .collect();
    for g in &mut groups {
        g.members.retain(|m| member_ok.contains(m));
    }
    let groups = drop_conflicts(
        groups,
        |g| g.name.to_lowercase(),
        |g| (&g.anchor, &g.name),
        input.links,
        "group name",
        &mut held,
        &mut out.problems,
    );
    let desired_anchors: BTreeSet<&Anchor> = users
        .iter()
        .map(|u| &u.anchor)
        .chain(groups.iter().map(|g| &g.anchor))
        .collect();
    let user_domains: HashMap<&str, Collision> = input
        .domains
        .iter()
        .map(|d| (d.name, d.collision))
        .collect();

    let jc_users: HashMap<String, &Existing> = input
        .jumpcloud_users
        .iter()
        .map(|e| (e.name.to_lowercase(), e))
        .collect();
    let jc_groups: HashMap<String, &Existing> = input
        .jumpcloud_groups
        .iter()
        .map(|e| (e.name.to_lowercase(), e))
        .collect();

    let (mut creates, mut updates, mut group_ops, mut adds, mut member_removes) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut skipped_users: BTreeSet<Anchor> = BTreeSet::new();
    for u in &users {
        match input.links.get(&u.anchor) {
            Some(link) => {
                if link.applied_user.as_ref() != Some(u) {
                    updates.push(Op::UpdateUser { user: u.clone() });
                }
            }
            None => match jc_users.get(&u.username) {
                Some(existing)
                    if existing.anchor_marker.as_deref() == Some(&u.anchor.to_string()) =>
                {
                    creates.push(Op::CreateUser { user: u.clone() });
                }
                Some(existing) => match user_domains.get(u.anchor.domain.as_str()) {
                    Some(Collision::TakeOver) => creates.push(Op::TakeOverUser {
                        user: u.clone(),
                        jumpcloud_id: existing.id.clone(),
                    }),
                    _ => {
                        skipped_users.insert(u.anchor.clone());
                        out.problems.push(Problem {
                            anchor: u.anchor.clone(),
                            dn: u.external_dn.clone(),
                            message: format!(
                                "not synced: JumpCloud already has a user named {:?} (id {}) that forestsync does not manage; \
                                 set username_collision = \"take-over\" for this domain to adopt it",
                                u.username, existing.id
                            ),
                        });
                    }
                },
                None => creates.push(Op::CreateUser { user: u.clone() }),
            },
        }
    }
    for g in &groups {
        let link = input.links.get(&g.anchor);
        match link {
            Some(link) => {
                if link.applied_group_name.as_deref() != Some(g.name.as_str()) {
                    group_ops.push(Op::RenameGroup {
                        anchor: g.anchor.clone(),
                        name: g.name.clone(),
                    });
                }
            }
            None => match jc_groups.get(&g.name.to_lowercase()) {
                Some(existing)
                    if existing.anchor_marker.as_deref() != Some(&g.anchor.to_string()) =>
                {
                    out.problems.push(Problem {
                        anchor: g.anchor.clone(),
                        dn: String::new(),
                        message: format!(
                            "group not synced: JumpCloud already has a user group named {:?} (id {}) that forestsync does not manage",
                            g.name, existing.id
                        ),
                    });
                    continue;
                }
                _ => group_ops.push(Op::CreateGroup { group: g.clone() }),
            },
        }
        let applied = link.map(|l| l.applied_members.clone()).unwrap_or_default();
        for user in g.members.difference(&applied) {
            if !skipped_users.contains(user) {
                adds.push(Op::AddMember {
                    group: g.anchor.clone(),
                    user: user.clone(),
                });
            }
        }
        for user in applied.difference(&g.members) {
            member_removes.push(Op::RemoveMember {
                group: g.anchor.clone(),
                user: user.clone(),
            });
        }
    }

    // Linked objects no longer desired leave scope (unless their domain could not be read or they are held).
    let mut removals = Vec::new();
    let mut scope_size = 0usize;
    let leave: HashMap<&str, RemoveAction> = input
        .domains
        .iter()
        .map(|d| (d.name, d.leave_action))
        .collect();
    for (anchor, link) in input.links {
        let Some(action) = leave.get(anchor.domain.as_str()) else {
            continue;
        };
        if frozen_domains.contains(anchor.domain.as_str()) {
            continue;
        }
        scope_size += 1;
        if desired_anchors.contains(anchor) || held.contains(anchor) {
            continue;
        }
        match link.kind {
            ObjectKind::User => removals.push(Op::RemoveUser {
                anchor: anchor.clone(),
                action: *action,
            }),
            ObjectKind::Group => removals.push(Op::DeleteGroup {
                anchor: anchor.clone(),
            }),
        }
    }

    let destructive = removals.iter().filter(|op| op.is_removal()).count();
    let by_percent = (scope_size * input.guard.max_removal_percent as usize).div_ceil(100);
    let limit = (input.guard.max_removals as usize).min(by_percent);
    if destructive > limit && destructive > input.guard.approved as usize {
        let (held_ops, kept): (Vec<Op>, Vec<Op>) = removals.into_iter().partition(Op::is_removal);
        removals = kept;
        out.guard = Some(GuardTrip {
            removals: destructive,
            limit,
            held: held_ops,
        });
    }

    out.ops = creates
        .into_iter()
        .chain(updates)
        .chain(group_ops)
        .chain(adds)
        .chain(member_removes)
        .chain(removals)
        .collect();
    out
}

/// Removes entries whose key collides across anchors; an already-linked side wins, the others are problems.
fn drop_conflicts<T, K: Fn(&T) -> String, D: Fn(&T) -> (&Anchor, &String)>(
    items: Vec<T>,
    key: K,
    describe: D,
    links: &BTreeMap<Anchor, Link>,
    what: &str,
    held: &mut BTreeSet<Anchor>,
    problems: &mut Vec<Problem>,
) -> Vec<T> {
    let mut by_key: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for item in items {
        by_key.entry(key(&item)).or_default().push(item);
    }
    let mut out = Vec::new();
    for (k, mut same) in by_key {
        if same.len() == 1 {
            out.extend(same);
            continue;
        }
        let all: Vec<String> = same
            .iter()
            .map(|i| format!("{} ({})", describe(i).1, describe(i).0))
            .collect();
        let winner = same.iter().position(|i| links.contains_key(describe(i).0));
        let kept = winner.map(|w| same.remove(w));
        for loser in &same {
            let (anchor, dn) = describe(loser);
            held.insert(anchor.clone());
            problems.push(Problem {
                anchor: anchor.clone(),
                dn: dn.clone(),
                message: format!(
                    "conflict: {what} {k:?} exists in several domains: {}; not merged{}",
                    all.join(", "),
                    if kept.is_some() {
                        " (the side already in JumpCloud is kept)"
                    } else {
                        "; none is synced until it is unique"
                    }
                ),
            });
        }
        out.extend(kept);
    }
    out
}

#[cfg(test)]
mod tests;

//! Planner cases as data: (AD state, links, JumpCloud state) → expected operations.

use super::*;
use crate::model::snapshot::tests::{group, guid, user};
use crate::model::{DirChange, MemberDelta, ObjectGuid};

const SEC: (&str, &str) = ("grouptype", "-2147483646");
const ROOT: &str = "CN=JumpCloud,OU=ADI,DC=x";

fn person(n: u8, sam: &str, extra: &[(&'static str, &'static str)]) -> DirChange {
    let mut attrs: Vec<(&str, &str)> = vec![
        ("samaccountname", sam),
        ("givenname", "Given"),
        ("sn", "Sur"),
        ("mail", "m@x.test"),
    ];
    attrs.extend_from_slice(extra);
    user(n, &format!("CN={sam},OU=ADI,DC=x"), &attrs)
}

fn root(members: &[&str]) -> DirChange {
    group(
        100,
        ROOT,
        MemberDelta::Replace(members.iter().map(|m| m.to_string()).collect()),
        &[SEC],
    )
}

fn snap(changes: &[DirChange]) -> DomainSnapshot {
    let mut s = DomainSnapshot::default();
    s.apply(changes);
    s
}

fn anchor(domain: &str, n: u8) -> Anchor {
    Anchor {
        domain: domain.into(),
        guid: guid(n),
    }
}

struct Case {
    domains: Vec<(&'static str, DomainSnapshot, RemoveAction, Collision)>,
    links: BTreeMap<Anchor, Link>,
    jc_users: Vec<Existing>,
    guard: Guard,
}

impl Case {
    fn new(domain: &'static str, s: DomainSnapshot) -> Self {
        Case {
            domains: vec![(domain, s, RemoveAction::Delete, Collision::ReportAndSkip)],
            links: BTreeMap::new(),
            jc_users: vec![],
            guard: Guard {
                max_removals: 500,
                max_removal_percent: 100,
                approved: 0,
            },
        }
    }

    fn run(&self) -> Plan {
        let rules = MappingRules::default();
        let inputs: Vec<DomainInput> = self
            .domains
            .iter()
            .map(|(name, s, action, collision)| DomainInput {
                name,
                snapshot: s,
                root_group_dn: ROOT,
                rules: &rules,
                leave_action: *action,
                collision: *collision,
            })
            .collect();
        plan(&PlanInput {
            domains: &inputs,
            links: &self.links,
            jumpcloud_users: &self.jc_users,
            jumpcloud_groups: &[],
            guard: self.guard,
        })
    }

    /// Links as if the plan had been fully applied.
    fn apply(&mut self, plan: &Plan) {
        for op in &plan.ops {
            match op {
                Op::CreateUser { user }
                | Op::TakeOverUser { user, .. }
                | Op::UpdateUser { user } => {
                    self.links.insert(
                        user.anchor.clone(),
                        Link {
                            anchor: user.anchor.clone(),
                            kind: ObjectKind::User,
                            jumpcloud_id: format!("id-{}", user.username),
                            applied_user: Some(user.clone()),
                            applied_group_name: None,
                            applied_members: Default::default(),
                        },
                    );
                }
                Op::CreateGroup { group } => {
                    self.links.insert(
                        group.anchor.clone(),
                        Link {
                            anchor: group.anchor.clone(),
                            kind: ObjectKind::Group,
                            jumpcloud_id: format!("g-{}", group.name),
                            applied_user: None,
                            applied_group_name: Some(group.name.clone()),
                            applied_members: Default::default(),
                        },
                    );
                }
                Op::RenameGroup { anchor, name } => {
                    self.links.get_mut(anchor).unwrap().applied_group_name = Some(name.clone())
                }
                Op::AddMember { group, user } => {
                    self.links
                        .get_mut(group)
                        .unwrap()
                        .applied_members
                        .insert(user.clone());
                }
                Op::RemoveMember { group, user } => {
                    self.links
                        .get_mut(group)
                        .unwrap()
                        .applied_members
                        .remove(user);
                }
                Op::RemoveUser { anchor, .. } | Op::DeleteGroup { anchor } => {
                    self.links.remove(anchor);
                }
            }
        }
    }
}

fn kinds(plan: &Plan) -> Vec<String> {
    plan.ops
        .iter()
        .map(|op| match op {
            Op::CreateUser { user } => format!("create {}", user.username),
            Op::TakeOverUser { user, jumpcloud_id } => {
                format!("takeover {} {jumpcloud_id}", user.username)
            }
            Op::UpdateUser { user } => format!(
                "update {}{}",
                user.username,
                if user.suspended { " suspended" } else { "" }
            ),
            Op::RemoveUser { anchor, action } => format!("remove {} {action:?}", anchor.guid.0[0]),
            Op::CreateGroup { group } => {
                format!("create-group {} {}", group.name, group.members.len())
            }
            Op::RenameGroup { name, .. } => format!("rename-group {name}"),
            Op::DeleteGroup { anchor } => format!("delete-group {}", anchor.guid.0[0]),
            Op::AddMember { user, .. } => format!("add {}", user.guid.0[0]),
            Op::RemoveMember { user, .. } => format!("unadd {}", user.guid.0[0]),
        })
        .collect()
}

fn base() -> Vec<DirChange> {
    vec![
        person(1, "ann", &[]),
        person(2, "bob", &[]),
        group(
            10,
            "CN=Eng,OU=ADI,DC=x",
            MemberDelta::Replace(vec![
                "CN=ann,OU=ADI,DC=x".into(),
                "CN=bob,OU=ADI,DC=x".into(),
            ]),
            &[SEC, ("samaccountname", "Eng")],
        ),
        root(&["CN=Eng,OU=ADI,DC=x"]),
    ]
}

#[test]
fn initial_sync_creates_users_then_groups_then_memberships() {
    let p = Case::new("alpha", snap(&base())).run();
    assert_eq!(
        kinds(&p),
        [
            "create ann",
            "create bob",
            "create-group Eng 2",
            "add 1",
            "add 2"
        ]
    );
    assert!(p.problems.is_empty() && p.domain_errors.is_empty());
}

#[test]
fn a_second_run_with_nothing_changed_plans_nothing() {
    let mut c = Case::new("alpha", snap(&base()));
    let first = c.run();
    c.apply(&first);
    assert_eq!(kinds(&c.run()), Vec::<String>::new());
}

#[test]
fn disable_rename_and_membership_changes_are_updates_not_recreates() {
    let mut c = Case::new("alpha", snap(&base()));
    let first = c.run();
    c.apply(&first);
    c.domains[0].1.apply(&[
        user(1, "CN=ann,OU=ADI,DC=x", &[("useraccountcontrol", "514")]),
        user(
            2,
            "CN=robert,OU=Moved,OU=ADI,DC=x",
            &[("samaccountname", "robert")],
        ),
        group(
            10,
            "CN=Eng,OU=ADI,DC=x",
            MemberDelta::Incremental {
                added: vec![],
                removed: vec!["CN=robert,OU=Moved,OU=ADI,DC=x".into()],
            },
            &[("samaccountname", "Engineering")],
        ),
    ]);
    let p = c.run();
    // bob is still in scope? No: his only path (Eng) lost him, so he leaves scope.
    assert_eq!(
        kinds(&p),
        [
            "update ann suspended",
            "rename-group Engineering",
            "unadd 2",
            "remove 2 Delete"
        ]
    );
}

#[test]
fn leaving_scope_follows_the_configured_action() {
    for (action, expected) in [
        (RemoveAction::Delete, "remove 2 Delete"),
        (RemoveAction::Suspend, "remove 2 Suspend"),
        (RemoveAction::Unbind, "remove 2 Unbind"),
    ] {
        let mut c = Case::new("alpha", snap(&base()));
        c.domains[0].2 = action;
        let first = c.run();
        c.apply(&first);
        c.domains[0]
            .1
            .apply(&[DirChange::Deleted { guid: guid(2) }]);
        assert_eq!(kinds(&c.run()), ["unadd 2", expected], "{action:?}");
    }
}

#[test]
fn same_username_in_two_domains_is_a_conflict_naming_both() {
    let mut c = Case::new("alpha", snap(&base()));
    c.domains.push((
        "beta",
        snap(&[person(1, "ann", &[]), root(&["CN=ann,OU=ADI,DC=x"])]),
        RemoveAction::Delete,
        Collision::ReportAndSkip,
    ));
    let p = c.run();
    assert!(
        !kinds(&p).iter().any(|k| k == "create ann"),
        "{:?}",
        kinds(&p)
    );
    let conflicts: Vec<_> = p
        .problems
        .iter()
        .filter(|p| p.message.contains("conflict: username \"ann\""))
        .collect();
    assert_eq!(conflicts.len(), 2);
    assert!(conflicts[0].message.contains("alpha/") && conflicts[0].message.contains("beta/"));
    // ann is not a member of Eng in JumpCloud either (she is not synced)
    assert_eq!(kinds(&p), ["create bob", "create-group Eng 1", "add 2"]);
}

#[test]
fn an_existing_jumpcloud_username_is_reported_or_taken_over() {
    let mut c = Case::new("alpha", snap(&base()));
    c.jc_users = vec![Existing {
        id: "jc1".into(),
        name: "Ann".into(),
        anchor_marker: None,
    }];
    let p = c.run();
    assert!(p
        .problems
        .iter()
        .any(|p| p.message.contains("already has a user named \"ann\"")));
    assert_eq!(kinds(&p), ["create bob", "create-group Eng 2", "add 2"]);

    c.domains[0].3 = Collision::TakeOver;
    assert_eq!(kinds(&c.run())[0], "takeover ann jc1");

    // Our own half-finished create (crash before the link was stored) is adopted, not a collision.
    c.domains[0].3 = Collision::ReportAndSkip;
    c.jc_users[0].anchor_marker = Some(anchor("alpha", 1).to_string());
    assert_eq!(kinds(&c.run())[0], "create ann");
}

#[test]
fn a_missing_attribute_blocks_only_that_user_and_never_removes_it() {
    let mut c = Case::new("alpha", snap(&base()));
    let first = c.run();
    c.apply(&first);
    let mut clear = match user(1, "CN=ann,OU=ADI,DC=x", &[]) {
        DirChange::Upsert(r) => r,
        _ => unreachable!(),
    };
    clear.attrs.insert("sn".into(), vec![]);
    c.domains[0].1.apply(&[DirChange::Upsert(clear)]);
    let p = c.run();
    assert_eq!(
        kinds(&p),
        Vec::<String>::new(),
        "ann is kept as she is, bob untouched"
    );
    assert!(p.problems[0].message.contains("last name"));
}

#[test]
fn a_missing_root_group_or_empty_scope_removes_nothing() {
    let mut c = Case::new("alpha", snap(&base()));
    let first = c.run();
    c.apply(&first);
    c.domains[0].1 = snap(&[person(1, "ann", &[])]);
    let p = c.run();
    assert!(p.ops.is_empty());
    assert!(p.domain_errors[0].1.contains("not found"));

    c.domains[0].1 = snap(&[person(1, "ann", &[]), root(&[])]);
    let p = c.run();
    assert!(p.ops.is_empty());
    assert!(p.domain_errors[0].1.contains("reads as empty"));
}

#[test]
fn the_removal_guard_holds_destructive_ops_until_approved() {
    let mut many = vec![];
    let mut dns = vec![];
    for n in 1..=20u8 {
        many.push(person(n, &format!("u{n}"), &[]));
        dns.push(format!("CN=u{n},OU=ADI,DC=x"));
    }
    many.push(root(&dns.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut c = Case::new("alpha", snap(&many));
    c.guard = Guard {
        max_removals: 500,
        max_removal_percent: 20,
        approved: 0,
    };
    let first = c.run();
    c.apply(&first);
    // 5 of 20 users leave (25 % > 20 %): held; 4 would pass.
    c.domains[0].1.apply(&[root(
        &dns[5..].iter().map(String::as_str).collect::<Vec<_>>(),
    )]);
    let p = c.run();
    let trip = p.guard.clone().expect("guard trips");
    assert_eq!((trip.removals, trip.limit, trip.held.len()), (5, 4, 5));
    assert!(p.ops.iter().all(|op| !op.is_removal()));
    c.guard.approved = 5;
    let p = c.run();
    assert!(p.guard.is_none());
    assert_eq!(p.ops.iter().filter(|op| op.is_removal()).count(), 5);
}

#[test]
fn guids_are_the_identity_not_names() {
    // A user deleted and re-created with the same name is a new object: remove + create.
    let mut c = Case::new("alpha", snap(&base()));
    let first = c.run();
    c.apply(&first);
    c.domains[0].1.apply(&[
        DirChange::Deleted { guid: guid(2) },
        person(3, "bob", &[]),
        group(
            10,
            "CN=Eng,OU=ADI,DC=x",
            MemberDelta::Incremental {
                added: vec!["CN=bob,OU=ADI,DC=x".into()],
                removed: vec![],
            },
            &[],
        ),
    ]);
    let ks = kinds(&c.run());
    assert_eq!(ks, ["create bob", "add 3", "unadd 2", "remove 2 Delete"]);
    let _ = ObjectGuid([0; 16]);
}

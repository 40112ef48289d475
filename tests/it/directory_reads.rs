//! Reading users and groups from the lab DCs as the agent does: DirSync (INCREMENTAL_VALUES) full and
//! incremental reads, explicit ranged member reads, cookies moved between DCs, invocationIds.
//!
//! Every test works in its own OU (unique name, directly under the domain), reads as the service
//! account (Replicating Directory Changes), writes as Administrator, and removes its OU afterwards,
//! also when an assertion fails. Other tests change the domain at the same time, so assertions only
//! look at this test's own objects (by objectGUID), never at counts of the whole stream.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use forestsync_actors::directory::{
    changes_since, full_read, invocation_id, read_members, DcSession, ReadSpec,
};
use forestsync_actors::model::{DirChange, MemberDelta, ObjectGuid, ObjectKind, RawObject};
use forestsync_actors::trust;
use ldap3::controls::RawControl;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use crate::support::{self, attr, unique, Lab};

const TREE_DELETE_OID: &str = "1.2.840.113556.1.4.805";

/// The service account's session on one ALPHA DC (the agent's identity: reads only).
async fn reader(lab: &Lab, url: &str) -> DcSession {
    support::bound_session(lab, url, &lab.alpha.bind_dn, &lab.alpha.bind_password).await
}

async fn admin(lab: &Lab) -> DcSession {
    support::admin_session(lab, &lab.alpha, &lab.alpha.dc_urls[0]).await
}

/// A plain ldap3 connection as Administrator on ALPHA DC1, for what `DcSession` does not offer
/// (modify DN, tree delete, reading objectGUID independently of the code under test).
async fn raw_admin(lab: &Lab) -> Ldap {
    let tls = trust::client_config(Some(&lab.ca_file)).expect("lab CA loads");
    let settings = LdapConnSettings::new()
        .set_config(tls)
        .set_conn_timeout(support::TIMEOUTS.connect);
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &lab.alpha.dc_urls[0])
        .await
        .expect("raw LDAP connection to ALPHA DC1");
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    ldap.with_timeout(support::TIMEOUTS.operation)
        .simple_bind(&lab.alpha.admin_dn, lab.admin_password.expose())
        .await
        .and_then(|r| r.success())
        .expect("admin bind");
    ldap
}

/// Creates `OU=<unique>,<ALPHA base>`, runs `body(lab, ou_dn)`, then deletes the OU with everything in
/// it (tree delete; entry by entry if that is refused), and only then re-raises a failure of the body.
async fn in_own_ou<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(&'static Lab, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(lab) = support::lab() else { return };
    let ou = format!("OU={},{}", unique(prefix), lab.alpha.base_dn);
    admin(lab)
        .await
        .add(
            &ou,
            vec![attr("objectClass", &["top", "organizationalUnit"])],
        )
        .await
        .unwrap_or_else(|e| panic!("create {ou}: {e}"));
    let outcome = tokio::spawn(body(lab, ou.clone())).await;
    remove_subtree(lab, &ou).await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test body did not finish: {e}"),
        }
    }
}

async fn remove_subtree(lab: &Lab, ou: &str) {
    let started = Instant::now();
    let mut ldap = raw_admin(lab).await;
    // Groups first: deleting a member of a large group rewrites the group's links, which makes a
    // tree delete of 2,000 members of one group take minutes instead of seconds.
    if let Ok(found) = ldap
        .with_timeout(support::TIMEOUTS.operation)
        .search(ou, Scope::Subtree, "(objectClass=group)", vec!["1.1"])
        .await
    {
        for entry in found.0.into_iter().filter(|e| !e.is_ref()) {
            let dn = SearchEntry::construct(entry).dn;
            if let Err(e) = ldap.with_timeout(Duration::from_secs(60)).delete(&dn).await {
                eprintln!("clean-up: delete {dn}: {e}");
            }
        }
    }
    let tree = ldap
        .with_timeout(Duration::from_secs(180))
        .with_controls(RawControl {
            ctype: TREE_DELETE_OID.into(),
            crit: true,
            val: None,
        })
        .delete(ou)
        .await;
    if matches!(&tree, Ok(r) if r.rc == 0) {
        if started.elapsed() > Duration::from_secs(5) {
            eprintln!("clean-up of {ou} took {:?}", started.elapsed());
        }
        return;
    }
    eprintln!("tree delete of {ou} refused ({tree:?}); deleting entry by entry");
    let found = ldap
        .with_timeout(support::TIMEOUTS.operation)
        .search(ou, Scope::Subtree, "(objectClass=*)", vec!["1.1"])
        .await;
    let mut dns: Vec<String> = match found {
        Ok(r) => {
            r.0.into_iter()
                .filter(|e| !e.is_ref())
                .map(|e| SearchEntry::construct(e).dn)
                .collect()
        }
        Err(e) => {
            eprintln!("cannot list {ou} for clean-up: {e}");
            return;
        }
    };
    // Children have longer DNs than their parents: deepest first, the OU last.
    dns.sort_by_key(|dn| std::cmp::Reverse(dn.len()));
    for dn in dns {
        if let Err(e) = ldap
            .with_timeout(support::TIMEOUTS.operation)
            .delete(&dn)
            .await
        {
            eprintln!("clean-up: delete {dn}: {e}");
        }
    }
}

/// objectGUID as the DC stores it, read without the code under test (ldap3 may file the 16 bytes
/// under `attrs` when they happen to be valid UTF-8).
async fn guid_of(ldap: &mut Ldap, dn: &str) -> ObjectGuid {
    let (entries, _) = ldap
        .with_timeout(support::TIMEOUTS.operation)
        .search(dn, Scope::Base, "(objectClass=*)", vec!["objectGUID"])
        .await
        .and_then(|r| r.success())
        .unwrap_or_else(|e| panic!("read objectGUID of {dn}: {e}"));
    let entry = SearchEntry::construct(entries.into_iter().next().expect("entry"));
    let bytes = entry
        .bin_attrs
        .get("objectGUID")
        .and_then(|v| v.first().cloned())
        .or_else(|| {
            entry
                .attrs
                .get("objectGUID")
                .and_then(|v| v.first())
                .map(|s| s.as_bytes().to_vec())
        })
        .expect("objectGUID");
    ObjectGuid::from_bytes(&bytes).expect("16-byte objectGUID")
}

async fn add_user(admin: &mut DcSession, ou: &str, cn: &str, extra: &[(&str, &str)]) -> String {
    let dn = format!("CN={cn},{ou}");
    let mut attrs = vec![
        attr(
            "objectClass",
            &["top", "person", "organizationalPerson", "user"],
        ),
        attr("sAMAccountName", &[cn]),
        attr("userAccountControl", &["544"]),
    ];
    attrs.extend(extra.iter().map(|(k, v)| attr(k, &[v])));
    admin
        .add(&dn, attrs)
        .await
        .unwrap_or_else(|e| panic!("add {dn}: {e}"));
    dn
}

async fn add_group(admin: &mut DcSession, ou: &str, cn: &str, members: &[&str]) -> String {
    let dn = format!("CN={cn},{ou}");
    let mut attrs = vec![
        attr("objectClass", &["top", "group"]),
        attr("sAMAccountName", &[cn]),
        attr("groupType", &["-2147483646"]),
    ];
    if !members.is_empty() {
        attrs.push(attr("member", members));
    }
    admin
        .add(&dn, attrs)
        .await
        .unwrap_or_else(|e| panic!("add {dn}: {e}"));
    dn
}

fn spec(lab: &Lab) -> ReadSpec {
    ReadSpec::new(lab.alpha.base_dn.clone())
}

/// This test's changes: those naming one of `guids`, in stream order.
fn changes_of<'a>(changes: &'a [DirChange], guids: &[ObjectGuid]) -> Vec<&'a DirChange> {
    changes
        .iter()
        .filter(|c| match c {
            DirChange::Upsert(o) => guids.contains(&o.guid),
            DirChange::Deleted { guid } => guids.contains(guid),
        })
        .collect()
}

fn only_upsert<'a>(changes: &'a [DirChange], guid: ObjectGuid, what: &str) -> &'a RawObject {
    let mine = changes_of(changes, &[guid]);
    match mine.as_slice() {
        [DirChange::Upsert(o)] => o,
        other => panic!("{what}: expected exactly one upsert for {guid}, got {other:#?}"),
    }
}

fn same_dn(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn dn_set<S: AsRef<str>>(dns: &[S]) -> BTreeSet<String> {
    dns.iter()
        .map(|d| d.as_ref().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn a_full_read_finds_the_ous_users_and_groups_with_kind_guid_dn_and_complete_members() {
    in_own_ou("drfull", |lab, ou| async move {
        let mut adm = admin(lab).await;
        let tag = unique("f");
        let u1 = add_user(
            &mut adm,
            &ou,
            &format!("{tag}a"),
            &[
                ("givenName", "Ada"),
                ("sn", "Lovelace"),
                ("mail", "ada@alpha.test"),
            ],
        )
        .await;
        let u2 = add_user(&mut adm, &ou, &format!("{tag}b"), &[]).await;
        let u3 = add_user(&mut adm, &ou, &format!("{tag}c"), &[]).await;
        let g1 = add_group(&mut adm, &ou, &format!("{tag}g"), &[&u1, &u2, &u3]).await;
        let empty = add_group(&mut adm, &ou, &format!("{tag}e"), &[]).await;
        let mut raw = raw_admin(lab).await;
        let mut guids = Vec::new();
        for dn in [&u1, &u2, &u3, &g1, &empty] {
            guids.push(guid_of(&mut raw, dn).await);
        }

        let mut svc = reader(lab, &lab.alpha.dc_urls[0]).await;
        let (changes, cookie) = full_read(&mut svc, &spec(lab)).await.expect("full read");
        assert!(!cookie.is_empty(), "a full read returns a cookie");

        let expect = [
            (&u1, ObjectKind::User),
            (&u2, ObjectKind::User),
            (&u3, ObjectKind::User),
            (&g1, ObjectKind::Group),
            (&empty, ObjectKind::Group),
        ];
        for ((dn, kind), guid) in expect.iter().zip(&guids) {
            let o = only_upsert(&changes, *guid, "full read");
            assert!(same_dn(&o.dn, dn), "{guid}: dn {} != {dn}", o.dn);
            assert_eq!(o.kind, *kind, "{dn}");
            assert!(
                o.rid.is_some_and(|r| r >= 1000),
                "{dn}: RID from objectSid: {:?}",
                o.rid
            );
            assert!(
                o.attrs.contains_key("samaccountname"),
                "{dn}: {:?}",
                o.attrs
            );
            assert!(
                !o.attrs.contains_key("objectguid") && !o.attrs.contains_key("member"),
                "{dn}: structural attributes stay out of attrs: {:?}",
                o.attrs.keys()
            );
        }
        let ada = only_upsert(&changes, guids[0], "full read");
        assert_eq!(ada.attrs["givenname"], vec!["Ada"]);
        assert_eq!(ada.attrs["mail"], vec!["ada@alpha.test"]);
        assert_eq!(ada.attrs["useraccountcontrol"], vec!["544"]);
        assert_eq!(ada.attrs["primarygroupid"], vec!["513"]);
        assert_eq!(ada.members, MemberDelta::Unchanged);

        let MemberDelta::Replace(members) = &only_upsert(&changes, guids[3], "full read").members
        else {
            panic!("a full read replaces a group's members")
        };
        assert_eq!(dn_set(members), dn_set(&[&u1, &u2, &u3]));
        assert_eq!(
            only_upsert(&changes, guids[4], "full read").members,
            MemberDelta::Replace(vec![]),
            "an empty group has an empty member list"
        );

        // Ranged reads with windows smaller than the group, and an exact multiple of the window.
        for size in [1, 2, 3, 1000] {
            let got = read_members(&mut svc, &g1, size).await.unwrap();
            assert_eq!(got.len(), 3, "range size {size}");
            assert_eq!(dn_set(&got), dn_set(&[&u1, &u2, &u3]));
        }
        assert_eq!(
            read_members(&mut svc, &empty, 2).await.unwrap(),
            Vec::<String>::new()
        );
        let missing = read_members(&mut svc, &format!("CN=nope-{tag},{ou}"), 10).await;
        assert!(
            missing.is_err(),
            "a missing group is an error, not an empty list"
        );
    })
    .await;
}

#[tokio::test]
async fn incremental_reads_report_exactly_a_member_add_then_a_member_remove() {
    in_own_ou("drmem", |lab, ou| async move {
        let mut adm = admin(lab).await;
        let tag = unique("m");
        let u1 = add_user(&mut adm, &ou, &format!("{tag}a"), &[]).await;
        let u2 = add_user(&mut adm, &ou, &format!("{tag}b"), &[]).await;
        let g = add_group(&mut adm, &ou, &format!("{tag}g"), &[&u1]).await;
        let mut raw = raw_admin(lab).await;
        let guids = vec![
            guid_of(&mut raw, &u1).await,
            guid_of(&mut raw, &u2).await,
            guid_of(&mut raw, &g).await,
        ];
        let mut svc = reader(lab, &lab.alpha.dc_urls[0]).await;
        let spec = spec(lab);
        let (_, cookie) = changes_since(&mut svc, &spec, &[]).await.unwrap();

        let (nothing, cookie) = changes_since(&mut svc, &spec, &cookie).await.unwrap();
        assert!(
            changes_of(&nothing, &guids).is_empty(),
            "nothing changed yet: {nothing:#?}"
        );

        adm.modify(
            &g,
            vec![ldap3::Mod::Add(
                b"member".to_vec(),
                [u2.as_bytes().to_vec()].into(),
            )],
        )
        .await
        .unwrap();
        let (changes, cookie) = changes_since(&mut svc, &spec, &cookie).await.unwrap();
        let mine = changes_of(&changes, &guids);
        assert_eq!(mine.len(), 1, "only the group changed: {mine:#?}");
        let group = only_upsert(&changes, guids[2], "member add");
        assert_eq!(
            group.kind,
            ObjectKind::Group,
            "kind resolved without objectClass"
        );
        assert!(same_dn(&group.dn, &g));
        match &group.members {
            MemberDelta::Incremental { added, removed } => {
                assert_eq!(dn_set(added), dn_set(&[&u2]));
                assert!(removed.is_empty(), "{removed:?}");
            }
            other => panic!("expected an incremental member change, got {other:?}"),
        }

        adm.modify(
            &g,
            vec![ldap3::Mod::Delete(
                b"member".to_vec(),
                [u1.as_bytes().to_vec()].into(),
            )],
        )
        .await
        .unwrap();
        let (changes, _) = changes_since(&mut svc, &spec, &cookie).await.unwrap();
        assert_eq!(changes_of(&changes, &guids).len(), 1, "{changes:#?}");
        match &only_upsert(&changes, guids[2], "member remove").members {
            MemberDelta::Incremental { added, removed } => {
                assert!(added.is_empty(), "{added:?}");
                assert_eq!(dn_set(removed), dn_set(&[&u1]));
            }
            other => panic!("expected an incremental member change, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn renames_moves_and_disables_keep_the_guid_and_unrequested_changes_stay_silent() {
    in_own_ou("drren", |lab, ou| async move {
        let mut adm = admin(lab).await;
        let tag = unique("r");
        let sub = format!("OU=sub,{ou}");
        adm.add(
            &sub,
            vec![attr("objectClass", &["top", "organizationalUnit"])],
        )
        .await
        .unwrap();
        let u1 = add_user(&mut adm, &ou, &format!("{tag}a"), &[]).await;
        let u2 = add_user(&mut adm, &ou, &format!("{tag}b"), &[]).await;
        let mut raw = raw_admin(lab).await;
        let g1 = guid_of(&mut raw, &u1).await;
        let g2 = guid_of(&mut raw, &u2).await;
        let mut svc = reader(lab, &lab.alpha.dc_urls[0]).await;
        let spec = spec(lab);
        let (_, cookie) = changes_since(&mut svc, &spec, &[]).await.unwrap();

        // Rename (modrdn) u1.
        let new_rdn = format!("CN={tag}renamed");
        raw.with_timeout(support::TIMEOUTS.operation)
            .modifydn(&u1, &new_rdn, true, None)
            .await
            .unwrap()
            .success()
            .unwrap();
        let (changes, cookie) = changes_since(&mut svc, &spec, &cookie).await.unwrap();
        let renamed = only_upsert(&changes, g1, "rename");
        assert!(
            same_dn(&renamed.dn, &format!("{new_rdn},{ou}")),
            "{}",
            renamed.dn
        );
        assert_eq!(renamed.kind, ObjectKind::User);
        assert_eq!(
            renamed.attrs.get("name"),
            Some(&vec![format!("{tag}renamed")])
        );

        // Move u2 into the sub-OU.
        raw.with_timeout(support::TIMEOUTS.operation)
            .modifydn(&u2, &format!("CN={tag}b"), true, Some(&sub))
            .await
            .unwrap()
            .success()
            .unwrap();
        let (changes, cookie) = changes_since(&mut svc, &spec, &cookie).await.unwrap();
        let moved = only_upsert(&changes, g2, "move");
        assert!(
            same_dn(&moved.dn, &format!("CN={tag}b,{sub}")),
            "{}",
            moved.dn
        );
        assert_eq!(moved.kind, ObjectKind::User);

        // description is not requested: changing it is not a change.
        let u1_now = format!("{new_rdn},{ou}");
        adm.modify(
            &u1_now,
            vec![ldap3::Mod::Replace(
                b"description".to_vec(),
                [b"hello".to_vec()].into(),
            )],
        )
        .await
        .unwrap();
        let (changes, cookie) = changes_since(&mut svc, &spec, &cookie).await.unwrap();
        assert!(
            changes_of(&changes, &[g1, g2]).is_empty(),
            "an unrequested attribute must not show: {changes:#?}"
        );

        // Disable u2: userAccountControl only.
        adm.modify(
            &format!("CN={tag}b,{sub}"),
            vec![ldap3::Mod::Replace(
                b"userAccountControl".to_vec(),
                [b"546".to_vec()].into(),
            )],
        )
        .await
        .unwrap();
        let (changes, _) = changes_since(&mut svc, &spec, &cookie).await.unwrap();
        let disabled = only_upsert(&changes, g2, "disable");
        assert_eq!(
            disabled.attrs.get("useraccountcontrol"),
            Some(&vec!["546".to_owned()])
        );
        assert_eq!(disabled.kind, ObjectKind::User);
        assert!(
            !disabled.attrs.contains_key("samaccountname"),
            "DirSync returns changed attributes only: {:?}",
            disabled.attrs
        );
    })
    .await;
}

/// Samba 4.17 shows tombstones in DirSync only to readers that may read `CN=Deleted Objects`
/// (Administrator); the service account with Replicating Directory Changes alone gets nothing for a
/// delete (Windows returns tombstones to it). The delete path is therefore checked as Administrator,
/// and the service account's blindness is pinned so a lab fix shows up here.
#[tokio::test]
async fn a_delete_is_reported_as_deleted_with_the_same_guid() {
    in_own_ou("drdel", |lab, ou| async move {
        let mut adm = admin(lab).await;
        let tag = unique("d");
        let u = add_user(&mut adm, &ou, &format!("{tag}a"), &[]).await;
        let keep = add_user(&mut adm, &ou, &format!("{tag}k"), &[]).await;
        let g = add_group(&mut adm, &ou, &format!("{tag}g"), &[&u, &keep]).await;
        let mut raw = raw_admin(lab).await;
        let guid = guid_of(&mut raw, &u).await;
        let group_guid = guid_of(&mut raw, &g).await;
        let spec = spec(lab);
        let mut as_admin = admin(lab).await;
        let mut svc = reader(lab, &lab.alpha.dc_urls[0]).await;
        let (_, admin_cookie) = changes_since(&mut as_admin, &spec, &[]).await.unwrap();
        let (_, svc_cookie) = changes_since(&mut svc, &spec, &[]).await.unwrap();

        adm.delete(&u).await.unwrap();

        let (changes, _) = changes_since(&mut as_admin, &spec, &admin_cookie)
            .await
            .unwrap();
        let mine = changes_of(&changes, &[guid, group_guid]);
        assert_eq!(
            mine,
            vec![&DirChange::Deleted { guid }],
            "a delete is one Deleted with the object's GUID (the group's member link is dropped \
             silently: the consumer removes the deleted object's memberships itself)"
        );

        // The least-privilege service account sees the tombstone too, because the lab grants it List
        // Contents + Read Property on CN=Deleted Objects (without that grant Samba hides tombstones).
        let (changes, _) = changes_since(&mut svc, &spec, &svc_cookie).await.unwrap();
        assert_eq!(
            changes_of(&changes, &[guid]),
            vec![&DirChange::Deleted { guid }],
            "the service account must see the deletion through DirSync"
        );
        // A full read holds the user only as a tombstone, never as a live object.
        let (all, _) = changes_since(&mut svc, &spec, &[]).await.unwrap();
        assert!(changes_of(&all, &[guid])
            .iter()
            .all(|c| matches!(c, DirChange::Deleted { .. })));
        let (full, _) = full_read(&mut svc, &spec).await.unwrap();
        let MemberDelta::Replace(members) = &only_upsert(&full, group_guid, "full").members else {
            panic!("full read replaces members")
        };
        assert_eq!(dn_set(members), dn_set(&[&keep]));
    })
    .await;
}

#[tokio::test]
async fn a_2000_member_group_is_read_completely_in_explicit_ranges() {
    in_own_ou("drbig", |lab, ou| async move {
        const N: usize = 2000;
        const WRITERS: usize = 4;
        let tag = unique("b");
        let started = Instant::now();
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (ou, tag) = (ou.clone(), tag.clone());
            writers.push(tokio::spawn(async move {
                let mut adm = admin(lab).await;
                let mut dns = Vec::new();
                for i in (w..N).step_by(WRITERS) {
                    dns.push(add_user(&mut adm, &ou, &format!("{tag}{i:04}"), &[]).await);
                }
                dns
            }));
        }
        let mut users = Vec::with_capacity(N);
        for w in writers {
            users.extend(w.await.expect("writer"));
        }
        eprintln!("created {N} users in {:?}", started.elapsed());
        let members: Vec<&str> = users.iter().map(String::as_str).collect();
        let mut adm = admin(lab).await;
        let g = add_group(&mut adm, &ou, &format!("{tag}g"), &members).await;
        let group_guid = guid_of(&mut raw_admin(lab).await, &g).await;

        let mut svc = reader(lab, &lab.alpha.dc_urls[0]).await;
        let want = dn_set(&users);
        for size in [1000, 700] {
            let got = read_members(&mut svc, &g, size).await.unwrap();
            assert_eq!(got.len(), N, "range size {size}");
            assert_eq!(dn_set(&got), want, "range size {size}");
        }
        let mut spec = spec(lab);
        spec.range_size = 1000;
        let (changes, _) = full_read(&mut svc, &spec).await.unwrap();
        let MemberDelta::Replace(all) = &only_upsert(&changes, group_guid, "full read").members
        else {
            panic!("full read replaces members")
        };
        assert_eq!(all.len(), N);
        assert_eq!(dn_set(all), want);
    })
    .await;
}

#[tokio::test]
async fn a_cookie_taken_on_alpha_dc1_works_on_dc2() {
    in_own_ou("drport", |lab, ou| async move {
        let mut adm = admin(lab).await;
        let tag = unique("p");
        let u1 = add_user(&mut adm, &ou, &format!("{tag}a"), &[]).await;
        let u2 = add_user(&mut adm, &ou, &format!("{tag}b"), &[]).await;
        let g = add_group(&mut adm, &ou, &format!("{tag}g"), &[&u1]).await;
        let mut raw = raw_admin(lab).await;
        let guids = vec![
            guid_of(&mut raw, &u1).await,
            guid_of(&mut raw, &u2).await,
            guid_of(&mut raw, &g).await,
        ];
        let spec = spec(lab);
        let mut dc1 = reader(lab, &lab.alpha.dc_urls[0]).await;
        let (_, cookie) = changes_since(&mut dc1, &spec, &[]).await.unwrap();

        adm.modify(
            &g,
            vec![ldap3::Mod::Add(b"member".to_vec(), [u2.as_bytes().to_vec()].into())],
        )
        .await
        .unwrap();

        let mut dc2 = reader(lab, &lab.alpha.dc_urls[1]).await;
        let started = Instant::now();
        let changes = loop {
            let (changes, _) = changes_since(&mut dc2, &spec, &cookie)
                .await
                .expect("DC2 accepts DC1's cookie");
            let seen = changes_of(&changes, &[guids[2]]).iter().any(|c| {
                matches!(c, DirChange::Upsert(o) if matches!(&o.members, MemberDelta::Incremental { added, .. } if !added.is_empty()))
            });
            if seen {
                break changes;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the member add did not reach DC2's DirSync within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        eprintln!("member add visible on DC2 after {:?}", started.elapsed());
        let mine = changes_of(&changes, &guids);
        assert_eq!(
            mine.len(),
            1,
            "DC2 continues from DC1's cookie (the unchanged users are not resent): {mine:#?}"
        );
        match &only_upsert(&changes, guids[2], "DC2").members {
            MemberDelta::Incremental { added, removed } => {
                assert_eq!(dn_set(added), dn_set(&[&u2]));
                assert!(removed.is_empty());
            }
            other => panic!("expected an incremental member change, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn invocation_ids_differ_between_alpha_dc1_and_dc2() {
    let Some(lab) = support::lab() else { return };
    let mut ids = HashSet::new();
    for url in &lab.alpha.dc_urls {
        let mut svc = reader(lab, url).await;
        let dse = svc.root_dse().await.unwrap();
        let service = dse.ds_service_name.expect("dsServiceName");
        let id = invocation_id(&mut svc, &service)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(
            id.parse::<ObjectGuid>().is_ok(),
            "{url}: invocationId {id:?} is not a GUID"
        );
        // Stable across reads.
        assert_eq!(invocation_id(&mut svc, &service).await.unwrap(), id);
        ids.insert(id);
    }
    assert_eq!(ids.len(), 2, "each DC has its own invocationId: {ids:?}");
}

/// A delete made on DC2 reaches the agent reading DC1, whatever DC the agent's cookie came from (its
/// own DC1 cookie, or one DC1 issued for a cookie DC2 issued: the fail-over / fail-back path).
/// On Samba this needs the service account's read grant on `CN=Deleted Objects` to be inheritable: a
/// replicated-in tombstone's security descriptor comes from that container's inheritable ACEs only,
/// and DirSync hides tombstones the reader cannot read (found by the fault suite: a user deleted on
/// DC2 stayed in JumpCloud).
#[tokio::test]
async fn a_delete_made_on_dc2_is_reported_by_dc1_after_replication() {
    in_own_ou("drrepl", |lab, ou| async move {
        let mut adm = admin(lab).await;
        let tag = unique("r");
        let a = add_user(&mut adm, &ou, &format!("{tag}a"), &[]).await;
        let b = add_user(&mut adm, &ou, &format!("{tag}b"), &[]).await;
        let mut raw = raw_admin(lab).await;
        let (ga, gb) = (guid_of(&mut raw, &a).await, guid_of(&mut raw, &b).await);
        let spec = spec(lab);
        let mut dc1 = reader(lab, &lab.alpha.dc_urls[0]).await;
        let mut dc2 = reader(lab, &lab.alpha.dc_urls[1]).await;
        let mut adm2 = support::admin_session(lab, &lab.alpha, &lab.alpha.dc_urls[1]).await;
        // Both users on DC2 before anything is deleted there.
        let started = Instant::now();
        loop {
            let (all2, _) = changes_since(&mut dc2, &spec, &[]).await.unwrap();
            if changes_of(&all2, &[ga]).len() == 1 && changes_of(&all2, &[gb]).len() == 1 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no replication to DC2");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (_, cookie1) = changes_since(&mut dc1, &spec, &[]).await.unwrap();
        // The fail-over path: DC2 continues from DC1's cookie, then DC1 from DC2's.
        let (_, via2) = changes_since(&mut dc2, &spec, &cookie1).await.unwrap();
        let (_, back1) = changes_since(&mut dc1, &spec, &via2).await.unwrap();

        adm2.delete(&a).await.unwrap();
        adm2.delete(&b).await.unwrap();

        for (name, cookie) in [("DC1's own cookie", &cookie1), ("DC1's cookie after DC2", &back1)] {
            let started = Instant::now();
            loop {
                let (changes, _) = changes_since(&mut dc1, &spec, cookie).await.unwrap();
                let mine = changes_of(&changes, &[ga, gb]);
                if mine
                    .iter()
                    .filter(|c| matches!(c, DirChange::Deleted { .. }))
                    .count()
                    == 2
                {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "{name}: DC1's DirSync did not report the deletes made on DC2 within 60 s \
                     (does the service account's grant on CN=Deleted Objects inherit to tombstones?): {mine:#?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    })
    .await;
}

//! Writing AD as the JumpCloud-authoritative mode does, as the lab's least-privilege service account
//! (`svc-forestsync`, never Administrator): users and groups created in the target OU
//! (`OU=ForestSync`), passwords reset (and refused, with AD's reason kept), accounts enabled,
//! renames, chunked member changes of 2,000 values, paged whole-entry reads, and a `DomainDirectory`
//! that fails over from ALPHA DC1 to DC2 (`disruptive_*`: they stop or freeze DC1).
//!
//! Every test works in its own OU below the target OU (created and removed by Administrator, since
//! the service account may create only users and groups there; the OU's rights are inherited), and
//! removes it afterwards, also when an assertion fails.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use forestsync_actors::dc::{self, AttrChange, DcActor, DirReply, DirRequest};
use forestsync_actors::directory::read::ReadSpec;
use forestsync_actors::directory::{
    read_members, AdEntry, DcEndpoint, DcSession, DirectoryError, DomainDirectory, FindScope,
    Timeouts,
};
use forestsync_actors::disposition::{Classified, Disposition};
use forestsync_actors::secret::Secret;
use forestsync_actors::trust;
use ldap3::controls::RawControl;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};

use crate::support::{self, unique, Lab};

const TREE_DELETE_OID: &str = "1.2.840.113556.1.4.805";
const USER_ATTRS: [&str; 13] = [
    "objectClass",
    "sAMAccountName",
    "userPrincipalName",
    "givenName",
    "sn",
    "displayName",
    "mail",
    "description",
    "userAccountControl",
    "pwdLastSet",
    "objectSid",
    "adminCount",
    "isCriticalSystemObject",
];
const COMPLEXITY: &str = "0000052D: Constraint violation - check_password_restrictions: the password does not meet the complexity criteria!";
const TOO_SHORT: &str = "0000052D: Constraint violation - check_password_restrictions: the password is too short. It should be equal or longer than 7 characters!";
const IN_HISTORY: &str = "0000052D: Constraint violation - check_password_restrictions: the password was already used (in history)!";
const TOO_YOUNG: &str = "0000052D: Constraint violation - check_password_restrictions: password is too young to change!";

/// The lab's target OU for the JumpCloud-authoritative mode.
fn target_ou(lab: &Lab) -> String {
    std::env::var("LAB_ALPHA_TARGET_OU")
        .unwrap_or_else(|_| format!("OU=ForestSync,{}", lab.alpha.base_dn))
}

/// The service account's session on ALPHA DC1.
async fn svc(lab: &Lab) -> DcSession {
    support::bound_session(
        lab,
        &lab.alpha.dc_urls[0],
        &lab.alpha.bind_dn,
        &lab.alpha.bind_password,
    )
    .await
}

/// A plain ldap3 connection, for what the code under test must not be used to check (or lacks:
/// tree delete, arbitrary controls, a user's own password change).
async fn raw(lab: &Lab, url: &str, dn: &str, password: &Secret) -> Ldap {
    let tls = trust::client_config(Some(&lab.ca_file)).expect("lab CA loads");
    let settings = LdapConnSettings::new()
        .set_config(tls)
        .set_conn_timeout(support::TIMEOUTS.connect);
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, url)
        .await
        .unwrap_or_else(|e| panic!("raw LDAP connection to {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    ldap.with_timeout(support::TIMEOUTS.operation)
        .simple_bind(dn, password.expose())
        .await
        .and_then(|r| r.success())
        .unwrap_or_else(|e| panic!("bind {dn}: {e}"));
    ldap
}

async fn raw_admin(lab: &Lab) -> Ldap {
    raw(
        lab,
        &lab.alpha.dc_urls[0],
        &lab.alpha.admin_dn,
        &lab.admin_password,
    )
    .await
}

/// Creates `OU=<unique>,<target OU>` as Administrator, runs `body(lab, ou)`, removes the OU with
/// everything in it, then re-raises a failure of the body.
async fn in_sandbox<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(&'static Lab, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(lab) = support::lab() else { return };
    let ou = format!("OU={},{}", unique(prefix), target_ou(lab));
    support::admin_session(lab, &lab.alpha, &lab.alpha.dc_urls[0])
        .await
        .add(
            &ou,
            vec![support::attr("objectClass", &["top", "organizationalUnit"])],
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
    let mut ldap = raw_admin(lab).await;
    // Groups first: a tree delete of a large group's members rewrites its links one by one.
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
    if !matches!(&tree, Ok(r) if r.rc == 0) {
        eprintln!("clean-up: tree delete of {ou} refused: {tree:?}");
    }
}

/// Runs one request through the same code path as the DC actor (`dc::execute`).
async fn run(session: &mut DcSession, req: DirRequest) -> Result<DirReply, DirectoryError> {
    dc::execute(session, req).await
}

async fn find(
    session: &mut DcSession,
    base: &str,
    scope: FindScope,
    filter: &str,
    attrs: &[&str],
    members: bool,
) -> Vec<AdEntry> {
    match run(
        session,
        DirRequest::Find {
            base: base.to_owned(),
            scope,
            filter: filter.to_owned(),
            attrs: attrs.iter().map(|a| a.to_string()).collect(),
            members,
        },
    )
    .await
    {
        Ok(DirReply::Entries(e)) => e,
        other => panic!("find {base} {filter}: {other:?}"),
    }
}

async fn one(session: &mut DcSession, dn: &str, attrs: &[&str]) -> Option<AdEntry> {
    let mut found = find(
        session,
        dn,
        FindScope::Base,
        "(objectClass=*)",
        attrs,
        false,
    )
    .await;
    assert!(found.len() <= 1, "a base search returns at most one entry");
    found.pop()
}

fn bytes(v: &str) -> Vec<Vec<u8>> {
    vec![v.as_bytes().to_vec()]
}

/// Creates a user the way the sync engine does: disabled (514), no password yet.
async fn create_user(session: &mut DcSession, ou: &str, sam: &str) -> String {
    let dn = format!("CN={sam},{ou}");
    run(
        session,
        DirRequest::Add {
            dn: dn.clone(),
            attrs: vec![
                ("objectClass".into(), vec![b"user".to_vec()]),
                ("sAMAccountName".into(), bytes(sam)),
                (
                    "userPrincipalName".into(),
                    bytes(&format!("{sam}@alpha.test")),
                ),
                ("givenName".into(), bytes("Ada")),
                ("sn".into(), bytes("Lovelace")),
                ("displayName".into(), bytes("Ada Lovelace")),
                ("mail".into(), bytes(&format!("{sam}@example.test"))),
                ("userAccountControl".into(), bytes("514")),
                ("description".into(), vec![]),
            ],
        },
    )
    .await
    .unwrap_or_else(|e| panic!("create {dn} as the service account: {e}"));
    dn
}

async fn set_password(
    session: &mut DcSession,
    dn: &str,
    password: &str,
    enforce_history: bool,
) -> Result<(), DirectoryError> {
    run(
        session,
        DirRequest::SetPassword {
            dn: dn.to_owned(),
            password: Secret::new(password),
            enforce_history,
            also: Vec::new(),
        },
    )
    .await
    .map(|_| ())
}

fn expect_policy_refusal(result: Result<(), DirectoryError>, reason: &str, what: &str) {
    let err = match result {
        Ok(()) => panic!("{what}: AD accepted the password"),
        Err(e) => e,
    };
    assert_eq!(err.result_code(), Some(19), "{what}: {err}");
    assert_eq!(err.disposition(), Disposition::BadInput, "{what}: {err}");
    assert!(err.is_password_policy(), "{what}: {err}");
    assert_eq!(
        err.ad_reason(),
        Some(reason),
        "{what}: the DC's text, verbatim"
    );
    assert!(err.to_string().contains(reason), "{what}: {err}");
}

#[tokio::test]
async fn a_user_is_created_given_a_password_enabled_read_back_renamed_and_deleted_by_the_service_account(
) {
    in_sandbox("aw-user", |lab, ou| async move {
        let mut s = svc(lab).await;
        let sam = unique("awu");
        let dn = create_user(&mut s, &ou, &sam).await;

        let created = one(&mut s, &dn, &USER_ATTRS).await.expect("the new user");
        let guid = created
            .guid
            .expect("objectGUID parsed from its binary value");
        assert!(created.has_class("user") && created.has_class("person"));
        assert_eq!(created.uac(), Some(514), "created disabled");
        assert_eq!(created.pwd_last_set(), Some(0), "no password yet");
        assert_eq!(created.first("sAMAccountName"), Some(sam.as_str()));
        assert_eq!(
            created.first("userprincipalname"),
            Some(format!("{sam}@alpha.test").as_str())
        );
        assert_eq!(created.first("displayName"), Some("Ada Lovelace"));
        assert_eq!(created.first("givenName"), Some("Ada"));
        assert_eq!(created.first("sn"), Some("Lovelace"));
        assert_eq!(
            created.first("mail"),
            Some(format!("{sam}@example.test").as_str())
        );
        assert!(
            created
                .first("objectSid")
                .is_some_and(|s| s.starts_with("S-1-5-21-")),
            "{:?}",
            created.attrs.get("objectsid")
        );
        assert!(
            !created.attrs.contains_key("description"),
            "valueless attributes are not sent"
        );
        assert!(!created.is_privileged());
        assert!(!created.attrs.contains_key("objectguid"));

        // The GUID as the DC stores it, read without the code under test.
        let mut admin = raw_admin(lab).await;
        let (entries, _) = admin
            .with_timeout(support::TIMEOUTS.operation)
            .search(&dn, Scope::Base, "(objectClass=*)", vec!["objectGUID"])
            .await
            .and_then(|r| r.success())
            .unwrap();
        let e = SearchEntry::construct(entries.into_iter().next().unwrap());
        let stored = e
            .bin_attrs
            .get("objectGUID")
            .and_then(|v| v.first().cloned())
            .or_else(|| e.attrs["objectGUID"].first().map(|s| s.as_bytes().to_vec()))
            .unwrap();
        assert_eq!(guid.0.as_slice(), stored.as_slice());

        // Password and a marker in one modify, then enable.
        let password = "Kq7#mVt2-Pw-9xZ";
        run(
            &mut s,
            DirRequest::SetPassword {
                dn: dn.clone(),
                password: Secret::new(password),
                enforce_history: false,
                also: vec![AttrChange::Replace("description".into(), bytes("pw-1"))],
            },
        )
        .await
        .expect("strong password accepted");
        run(
            &mut s,
            DirRequest::Modify {
                dn: dn.clone(),
                mods: vec![AttrChange::Replace(
                    "userAccountControl".into(),
                    bytes("512"),
                )],
            },
        )
        .await
        .expect("enable");
        let enabled = one(&mut s, &dn, &USER_ATTRS).await.unwrap();
        assert_eq!(enabled.uac(), Some(512));
        assert!(
            enabled.pwd_last_set().is_some_and(|t| t > 0),
            "pwdLastSet set by the reset"
        );
        assert_eq!(
            enabled.first("description"),
            Some("pw-1"),
            "written with the password"
        );
        // The password really is the account's: it binds.
        support::bound_session(lab, &lab.alpha.dc_urls[0], &dn, &Secret::new(password))
            .await
            .unbind()
            .await;

        // Creating it again: entryAlreadyExists, this object's problem.
        let again = run(
            &mut s,
            DirRequest::Add {
                dn: dn.clone(),
                attrs: vec![
                    ("objectClass".into(), vec![b"user".to_vec()]),
                    ("sAMAccountName".into(), bytes(&unique("awx"))),
                ],
            },
        )
        .await
        .unwrap_err();
        assert_eq!(again.result_code(), Some(68), "{again}");
        assert_eq!(again.disposition(), Disposition::BadInput);

        // Rename within the OU: same object, new DN; the old DN is gone.
        let new_cn = format!("{sam} renamed");
        run(
            &mut s,
            DirRequest::Rename {
                dn: dn.clone(),
                new_rdn: format!("CN={new_cn}"),
                new_superior: None,
            },
        )
        .await
        .expect("rename");
        let new_dn = format!("CN={new_cn},{ou}");
        assert!(
            one(&mut s, &dn, &USER_ATTRS).await.is_none(),
            "a missing base: no entry"
        );
        let renamed = one(&mut s, &new_dn, &USER_ATTRS)
            .await
            .expect("renamed user");
        assert_eq!(renamed.guid, Some(guid));
        assert!(renamed.dn.eq_ignore_ascii_case(&new_dn), "{}", renamed.dn);
        assert_eq!(renamed.first("sAMAccountName"), Some(sam.as_str()));

        // Subtree search of the OU (paged): exactly this user.
        let all = find(
            &mut s,
            &ou,
            FindScope::Subtree,
            "(objectClass=user)",
            &["sAMAccountName"],
            false,
        )
        .await;
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].guid, Some(guid));
        // A subtree search of a base that does not exist is an error, not an empty answer.
        let missing = run(
            &mut s,
            DirRequest::Find {
                base: format!("OU=nope-{sam},{ou}"),
                scope: FindScope::Subtree,
                filter: "(objectClass=*)".into(),
                attrs: vec![],
                members: false,
            },
        )
        .await
        .unwrap_err();
        assert_eq!(missing.result_code(), Some(32), "{missing}");

        run(&mut s, DirRequest::Delete { dn: new_dn.clone() })
            .await
            .expect("delete");
        assert!(one(&mut s, &new_dn, &USER_ATTRS).await.is_none());
    })
    .await;
}

/// What Samba 4.17 does with refused passwords, and with LDAP_SERVER_POLICY_HINTS.
///
/// Proof that Samba 4.17 cannot enforce the password history on an admin reset:
/// 1. the domain keeps a history (24) and enforces it on a *change* (old and new password in one
///    modify): the change back to a previous password is refused below with "already used (in
///    history)";
/// 2. a reset with LDAP_SERVER_POLICY_HINTS (1.2.840.113556.1.4.2239, value `SEQUENCE { INTEGER 1 }`)
///    or its deprecated OID (…2066), sent critical, is refused with unavailableCriticalExtension (12)
///    and writes nothing (pwdLastSet unchanged), exactly like a made-up OID: Samba does not know
///    either control (neither is in the rootDSE's `supportedControl`);
/// 3. sent non-critical, both are ignored: a reset to a password from the history is accepted;
/// 4. Samba's source agrees: `acl.c` (`acl_check_password_rights`) marks every `unicodePwd` replace
///    as a reset, and `password_hash.c` (`check_password_restrictions`) returns success for resets
///    before its history check; no policy-hints code path exists.
///
/// On Windows (2012+) the control is honoured and a reset to a password from the history is refused
/// with 19 and `0000052D`; forestsync sends it non-critical so Samba, which knows it not, still resets.
#[tokio::test]
async fn refused_passwords_keep_the_dcs_reason_and_samba_cannot_enforce_history_on_a_reset() {
    in_sandbox("aw-pw", |lab, ou| async move {
        let mut s = svc(lab).await;
        let sam = unique("awp");
        let dn = create_user(&mut s, &ou, &sam).await;
        let (first, second) = ("Kq7#mVt2-One-9xZ", "Rw4$pLn8-Two-3yQ");
        set_password(&mut s, &dn, first, false)
            .await
            .expect("first");

        expect_policy_refusal(
            set_password(&mut s, &dn, "aaaaaaaa1", false).await,
            COMPLEXITY,
            "too simple",
        );
        expect_policy_refusal(
            set_password(&mut s, &dn, &format!("Xy7#{sam}"), false).await,
            COMPLEXITY,
            "containing the account name",
        );
        expect_policy_refusal(
            set_password(&mut s, &dn, "Ab1!", false).await,
            TOO_SHORT,
            "too short",
        );
        set_password(&mut s, &dn, second, false)
            .await
            .expect("second");
        let last_set = || async {
            let mut s = svc(lab).await;
            one(&mut s, &dn, &["pwdLastSet"])
                .await
                .and_then(|e| e.pwd_last_set())
        };
        let before = last_set().await;

        // `enforce_history` sends LDAP_SERVER_POLICY_HINTS non-critical: Samba ignores it, so a reset to
        // a password from the history goes through there (on Windows it is refused with 19/0000052D).
        set_password(&mut s, &dn, first, true)
            .await
            .expect("Samba 4.17 ignores the non-critical policy hints control");
        assert_ne!(last_set().await, before, "the reset was written");
        set_password(&mut s, &dn, "Pz2&vBn6-Fresh-4k", true)
            .await
            .expect("a fresh strong password with enforce_history");

        // By hand: both OIDs and a made-up one, critical: 12; the two OIDs non-critical: ignored, and
        // a reset to a password from the history goes through.
        let mut raw_svc = raw(
            lab,
            &lab.alpha.dc_urls[0],
            &lab.alpha.bind_dn,
            &lab.alpha.bind_password,
        )
        .await;
        let value = |p: &str| -> Vec<u8> {
            format!("\"{p}\"")
                .encode_utf16()
                .flat_map(|u| u.to_le_bytes())
                .collect()
        };
        let reset = |p: &str| vec![Mod::Replace(b"unicodePwd".to_vec(), [value(p)].into())];
        for (oid, critical, password, expect_rc) in [
            ("1.2.840.113556.1.4.2239", true, first, 12),
            ("1.2.840.113556.1.4.2066", true, first, 12),
            ("1.2.3.4.5.6.7", true, first, 12),
            ("1.2.840.113556.1.4.2239", false, first, 0),
            ("1.2.840.113556.1.4.2066", false, second, 0),
            ("1.2.840.113556.1.4.2239", false, first, 0),
        ] {
            let res = raw_svc
                .with_timeout(support::TIMEOUTS.operation)
                .with_controls(RawControl {
                    ctype: oid.into(),
                    crit: critical,
                    val: Some(vec![0x30, 0x03, 0x02, 0x01, 0x01]),
                })
                .modify(&dn, reset(password))
                .await
                .expect("an LDAP answer");
            assert_eq!(
                res.rc, expect_rc,
                "{oid} critical={critical}, a password from the history: {res:?}"
            );
        }
        // Current password: `first`, reset to twice from the history.

        // A change (old and new password in one modify, which the service account may do like
        // anyone who knows the old one) right after a reset: minimum age (1 day).
        let change = |old: &str, new: &str| {
            vec![
                Mod::Delete(b"unicodePwd".to_vec(), [value(old)].into()),
                Mod::Add(b"unicodePwd".to_vec(), [value(new)].into()),
            ]
        };
        let young = raw_svc
            .with_timeout(support::TIMEOUTS.operation)
            .modify(&dn, change(first, "Zt5%hQm1-Three-7w"))
            .await
            .unwrap();
        assert_eq!(
            (young.rc, young.text.trim_end_matches('\0').trim()),
            (19, TOO_YOUNG)
        );
        // With pwdLastSet = 0 the minimum age is no obstacle; the history is.
        run(
            &mut s,
            DirRequest::Modify {
                dn: dn.clone(),
                mods: vec![AttrChange::Replace("pwdLastSet".into(), bytes("0"))],
            },
        )
        .await
        .unwrap();
        let history = raw_svc
            .with_timeout(support::TIMEOUTS.operation)
            .modify(&dn, change(first, second))
            .await
            .unwrap();
        assert_eq!(
            (history.rc, history.text.trim_end_matches('\0').trim()),
            (19, IN_HISTORY),
            "the domain does keep and enforce a history, for changes"
        );
    })
    .await;
}

#[tokio::test]
async fn refused_writes_name_the_right_the_service_account_lacks() {
    let Some(lab) = support::lab() else { return };
    let mut s = svc(lab).await;
    let outside = format!("CN={},CN=Users,{}", unique("awn"), lab.alpha.base_dn);
    let err = run(
        &mut s,
        DirRequest::Add {
            dn: outside.clone(),
            attrs: vec![("objectClass".into(), vec![b"user".to_vec()])],
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.result_code(), err.disposition()),
        (Some(50), Disposition::Fatal),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("Create Child") && text.contains(&outside),
        "{text}"
    );

    let err = set_password(&mut s, &lab.alpha.admin_dn, "Kq7#mVt2-Adm-9xZ", false)
        .await
        .unwrap_err();
    assert_eq!(err.result_code(), Some(50), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("Reset Password") && text.contains(&lab.alpha.admin_dn),
        "{text}"
    );

    let err = run(
        &mut s,
        DirRequest::ChangeMembers {
            dn: format!("CN=Domain Admins,CN=Users,{}", lab.alpha.base_dn),
            add: vec![lab.alpha.bind_dn.clone()],
            remove: vec![],
            chunk: 100,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.result_code(), Some(50), "{err}");
    assert!(err.to_string().contains("`member`"), "{err}");
}

/// Creates `count` password-less users in `ou` as Administrator, several adds in flight at once.
async fn bulk_users(lab: &Lab, ou: &str, tag: &str, count: usize) -> Vec<String> {
    let dns: Vec<String> = (0..count).map(|i| format!("CN={tag}{i:04},{ou}")).collect();
    let admin = raw_admin(lab).await;
    let mut tasks = tokio::task::JoinSet::new();
    const WORKERS: usize = 6;
    for w in 0..WORKERS {
        let mut ldap = admin.clone();
        let mine: Vec<(usize, String)> = dns
            .iter()
            .cloned()
            .enumerate()
            .filter(|(i, _)| i % WORKERS == w)
            .collect();
        let tag = tag.to_owned();
        tasks.spawn(async move {
            for (i, dn) in mine {
                let sam = format!("{tag}{i:04}");
                let r = ldap
                    .with_timeout(support::TIMEOUTS.operation)
                    .add(
                        &dn,
                        vec![
                            (b"objectClass".to_vec(), [b"user".to_vec()].into()),
                            (b"sAMAccountName".to_vec(), [sam.into_bytes()].into()),
                            (b"userAccountControl".to_vec(), [b"514".to_vec()].into()),
                        ],
                    )
                    .await
                    .and_then(|r| r.success());
                if let Err(e) = r {
                    panic!("bulk add {dn}: {e}");
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    dns
}

fn lower_set<S: AsRef<str>>(dns: impl IntoIterator<Item = S>) -> BTreeSet<String> {
    dns.into_iter()
        .map(|d| d.as_ref().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn two_thousand_members_are_written_in_chunks_and_values_already_in_effect_are_tolerated() {
    in_sandbox("aw-grp", |lab, ou| async move {
        let tag = unique("m");
        let started = Instant::now();
        let users = bulk_users(lab, &ou, &tag, 2000).await;
        eprintln!(
            "2,000 users created as Administrator in {:?}",
            started.elapsed()
        );

        let mut s = svc(lab).await;
        let group = format!("CN={tag}-all,{ou}");
        run(
            &mut s,
            DirRequest::Add {
                dn: group.clone(),
                attrs: vec![
                    ("objectClass".into(), vec![b"group".to_vec()]),
                    ("sAMAccountName".into(), bytes(&format!("{tag}-all"))),
                    ("groupType".into(), bytes("-2147483646")),
                ],
            },
        )
        .await
        .expect("the service account creates a global security group");

        let started = Instant::now();
        run(
            &mut s,
            DirRequest::ChangeMembers {
                dn: group.clone(),
                add: users.clone(),
                remove: vec![],
                chunk: 500,
            },
        )
        .await
        .expect("2,000 members in 4 chunks");
        eprintln!(
            "2,000 members added in chunks of 500 in {:?}",
            started.elapsed()
        );

        // Remove every 7th member; then again, together with members still in (already absent
        // values make their chunk go value by value); add back some removed ones together with
        // present ones (already present values).
        let removed: Vec<String> = users.iter().step_by(7).cloned().collect();
        run(
            &mut s,
            DirRequest::ChangeMembers {
                dn: group.clone(),
                add: vec![],
                remove: removed.clone(),
                chunk: 100,
            },
        )
        .await
        .expect("remove");
        let again: Vec<String> = removed[..40].iter().chain(&users[1..4]).cloned().collect();
        run(
            &mut s,
            DirRequest::ChangeMembers {
                dn: group.clone(),
                add: vec![],
                remove: again,
                chunk: 100,
            },
        )
        .await
        .expect("removing absent members again is tolerated");
        let back: Vec<String> = removed[..10].iter().chain(&users[4..6]).cloned().collect();
        run(
            &mut s,
            DirRequest::ChangeMembers {
                dn: group.clone(),
                add: back.clone(),
                remove: vec![],
                chunk: 100,
            },
        )
        .await
        .expect("adding present members again is tolerated");

        // In: everyone but the every-7th members not added back, and users 1..4.
        let mut expected = lower_set(&users);
        for gone in removed[10..].iter().chain(&users[1..4]) {
            expected.remove(&gone.to_ascii_lowercase());
        }
        assert_eq!(expected.len(), 2000 - (removed.len() - 10) - 3);

        // Complete membership, read by the code under test (first window + ranged reads) …
        let g = find(
            &mut s,
            &group,
            FindScope::Base,
            "(objectClass=group)",
            &["member", "groupType"],
            true,
        )
        .await;
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].first("groupType"), Some("-2147483646"));
        assert!(
            !g[0].attrs.contains_key("member"),
            "members are in .members"
        );
        assert_eq!(
            lower_set(&g[0].members),
            expected,
            "find_entries with members"
        );
        // … and by explicit ranged reads of 1,000 and of 300 values.
        for size in [1000, 300] {
            let ranged = read_members(&mut s, &group, size).await.unwrap();
            assert_eq!(ranged.len(), expected.len(), "range {size}");
            assert_eq!(lower_set(&ranged), expected, "range {size}");
        }
        // Without `members`, `member` is not completed (Samba sends it whole; Windows would not).
        let plain = find(
            &mut s,
            &group,
            FindScope::Base,
            "(objectClass=*)",
            &["groupType"],
            false,
        )
        .await;
        assert!(plain[0].members.is_empty());

        // Paged subtree search: 2,000 users in pages of 500.
        let all = find(
            &mut s,
            &ou,
            FindScope::Subtree,
            "(objectClass=user)",
            &["sAMAccountName"],
            false,
        )
        .await;
        assert_eq!(all.len(), 2000);
        assert!(all.iter().all(|e| e.guid.is_some()));
        // A subtree find with members: every group complete, users with none.
        let with_members = find(
            &mut s,
            &ou,
            FindScope::Subtree,
            "(|(objectClass=group)(objectClass=user))",
            &["objectClass"],
            true,
        )
        .await;
        assert_eq!(with_members.len(), 2001);
        let grp = with_members.iter().find(|e| e.has_class("group")).unwrap();
        assert_eq!(grp.members.len(), expected.len());

        // A member DN that names no object: refused, with the value named, as this group's problem.
        let nobody = format!("CN={tag}-nobody,{ou}");
        let err = run(
            &mut s,
            DirRequest::ChangeMembers {
                dn: group.clone(),
                add: vec![users[0].clone(), nobody.clone()],
                remove: vec![],
                chunk: 10,
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.result_code(), Some(32), "{err}");
        assert_eq!(err.disposition(), Disposition::BadInput);
        assert!(err.to_string().contains(&nobody), "{err}");
        let err = run(
            &mut s,
            DirRequest::ChangeMembers {
                dn: group.clone(),
                add: vec![],
                remove: vec![nobody.clone()],
                chunk: 10,
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.result_code(), Some(53), "{err}");
        assert_eq!(err.disposition(), Disposition::BadInput);
        assert!(err.to_string().contains(&nobody), "{err}");
        let after = read_members(&mut s, &group, 1000).await.unwrap();
        assert_eq!(
            lower_set(&after),
            expected,
            "nothing changed by the refused requests"
        );
    })
    .await;
}

// ---- failover (disruptive: stops or freezes ALPHA DC1) ----

fn lab_script(args: &[&str]) -> std::process::Output {
    std::process::Command::new(support::repo_root().join("deploy/lab/lab"))
        .args(args)
        .output()
        .expect("lab script runs")
}

/// Every process of one DC instance (the master and its workers share its session id).
fn dc_pids(instance: &str) -> Vec<String> {
    let lab_dir = std::env::var("LAB_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| support::repo_root().join("lab-state"));
    let Ok(master) = std::fs::read_to_string(lab_dir.join(instance).join("run/samba.pid")) else {
        return Vec::new();
    };
    let master = master.trim().to_owned();
    let Ok(ps) = std::process::Command::new("ps")
        .args(["-eo", "pid=,sid="])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (pid, sid) = (it.next()?, it.next()?);
            (sid == master).then(|| pid.to_owned())
        })
        .collect()
}

fn signal_dc1(signal: &str) {
    for pid in dc_pids("alpha-dc1") {
        let _ = std::process::Command::new("kill")
            .args([signal, &pid])
            .status();
    }
}

/// Brings ALPHA DC1 back however the test ends (also on panic).
struct Dc1Back;

impl Drop for Dc1Back {
    fn drop(&mut self) {
        signal_dc1("-CONT");
        let out = lab_script(&["start-dc", "alpha-dc1"]);
        if !out.status.success() {
            eprintln!(
                "start-dc alpha-dc1: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// ALPHA's two DCs behind a `DomainDirectory`, as the service account, with the production timeouts.
fn alpha_directory(lab: &Lab, request_timeout: Duration) -> DomainDirectory {
    use actix::Actor;
    let tls = trust::client_config(Some(&lab.ca_file)).expect("lab CA loads");
    let spec = Arc::new(ReadSpec::new(lab.alpha.base_dn.clone()));
    let dcs = lab
        .alpha
        .dc_urls
        .iter()
        .map(|url| {
            let actor = DcActor::new(
                DcEndpoint::parse(url).expect("lab URL parses"),
                tls.clone(),
                lab.alpha.bind_dn.clone(),
                lab.alpha.bind_password.clone(),
                Timeouts {
                    connect: Duration::from_secs(3),
                    operation: Duration::from_secs(10),
                },
                Duration::from_secs(60),
                spec.clone(),
            );
            (url.clone(), actor.start())
        })
        .collect();
    DomainDirectory::new("alpha".into(), dcs, request_timeout)
}

fn find_ou(lab: &Lab) -> DirRequest {
    DirRequest::Find {
        base: target_ou(lab),
        scope: FindScope::Base,
        filter: "(objectClass=organizationalUnit)".into(),
        attrs: vec!["ou".into()],
        members: false,
    }
}

async fn found_target_ou(dir: &DomainDirectory, lab: &Lab, what: &str) {
    match dir.run(find_ou(lab)).await {
        Ok(DirReply::Entries(e)) if e.len() == 1 => {}
        other => panic!("{what}: find through the DomainDirectory: {other:?}"),
    }
}

async fn failover_case(lab: &'static Lab, hang: bool) {
    let (dc1, dc2) = (lab.alpha.dc_urls[0].clone(), lab.alpha.dc_urls[1].clone());
    let dir = alpha_directory(lab, Duration::from_secs(5));
    found_target_ou(&dir, lab, "both DCs up").await;
    assert_eq!(dir.current_dc(), dc1, "the preferred DC first");

    let _back = Dc1Back;
    if hang {
        signal_dc1("-STOP");
    } else {
        let out = lab_script(&["stop-dc", "alpha-dc1"]);
        assert!(
            out.status.success(),
            "stop-dc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let started = Instant::now();
    found_target_ou(&dir, lab, "DC1 unusable").await;
    let took = started.elapsed();
    assert_eq!(dir.current_dc(), dc2, "failed over");
    eprintln!(
        "DC1 {}: the find succeeded through DC2 after {took:?}",
        if hang { "hung" } else { "stopped" }
    );
    if hang {
        assert!(
            took < Duration::from_secs(9),
            "a hung DC costs at most the request timeout: {took:?}"
        );
    }
    // Writes fail over too (and later requests go straight to DC2).
    let sam = unique("awf");
    let dn = format!("CN={sam},{}", target_ou(lab));
    let add = DirRequest::Add {
        dn: dn.clone(),
        attrs: vec![
            ("objectClass".into(), vec![b"user".to_vec()]),
            ("sAMAccountName".into(), bytes(&sam)),
            ("userAccountControl".into(), bytes("514")),
        ],
    };
    let quick = Instant::now();
    assert_eq!(dir.run(add).await.expect("add on DC2"), DirReply::Done);
    assert!(
        quick.elapsed() < Duration::from_secs(3),
        "no detour through DC1: {:?}",
        quick.elapsed()
    );
    assert_eq!(
        dir.run(DirRequest::Delete { dn })
            .await
            .expect("delete on DC2"),
        DirReply::Done
    );

    // DC1 returns: requests fail back to it once a probe (at most every 5 s) sees it answer.
    if hang {
        signal_dc1("-CONT");
    } else {
        let out = lab_script(&["start-dc", "alpha-dc1"]);
        assert!(
            out.status.success(),
            "start-dc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let back = Instant::now();
    while dir.current_dc() != dc1 {
        assert!(
            back.elapsed() < Duration::from_secs(90),
            "no fail-back to DC1 within 90 s"
        );
        found_target_ou(&dir, lab, "after DC1 returned").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    found_target_ou(&dir, lab, "on DC1 again").await;
    eprintln!("failed back to DC1 {:?} after it returned", back.elapsed());
}

#[actix::test]
async fn disruptive_domain_directory_fails_over_to_dc2_when_dc1_stops_and_back_when_it_returns() {
    let Some(lab) = support::lab() else { return };
    failover_case(lab, false).await;
}

#[actix::test]
async fn disruptive_domain_directory_fails_over_to_dc2_when_dc1_hangs() {
    let Some(lab) = support::lab() else { return };
    failover_case(lab, true).await;
}

//! Awkward LDAP data against the real lab DC: users whose CN (so DN) needs every kind of escape
//! (`,` `+` `"` `\` leading `#`, leading space, `=`, non-ASCII), members of a group whose own CN is
//! escaped, and a 1024-character multi-byte description (AD's and JumpCloud's limit), imported by
//! the real agent into the emulator. Membership resolution goes through the escaped member DNs, so
//! a DN mangled anywhere loses the user from the scope. The test builds and deletes its own OU
//! under ALPHA (`import_mode::Corner`). The unit side (crafted entries, controls) is in
//! `actors/src/directory/read.rs` and `dirsync.rs`.

use std::time::Duration;

use ldap3::Scope;

use crate::import_mode::{group, members, running, user, wait_for, Corner};
use crate::support::{self, unique};

#[tokio::test(flavor = "multi_thread")]
async fn users_with_escaped_dns_and_a_long_description_import_intact() {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "esc").await;
    let tag = unique("e");
    // (the CN escaped as written in a DN, first name, last name): names carry the same characters.
    let people: Vec<(String, String, String)> = vec![
        (
            format!(r"Doe\, John {tag}"),
            "John".into(),
            "Doe, Jr.".into(),
        ),
        (format!(r"A\+B {tag}"), "A+B".into(), "Plus".into()),
        (
            format!(r#"\"Quoted\" {tag}"#),
            r#""Quoted""#.into(),
            "Quote".into(),
        ),
        (
            format!(r"Back\\slash {tag}"),
            r"Back\slash".into(),
            "Slash".into(),
        ),
        (format!(r"\#hash {tag}"), "#hash".into(), "Hash".into()),
        (format!(r"\ lead {tag}"), " lead".into(), "Space".into()),
        (format!(r"x\=y {tag}"), "x=y".into(), "Equals".into()),
        (format!("Zoë Ørsted {tag}"), "Zoë".into(), "Ørsted".into()),
        (
            format!(r"Semi\;colon \<angle\> {tag}"),
            "Semi;".into(),
            "<angle>".into(),
        ),
    ];
    let description: String = "Zoë Ørsted, \"quoted\" + #1 \\ "
        .chars()
        .cycle()
        .take(1024)
        .collect();
    assert_eq!(description.chars().count(), 1024);
    assert!(
        description.len() > 1024,
        "multi-byte: more bytes than characters"
    );

    // A group with an escaped CN in the root group; the users in it (nested scope).
    let group_sam = format!("{tag}g");
    let group_dn = format!(r"CN=Ops\, EU \+ \#1 {tag},{}", c.ou);
    support::group_at(&mut c.admin, &group_dn, &group_sam).await;
    let root = c.root.clone();
    c.add_member(&root, &group_dn).await;
    let mut dns = Vec::new();
    for (i, (cn, first, last)) in people.iter().enumerate() {
        let sam = format!("{tag}{i}");
        let mail = format!("{sam}@example.test");
        let mut attrs = vec![
            ("sAMAccountName", sam.as_str()),
            ("givenName", first.as_str()),
            ("sn", last.as_str()),
            ("mail", mail.as_str()),
        ];
        if i == 7 {
            attrs.push(("description", description.as_str()));
        }
        let dn = c.user(cn, &attrs).await;
        c.add_member(&group_dn, &dn).await;
        dns.push(dn);
    }

    let extra = "\n[domain.attributes]\nextra = { description = \"description\" }\n";
    let (emu, agent) = running(lab, &c, "esc", extra, jcemu::Config::default()).await;
    let usernames: Vec<String> = (0..people.len()).map(|i| format!("{tag}{i}")).collect();
    wait_for(
        &emu,
        &agent,
        Duration::from_secs(60),
        "escaped users",
        |s| {
            usernames.iter().all(|u| user(s, u).is_some())
                && members(s, &group_sam).len() == usernames.len()
        },
    )
    .await;

    let state = emu.state();
    for (i, (_, first, last)) in people.iter().enumerate() {
        let u = user(&state, &usernames[i]).unwrap();
        assert_eq!(u["firstname"].as_str(), Some(first.trim()), "{u}");
        assert_eq!(u["lastname"].as_str(), Some(last.as_str()), "{u}");
        // external_dn is the DN exactly as AD has it (AD may canonicalise the escapes we wrote).
        let ad = c
            .admin
            .search(
                &lab.alpha.base_dn,
                Scope::Subtree,
                &format!("(sAMAccountName={})", usernames[i]),
                &["sAMAccountName"],
                "find",
            )
            .await
            .unwrap();
        assert_eq!(ad.len(), 1);
        assert_eq!(u["external_dn"].as_str(), Some(ad[0].dn.as_str()), "{u}");
        eprintln!("imported {:?} as {}", ad[0].dn, u["username"]);
    }
    let zoe = user(&state, &usernames[7]).unwrap();
    assert_eq!(zoe["description"].as_str(), Some(description.as_str()));
    assert!(group(&state, &group_sam).is_some());
    let mut want = usernames.clone();
    want.sort();
    assert_eq!(members(&state, &group_sam), want);
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
    eprintln!("LDAP lab inputs tried: {} users, 1 group", people.len());
    drop(agent);
    c.admin.delete(&group_dn).await.unwrap();
    c.cleanup().await;
}

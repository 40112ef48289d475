//! Awkward LDAP data against the real lab DC: users whose CN (so DN) needs every kind of escape
//! (`,` `+` `"` `\` leading `#`, leading space, `=`, non-ASCII), members of a group whose own CN is
//! escaped, and a 1024-character multi-byte description (AD's and JumpCloud's limit), imported by
//! the real agent into the emulator. Membership resolution goes through the escaped member DNs, so
//! a DN mangled anywhere loses the user from the scope. The test builds and deletes its own OU
//! under ALPHA (`import_mode::Corner`). The unit side (crafted entries, controls) is in
//! `actors/src/directory/read.rs` and `dirsync.rs`. Also the running agent's capture socket fed
//! garbage and captures it cannot place.

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

/// The running agent's capture socket, fed garbage frames and captures it cannot place (an account
/// not in scope, an unknown domain): each is dropped (logged), acknowledged so nothing piles up in
/// the spool, no password request reaches JumpCloud, and the agent keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn the_agents_capture_socket_drops_garbage_and_unplaceable_captures_and_keeps_serving() {
    use forestsync_actors::password::{client, new_capture_id, CapturedPassword};
    use forestsync_actors::secret::Secret;
    use tokio::io::AsyncWriteExt;

    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "pwbad").await;
    let sam = unique("pb");
    let dn = c.person(&sam).await;
    let root = c.root.clone();
    c.add_member(&root, &dn).await;
    let (emu, agent) = running(lab, &c, "pwbad", "", jcemu::Config::default()).await;
    wait_for(
        &emu,
        &agent,
        Duration::from_secs(60),
        "the in-scope user",
        |s| user(s, &sam).is_some(),
    )
    .await;
    let socket = agent.dir.join("capture.sock");

    let mut garbage = 0;
    for frame in [
        vec![0u8, 0, 0, 0],
        vec![0xff, 0xff, 0xff, 0xff],
        vec![0, 0, 0, 3, b'{', b'}', b'}'],
        [vec![0, 0, 0, 32], vec![0xfe; 32]].concat(),
        vec![1],
    ] {
        let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let _ = s.write_all(&frame).await;
        drop(s);
        garbage += 1;
    }
    let capture = |domain: &str, account: &str| CapturedPassword {
        id: new_capture_id().unwrap(),
        domain: domain.into(),
        account: account.into(),
        upn: None,
        captured_at: std::time::SystemTime::now(),
        password: Secret::new("Unplaceable-Pw1!"),
    };
    let stranger = unique("nobody");
    for msg in [capture("alpha", &stranger), capture("nosuchdomain", &sam)] {
        client::deliver(&socket, &msg, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("the agent stopped serving its socket: {e}"));
        garbage += 1;
    }
    // Dropped and acknowledged: the spool empties, the log says why.
    let spool = agent.dir.join("state").join("password-spool");
    let started = std::time::Instant::now();
    loop {
        let log = agent.log();
        let left = std::fs::read_dir(&spool).map_or(0, |d| d.count());
        if log.matches("not in scope; dropped").count() >= 2 && left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "captures not dropped ({left} spooled):\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(agent.pid().is_some());
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !log.contains("Unplaceable-Pw1!"),
        "a password is in the log"
    );
    assert!(
        !emu.state().to_string().contains("Unplaceable"),
        "a dropped password reached JumpCloud"
    );
    eprintln!("capture socket inputs tried: {garbage}");
    drop(agent);
    c.cleanup().await;
}

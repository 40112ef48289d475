//! Two-way mode end to end: the real `forestsync register` and `forestsync run` against the lab DCs
//! and the emulator. Each test has its own emulator, AD instance and OU (under OU=ForestSync, where the
//! service account may write): the OU holds the ADI root group and the AD-side users (AD-owned), and is
//! the target OU of users created in JumpCloud (JumpCloud-owned).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use forestsync_actors::directory::{DcSession, LdapMod};
use serde_json::{json, Value};

use crate::import_mode::{emulator, scratch, user, Agent, API_KEY};
use crate::support::{self, add_member, attr, group_at, set_attr, unique, Lab};
use crate::sync_mode::{eventually, start_agent, try_bind, wait_ad, JcAdmin, TargetOu};

const SYNC: Duration = Duration::from_secs(45);

/// The two-way config of domain alpha: root group and target OU in `ou`, plus `extra` (e.g. a
/// `[two_way]` section).
fn two_way_config(
    lab: &Lab,
    emu: &jcemu::Emulator,
    dir: &Path,
    ad: &str,
    ou: &str,
    root: &str,
    extra: &str,
) -> String {
    let ca = dir.join("jcemu-ca.pem");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&ca, emu.ca_pem().unwrap()).unwrap();
    let d = &lab.alpha;
    format!(
        "mode = \"two-way\"\nstate_dir = \"{state}\"\n{extra}\n[jumpcloud]\nbase_url = \"{url}\"\napi_key = \"{API_KEY}\"\nca_file = \"{ca}\"\nrate_limit_per_minute = 60000\nburst = 200\n\n[safety]\nmax_removal_percent = 100\n\n[passwords]\nsocket = \"{sock}\"\nenforce_jumpcloud_policy = false\n\n[[domain]]\nname = \"alpha\"\ndcs = [{dcs}]\nca_file = \"{labca}\"\nbind_dn = \"{bind}\"\nbind_password = \"{pw}\"\nbase_dn = \"{base}\"\nroot_group_dn = \"{root}\"\nad_instance_id = \"{ad}\"\ntarget_ou = \"{ou}\"\n",
        state = dir.join("state").display(),
        url = emu.base_url(),
        ca = ca.display(),
        sock = dir.join("capture.sock").display(),
        dcs = d.dc_urls.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", "),
        labca = lab.ca_file.display(),
        bind = d.bind_dn,
        pw = d.bind_password.expose(),
        base = d.base_dn,
    )
}

/// A name that fits sAMAccountName (20) with room to spare.
fn name(prefix: &str) -> String {
    let t = unique(prefix);
    t[..t.len().min(16)].to_owned()
}

/// The AD side of a test: the root group and AD-owned users, inside the test's OU.
struct AdSide {
    root: String,
}

impl AdSide {
    async fn new(ou: &mut TargetOu) -> AdSide {
        let sam = name("twroot");
        let root = format!("CN={sam},{}", ou.dn);
        group_at(&mut ou.admin, &root, &sam).await;
        AdSide { root }
    }

    /// An AD user (sAMAccountName = CN = `sam`) in the root group.
    async fn person(&self, ou: &mut TargetOu, sam: &str) -> String {
        let dn = format!("CN={sam},{}", ou.dn);
        ou.admin
            .add(
                &dn,
                vec![
                    attr(
                        "objectClass",
                        &["top", "person", "organizationalPerson", "user"],
                    ),
                    attr("userAccountControl", &["544"]),
                    attr("sAMAccountName", &[sam]),
                    attr("givenName", &["Ad"]),
                    attr("sn", &[sam]),
                    attr("mail", &[&format!("{sam}@example.test")]),
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("create user {dn}: {e}"));
        add_member(&mut ou.admin, &self.root, &dn).await;
        dn
    }
}

async fn ad_first(ou: &mut TargetOu, cn: &str, a: &str) -> Option<String> {
    ou.first(cn, a).await
}

/// objectGUID of `CN=<cn>` in the OU (hex), or None.
async fn ad_guid(ou: &mut TargetOu, cn: &str) -> Option<String> {
    let e = ou.entry(cn, &["objectGUID"]).await?;
    e.bin_attrs
        .get("objectGUID")
        .and_then(|v| v.first())
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
}

/// How many AD objects in the whole domain have sAMAccountName `sam`.
async fn ad_count(ou: &mut TargetOu, lab: &Lab, sam: &str) -> usize {
    ou.admin
        .search(
            &lab.alpha.base_dn,
            ldap3::Scope::Subtree,
            &format!("(sAMAccountName={sam})"),
            &["cn"],
            "count",
        )
        .await
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

fn jc_user_field(emu: &jcemu::Emulator, username: &str, field: &str) -> Option<String> {
    user(&emu.state(), username).and_then(|u| u[field].as_str().map(str::to_owned))
}

fn jc_users_named(emu: &jcemu::Emulator, username: &str) -> usize {
    emu.state()["users"]
        .as_array()
        .map(|a| a.iter().filter(|u| u["username"] == username).count())
        .unwrap_or(0)
}

fn password_date(emu: &jcemu::Emulator, id: &str) -> Option<String> {
    emu.state()["passwords"]
        .as_array()?
        .iter()
        .find(|p| p["user_id"] == id)
        .and_then(|p| p["password_date"].as_str().map(str::to_owned))
}

/// The agent's write requests to JumpCloud's API so far (its User-Agent, any method but GET).
async fn agent_writes(jc: &JcAdmin) -> Vec<Value> {
    let v = jc
        .call(reqwest::Method::GET, "/__emulator/requests", None)
        .await;
    v["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            r["method"] != "GET"
                && r["user_agent"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("forestsync/"))
        })
        .collect()
}

/// uSNChanged of `CN=<cn>` in the OU (changes with every write to the object).
async fn usn_changed(ou: &mut TargetOu, cn: &str) -> Option<String> {
    ad_first(ou, cn, "uSNChanged").await
}

/// `forestsync status` for a stopped agent: its stdout.
fn status(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_forestsync"))
        .args(["status", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number `status` gives after `label: `.
fn status_count(text: &str, label: &str) -> usize {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{label}: ")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in status:\n{text}"))
}

struct Pair {
    /// AD-owned user: sAMAccountName and DN.
    a: String,
    a_dn: String,
    /// JumpCloud-owned user: username and JumpCloud id.
    j: String,
    j_id: String,
}

/// One test's world: an emulator with an AD instance, an OU holding the root group (AD side) that is
/// also the target OU (JumpCloud side), and a registered two-way config.
struct World {
    emu: jcemu::Emulator,
    jc: JcAdmin,
    ad: String,
    ou: TargetOu,
    side: AdSide,
    dir: std::path::PathBuf,
    config: std::path::PathBuf,
    text: String,
}

impl World {
    /// Everything but the agent; `extra` goes into the config (e.g. a `[two_way]` section).
    async fn new(lab: &Lab, tag: &str, extra: &str, register: bool) -> World {
        let emu = emulator(jcemu::Config::default()).await;
        let jc = JcAdmin::new(&emu);
        let ad = jc.ad_instance(&lab.alpha.base_dn).await;
        let mut ou = TargetOu::new(lab, &lab.alpha, tag).await;
        let side = AdSide::new(&mut ou).await;
        let dir = scratch(tag);
        let text = two_way_config(lab, &emu, &dir, &ad, &ou.dn, &side.root, extra);
        let config = dir.join("forestsync.toml");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&config, &text).unwrap();
        if register {
            let (ok, out) = crate::sync_mode::register(&config, &jc.connect_key(&ad).await, false);
            assert!(ok, "register: {out}");
        }
        World {
            emu,
            jc,
            ad,
            ou,
            side,
            dir,
            config,
            text,
        }
    }

    /// An AD user in the root group and a JumpCloud user bound to the AD instance (with `j_extra`
    /// fields), then the agent, waiting until both are synced.
    async fn synced_pair(&mut self, prefix: &str, j_extra: Value) -> (Pair, Agent) {
        let a = name(&format!("{prefix}a"));
        let j = name(&format!("{prefix}j"));
        let a_dn = self.side.person(&mut self.ou, &a).await;
        let j_id = self.jc.user(&j, j_extra).await;
        self.jc.bind(&self.ad, "user", &j_id, "add").await;
        let agent = Agent::start(self.dir.clone(), &self.text);
        let (emu, a2) = (&self.emu, a.clone());
        eventually(&agent, SYNC, "the AD user reaches JumpCloud", || {
            let v = user(&emu.state(), &a2).map(|_| ());
            async move { v }
        })
        .await;
        let marker = format!("forestsync:jc={j_id}");
        let started = Instant::now();
        while !ad_first(&mut self.ou, &j, "adminDescription")
            .await
            .is_some_and(|m| m.starts_with(&marker))
        {
            assert!(
                started.elapsed() < SYNC,
                "the JumpCloud user did not reach AD\nagent log:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (Pair { a, a_dn, j, j_id }, agent)
    }
}

async fn wait_jc(
    emu: &jcemu::Emulator,
    agent: &Agent,
    what: &str,
    username: &str,
    field: &str,
    want: &str,
) {
    let (u, f, w) = (username.to_owned(), field.to_owned(), want.to_owned());
    eventually(agent, SYNC, what, || {
        let ok = (jc_user_field(emu, &u, &f).as_deref() == Some(w.as_str())).then_some(());
        async move { ok }
    })
    .await;
}

async fn wait_ad_attr(ou: &mut TargetOu, agent: &Agent, what: &str, cn: &str, a: &str, want: &str) {
    let (cn, a, want) = (cn.to_owned(), a.to_owned(), want.to_owned());
    wait_ad(ou, agent, SYNC, what, move |ou| {
        let (cn, a, want) = (cn.clone(), a.clone(), want.clone());
        Box::pin(async move {
            (ou.first(&cn, &a).await.as_deref() == Some(want.as_str())).then_some(())
        })
    })
    .await;
}

/// Waits until the AD group `CN=<cn>` in the OU has exactly `want` (lower-case DNs) as members.
async fn wait_members(
    ou: &mut TargetOu,
    agent: &Agent,
    cn: &str,
    want: &BTreeSet<String>,
    what: &str,
) {
    let (cn, want) = (cn.to_owned(), want.clone());
    wait_ad(ou, agent, SYNC, what, move |ou| {
        let (cn, want) = (cn.clone(), want.clone());
        Box::pin(async move {
            let now: BTreeSet<String> = ou
                .entry(&cn, &["member"])
                .await
                .and_then(|e| e.attrs.get("member").cloned())
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.to_lowercase())
                .collect();
            (now == want).then_some(())
        })
    })
    .await;
}

/// Nothing the agent writes for `Pair` for `window`: no JumpCloud write request, no AD change.
async fn assert_quiet(jc: &JcAdmin, ou: &mut TargetOu, p: &Pair, window: Duration, agent: &Agent) {
    let before = (
        agent_writes(jc).await.len(),
        usn_changed(ou, &p.a).await,
        usn_changed(ou, &p.j).await,
    );
    tokio::time::sleep(window).await;
    let after = (
        agent_writes(jc).await.len(),
        usn_changed(ou, &p.a).await,
        usn_changed(ou, &p.j).await,
    );
    assert_eq!(
        before,
        after,
        "the agent wrote while nothing changed (echo writes)\nagent log:\n{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_side_owns_what_it_created_and_changes_on_the_other_side_are_reverted_and_recorded() {
    let Some(lab) = support::lab() else { return };
    let mut w = World::new(lab, "tw-own", "", true).await;
    let (p, mut agent) = w.synced_pair("two", json!({})).await;
    let w_root = w.side.root.clone();
    let World {
        emu,
        jc,
        ad,
        mut ou,
        config,
        ..
    } = w;

    // Each object exists once on each side: nothing came back as a second object.
    assert_eq!(jc_users_named(&emu, &p.a), 1);
    assert_eq!(jc_users_named(&emu, &p.j), 1);
    assert_eq!(ad_count(&mut ou, lab, &p.a).await, 1);
    assert_eq!(ad_count(&mut ou, lab, &p.j).await, 1);
    assert_eq!(
        ad_first(&mut ou, &p.a, "adminDescription").await,
        None,
        "an AD-owned user carries no JumpCloud marker"
    );

    // The owner's changes flow: AD → JumpCloud for the AD user, JumpCloud → AD for the JumpCloud user.
    set_attr(&mut ou.admin, &p.a_dn, "givenName", "Alicia").await;
    wait_jc(
        &emu,
        &agent,
        "AD's first name reaches JumpCloud",
        &p.a,
        "firstname",
        "Alicia",
    )
    .await;
    jc.put(
        &format!("/api/systemusers/{}", p.j_id),
        json!({"firstname": "Jolene"}),
    )
    .await;
    wait_ad_attr(
        &mut ou,
        &agent,
        "JumpCloud's first name reaches AD",
        &p.j.clone(),
        "givenName",
        "Jolene",
    )
    .await;

    // Changes on the non-owning side are reverted.
    let a_id = user(&emu.state(), &p.a).unwrap()["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    jc.put(
        &format!("/api/systemusers/{a_id}"),
        json!({"firstname": "Hacked"}),
    )
    .await;
    let started = Instant::now();
    while jc_user_field(&emu, &p.a, "firstname").as_deref() != Some("Hacked")
        && started.elapsed() < Duration::from_secs(2)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_jc(
        &emu,
        &agent,
        "a JumpCloud edit of an AD-owned user is reverted",
        &p.a,
        "firstname",
        "Alicia",
    )
    .await;
    let j_dn = format!("CN={},{}", p.j, ou.dn);
    set_attr(&mut ou.admin, &j_dn, "givenName", "Mallory").await;
    wait_ad_attr(
        &mut ou,
        &agent,
        "an AD edit of a JumpCloud-owned user is reverted",
        &p.j.clone(),
        "givenName",
        "Jolene",
    )
    .await;

    // Groups: an AD group (AD-owned, member A) and a JumpCloud group (JumpCloud-owned, members J and
    // the AD-owned A) each reach the other side with their members.
    let g = name("twog");
    let g_dn = format!("CN={g},{}", ou.dn);
    group_at(&mut ou.admin, &g_dn, &g).await;
    add_member(&mut ou.admin, &g_dn, &p.a_dn).await;
    add_member(&mut ou.admin, &w_root, &g_dn).await;
    let jg = name("twojg");
    let jg_id = jc.group(&jg).await;
    jc.bind(&ad, "user_group", &jg_id, "add").await;
    let a_id = user(&emu.state(), &p.a).unwrap()["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    jc.member(&jg_id, &p.j_id, "add").await;
    jc.member(&jg_id, &a_id, "add").await;
    let (e, g2, a2) = (&emu, g.clone(), p.a.clone());
    eventually(
        &agent,
        SYNC,
        "the AD group reaches JumpCloud with A",
        || {
            let ok =
                (crate::import_mode::members(&e.state(), &g2) == vec![a2.clone()]).then_some(());
            async move { ok }
        },
    )
    .await;
    let jg_dn = format!("CN={jg},{}", ou.dn);
    let want: BTreeSet<String> = [p.a_dn.to_lowercase(), j_dn.to_lowercase()].into();
    wait_members(
        &mut ou,
        &agent,
        &jg,
        &want,
        "the JumpCloud group reaches AD with J and A",
    )
    .await;

    // Membership changed on the non-owning side: reverted.
    let g_id = crate::import_mode::group(&emu.state(), &g).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    jc.member(&g_id, &p.j_id, "add").await;
    let (e, g2, a2) = (&emu, g.clone(), p.a.clone());
    eventually(
        &agent,
        SYNC,
        "J added to the AD-owned group in JumpCloud is removed",
        || {
            let s = e.state();
            // J was a member as soon as the add returned: only a revert removes it.
            let ok = (crate::import_mode::members(&s, &g2) == vec![a2.clone()]).then_some(());
            async move { ok }
        },
    )
    .await;
    ou.admin
        .modify(
            &jg_dn,
            vec![LdapMod::Delete(
                b"member".to_vec(),
                [p.a_dn.as_bytes().to_vec()].into(),
            )],
        )
        .await
        .unwrap();
    wait_members(
        &mut ou,
        &agent,
        &jg,
        &want,
        "A removed from the JumpCloud-owned group in AD is added back",
    )
    .await;

    // Quiet: no echo of any of the writes above.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_quiet(&jc, &mut ou, &p, Duration::from_secs(6), &agent).await;

    agent.kill();
    let report = status(&config);
    assert_eq!(
        status_count(&report, "changes on the non-owning side"),
        4,
        "{report}"
    );
    assert!(report.contains(" members: "), "{report}");
    assert!(report.contains(" member: "), "{report}");
    assert!(
        report.contains("firstname") && report.contains("Hacked"),
        "{report}"
    );
    assert!(
        report.contains("givenName") && report.contains("Mallory"),
        "{report}"
    );
    assert_eq!(status_count(&report, "conflicts"), 0, "{report}");
    ou.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ignored_changes_stay_and_concurrent_edits_are_won_by_the_owner_and_recorded() {
    let Some(lab) = support::lab() else { return };
    let mut w = World::new(
        lab,
        "tw-conf",
        "\n[two_way]\nnon_owner_changes = \"ignore\"\n",
        true,
    )
    .await;
    let (p, mut agent) = w.synced_pair("twc", json!({})).await;
    let World {
        emu,
        jc,
        mut ou,
        config,
        ..
    } = w;
    let a_id = user(&emu.state(), &p.a).unwrap()["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let j_dn = format!("CN={},{}", p.j, ou.dn);

    // Ignored: each non-owner edit stays as made.
    jc.put(
        &format!("/api/systemusers/{a_id}"),
        json!({"jobTitle": "Elsewhere", "firstname": "Local"}),
    )
    .await;
    set_attr(&mut ou.admin, &j_dn, "givenName", "Local").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        jc_user_field(&emu, &p.a, "firstname").as_deref(),
        Some("Local")
    );
    assert_eq!(
        ad_first(&mut ou, &p.j, "givenName").await.as_deref(),
        Some("Local")
    );

    // Both sides change the same attribute while the agent is down: the owner wins.
    agent.kill();
    set_attr(&mut ou.admin, &p.a_dn, "givenName", "FromAD").await;
    jc.put(
        &format!("/api/systemusers/{a_id}"),
        json!({"firstname": "FromJC"}),
    )
    .await;
    jc.put(
        &format!("/api/systemusers/{}", p.j_id),
        json!({"firstname": "JcWins"}),
    )
    .await;
    set_attr(&mut ou.admin, &j_dn, "givenName", "AdLoses").await;
    agent.spawn();
    wait_jc(
        &emu,
        &agent,
        "AD wins for the AD-owned user",
        &p.a,
        "firstname",
        "FromAD",
    )
    .await;
    wait_ad_attr(
        &mut ou,
        &agent,
        "JumpCloud wins for the JumpCloud-owned user",
        &p.j.clone(),
        "givenName",
        "JcWins",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.kill();

    let report = status(&config);
    assert_eq!(status_count(&report, "conflicts"), 2, "{report}");
    assert!(
        report.contains("FromJC") && report.contains("AdLoses"),
        "{report}"
    );
    assert!(
        status_count(&report, "changes on the non-owning side") >= 1,
        "{report}"
    );
    ou.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn passwords_follow_each_users_authority_both_ways_without_a_loop() {
    let Some(lab) = support::lab() else { return };
    let _one_hook_at_a_time = crate::password_capture::HOOK_LOCK.lock().await;
    let mut w = World::new(lab, "tw-pw", "", true).await;
    // A: AD-owned, password authority AD (the default). J: JumpCloud-owned, authority JumpCloud.
    let prefix = name("pwtw");
    let (p, mut agent) = w
        .synced_pair(
            &prefix,
            json!({"attributes": [{"name": "forestsync_password_authority", "value": "jumpcloud"}]}),
        )
        .await;
    let World {
        emu,
        jc,
        mut ou,
        dir,
        config,
        ..
    } = w;
    let a_id = user(&emu.state(), &p.a).unwrap()["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let j_dn = format!("CN={},{}", p.j, ou.dn);
    let passthrough = dir.join("passthrough.toml");
    std::fs::write(&passthrough, "[passwords]\nenforce_jumpcloud_policy = false\nsocket = \"passthrough/none.sock\"\nspool_dir = \"passthrough/spool\"\nkey_file = \"passthrough/password.key\"\n").unwrap();
    let _hook =
        crate::password_capture::HookGuard::install_routing(&prefix, &config, &passthrough).await;
    let password_requests = |reqs: &[Value], id: &str| {
        reqs.iter()
            .filter(|r| {
                r["path"].as_str().is_some_and(|p| p.contains(id))
                    && (r["path"].as_str().is_some_and(|p| p.ends_with("/password"))
                        || r["body"].get("password").is_some())
            })
            .count()
    };

    // AD → JumpCloud for A; its return trip (a channel event) is not written back to AD.
    let pw_a = format!("Ad!{}x9Q", unique(""));
    let before = ad_first(&mut ou, &p.a, "pwdLastSet").await;
    set_ad_password(&mut ou.admin, &p.a_dn, &pw_a).await;
    let after_set = ad_first(&mut ou, &p.a, "pwdLastSet").await;
    assert_ne!(before, after_set);
    let (e, id) = (&emu, a_id.clone());
    eventually(&agent, SYNC, "A's AD password reaches JumpCloud", || {
        let v = password_date(e, &id).map(|_| ());
        async move { v }
    })
    .await;

    // JumpCloud → AD for J; the DC's capture of it is not sent back to JumpCloud.
    let pw_j = format!("Jc!{}x9Q", unique(""));
    jc.set_password(&p.j_id, &pw_j).await;
    let (lab2, dn2, pw2) = (lab, j_dn.clone(), pw_j.clone());
    eventually(&agent, SYNC, "J's JumpCloud password works in AD", || {
        let (dn, pw) = (dn2.clone(), pw2.clone());
        async move { try_bind(lab2, &dn, &pw).await.ok() }
    })
    .await;
    let j_date = password_date(&emu, &p.j_id);

    // Against the authority: J's password changed in AD, A's in JumpCloud — neither propagates.
    set_ad_password(&mut ou.admin, &j_dn, &format!("Loc!{}x9Q", unique(""))).await;
    let a_pwd_last_set = ad_first(&mut ou, &p.a, "pwdLastSet").await;
    jc.set_password(&a_id, &format!("Cl!{}x9Q", unique("")))
        .await;
    tokio::time::sleep(Duration::from_secs(8)).await;

    assert_eq!(
        ad_first(&mut ou, &p.a, "pwdLastSet").await,
        a_pwd_last_set,
        "A's password was written to AD (echo or against its authority)\n{}",
        agent.log()
    );
    assert!(
        try_bind(lab, &p.a_dn, &pw_a).await.is_ok(),
        "A's AD password changed"
    );
    assert_eq!(
        password_date(&emu, &p.j_id),
        j_date,
        "J's password was sent to JumpCloud (echo or against its authority)"
    );
    let reqs = agent_writes(&jc).await;
    assert_eq!(
        password_requests(&reqs, &a_id),
        1,
        "A's password sent once: {reqs:?}"
    );
    assert_eq!(
        password_requests(&reqs, &p.j_id),
        0,
        "J's password never sent back: {reqs:?}"
    );

    agent.kill();
    let report = status(&config);
    assert_eq!(
        status_count(&report, "changes on the non-owning side"),
        2,
        "J's AD change and A's JumpCloud change are recorded, the echoes are not:\n{report}"
    );
    assert!(report.matches(" password: ").count() == 2, "{report}");
    ou.cleanup().await;
}

async fn set_ad_password(admin: &mut DcSession, dn: &str, password: &str) {
    crate::import_mode::set_password(admin, dn, password)
        .await
        .unwrap_or_else(|e| panic!("set password of {dn}: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn switching_modes_ad_authoritative_two_way_jumpcloud_authoritative_keeps_every_id() {
    let Some(lab) = support::lab() else { return };
    let w = World::new(lab, "tw-mig", "", false).await;
    let World {
        emu,
        jc,
        ad,
        mut ou,
        side,
        dir,
        config,
        text: two_way_text,
    } = w;

    // 1. ad-authoritative: an AD user and an AD group (with the user) reach JumpCloud.
    let a = name("twma");
    let g = name("twmg");
    let a_dn = side.person(&mut ou, &a).await;
    let g_dn = format!("CN={g},{}", ou.dn);
    group_at(&mut ou.admin, &g_dn, &g).await;
    add_member(&mut ou.admin, &g_dn, &a_dn).await;
    add_member(&mut ou.admin, &side.root, &g_dn).await;
    let ad_auth_text = two_way_text
        .replace("mode = \"two-way\"", "mode = \"ad-authoritative\"")
        .replace(&format!("ad_instance_id = \"{ad}\"\n"), "")
        .replace(&format!("target_ou = \"{}\"\n", ou.dn), "");
    let mut agent = Agent::start(dir.clone(), &ad_auth_text);
    let (ga, gg) = (a.clone(), g.clone());
    eventually(
        &agent,
        SYNC,
        "user and group in JumpCloud with the member",
        || {
            let s = emu.state();
            let ok = (user(&s, &ga).is_some()
                && crate::import_mode::members(&s, &gg) == vec![ga.clone()])
            .then_some(());
            async move { ok }
        },
    )
    .await;
    let ids = |emu: &jcemu::Emulator| {
        let s = emu.state();
        (
            user(&s, &a).map(|u| u["_id"].clone()),
            crate::import_mode::group(&s, &g).map(|u| u["id"].clone()),
            s["users"].as_array().map(Vec::len),
            s["usergroups"].as_array().map(Vec::len),
        )
    };
    let first = ids(&emu);
    let a_guid = ad_guid(&mut ou, &a).await.unwrap();
    let g_guid = ad_guid(&mut ou, &g).await.unwrap();
    agent.kill();
    drop(agent);

    // 2. two-way on the same state: nothing re-created; a JumpCloud user now reaches AD.
    std::fs::write(&config, &two_way_text).unwrap();
    let j = name("twmj");
    let j_id = jc.user(&j, json!({})).await;
    jc.bind(&ad, "user", &j_id, "add").await;
    let agent = start_agent(&jc, &ad, dir.clone(), &two_way_text).await;
    let marker = format!("forestsync:jc={j_id}");
    let started = Instant::now();
    while ad_first(&mut ou, &j, "adminDescription").await.as_deref() != Some(marker.as_str()) {
        assert!(started.elapsed() < SYNC, "J not in AD\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = ids(&emu);
    assert_eq!(
        (&first.0, &first.1),
        (&second.0, &second.1),
        "JumpCloud ids kept"
    );
    assert_eq!(
        second.2,
        first.2.map(|n| n + 1),
        "only J was added in JumpCloud"
    );
    assert_eq!(second.3, first.3, "no group added in JumpCloud");
    assert_eq!(ad_guid(&mut ou, &a).await.as_deref(), Some(a_guid.as_str()));
    let j_guid = ad_guid(&mut ou, &j).await.unwrap();
    drop(agent);

    // 3. jumpcloud-authoritative on the same state: everything is taken over in place.
    let jc_auth_text = two_way_text
        .replace("mode = \"two-way\"", "mode = \"jumpcloud-authoritative\"")
        .replace(&format!("root_group_dn = \"{}\"\n", side.root), "");
    let agent = Agent::start(dir.clone(), &jc_auth_text);
    let a_jc = first.0.clone().unwrap();
    let want_a = format!("forestsync:jc={}", a_jc.as_str().unwrap());
    let want_g = format!(
        "forestsync:jc={}",
        first.1.clone().unwrap().as_str().unwrap()
    );
    let started = Instant::now();
    loop {
        let (ma, mg) = (
            ad_first(&mut ou, &a, "adminDescription").await,
            ad_first(&mut ou, &g, "adminDescription").await,
        );
        if ma.as_deref() == Some(want_a.as_str()) && mg.as_deref() == Some(want_g.as_str()) {
            break;
        }
        assert!(
            started.elapsed() < SYNC,
            "AD user and group not taken over ({ma:?}, {mg:?})\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let third = ids(&emu);
    assert_eq!(second, third, "JumpCloud unchanged by the switch");
    assert_eq!(ad_guid(&mut ou, &a).await.as_deref(), Some(a_guid.as_str()));
    assert_eq!(ad_guid(&mut ou, &g).await.as_deref(), Some(g_guid.as_str()));
    assert_eq!(ad_guid(&mut ou, &j).await.as_deref(), Some(j_guid.as_str()));
    for sam in [&a, &g, &j] {
        assert_eq!(
            ad_count(&mut ou, lab, sam).await,
            1,
            "{sam} exists once in AD"
        );
    }
    let members: BTreeSet<String> = ou
        .entry(&g, &["member"])
        .await
        .map(|e| e.attrs.get("member").cloned().unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.to_lowercase())
        .collect();
    assert!(
        members.contains(&a_dn.to_lowercase()),
        "the group keeps its member: {members:?}"
    );
    // JumpCloud is the authority now: a change there reaches the taken-over AD user.
    jc.put(
        &format!("/api/systemusers/{}", a_jc.as_str().unwrap()),
        json!({"firstname": "Migrated"}),
    )
    .await;
    wait_ad_attr(
        &mut ou,
        &agent,
        "JumpCloud manages the migrated user",
        &a,
        "givenName",
        "Migrated",
    )
    .await;
    drop(agent);
    ou.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn churn_on_both_sides_costs_one_write_per_real_change_and_no_echo() {
    let Some(lab) = support::lab() else { return };
    let seconds: u64 = std::env::var("FORESTSYNC_CHURN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut w = World::new(lab, "tw-churn", "", true).await;
    let (p, agent) = w.synced_pair("twch", json!({})).await;
    let World {
        emu, jc, mut ou, ..
    } = w;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = agent_writes(&jc).await.len();
    let ad_writes_before = agent.log().matches("updated AD user").count();

    // Alternate real changes on both sides, each waited for, until the time is up.
    let started = Instant::now();
    let (mut ad_changes, mut jc_changes) = (0usize, 0usize);
    let mut round = 0u32;
    while started.elapsed() < Duration::from_secs(seconds) {
        round += 1;
        let value = format!("R{round}");
        if round % 2 == 1 {
            set_attr(&mut ou.admin, &p.a_dn, "givenName", &value).await;
            ad_changes += 1;
            wait_jc(
                &emu,
                &agent,
                "AD change reaches JumpCloud",
                &p.a,
                "firstname",
                &value,
            )
            .await;
        } else {
            jc.put(
                &format!("/api/systemusers/{}", p.j_id),
                json!({"firstname": value}),
            )
            .await;
            jc_changes += 1;
            wait_ad_attr(
                &mut ou,
                &agent,
                "JumpCloud change reaches AD",
                &p.j.clone(),
                "givenName",
                &value,
            )
            .await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let api_writes = agent_writes(&jc).await.len() - writes_before;
    let ad_writes = agent.log().matches("updated AD user").count() - ad_writes_before;
    eprintln!(
        "churn: {round} rounds in {:?}; {ad_changes} AD changes → {api_writes} API writes; {jc_changes} JumpCloud changes → {ad_writes} AD writes",
        started.elapsed()
    );
    assert!(round >= 4, "too few rounds to judge");
    assert_eq!(
        api_writes, ad_changes,
        "one JumpCloud write per AD change, none for echoes"
    );
    assert_eq!(
        ad_writes, jc_changes,
        "one AD write per JumpCloud change, none for echoes"
    );
    assert_quiet(&jc, &mut ou, &p, Duration::from_secs(5), &agent).await;
    drop(agent);
    ou.cleanup().await;
}

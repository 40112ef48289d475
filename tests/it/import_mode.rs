//! AD-authoritative mode end to end: the real `forestsync run` daemon against the lab DCs and the
//! emulator. Each test builds its own OU and root group in AD (isolation by data), starts its own
//! emulator and agent, makes AD changes and waits for JumpCloud (the emulator's state) to follow.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use forestsync_actors::directory::{DcSession, LdapMod};
use serde_json::Value;

use crate::support::{self, attr, unique, Lab, LabDomain};

pub const API_KEY: &str = "import-test-key";

/// One test's corner of a domain: an OU with a root group inside.
pub struct Corner {
    pub ou: String,
    pub root: String,
    pub root_name: String,
    pub admin: DcSession,
    created: Vec<String>,
}

impl Corner {
    pub async fn new(lab: &Lab, d: &LabDomain, tag: &str) -> Corner {
        let mut admin = support::admin_session(lab, d, &d.dc_urls[0]).await;
        let ou = format!("OU={},OU=ADI,{}", unique(tag), d.base_dn);
        admin
            .add(
                &ou,
                vec![attr("objectClass", &["top", "organizationalUnit"])],
            )
            .await
            .unwrap();
        let root_name = unique("root");
        let root = format!("CN={root_name},{ou}");
        let mut c = Corner {
            ou: ou.clone(),
            root: root.clone(),
            root_name: root_name.clone(),
            admin,
            created: vec![ou],
        };
        c.group_at(&root, &root_name).await;
        c
    }

    async fn group_at(&mut self, dn: &str, sam: &str) {
        support::group_at(&mut self.admin, dn, sam).await;
        self.created.push(dn.into());
    }

    /// A security group in the OU (`sam` must be unique in the domain).
    pub async fn group(&mut self, sam: &str) -> String {
        let dn = format!("CN={sam},{}", self.ou);
        self.group_at(&dn, sam).await;
        dn
    }

    /// An enabled user without a password (userAccountControl 544), with the given attributes.
    pub async fn user(&mut self, cn: &str, attrs: &[(&str, &str)]) -> String {
        let dn = format!("CN={cn},{}", self.ou);
        let mut list = vec![
            attr(
                "objectClass",
                &["top", "person", "organizationalPerson", "user"],
            ),
            attr("userAccountControl", &["544"]),
        ];
        for (k, v) in attrs {
            list.push(attr(k, &[v]));
        }
        self.admin
            .add(&dn, list)
            .await
            .unwrap_or_else(|e| panic!("create user {dn}: {e}"));
        self.created.push(dn.clone());
        dn
    }

    /// A user with the usual attributes: sAMAccountName = `sam`, names, mail.
    pub async fn person(&mut self, sam: &str) -> String {
        self.user(
            sam,
            &[
                ("sAMAccountName", sam),
                ("givenName", "Test"),
                ("sn", sam),
                ("mail", &format!("{sam}@example.test")),
            ],
        )
        .await
    }

    pub async fn add_member(&mut self, group: &str, member: &str) {
        support::add_member(&mut self.admin, group, member).await;
    }

    /// Removes several members in one LDAP modify.
    pub async fn remove_members(&mut self, group: &str, members: &[&str]) {
        self.admin
            .modify(
                group,
                vec![LdapMod::Delete(
                    b"member".to_vec(),
                    members.iter().map(|m| m.as_bytes().to_vec()).collect(),
                )],
            )
            .await
            .unwrap_or_else(|e| panic!("remove {} members from {group}: {e}", members.len()));
    }

    pub async fn remove_member(&mut self, group: &str, member: &str) {
        self.admin
            .modify(
                group,
                vec![LdapMod::Delete(
                    b"member".to_vec(),
                    [member.as_bytes().to_vec()].into(),
                )],
            )
            .await
            .unwrap_or_else(|e| panic!("remove {member} from {group}: {e}"));
    }

    pub async fn set(&mut self, dn: &str, name: &str, value: &str) {
        support::set_attr(&mut self.admin, dn, name, value).await;
    }

    pub async fn delete(&mut self, dn: &str) {
        self.admin
            .delete(dn)
            .await
            .unwrap_or_else(|e| panic!("delete {dn}: {e}"));
        self.created.retain(|c| c != dn);
    }

    /// Removes everything the test created (children first).
    pub async fn cleanup(mut self) {
        for dn in self.created.iter().rev() {
            let _ = self.admin.delete(dn).await;
        }
    }
}

/// The agent process; killed when dropped.
pub struct Agent {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Extra environment for every spawn (e.g. libfaketime's).
    pub env: Vec<(String, String)>,
    /// `FORESTSYNC_LOG_FORMAT` for the agent's stderr (`agent.log`).
    log_format: &'static str,
}

impl Agent {
    pub fn config_text(
        lab: &Lab,
        emu: &jcemu::Emulator,
        dir: &std::path::Path,
        domains: &[(&str, &LabDomain, &str)],
        extra: &str,
    ) -> String {
        let ca = dir.join("jcemu-ca.pem");
        std::fs::write(&ca, emu.ca_pem().unwrap()).unwrap();
        let mut text = format!(
            "mode = \"ad-authoritative\"\nstate_dir = \"{state}\"\n\n[jumpcloud]\nbase_url = \"{url}\"\napi_key = \"{API_KEY}\"\nca_file = \"{ca}\"\nrate_limit_per_minute = 60000\nburst = 200\n\n[passwords]\nsocket = \"{sock}\"\n",
            state = dir.join("state").display(),
            url = emu.base_url(),
            ca = ca.display(),
            sock = dir.join("capture.sock").display(),
        );
        for (name, d, root) in domains {
            text += &format!(
                "\n[[domain]]\nname = \"{name}\"\ndcs = [{dcs}]\nca_file = \"{ca}\"\nbind_dn = \"{bind}\"\nbind_password = \"{pw}\"\nbase_dn = \"{base}\"\nroot_group_dn = \"{root}\"\n",
                dcs = d.dc_urls.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", "),
                ca = lab.ca_file.display(),
                bind = d.bind_dn,
                pw = d.bind_password.expose(),
                base = d.base_dn,
            );
            text += extra;
        }
        text
    }

    pub fn start(dir: PathBuf, config_text: &str) -> Agent {
        Agent::start_with(dir, config_text, "text", Vec::new())
    }

    /// Like [`Agent::start`], with the log format the agent uses off a terminal in production.
    pub fn start_json(dir: PathBuf, config_text: &str) -> Agent {
        Agent::start_with(dir, config_text, "json", Vec::new())
    }

    /// As [`Agent::start`], with extra environment for every spawn.
    pub fn start_with_env(dir: PathBuf, config_text: &str, env: Vec<(String, String)>) -> Agent {
        Agent::start_with(dir, config_text, "text", env)
    }

    fn start_with(
        dir: PathBuf,
        config_text: &str,
        log_format: &'static str,
        env: Vec<(String, String)>,
    ) -> Agent {
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("forestsync.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut agent = Agent {
            child: None,
            dir,
            config,
            env,
            log_format,
        };
        agent.spawn();
        agent
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_forestsync"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("FORESTSYNC_LOG", "info,forestsync_actors=info")
            .env("FORESTSYNC_LOG_FORMAT", self.log_format)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("forestsync run starts");
        self.child = Some(child);
    }

    /// The running process's id (`None` once killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn emulator(config: jcemu::Config) -> jcemu::Emulator {
    jcemu::Emulator::start(jcemu::Config {
        api_keys: vec![API_KEY.into()],
        ..config
    })
    .await
    .expect("emulator starts")
}

pub fn scratch(tag: &str) -> PathBuf {
    std::env::temp_dir().join(unique(&format!("forestsync-{tag}-")))
}

/// Polls the emulator until `check` holds on its state, or fails after `within` showing the agent log.
pub async fn wait_for(
    emu: &jcemu::Emulator,
    agent: &Agent,
    within: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if check(&emu.state()) {
            return started.elapsed();
        }
        if started.elapsed() > within {
            panic!("timed out after {within:?} waiting for: {what}\nemulator state: {}\nagent log:\n{}", emu.state(), agent.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn user<'a>(state: &'a Value, username: &str) -> Option<&'a Value> {
    state["users"]
        .as_array()?
        .iter()
        .find(|u| u["username"] == username)
}

pub fn group<'a>(state: &'a Value, name: &str) -> Option<&'a Value> {
    state["usergroups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == name)
}

/// Usernames of a JumpCloud group's members.
pub fn members(state: &Value, group_name: &str) -> Vec<String> {
    let Some(g) = group(state, group_name) else {
        return vec![];
    };
    let gid = &g["id"];
    let mut names: Vec<String> = state["memberships"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| &m["group_id"] == gid)
        .filter_map(|m| {
            state["users"]
                .as_array()?
                .iter()
                .find(|u| u["_id"] == m["user_id"])
        })
        .filter_map(|u| u["username"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

const SYNC: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn nested_groups_three_deep_and_the_primary_group_are_flattened_into_jumpcloud() {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "nest").await;
    let tag = unique("n");
    let (l1, l2, l3) = (
        c.group(&format!("{tag}-l1")).await,
        c.group(&format!("{tag}-l2")).await,
        c.group(&format!("{tag}-l3")).await,
    );
    let (a, b, p) = (
        c.person(&format!("{tag}a")).await,
        c.person(&format!("{tag}b")).await,
        c.person(&format!("{tag}p")).await,
    );
    let root = c.root.clone();
    c.add_member(&root, &l1).await;
    c.add_member(&l1, &l2).await;
    c.add_member(&l2, &l3).await;
    c.add_member(&l1, &a).await;
    c.add_member(&l3, &b).await;
    // p's primary group becomes l2: AD then records it only in p's primaryGroupID.
    c.add_member(&l2, &p).await;
    let rid = {
        let e = c
            .admin
            .read_entry(&l2, &["primaryGroupToken"])
            .await
            .unwrap()
            .unwrap();
        e.attrs["primaryGroupToken"][0].clone()
    };
    c.set(&p, "primaryGroupID", &rid).await;

    let emu = emulator(jcemu::Config::default()).await;
    let dir = scratch("nest");
    std::fs::create_dir_all(&dir).unwrap();
    let agent = Agent::start(
        dir.clone(),
        &Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], ""),
    );
    let (ua, ub, up) = (format!("{tag}a"), format!("{tag}b"), format!("{tag}p"));
    wait_for(&emu, &agent, SYNC, "users and flattened groups", |s| {
        members(s, &format!("{tag}-l1")) == [ua.clone(), ub.clone(), up.clone()]
            && members(s, &format!("{tag}-l2")) == [ub.clone(), up.clone()]
            && members(s, &format!("{tag}-l3")) == [ub.clone()]
    })
    .await;
    let state = emu.state();
    let ann = user(&state, &ua).unwrap();
    assert_eq!(ann["external_dn"], a.as_str());
    assert_eq!(ann["external_source_type"], "ActiveDirectory");
    assert!(
        group(&state, &c.root_name).is_none(),
        "the root group itself is not a JumpCloud group"
    );
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disable_suspends_enable_activates_and_rename_updates_the_same_user() {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "state").await;
    let sam = unique("st");
    let u = c.person(&sam).await;
    let root = c.root.clone();
    c.add_member(&root, &u).await;
    let emu = emulator(jcemu::Config::default()).await;
    let dir = scratch("state");
    std::fs::create_dir_all(&dir).unwrap();
    let agent = Agent::start(
        dir.clone(),
        &Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], ""),
    );
    wait_for(&emu, &agent, SYNC, "user created", |s| {
        user(s, &sam).is_some_and(|u| u["state"] == "ACTIVATED")
    })
    .await;
    let id = user(&emu.state(), &sam).unwrap()["_id"].clone();

    c.set(&u, "userAccountControl", "546").await;
    let took = wait_for(&emu, &agent, SYNC, "suspended", |s| {
        user(s, &sam).is_some_and(|u| u["state"] == "SUSPENDED" && u["suspended"] == true)
    })
    .await;
    eprintln!("disable reached JumpCloud in {took:?}");
    c.set(&u, "userAccountControl", "544").await;
    wait_for(&emu, &agent, SYNC, "activated", |s| {
        user(s, &sam).is_some_and(|u| u["state"] == "ACTIVATED")
    })
    .await;

    // Rename (sAMAccountName and CN) and move within scope: same JumpCloud user, updated.
    let renamed = format!("{sam}r");
    c.set(&u, "sAMAccountName", &renamed).await;
    let sub = format!("OU=Sub,{}", c.ou);
    c.admin
        .add(
            &sub,
            vec![attr("objectClass", &["top", "organizationalUnit"])],
        )
        .await
        .unwrap();
    c.admin
        .rename(&u, &format!("CN={renamed}"), Some(&sub))
        .await
        .unwrap();
    let new_dn = format!("CN={renamed},{sub}");
    wait_for(&emu, &agent, SYNC, "renamed in place", |s| {
        user(s, &renamed).is_some_and(|u| u["_id"] == id && u["external_dn"] == new_dn.as_str())
            && user(s, &sam).is_none()
    })
    .await;
    assert_eq!(
        emu.state()["users"].as_array().unwrap().len(),
        1,
        "a rename never creates a second user"
    );
    // The committed watermark records, per DC used, its invocationId with the USN (restore detection).
    let mut agent = agent;
    agent.kill();
    let store = forestsync_actors::store::Store::open(&agent.dir.join("state")).unwrap();
    let (_, watermark) = store.load_domain("alpha").unwrap();
    let watermark = watermark.expect("a committed watermark");
    assert!(!watermark.dirsync_cookie.is_empty());
    let dc1 = watermark
        .dc_usns
        .get(&lab.alpha.dc_urls[0])
        .expect("DC1's USN is recorded");
    assert!(
        dc1.usn > 0
            && dc1
                .invocation_id
                .parse::<forestsync_actors::model::ObjectGuid>()
                .is_ok(),
        "{dc1:?}"
    );
    c.delete(&new_dn).await;
    c.delete(&sub).await;
    c.cleanup().await;
}

/// Starts an emulator + agent for one corner (alpha), waiting for the initial sync of `expect_users`.
/// Tests that remove several users at once lift the mass-removal guard's percentage (small scopes),
/// except the guard test itself.
const NO_PERCENT_GUARD: &str = "\n[safety]\nmax_removal_percent = 100\n";

pub(crate) async fn running(
    lab: &'static Lab,
    c: &Corner,
    tag: &str,
    extra: &str,
    emu_config: jcemu::Config,
) -> (jcemu::Emulator, Agent) {
    let emu = emulator(emu_config).await;
    let dir = scratch(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], extra);
    if tag != "guard" {
        text += NO_PERCENT_GUARD;
    }
    let agent = Agent::start(dir.clone(), &text);
    (emu, agent)
}

#[tokio::test(flavor = "multi_thread")]
async fn leaving_scope_applies_each_dissociation_action() {
    let Some(lab) = support::lab() else { return };
    for (action, tag) in [("delete", "del"), ("suspend", "sus"), ("unbind", "unb")] {
        let mut c = Corner::new(lab, &lab.alpha, tag).await;
        let (deleted, moved, dropped, stays) = (unique("d"), unique("m"), unique("r"), unique("s"));
        let root = c.root.clone();
        let mut dns = vec![];
        for sam in [&deleted, &moved, &dropped, &stays] {
            let dn = c.person(sam).await;
            c.add_member(&root, &dn).await;
            dns.push(dn);
        }
        let extra = format!("on_leave_scope = \"{action}\"\n");
        let (emu, agent) = running(
            lab,
            &c,
            tag,
            &extra,
            jcemu::Config {
                graph_idempotent: true,
                ..Default::default()
            },
        )
        .await;
        wait_for(&emu, &agent, SYNC, "4 users", |s| {
            [&deleted, &moved, &dropped, &stays]
                .iter()
                .all(|u| user(s, u).is_some())
        })
        .await;

        // Deleted in AD; moved out of the OU *and* out of the group; removed from the root group.
        c.delete(&dns[0]).await;
        let outside = format!("OU={},OU=ADI,{}", unique("out"), lab.alpha.base_dn);
        c.admin
            .add(
                &outside,
                vec![attr("objectClass", &["top", "organizationalUnit"])],
            )
            .await
            .unwrap();
        c.remove_member(&root, &dns[1]).await;
        c.admin
            .rename(&dns[1], &format!("CN={moved}"), Some(&outside))
            .await
            .unwrap();
        c.remove_member(&root, &dns[2]).await;
        let gone = [&deleted, &moved, &dropped];
        match action {
            "delete" => {
                wait_for(&emu, &agent, SYNC, "3 users deleted", |s| {
                    gone.iter().all(|u| user(s, u).is_none())
                })
                .await
            }
            "suspend" => {
                wait_for(&emu, &agent, SYNC, "3 users suspended", |s| {
                    gone.iter()
                        .all(|u| user(s, u).is_some_and(|u| u["state"] == "SUSPENDED"))
                })
                .await
            }
            _ => {
                wait_for(&emu, &agent, SYNC, "3 users unbound and kept", |s| {
                    gone.iter()
                        .all(|u| user(s, u).is_some_and(|u| u["state"] == "ACTIVATED"))
                        && agent.log().matches("queued unbind user").count() == 3
                })
                .await
            }
        };
        let state = emu.state();
        assert!(
            user(&state, &stays).is_some_and(|u| u["state"] == "ACTIVATED"),
            "{action}: the user still in scope is untouched"
        );
        let _ = c.admin.delete(&format!("CN={moved},{outside}")).await;
        let _ = c.admin.delete(&outside).await;
        c.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn privileged_users_in_the_root_group_are_never_imported() {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "priv").await;
    let (admin_sam, da_sam, normal) = (unique("adm"), unique("da"), unique("ok"));
    let root = c.root.clone();
    let a = c.person(&admin_sam).await;
    c.set(&a, "adminCount", "1").await;
    let d = c.person(&da_sam).await;
    let domain_admins = format!("CN=Domain Admins,CN=Users,{}", lab.alpha.base_dn);
    c.add_member(&domain_admins, &d).await;
    let n = c.person(&normal).await;
    for dn in [&a, &d, &n] {
        c.add_member(&root, dn).await;
    }
    let (emu, agent) = running(lab, &c, "priv", "", jcemu::Config::default()).await;
    wait_for(&emu, &agent, SYNC, "normal user imported", |s| {
        user(s, &normal).is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = emu.state();
    assert!(
        user(&state, &admin_sam).is_none(),
        "adminCount=1 user imported"
    );
    assert!(
        user(&state, &da_sam).is_none(),
        "Domain Admins member imported"
    );
    let log = agent.log();
    assert!(
        log.contains(&a) && log.contains(&d) && log.contains("privileged"),
        "no warning naming them:\n{log}"
    );
    c.remove_member(&domain_admins, &d).await;
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unicode_names_arrive_intact_and_a_missing_last_name_blocks_only_that_user() {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "uni").await;
    let (jose, yamada, nosn) = (unique("jm"), unique("yt"), unique("ns"));
    let root = c.root.clone();
    let u1 = c
        .user(
            &format!("José Müller {jose}"),
            &[
                ("sAMAccountName", &jose),
                ("givenName", "José"),
                ("sn", "Müller"),
                ("mail", "jose@example.test"),
            ],
        )
        .await;
    let u2 = c
        .user(
            &format!("山田太郎 {yamada}"),
            &[
                ("sAMAccountName", &yamada),
                ("givenName", "太郎"),
                ("sn", "山田"),
                ("mail", "yamada@example.test"),
            ],
        )
        .await;
    let u3 = c
        .user(
            &nosn,
            &[
                ("sAMAccountName", &nosn),
                ("givenName", "No"),
                ("mail", "nosn@example.test"),
            ],
        )
        .await;
    for dn in [&u1, &u2, &u3] {
        c.add_member(&root, dn).await;
    }
    let (emu, agent) = running(lab, &c, "uni", "", jcemu::Config::default()).await;
    wait_for(&emu, &agent, SYNC, "unicode users", |s| {
        user(s, &jose).is_some() && user(s, &yamada).is_some()
    })
    .await;
    let state = emu.state();
    let j = user(&state, &jose).unwrap();
    assert_eq!(
        (j["firstname"].as_str(), j["lastname"].as_str()),
        (Some("José"), Some("Müller"))
    );
    assert_eq!(j["external_dn"], u1.as_str());
    let y = user(&state, &yamada).unwrap();
    assert_eq!(
        (y["firstname"].as_str(), y["lastname"].as_str()),
        (Some("太郎"), Some("山田"))
    );
    assert!(user(&state, &nosn).is_none());
    let log = agent.log();
    assert!(
        log.contains(&u3) && log.contains("last name (sn)"),
        "the skipped user is reported with its DN and the missing attribute:\n{log}"
    );
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_username_in_alpha_and_beta_is_a_reported_conflict_not_a_merge() {
    let Some(lab) = support::lab() else { return };
    let mut ca = Corner::new(lab, &lab.alpha, "dupa").await;
    let mut cb = Corner::new(lab, &lab.beta, "dupb").await;
    let (same, only_a) = (unique("same"), unique("oa"));
    let (ra, rb) = (ca.root.clone(), cb.root.clone());
    let a1 = ca.person(&same).await;
    let a2 = ca.person(&only_a).await;
    let b1 = cb.person(&same).await;
    ca.add_member(&ra, &a1).await;
    ca.add_member(&ra, &a2).await;
    cb.add_member(&rb, &b1).await;
    let emu = emulator(jcemu::Config::default()).await;
    let dir = scratch("dup");
    std::fs::create_dir_all(&dir).unwrap();
    let agent = Agent::start(
        dir.clone(),
        &Agent::config_text(
            lab,
            &emu,
            &dir,
            &[("alpha", &lab.alpha, &ra), ("beta", &lab.beta, &rb)],
            "",
        ),
    );
    wait_for(&emu, &agent, SYNC, "the unique user", |s| {
        user(s, &only_a).is_some()
    })
    .await;
    wait_for(&emu, &agent, SYNC, "conflict reported", |_| {
        let log = agent.log();
        log.contains(&format!("conflict: username \"{same}\""))
            && log.contains(&a1)
            && log.contains(&b1)
    })
    .await;
    assert!(
        user(&emu.state(), &same).is_none(),
        "a conflicting username must not be created from either side"
    );
    ca.cleanup().await;
    cb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_thousand_member_group_is_complete_in_jumpcloud() {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "big").await;
    let tag = unique("b");
    let g = c.group(&format!("{tag}-big")).await;
    let root = c.root.clone();
    c.add_member(&root, &g).await;
    let mut dns = Vec::new();
    for i in 0..2000 {
        let sam = format!("{tag}{i}");
        dns.push(c.person(&sam).await);
    }
    c.admin
        .modify(
            &g,
            vec![LdapMod::Add(
                b"member".to_vec(),
                dns.iter().map(|d| d.as_bytes().to_vec()).collect(),
            )],
        )
        .await
        .unwrap();
    let (emu, agent) = running(lab, &c, "big", "", jcemu::Config::default()).await;
    let took = wait_for(
        &emu,
        &agent,
        Duration::from_secs(240),
        "2,000 members",
        |s| members(s, &format!("{tag}-big")).len() == 2000,
    )
    .await;
    eprintln!("initial import of 2,000 users + memberships: {took:?}");
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mass_removal_guard_stops_a_bulk_removal_until_approved() {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "guard").await;
    let root = c.root.clone();
    let mut users = vec![];
    for _ in 0..10 {
        let sam = unique("g");
        let dn = c.person(&sam).await;
        c.add_member(&root, &dn).await;
        users.push((sam, dn));
    }
    let (emu, agent) = running(lab, &c, "guard", "", jcemu::Config::default()).await;
    wait_for(&emu, &agent, SYNC, "10 users", |s| {
        users.iter().all(|(u, _)| user(s, u).is_some())
    })
    .await;
    // 5 of 10 leave in one LDAP modify (one change, so one batch, however slow the lab is):
    // 50 % > the default 20 % (limit 2).
    let leaving: Vec<&str> = users[..5].iter().map(|(_, dn)| dn.as_str()).collect();
    c.remove_members(&root, &leaving).await;
    wait_for(&emu, &agent, SYNC, "guard message", |_| {
        agent.log().contains("mass-removal guard")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        users.iter().all(|(u, _)| user(&emu.state(), u).is_some()),
        "nothing may be deleted while the guard holds"
    );
    // The operator approves; the next change applies the held removals.
    std::fs::write(agent.dir.join("state").join("approve-removals"), "5").unwrap();
    let extra = c.person(&unique("g")).await;
    c.add_member(&root, &extra).await;
    wait_for(&emu, &agent, SYNC, "approved removals applied", |s| {
        users[..5].iter().all(|(u, _)| user(s, u).is_none())
    })
    .await;
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_set_in_ad_reaches_jumpcloud_and_a_refused_one_never_does() {
    let Some(lab) = support::lab() else { return };
    let _one_hook_at_a_time = crate::password_capture::HOOK_LOCK.lock().await;
    let mut c = Corner::new(lab, &lab.alpha, "pwe").await;
    let sam = unique("pwe");
    let dn = c.person(&sam).await;
    let root = c.root.clone();
    c.add_member(&root, &dn).await;
    let (emu, agent) = running(lab, &c, "pwe", "", jcemu::Config::default()).await;
    wait_for(&emu, &agent, SYNC, "user created", |s| {
        user(s, &sam).is_some()
    })
    .await;
    let id = user(&emu.state(), &sam).unwrap()["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let password_date = |s: &Value| -> Option<String> {
        s["passwords"]
            .as_array()?
            .iter()
            .find(|p| p["user_id"] == id.as_str())
            .and_then(|p| p["password_date"].as_str().map(str::to_owned))
    };
    assert_eq!(password_date(&emu.state()), None);

    let passthrough = agent.dir.join("passthrough.toml");
    std::fs::write(&passthrough, "[passwords]\nenforce_jumpcloud_policy = false\nsocket = \"passthrough/none.sock\"\nspool_dir = \"passthrough/spool\"\nkey_file = \"passthrough/password.key\"\n").unwrap();
    let _hook =
        crate::password_capture::HookGuard::install_routing(&sam, &agent.config, &passthrough)
            .await;

    // An admin reset over LDAPS: captured by the hook, confirmed by pwdLastSet, set in JumpCloud.
    let password = format!("Str0ng!{}x", unique(""));
    let started = Instant::now();
    set_password(&mut c.admin, &dn, &password)
        .await
        .expect("AD accepts a strong password");
    let took = wait_for(&emu, &agent, SYNC, "password set in JumpCloud", |s| {
        password_date(s).is_some()
    })
    .await;
    eprintln!(
        "password change reached JumpCloud {:?} after the LDAP modify returned",
        started.elapsed().min(took)
    );
    let after_ldap = password_date(&emu.state());

    // samba-tool (an admin reset through Samba's own tooling, sealed LDAP bind): reaches JumpCloud too.
    let second = format!("Sec0nd!{}x", unique(""));
    let out = tokio::process::Command::new("samba-tool")
        .args(["user", "setpassword", &sam])
        .arg(format!("--newpassword={second}"))
        .args([
            "-H",
            &format!("ldap://{}", crate::password_capture::dc1_host(lab)),
            "-U",
            "Administrator",
            "--use-kerberos=off",
        ])
        .env(
            "SMB_CONF_PATH",
            crate::password_capture::lab_dir().join("client/smb.conf"),
        )
        .env("PASSWD", lab.admin_password.expose())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "samba-tool user setpassword: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        &emu,
        &agent,
        SYNC,
        "samba-tool's password set in JumpCloud",
        |s| password_date(s) != after_ldap,
    )
    .await;
    let after_samba_tool = password_date(&emu.state());

    // kpasswd (Kerberos change protocol, the user's own change). The domain's minimum password age
    // blocks self changes right after a reset; "must change at next logon" (pwdLastSet = 0) lifts it.
    let dc = crate::password_capture::dc1_host(lab);
    let krb5 = agent.dir.join("krb5.conf");
    std::fs::write(
        &krb5,
        format!(
            "[libdefaults]\n\tdefault_realm = ALPHA.TEST\n\tdns_lookup_realm = false\n\tdns_lookup_kdc = false\n\trdns = false\n\
             [realms]\n\tALPHA.TEST = {{\n\t\tkdc = {dc}\n\t\tkpasswd_server = {dc}\n\t\tadmin_server = {dc}\n\t}}\n"
        ),
    )
    .unwrap();
    let kpasswd = |old: &str, new: &str| {
        let mut cmd = tokio::process::Command::new("kpasswd");
        cmd.arg(format!("{sam}@ALPHA.TEST"))
            .env("KRB5_CONFIG", &krb5)
            .env(
                "KRB5CCNAME",
                format!("FILE:{}", agent.dir.join("ccache").display()),
            );
        (cmd, format!("{old}\n{new}\n{new}\n"))
    };
    crate::password_capture::set_must_change(&mut c.admin, &dn).await;
    // Let the agent read the pwdLastSet = 0 first: a capture followed by pwdLastSet -> 0 counts as an
    // admin reset with "must change", so the two must not race in this test.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let third = format!("Th1rd!{}x", unique(""));
    let (cmd, input) = kpasswd(&second, &third);
    let out = crate::password_capture::run_with_timeout(cmd, &input).await;
    assert!(
        out.status.success(),
        "kpasswd: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        &emu,
        &agent,
        SYNC,
        "kpasswd's password set in JumpCloud",
        |s| password_date(s) != after_samba_tool,
    )
    .await;
    let first = password_date(&emu.state());

    // Back to a password in the history: the hook runs (Samba calls it before its history check) and
    // accepts, AD refuses, pwdLastSet never moves: nothing may reach JumpCloud.
    crate::password_capture::set_must_change(&mut c.admin, &dn).await;
    // Let the agent read the pwdLastSet = 0 first: a capture followed by pwdLastSet -> 0 counts as an
    // admin reset with "must change", so the two must not race in this test.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cmd, input) = kpasswd(&third, &second);
    let out = crate::password_capture::run_with_timeout(cmd, &input).await;
    assert!(
        !out.status.success(),
        "kpasswd back to a password in the history succeeded"
    );
    let log = agent.log();
    assert!(
        !log.contains(&second) && !log.contains(&third),
        "a password appears in the agent log"
    );
    assert!(
        !log.contains(&password),
        "the password appears in the agent log"
    );

    // Refused by AD (complexity) and by the JumpCloud policy at the DC: never forwarded.
    for weak in ["aaaaaaaa1", "Abcdefgh12"] {
        let err = set_password(&mut c.admin, &dn, weak)
            .await
            .expect_err("the hook must refuse it");
        assert!(err.to_string().contains("0000052D"), "{err}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        password_date(&emu.state()),
        first,
        "a refused password reached JumpCloud"
    );
    c.cleanup().await;
}

/// An admin's password reset over LDAPS (the DC's hook sees it).
pub(crate) async fn set_password(
    admin: &mut DcSession,
    dn: &str,
    password: &str,
) -> Result<(), forestsync_actors::directory::DirectoryError> {
    let value = crate::password_capture::unicode_pwd(password);
    admin
        .modify(
            dn,
            vec![LdapMod::Replace(b"unicodePwd".to_vec(), [value].into())],
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_shows_the_first_sync_and_writes_nothing() {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "plan").await;
    let (a, b, nosn) = (unique("pa"), unique("pb"), unique("pn"));
    let tag = unique("pg");
    let g = c.group(&tag).await;
    let root = c.root.clone();
    c.add_member(&root, &g).await;
    for sam in [&a, &b] {
        let dn = c.person(sam).await;
        c.add_member(&g, &dn).await;
    }
    let bad = c
        .user(
            &nosn,
            &[
                ("sAMAccountName", &nosn),
                ("givenName", "No"),
                ("mail", "n@example.test"),
            ],
        )
        .await;
    c.add_member(&root, &bad).await;
    let emu = emulator(jcemu::Config::default()).await;
    let dir = scratch("plan");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("forestsync.toml");
    std::fs::write(
        &config,
        Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], ""),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_forestsync"))
        .args(["plan", "--json", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("--json prints one JSON document");
    let ops = plan["operations"].as_array().unwrap();
    let has = |action: &str, object: &str| {
        ops.iter()
            .any(|o| o["action"] == action && o["object"] == object)
    };
    assert!(has("create user", &a) && has("create user", &b), "{plan}");
    assert!(has("create group", &tag), "{plan}");
    assert_eq!(
        ops.iter().filter(|o| o["action"] == "add member").count(),
        2,
        "{plan}"
    );
    assert!(
        plan["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["dn"] == bad.as_str()),
        "the user without a last name is listed: {plan}"
    );
    // Nothing written: no JumpCloud object, no agent state.
    let state = emu.state();
    assert!(
        state["users"].as_array().unwrap().is_empty()
            && state["usergroups"].as_array().unwrap().is_empty()
    );
    assert!(!dir.join("state").exists(), "plan created agent state");
    let table = tokio::process::Command::new(env!("CARGO_BIN_EXE_forestsync"))
        .args(["plan", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("create user") && text.contains(&a) && text.contains("nothing was written"),
        "{text}"
    );
    c.cleanup().await;
}

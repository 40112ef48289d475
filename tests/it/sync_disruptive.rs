//! JumpCloud → AD (jumpcloud-authoritative) under disruption: the primary agent SIGKILLed while a
//! standby waits, DC1 stopped mid-sync, the agent SIGKILLed mid-page and restarted. Each test checks
//! that AD ends up equal to JumpCloud with every change applied exactly once: one AD object per
//! JumpCloud user (no replication-conflict copies), the marker's `;pw=<seq>` equal to the user's last
//! password event, the password binding, and no agent log showing a user created twice or the same
//! (user, password seq) written twice.
//!
//! Two more tests pin scenarios the engine gets wrong today (ignored, with the reason): a change to a
//! user DC1 had not replicated when it died, and a primary that lost and regained the role while
//! frozen.
//!
//! They stop DCs and kill agents, so they are named `disruptive_*` and run one at a time
//! (`cargo test --test it disruptive -- --test-threads=1`). Users created on DC2 while DC1 is down
//! need RIDs that only DC1 (the RID master) hands out: the DC1 tests check DC2 has enough first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use forestsync_actors::directory::{DcEndpoint, DcSession, DirectoryError};
use forestsync_actors::secret::Secret;
use forestsync_actors::trust;
use serde_json::{json, Value};

use crate::disruptive::{lab_cmd, signal_dc, Dc1Back};
use crate::import_mode::{emulator, scratch, Agent};
use crate::support::{self, unique, Lab};
use crate::sync_mode::{start_agent, sync_config, JcAdmin, TargetOu};

const UAC_DISABLED: u32 = 2;
/// What the engine logs for each kind of AD write (`actors/src/coordinator/to_ad.rs`).
const CREATED: &str = "created AD user";
const PASSWORD_WRITTEN: &str = "password from JumpCloud written to AD";
const AD_WRITES: &[&str] = &[
    CREATED,
    "updated AD user",
    PASSWORD_WRITTEN,
    "user left the AD instance's scope",
    "created AD group",
    "updated AD group",
    "group left the AD instance's scope",
];
const BECAME_PRIMARY: &str = "primary for the AD instance";

/// The test's sync config (one domain, ALPHA, both DCs, the test's OU as target).
fn config(lab: &Lab, emu: &jcemu::Emulator, dir: &Path, ad: &str, ou: &str) -> String {
    sync_config(lab, emu, dir, &lab.alpha, ad, ou, "")
}

/// Reads the organisation's event log through the agent channel, as the primary agent of an AD
/// instance of its own (its cursor is not the agents' cursor): the seqs of the password events.
struct Observer {
    http: reqwest::Client,
    base: String,
    token: String,
    after: u64,
    events: Vec<Value>,
}

impl Observer {
    async fn new(emu: &jcemu::Emulator, jc: &JcAdmin) -> Observer {
        let ad = jc.ad_instance("DC=observer,DC=test").await;
        let key = jc.connect_key(&ad).await;
        let http = crate::support::emulator_http(emu);
        let base = format!("{}/__agent-channel/v1", emu.base_url());
        let r = http
            .post(format!("{base}/register"))
            .json(&json!({"connectKey": key, "hostname": "observer"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "observer register: {}", r.status());
        let v: Value = r.json().await.unwrap();
        let token = format!(
            "{}.{}",
            v["agentId"].as_str().unwrap(),
            v["agentSecret"].as_str().unwrap()
        );
        Observer {
            http,
            base,
            token,
            after: 0,
            events: Vec::new(),
        }
    }

    /// Reads every event not read yet.
    async fn refresh(&mut self) {
        loop {
            let r = self
                .http
                .get(format!(
                    "{}/changes?after={}&wait_ms=0&limit=1000",
                    self.base, self.after
                ))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "observer poll: {}", r.status());
            let page: Value = r.json().await.unwrap();
            assert_eq!(
                page["role"], "primary",
                "the observer polls its own instance"
            );
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                return;
            }
            for e in events {
                self.after = self.after.max(e["seq"].as_u64().unwrap());
                self.events.push(e);
            }
        }
    }

    /// JumpCloud user id → seq of its last password event.
    fn last_password_seqs(&self) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for e in self.events.iter().filter(|e| e["kind"] == "password") {
            let (id, seq) = (e["id"].as_str().unwrap(), e["seq"].as_u64().unwrap());
            let last = out.entry(id.to_owned()).or_insert(seq);
            *last = (*last).max(seq);
        }
        out
    }
}

/// The AD instance's acknowledged cursor and the event log's head.
fn cursor_and_head(emu: &jcemu::Emulator, ad: &str) -> (u64, u64) {
    let s = emu.state();
    let ch = &s["agentChannel"];
    let acked = ch["cursors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["activedirectoryId"] == ad)
        .filter_map(|c| c["acked"].as_u64())
        .max()
        .unwrap_or(0);
    (acked, ch["head"].as_u64().unwrap_or(0))
}

/// The channel-registered agents of the AD instance, oldest first: (id, primary).
fn agents_of(emu: &jcemu::Emulator, ad: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = emu.state()["agentChannel"]["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["activedirectoryId"] == ad)
        .map(|a| {
            (
                a["id"].as_str().unwrap_or_default().to_owned(),
                a["primary"] == true,
            )
        })
        .collect();
    out.sort();
    out
}

/// One JumpCloud user as the test made it (what AD must end up with).
#[derive(Clone, Debug)]
struct Want {
    id: String,
    name: String,
    active: bool,
    sn: String,
    password: Option<String>,
}

/// A JumpCloud password this test has not used before (JumpCloud and AD policies: upper, lower,
/// digit, special; never the username or a name token).
fn password(i: usize, version: usize) -> String {
    format!("Zq!{i}m{version}Kd@w")
}

/// JumpCloud: a user, bound to the AD instance (directly), with a password set after the binding
/// (a password event is delivered with its payload only when the user is in scope at delivery).
async fn bound_user(jc: &JcAdmin, ad: &str, name: &str, pw: Option<String>) -> Want {
    let id = jc.user(name, json!({})).await;
    jc.bind(ad, "user", &id, "add").await;
    if let Some(p) = &pw {
        jc.set_password(&id, p).await;
    }
    Want {
        id,
        name: name.to_owned(),
        active: true,
        sn: name.to_owned(),
        password: pw,
    }
}

async fn suspend(jc: &JcAdmin, w: &mut Want) {
    jc.put(
        &format!("/api/systemusers/{}", w.id),
        json!({"state": "SUSPENDED"}),
    )
    .await;
    w.active = false;
}

async fn rename_sn(jc: &JcAdmin, w: &mut Want, sn: String) {
    jc.put(
        &format!("/api/systemusers/{}", w.id),
        json!({"lastname": sn}),
    )
    .await;
    w.sn = sn;
}

async fn new_password(jc: &JcAdmin, w: &mut Want, pw: String) {
    jc.set_password(&w.id, &pw).await;
    w.password = Some(pw);
}

/// An AD user in the test's OU.
#[derive(Clone, Debug)]
struct Row {
    dn: String,
    sam: String,
    uac: u32,
    /// (JumpCloud id, password seq) from the marker.
    marker: Option<(String, Option<u64>)>,
    sn: String,
    pwd_last_set: String,
}

fn first(e: &ldap3::SearchEntry, name: &str) -> String {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first().cloned())
        .unwrap_or_default()
}

fn parse_marker(v: &str) -> Option<(String, Option<u64>)> {
    let rest = v.strip_prefix("forestsync:jc=")?;
    Some(match rest.split_once(";pw=") {
        Some((id, seq)) => (id.to_owned(), seq.parse().ok()),
        None => (rest.to_owned(), None),
    })
}

async fn ad_users(s: &mut DcSession, ou: &str) -> Result<Vec<Row>, DirectoryError> {
    let entries = s
        .search(
            ou,
            ldap3::Scope::OneLevel,
            "(&(objectClass=user)(!(objectClass=computer)))",
            &[
                "sAMAccountName",
                "userAccountControl",
                "adminDescription",
                "sn",
                "pwdLastSet",
            ],
            "test users",
        )
        .await?;
    Ok(entries
        .iter()
        .map(|e| Row {
            dn: e.dn.clone(),
            sam: first(e, "sAMAccountName"),
            uac: first(e, "userAccountControl").parse().unwrap_or(0),
            marker: parse_marker(&first(e, "adminDescription")),
            sn: first(e, "sn"),
            pwd_last_set: first(e, "pwdLastSet"),
        })
        .collect())
}

/// Everything in which AD (`rows`) differs from JumpCloud (`want`, `pw_seqs`); empty = converged.
fn differences(rows: &[Row], want: &[Want], pw_seqs: &HashMap<String, u64>) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_sam: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_sam.entry(r.sam.to_lowercase()).or_default().push(r);
        if r.dn.contains("CNF:") {
            out.push(format!("replication-conflict copy {}", r.dn));
        }
    }
    for (sam, rs) in &by_sam {
        if rs.len() > 1 {
            let dns: Vec<&str> = rs.iter().map(|r| r.dn.as_str()).collect();
            out.push(format!("{} AD objects for {sam}: {dns:?}", rs.len()));
        }
    }
    let wanted: HashSet<String> = want.iter().map(|w| w.name.to_lowercase()).collect();
    for r in rows {
        if !wanted.contains(&r.sam.to_lowercase()) {
            out.push(format!("unexpected AD user {} ({:?})", r.dn, r.marker));
        }
    }
    for w in want {
        let Some(r) = by_sam.get(&w.name.to_lowercase()).and_then(|rs| rs.first()) else {
            out.push(format!("{} ({}) missing", w.name, w.id));
            continue;
        };
        match &r.marker {
            Some((id, seq)) => {
                if id != &w.id {
                    out.push(format!("{}: marker names {id}, not {}", w.name, w.id));
                }
                let last = pw_seqs.get(&w.id).copied();
                if *seq != last {
                    out.push(format!(
                        "{}: marker password seq {seq:?}, last password event {last:?}",
                        w.name
                    ));
                }
            }
            None => out.push(format!("{}: no forestsync marker", w.name)),
        }
        let active = r.uac & UAC_DISABLED == 0;
        if active != w.active {
            out.push(format!(
                "{}: AD enabled={active}, JumpCloud active={}",
                w.name, w.active
            ));
        }
        if active && r.pwd_last_set == "0" {
            out.push(format!(
                "{}: enabled in AD but never given a password (pwdLastSet=0)",
                w.name
            ));
        }
        if r.sn != w.sn {
            out.push(format!("{}: sn {:?}, JumpCloud {:?}", w.name, r.sn, w.sn));
        }
    }
    out
}

/// Polls AD (through `session`) until it equals JumpCloud, or fails after `within` with the
/// differences and the agent logs.
async fn converge(
    session: &mut DcSession,
    ou: &str,
    want: &[Want],
    observer: &mut Observer,
    within: Duration,
    logs: &[&Agent],
) -> (Vec<Row>, Duration) {
    let started = Instant::now();
    let mut last = vec!["no read yet".to_owned()];
    loop {
        observer.refresh().await;
        let seqs = observer.last_password_seqs();
        match ad_users(session, ou).await {
            Ok(rows) => {
                last = differences(&rows, want, &seqs);
                if last.is_empty() {
                    return (rows, started.elapsed());
                }
            }
            Err(e) => last = vec![format!("AD read failed: {e}")],
        }
        if started.elapsed() > within {
            let logs: Vec<String> = logs.iter().map(|a| a.log()).collect();
            panic!(
                "AD did not converge within {within:?}; {} differences, first ones:\n{}\nagent logs:\n{}",
                last.len(),
                last.iter().take(30).cloned().collect::<Vec<_>>().join("\n"),
                logs.join("\n----- next agent -----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Binds as every enabled user with a JumpCloud password on `url`; the failures.
async fn bind_failures(lab: &Lab, url: &str, rows: &[Row], want: &[Want]) -> Vec<String> {
    let tls = trust::client_config(Some(&lab.ca_file)).expect("lab CA loads");
    let endpoint = DcEndpoint::parse(url).unwrap();
    let mut out = Vec::new();
    for w in want.iter().filter(|w| w.active) {
        let Some(pw) = &w.password else { continue };
        let Some(r) = rows.iter().find(|r| r.sam.eq_ignore_ascii_case(&w.name)) else {
            out.push(format!("{}: no AD user", w.name));
            continue;
        };
        let r = async {
            let mut s = DcSession::connect(&endpoint, tls.clone(), support::TIMEOUTS).await?;
            s.bind(&r.dn, &Secret::new(pw.clone())).await
        }
        .await;
        if let Err(e) = r {
            out.push(format!(
                "{} cannot bind with its last JumpCloud password: {e}",
                w.name
            ));
        }
    }
    out
}

/// `name=value` (or `name="value"`) of a tracing line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[at..];
    Some(match rest.strip_prefix('"') {
        Some(q) => &q[..q.find('"').unwrap_or(q.len())],
        None => &rest[..rest.find(' ').unwrap_or(rest.len())],
    })
}

/// Asserts no user was created twice and no (user, password seq) written twice, over all logs.
fn assert_each_write_once(logs: &[&str]) {
    let mut created: HashMap<String, Vec<&str>> = HashMap::new();
    let mut passwords: HashMap<(String, String), Vec<&str>> = HashMap::new();
    for log in logs {
        for line in log.lines() {
            if line.contains(CREATED) {
                if let Some(id) = field(line, "object") {
                    created.entry(id.to_owned()).or_default().push(line);
                }
            } else if line.contains(PASSWORD_WRITTEN) {
                if let (Some(id), Some(seq)) = (field(line, "object"), field(line, "seq")) {
                    passwords
                        .entry((id.to_owned(), seq.to_owned()))
                        .or_default()
                        .push(line);
                }
            }
        }
    }
    let twice: Vec<&Vec<&str>> = created.values().filter(|l| l.len() > 1).collect();
    assert!(twice.is_empty(), "users created more than once: {twice:#?}");
    let twice: Vec<&Vec<&str>> = passwords.values().filter(|l| l.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "passwords written more than once: {twice:#?}"
    );
}

fn writes_in(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| AD_WRITES.iter().any(|w| l.contains(w)))
        .collect()
}

async fn wait_log(agent: &Agent, needle: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while !agent.log().contains(needle) {
        assert!(
            started.elapsed() < within,
            "no {needle:?} in the agent log within {within:?}:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

async fn wait_idle(emu: &jcemu::Emulator, ad: &str, agent: &Agent, within: Duration) {
    let started = Instant::now();
    loop {
        let (acked, head) = cursor_and_head(emu, ad);
        if acked >= head {
            return;
        }
        assert!(
            started.elapsed() < within,
            "the agent did not acknowledge the event log (acked {acked}, head {head}) within {within:?}:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One round of JumpCloud changes: a new bound user with a password, and changes to earlier ones
/// (a new last name, a new password, a suspension).
async fn round(jc: &JcAdmin, ad: &str, tag: &str, i: usize, users: &mut Vec<Want>) {
    users.push(bound_user(jc, ad, &format!("{tag}{i}"), Some(password(i, 0))).await);
    if i >= 1 {
        rename_sn(jc, &mut users[i - 1], format!("Sn{i}x")).await;
    }
    if i >= 2 {
        new_password(jc, &mut users[i - 2], password(i - 2, 1)).await;
    }
    if i >= 3 && i % 3 == 0 {
        suspend(jc, &mut users[i - 3]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn disruptive_two_sync_agents_the_standby_takes_over_when_the_primary_dies() {
    let Some(lab) = support::lab() else { return };
    let emu = emulator(jcemu::Config {
        agent_heartbeat_timeout_ms: 2000,
        ..Default::default()
    })
    .await;
    let jc = Arc::new(JcAdmin::new(&emu));
    let ad = jc.ad_instance(&lab.alpha.base_dn).await;
    let mut ou = TargetOu::new(lab, &lab.alpha, "sync-ha").await;
    let mut observer = Observer::new(&emu, &jc).await;
    let (dir_a, dir_b) = (scratch("sync-ha-a"), scratch("sync-ha-b"));
    let mut primary = start_agent(
        &jc,
        &ad,
        dir_a.clone(),
        &config(lab, &emu, &dir_a, &ad, &ou.dn),
    )
    .await;
    wait_log(&primary, BECAME_PRIMARY, Duration::from_secs(30)).await;
    let standby = start_agent(
        &jc,
        &ad,
        dir_b.clone(),
        &config(lab, &emu, &dir_b, &ad, &ou.dn),
    )
    .await;
    wait_log(
        &standby,
        "JumpCloud → AD sync started",
        Duration::from_secs(30),
    )
    .await;
    // The standby polls once a second; give it a few polls before judging.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agents = agents_of(&emu, &ad);
    assert_eq!(agents.len(), 2, "two agents registered: {agents:?}");
    assert!(
        agents[0].1 && !agents[1].1,
        "the first agent is primary, the second standby: {agents:?}"
    );

    // Phase 1: the primary applies everything, the standby writes nothing.
    let tag = unique("h");
    let mut users = Vec::new();
    for i in 0..6 {
        round(&jc, &ad, &tag, i, &mut users).await;
    }
    let (_, took) = converge(
        &mut ou.admin,
        &ou.dn,
        &users,
        &mut observer,
        Duration::from_secs(60),
        &[&primary, &standby],
    )
    .await;
    eprintln!("phase 1 (primary alive): AD converged {took:?} after the last change");
    let standby_log = standby.log();
    assert!(
        writes_in(&standby_log).is_empty() && !standby_log.contains(BECAME_PRIMARY),
        "the standby wrote to AD while the primary was alive:\n{standby_log}"
    );
    assert!(
        !writes_in(&primary.log()).is_empty(),
        "the primary wrote nothing:\n{}",
        primary.log()
    );

    // Phase 2: changes keep coming; the primary is SIGKILLed in the middle of them.
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let changes = {
        let (jc, ad, tag) = (jc.clone(), ad.clone(), tag.clone());
        tokio::spawn(async move {
            let mut kill_tx = Some(kill_tx);
            for i in 6..26 {
                round(&jc, &ad, &tag, i, &mut users).await;
                if i == 9 {
                    if let Some(tx) = kill_tx.take() {
                        let _ = tx.send(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            users
        })
    };
    kill_rx.await.unwrap();
    assert!(
        !standby.log().contains(BECAME_PRIMARY),
        "the standby took over while the primary was alive (split brain):\n{}",
        standby.log()
    );
    primary.kill();
    let killed = Instant::now();
    let took_over = wait_log(&standby, BECAME_PRIMARY, Duration::from_secs(60)).await;
    eprintln!("the standby became primary {took_over:?} after the SIGKILL");
    let users = changes.await.unwrap();
    let changes_done = killed.elapsed();
    let (rows, took) = converge(
        &mut ou.admin,
        &ou.dn,
        &users,
        &mut observer,
        Duration::from_secs(120),
        &[&primary, &standby],
    )
    .await;
    eprintln!(
        "phase 2: changes ran until {changes_done:?} after the kill; AD converged {took:?} after the last change ({} users)",
        rows.len()
    );
    let failures = bind_failures(lab, &lab.alpha.dc_urls[0], &rows, &users).await;
    assert!(failures.is_empty(), "{failures:#?}");
    let (a_log, b_log) = (primary.log(), standby.log());
    assert_each_write_once(&[&a_log, &b_log]);
    assert!(
        b_log.contains(CREATED) && b_log.contains(PASSWORD_WRITTEN),
        "the new primary applied the changes made after the kill:\n{b_log}"
    );
    let agents = agents_of(&emu, &ad);
    assert!(
        !agents[0].1 && agents[1].1,
        "the second agent is primary now: {agents:?}"
    );
    wait_idle(&emu, &ad, &standby, Duration::from_secs(30)).await;
    drop(standby);
    ou.cleanup().await;
}

/// Free RIDs on ALPHA DC2: the rest of the pool it allocates from, plus a pool the RID master
/// (DC1) already gave it. A DC that is not the RID master cannot create users without them, and
/// gets a new pool only from DC1: with DC1 down it answers `53 NO RID values available`.
async fn dc2_free_rids(dc2: &mut DcSession, base: &str) -> u64 {
    let sets = dc2
        .search(
            &format!("OU=Domain Controllers,{base}"),
            ldap3::Scope::Subtree,
            "(objectClass=rIDSet)",
            &[
                "rIDAllocationPool",
                "rIDPreviousAllocationPool",
                "rIDNextRID",
            ],
            "RID sets",
        )
        .await
        .unwrap();
    let set = sets
        .iter()
        .find(|e| e.dn.to_lowercase().contains(",cn=dc2,"))
        .unwrap_or_else(|| panic!("no RID Set of DC2 in {sets:?}"));
    let n = |a: &str| first(set, a).parse::<u64>().unwrap_or(0);
    let (alloc, prev, next) = (
        n("rIDAllocationPool"),
        n("rIDPreviousAllocationPool"),
        n("rIDNextRID"),
    );
    let size = |pool: u64| (pool >> 32).saturating_sub(pool & 0xffff_ffff) + 1;
    if prev == 0 {
        return size(alloc); // never allocated from: the first pool is still whole
    }
    let rest = (prev >> 32).saturating_sub(next);
    rest + if alloc != prev { size(alloc) } else { 0 }
}

/// Makes sure DC2 can create `need` users while DC1 is down: when it cannot, a user created (and
/// deleted) on DC2 while DC1 is up makes DC2 ask the RID master for a new pool.
async fn ensure_dc2_rids(lab: &Lab, ou: &str, need: u64) {
    let mut dc2 = support::admin_session(lab, &lab.alpha, &lab.alpha.dc_urls[1]).await;
    let mut free = dc2_free_rids(&mut dc2, &lab.alpha.base_dn).await;
    if free >= need {
        return;
    }
    let started = Instant::now();
    while free < need {
        let probe = format!("CN={},{ou}", unique("rid"));
        let _ = dc2
            .add(
                &probe,
                vec![
                    support::attr("objectClass", &["top", "person", "user"]),
                    support::attr("userAccountControl", &["546"]),
                ],
            )
            .await;
        let _ = dc2.delete(&probe).await;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ALPHA DC2 has {free} free RIDs, this test needs {need}, and DC1 gave it no new pool within 60 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        free = dc2_free_rids(&mut dc2, &lab.alpha.base_dn).await;
    }
    eprintln!(
        "ALPHA DC2 got a new RID pool ({free} free) in {:?}",
        started.elapsed()
    );
}

/// Waits until DC2 holds `dn` (replication from DC1).
async fn on_dc2(dc2: &mut DcSession, dn: &str) {
    let started = Instant::now();
    while dc2.read_entry(dn, &["cn"]).await.unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "DC2 did not receive {dn} within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// CONTinues ALPHA DC2 even when the test fails while it is SIGSTOPped.
struct Dc2Cont;

impl Drop for Dc2Cont {
    fn drop(&mut self) {
        signal_dc("alpha-dc2", "-CONT");
    }
}

/// Usernames the agent created before it first failed over (in its log order).
fn created_before_failover(log: &str) -> Vec<String> {
    log.lines()
        .take_while(|l| !l.contains("failing over"))
        .filter(|l| l.contains(CREATED))
        .filter_map(|l| field(l, "dn"))
        .filter_map(|dn| dn.strip_prefix("CN="))
        .filter_map(|rest| rest.split(',').next())
        .map(str::to_lowercase)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn disruptive_dc1_killed_mid_sync_the_agent_fails_over_and_loses_nothing() {
    let Some(lab) = support::lab() else { return };
    let emu = emulator(jcemu::Config::default()).await;
    let jc = Arc::new(JcAdmin::new(&emu));
    let ad = jc.ad_instance(&lab.alpha.base_dn).await;
    let mut ou = TargetOu::new(lab, &lab.alpha, "sync-dc1").await;
    let mut observer = Observer::new(&emu, &jc).await;
    // DC2 must hold the OU before DC1 goes away, and have RIDs for what it will create.
    let mut dc2 = support::admin_session(lab, &lab.alpha, &lab.alpha.dc_urls[1]).await;
    on_dc2(&mut dc2, &ou.dn).await;
    ensure_dc2_rids(lab, &ou.dn, 150).await;
    let dir = scratch("sync-dc1");
    let agent = start_agent(&jc, &ad, dir.clone(), &config(lab, &emu, &dir, &ad, &ou.dn)).await;
    wait_log(&agent, BECAME_PRIMARY, Duration::from_secs(30)).await;

    // 200 users bound one by one; DC1 stops when about half of them are in AD.
    let tag = unique("f");
    let changes = {
        let (jc, ad, tag) = (jc.clone(), ad.clone(), tag.clone());
        tokio::spawn(async move {
            let mut users = Vec::new();
            for i in 0..200 {
                users.push(bound_user(&jc, &ad, &format!("{tag}{i}"), None).await);
            }
            users
        })
    };
    let started = Instant::now();
    let at_stop = loop {
        let n = ad_users(&mut ou.admin, &ou.dn).await.unwrap().len();
        if n >= 100 {
            break n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the agent wrote only {n} users in 120 s:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _restore = Dc1Back;
    let stop = Instant::now();
    lab_cmd(&["stop-dc", "alpha-dc1"]);
    eprintln!(
        "stopped alpha-dc1 in {:?} with {at_stop} of 200 users in AD",
        stop.elapsed()
    );
    assert!(at_stop < 200, "DC1 stopped too late to test anything");
    let mut users = changes.await.unwrap();
    // What DC1 had not replicated yet stays on DC1 until it is back (DC2 does not get it, and the
    // agent must not create it a second time there).
    wait_log(&agent, "failing over", Duration::from_secs(60)).await;
    let on_dc2_now: HashSet<String> = ad_users(&mut dc2, &ou.dn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.sam.to_lowercase())
        .collect();
    // The reconcile on DC2 that follows the fail-over names what it holds back (created, or an add
    // whose answer was lost, on DC1): those wait for DC1 instead of being created a second time.
    let reconciled_on_dc2 = Instant::now();
    while agent.log().matches("reconciled JumpCloud and AD").count() < 2
        && reconciled_on_dc2.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = agent.log();
    let dc1_only: HashSet<String> = created_before_failover(&log)
        .into_iter()
        .filter(|n| !on_dc2_now.contains(n))
        .chain(
            log.lines()
                .filter(|l| l.contains("instead of creating it twice"))
                .filter_map(|l| field(l, "dn"))
                .filter_map(|dn| dn.strip_prefix("CN=").map(str::to_owned))
                .filter_map(|rest| rest.split(',').next().map(str::to_lowercase)),
        )
        .collect();
    eprintln!(
        "{} users were only on DC1 when it stopped: {dc1_only:?}",
        dc1_only.len()
    );
    // Changes while DC1 is down: new users (some with passwords), a new password and a new last
    // name for users DC2 has.
    for i in 200..210 {
        let pw = (i % 2 == 0).then(|| password(i, 0));
        users.push(bound_user(&jc, &ad, &format!("{tag}{i}"), pw).await);
    }
    let replicated: Vec<usize> = (0..users.len())
        .filter(|&i| on_dc2_now.contains(&users[i].name.to_lowercase()))
        .take(2)
        .collect();
    assert_eq!(replicated.len(), 2, "DC2 has the first users");
    new_password(&jc, &mut users[replicated[0]], password(0, 1)).await;
    rename_sn(&jc, &mut users[replicated[1]], "Moved".into()).await;

    let outage: Vec<Want> = users
        .iter()
        .filter(|w| !dc1_only.contains(&w.name.to_lowercase()))
        .cloned()
        .collect();
    let (rows, took) = converge(
        &mut dc2,
        &ou.dn,
        &outage,
        &mut observer,
        Duration::from_secs(180),
        &[&agent],
    )
    .await;
    eprintln!(
        "DC1 down: {} users in AD via DC2 {took:?} after the last change ({:?} after the stop)",
        rows.len(),
        stop.elapsed()
    );
    let failures = bind_failures(lab, &lab.alpha.dc_urls[1], &rows, &outage).await;
    assert!(failures.is_empty(), "{failures:#?}");

    // DC1 back: the agent fails back and keeps working.
    lab_cmd(&["start-dc", "alpha-dc1"]);
    let back = Instant::now();
    // The fail-back probe runs on the engine's next request: changes make some.
    let mut nudge = 0;
    while !agent.log().contains("failing back") {
        assert!(
            back.elapsed() < Duration::from_secs(90),
            "the agent did not fail back to DC1 within 90 s:\n{}",
            agent.log()
        );
        nudge += 1;
        rename_sn(&jc, &mut users[2 + nudge], format!("Nudge{nudge}")).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!("failed back to DC1 {:?} after it started", back.elapsed());
    users.push(bound_user(&jc, &ad, &format!("{tag}b"), Some(password(901, 0))).await);
    let mut dc1 = support::admin_session(lab, &lab.alpha, &lab.alpha.dc_urls[0]).await;
    let (rows, took) = converge(
        &mut dc1,
        &ou.dn,
        &users,
        &mut observer,
        Duration::from_secs(120),
        &[&agent],
    )
    .await;
    eprintln!(
        "after fail-back: AD (DC1) equals JumpCloud {took:?} after the last change ({} users)",
        rows.len()
    );
    let failures = bind_failures(lab, &lab.alpha.dc_urls[0], &rows, &users).await;
    assert!(failures.is_empty(), "{failures:#?}");
    // And DC2 agrees (replication both ways, no conflict copies).
    converge(
        &mut dc2,
        &ou.dn,
        &users,
        &mut observer,
        Duration::from_secs(90),
        &[&agent],
    )
    .await;
    assert_each_write_once(&[&agent.log()]);
    drop(agent);
    ou.admin = dc1;
    ou.cleanup().await;
}

/// A user the agent created on DC1 that DC1 had not replicated when it died: changes JumpCloud
/// makes to it during the outage must still reach AD (once DC1, and the user, are back).
#[tokio::test(flavor = "multi_thread")]
async fn disruptive_changes_to_a_user_dc1_had_not_replicated_when_it_died_are_not_lost() {
    let Some(lab) = support::lab() else { return };
    let emu = emulator(jcemu::Config::default()).await;
    let jc = JcAdmin::new(&emu);
    let ad = jc.ad_instance(&lab.alpha.base_dn).await;
    let mut ou = TargetOu::new(lab, &lab.alpha, "sync-repl").await;
    let mut observer = Observer::new(&emu, &jc).await;
    let mut dc2 = support::admin_session(lab, &lab.alpha, &lab.alpha.dc_urls[1]).await;
    on_dc2(&mut dc2, &ou.dn).await;
    ensure_dc2_rids(lab, &ou.dn, 10).await;
    let dir = scratch("sync-repl");
    let agent = start_agent(&jc, &ad, dir.clone(), &config(lab, &emu, &dir, &ad, &ou.dn)).await;
    wait_log(&agent, BECAME_PRIMARY, Duration::from_secs(30)).await;
    let tag = unique("r");
    let mut users = vec![bound_user(&jc, &ad, &format!("{tag}a"), Some(password(0, 0))).await];
    converge(
        &mut ou.admin,
        &ou.dn,
        &users,
        &mut observer,
        Duration::from_secs(60),
        &[&agent],
    )
    .await;
    on_dc2(&mut dc2, &format!("CN={tag}a,{}", ou.dn)).await;

    // DC2 frozen: what the agent writes now stays on DC1; then DC1 stops and DC2 resumes.
    let _cont = Dc2Cont;
    let _restore = Dc1Back;
    signal_dc("alpha-dc2", "-STOP");
    users.push(bound_user(&jc, &ad, &format!("{tag}x"), Some(password(1, 0))).await);
    converge(
        &mut ou.admin,
        &ou.dn,
        &users,
        &mut observer,
        Duration::from_secs(60),
        &[&agent],
    )
    .await;
    lab_cmd(&["stop-dc", "alpha-dc1"]);
    signal_dc("alpha-dc2", "-CONT");
    assert!(
        dc2.read_entry(&format!("CN={tag}x,{}", ou.dn), &["cn"])
            .await
            .unwrap()
            .is_none(),
        "DC2 must not have the user yet"
    );
    // JumpCloud changes the user DC2 does not have (and, as a control, one it has).
    new_password(&jc, &mut users[1], password(1, 1)).await;
    suspend(&jc, &mut users[1]).await;
    rename_sn(&jc, &mut users[0], "Control".into()).await;
    let control = users[..1].to_vec();
    converge(
        &mut dc2,
        &ou.dn,
        &control,
        &mut observer,
        Duration::from_secs(60),
        &[&agent],
    )
    .await;
    // DC1 back: the user replicates; the changes made during the outage must be in AD.
    lab_cmd(&["start-dc", "alpha-dc1"]);
    let mut dc1 = support::admin_session(lab, &lab.alpha, &lab.alpha.dc_urls[0]).await;
    let (rows, took) = converge(
        &mut dc1,
        &ou.dn,
        &users,
        &mut observer,
        Duration::from_secs(120),
        &[&agent],
    )
    .await;
    eprintln!("after DC1 returned: AD equals JumpCloud {took:?} later");
    let failures = bind_failures(lab, &lab.alpha.dc_urls[0], &rows, &users).await;
    assert!(failures.is_empty(), "{failures:#?}");
    drop(agent);
    ou.admin = dc1;
    ou.cleanup().await;
}

/// A primary that stops answering (frozen) loses the role to the standby; when it resumes after the
/// standby died it becomes primary again, and must not trust the AD index it had before the pause
/// (the other agent wrote in between).
#[tokio::test(flavor = "multi_thread")]
async fn disruptive_a_frozen_primary_that_becomes_primary_again_does_not_act_on_a_stale_index() {
    let Some(lab) = support::lab() else { return };
    let emu = emulator(jcemu::Config {
        agent_heartbeat_timeout_ms: 2000,
        ..Default::default()
    })
    .await;
    let jc = JcAdmin::new(&emu);
    let ad = jc.ad_instance(&lab.alpha.base_dn).await;
    let mut ou = TargetOu::new(lab, &lab.alpha, "sync-stale").await;
    let mut observer = Observer::new(&emu, &jc).await;
    let (dir_a, dir_b) = (scratch("sync-stale-a"), scratch("sync-stale-b"));
    let first = start_agent(
        &jc,
        &ad,
        dir_a.clone(),
        &config(lab, &emu, &dir_a, &ad, &ou.dn),
    )
    .await;
    wait_log(&first, BECAME_PRIMARY, Duration::from_secs(30)).await;
    let mut second = start_agent(
        &jc,
        &ad,
        dir_b.clone(),
        &config(lab, &emu, &dir_b, &ad, &ou.dn),
    )
    .await;
    wait_log(
        &second,
        "JumpCloud → AD sync started",
        Duration::from_secs(30),
    )
    .await;
    let tag = unique("s");
    let mut users = vec![bound_user(&jc, &ad, &format!("{tag}a"), None).await];
    converge(
        &mut ou.admin,
        &ou.dn,
        &users,
        &mut observer,
        Duration::from_secs(60),
        &[&first, &second],
    )
    .await;

    // Freeze the primary (SIGSTOP): the standby takes over and creates a user.
    let pid = first.pid().unwrap().to_string();
    let frozen = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(frozen.success());
    struct Thaw(String);
    impl Drop for Thaw {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &self.0])
                .status();
        }
    }
    let thaw = Thaw(pid);
    let took = wait_log(&second, BECAME_PRIMARY, Duration::from_secs(60)).await;
    eprintln!("the standby took over {took:?} after the primary froze");
    users.push(bound_user(&jc, &ad, &format!("{tag}x"), None).await);
    // ... and changes a user the frozen agent knows.
    suspend(&jc, &mut users[0]).await;
    rename_sn(&jc, &mut users[0], "WhileFrozen".into()).await;
    converge(
        &mut ou.admin,
        &ou.dn,
        &users,
        &mut observer,
        Duration::from_secs(60),
        &[&first, &second],
    )
    .await;
    // The new primary dies; the frozen one resumes and becomes primary again.
    second.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(thaw);
    let started = Instant::now();
    loop {
        let agents = agents_of(&emu, &ad);
        if agents.first().is_some_and(|a| a.1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the resumed agent did not become primary again: {agents:?}\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // JumpCloud changes the user the other agent created, and puts the old one back the way the
    // resumed agent last saw it (active, its first last name).
    suspend(&jc, &mut users[1]).await;
    jc.put(
        &format!("/api/systemusers/{}", users[0].id),
        json!({"state": "ACTIVATED"}),
    )
    .await;
    users[0].active = true;
    let name = users[0].name.clone();
    rename_sn(&jc, &mut users[0], name).await;
    converge(
        &mut ou.admin,
        &ou.dn,
        &users,
        &mut observer,
        Duration::from_secs(60),
        &[&first, &second],
    )
    .await;
    assert_each_write_once(&[&first.log(), &second.log()]);
    drop(first);
    ou.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disruptive_agent_sigkilled_mid_batch_then_restarted_converges_without_duplicates() {
    let Some(lab) = support::lab() else { return };
    let emu = emulator(jcemu::Config::default()).await;
    let jc = JcAdmin::new(&emu);
    let ad = jc.ad_instance(&lab.alpha.base_dn).await;
    let mut ou = TargetOu::new(lab, &lab.alpha, "sync-kill").await;
    let mut observer = Observer::new(&emu, &jc).await;
    // 300 users in one JumpCloud group, not bound yet.
    let tag = unique("k");
    let group_name = format!("{tag}-all");
    let group = jc.group(&group_name).await;
    let mut users = Vec::new();
    for i in 0..300 {
        let name = format!("{tag}{i}");
        let id = jc.user(&name, json!({})).await;
        jc.member(&group, &id, "add").await;
        users.push(Want {
            id,
            name: name.clone(),
            active: true,
            sn: name,
            password: None,
        });
    }
    let dir = scratch("sync-kill");
    let mut agent = start_agent(&jc, &ad, dir.clone(), &config(lab, &emu, &dir, &ad, &ou.dn)).await;
    wait_idle(&emu, &ad, &agent, Duration::from_secs(120)).await;
    assert!(
        ad_users(&mut ou.admin, &ou.dn).await.unwrap().is_empty(),
        "nothing is bound yet"
    );

    // The group is bound: 300 users enter the scope at once; then passwords for every third,
    // every tenth suspended.
    jc.bind(&ad, "user_group", &group, "add").await;
    let bound = Instant::now();
    for i in (0..300).step_by(3) {
        new_password(&jc, &mut users[i], password(i, 0)).await;
    }
    for i in (5..300).step_by(10) {
        suspend(&jc, &mut users[i]).await;
    }
    let at_kill = loop {
        let n = ad_users(&mut ou.admin, &ou.dn).await.unwrap().len();
        if n >= 5 {
            break n;
        }
        assert!(
            bound.elapsed() < Duration::from_secs(120),
            "no AD user within 120 s:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    agent.kill();
    let rows = ad_users(&mut ou.admin, &ou.dn).await.unwrap();
    let half_made: Vec<&str> = rows
        .iter()
        .filter(|r| r.pwd_last_set == "0" || r.uac & UAC_DISABLED != 0)
        .map(|r| r.sam.as_str())
        .collect();
    eprintln!(
        "SIGKILL {:?} after the binding, {at_kill} users seen then, {} after the kill; not finished (disabled or no password yet): {half_made:?}",
        bound.elapsed(),
        rows.len()
    );
    assert!(
        rows.len() < 300,
        "killed too late to test anything ({} users already there)",
        rows.len()
    );
    let (acked_at_kill, head) = cursor_and_head(&emu, &ad);
    assert!(
        acked_at_kill < head,
        "the page being applied at the kill was not acknowledged ({acked_at_kill}/{head})"
    );
    let first_run = agent.log().len();
    agent.spawn();
    let restarted = Instant::now();
    let (rows, took) = converge(
        &mut ou.admin,
        &ou.dn,
        &users,
        &mut observer,
        Duration::from_secs(300),
        &[&agent],
    )
    .await;
    eprintln!(
        "restarted: AD equals JumpCloud {took:?} after the restart ({} users)",
        rows.len()
    );
    wait_idle(&emu, &ad, &agent, Duration::from_secs(60)).await;
    eprintln!(
        "the replayed page was applied and acknowledged {:?} after the restart",
        restarted.elapsed()
    );
    let failures = bind_failures(lab, &lab.alpha.dc_urls[0], &rows, &users).await;
    assert!(failures.is_empty(), "{failures:#?}");
    // One AD group with the 300 members.
    let groups = ou
        .admin
        .search(
            &ou.dn,
            ldap3::Scope::OneLevel,
            "(objectClass=group)",
            &["sAMAccountName", "member"],
            "test groups",
        )
        .await
        .unwrap();
    assert_eq!(groups.len(), 1, "one AD group: {groups:?}");
    let members = groups[0]
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("member"))
        .map(|(_, v)| v.len())
        .unwrap_or(0);
    assert_eq!(members, 300, "the AD group has every member");
    let log = agent.log();
    assert_each_write_once(&[&log]);
    let second = &log[first_run..];
    assert!(
        second.contains(BECAME_PRIMARY),
        "second run reconciled:\n{second}"
    );
    let problems: Vec<&str> = second
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(
        problems.is_empty(),
        "the second run applied the replayed page with errors: {problems:#?}\n{second}"
    );
    drop(agent);
    ou.cleanup().await;
}

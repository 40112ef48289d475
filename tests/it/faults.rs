//! The agent fault suite (issue #8): the agent is SIGKILLed at random points during its initial sync
//! and during churn, while the JumpCloud API misbehaves (429 storms, 502/503 bursts, answers slower than
//! the client's timeout, dropped connections, writes whose answer is lost) and ALPHA's DC1 hangs
//! (SIGSTOP) or is stopped. At the end JumpCloud must hold exactly what AD holds: every change made,
//! nothing twice, and no minute may hold more requests than the configured budget.
//!
//! Sized by `FORESTSYNC_FAULT_KILLS` (default 20: the short form CI runs; `deploy/fault-suite --long`
//! runs 100) and seeded by `FORESTSYNC_FAULT_SEED` (printed, so a failing run can be repeated). Prints
//! one line `FIGURES {json}` that `deploy/fault-suite` collects.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use forestsync_actors::directory::{DcSession, LdapMod};
use serde_json::{json, Value};

use crate::disruptive::{lab_cmd, signal_dc, Dc1Back};
use crate::import_mode::{emulator, scratch, Agent, Corner};
use crate::support::{self, attr, unique};
use crate::telemetry::{free_port, wait_status};

/// The agent's budget in this suite; the emulator's request log must never show more in any minute.
const BUDGET: u64 = 600;
const GROUPS: usize = 3;

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One AD user as the test last left it.
#[derive(Clone, Debug)]
struct Want {
    dn: String,
    sn: String,
    disabled: bool,
    groups: BTreeSet<usize>,
    deleted: bool,
}

/// The API fault profiles a cycle may run under (each replaces every fault setting).
fn fault_profile(i: u64) -> (&'static str, Value) {
    let none = json!({"rate_limit_per_minute": null, "retry_after": true, "error_rate": 0.0,
        "error_statuses": [502, 503], "latency_ms": 0, "drop_rate": 0.0, "commit_then_fail_rate": 0.0});
    let mut p = none.clone();
    let name = match i {
        0 => "none",
        1 => {
            p["rate_limit_per_minute"] = json!(10);
            "429 storm"
        }
        2 => {
            p["error_rate"] = json!(0.5);
            "502/503 burst"
        }
        3 => {
            p["latency_ms"] = json!(700);
            "slow answers"
        }
        4 => {
            p["latency_ms"] = json!(2500);
            "answers slower than the client timeout"
        }
        5 => {
            p["drop_rate"] = json!(0.3);
            "dropped connections"
        }
        _ => {
            p["commit_then_fail_rate"] = json!(0.3);
            "writes whose answer is lost"
        }
    };
    (name, p)
}
const PROFILES: u64 = 7;

pub async fn set_faults(client: &reqwest::Client, emu: &jcemu::Emulator, faults: &Value) {
    let r = client
        .put(format!("{}/__emulator/faults", emu.base_url()))
        .json(faults)
        .send()
        .await
        .expect("emulator admin API answers");
    assert!(r.status().is_success(), "set faults: {}", r.status());
}

/// One LDAP write, retried for up to 30 s (a DC2 that has not yet replicated an object answers
/// noSuchObject for a few seconds).
async fn write(session: &mut DcSession, what: &str, dn: &str, op: LdapWrite) {
    let started = Instant::now();
    loop {
        let r = match &op {
            LdapWrite::Modify(mods) => session.modify(dn, mods.clone()).await,
            LdapWrite::Add(attrs) => session.add(dn, attrs.clone()).await,
            LdapWrite::Delete => session.delete(dn).await,
        };
        match r {
            Ok(_) => return,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("faults: {what} {dn}: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("{what} {dn}: {e}"),
        }
    }
}

type Attrs = Vec<(Vec<u8>, std::collections::HashSet<Vec<u8>>)>;

enum LdapWrite {
    Modify(Vec<LdapMod<Vec<u8>>>),
    Add(Attrs),
    Delete,
}

fn member_mod(add: bool, dn: &str) -> Vec<LdapMod<Vec<u8>>> {
    let values = [dn.as_bytes().to_vec()].into();
    vec![if add {
        LdapMod::Add(b"member".to_vec(), values)
    } else {
        LdapMod::Delete(b"member".to_vec(), values)
    }]
}

fn replace(name: &str, value: &str) -> Vec<LdapMod<Vec<u8>>> {
    vec![LdapMod::Replace(
        name.as_bytes().to_vec(),
        [value.as_bytes().to_vec()].into(),
    )]
}

/// The Nth user's attributes at creation.
fn person_attrs(sam: &str, sn: &str) -> Attrs {
    vec![
        attr(
            "objectClass",
            &["top", "person", "organizationalPerson", "user"],
        ),
        attr("userAccountControl", &["544"]),
        attr("sAMAccountName", &[sam]),
        attr("givenName", &["Fault"]),
        attr("sn", &[sn]),
        attr("mail", &[&format!("{sam}@example.test")]),
    ]
}

struct World {
    tag: String,
    ou: String,
    root: String,
    groups: Vec<String>,
    users: BTreeMap<String, Want>,
    changes: u64,
    next_user: usize,
    /// (seconds since start, DC, change): printed when the run fails.
    history: Vec<String>,
    started: Instant,
}

impl World {
    fn group_name(&self, g: usize) -> String {
        format!("{}-g{g}", self.tag)
    }

    /// One random AD change, made through `s`, and recorded as expected.
    fn note(&mut self, via: &str, what: String) {
        let at = self.started.elapsed().as_secs_f64();
        self.history
            .push(format!("{at:7.2}s {via}: {what} ({})", now_utc()));
    }

    async fn change(&mut self, s: &mut DcSession, via: &str, rng: &mut Rng) {
        let live: Vec<String> = self
            .users
            .iter()
            .filter(|(_, w)| !w.deleted)
            .map(|(k, _)| k.clone())
            .collect();
        let deleted = self.users.values().filter(|w| w.deleted).count();
        let pick = live[rng.below(live.len() as u64) as usize].clone();
        self.changes += 1;
        match rng.below(10) {
            0..=2 => {
                let sn = format!("sn{}", rng.below(1_000_000));
                let dn = self.users[&pick].dn.clone();
                write(s, "set sn", &dn, LdapWrite::Modify(replace("sn", &sn))).await;
                self.note(via, format!("{pick} sn={sn}"));
                self.users.get_mut(&pick).unwrap().sn = sn;
            }
            3 => {
                let w = self.users.get_mut(&pick).unwrap();
                w.disabled = !w.disabled;
                let uac = if w.disabled { "546" } else { "544" };
                let dn = w.dn.clone();
                let disabled = w.disabled;
                self.note(via, format!("{pick} disabled={disabled}"));
                write(
                    s,
                    "set userAccountControl",
                    &dn,
                    LdapWrite::Modify(replace("userAccountControl", uac)),
                )
                .await;
            }
            4..=6 => {
                let g = rng.below(GROUPS as u64) as usize;
                let add = !self.users[&pick].groups.contains(&g);
                let dn = self.users[&pick].dn.clone();
                let group = self.groups[g].clone();
                write(
                    s,
                    if add { "add member" } else { "remove member" },
                    &group,
                    LdapWrite::Modify(member_mod(add, &dn)),
                )
                .await;
                self.note(
                    via,
                    format!(
                        "{pick} {} g{g}",
                        if add { "added to" } else { "removed from" }
                    ),
                );
                let w = self.users.get_mut(&pick).unwrap();
                if add {
                    w.groups.insert(g);
                } else {
                    w.groups.remove(&g);
                }
            }
            7 | 8 => self.create(s, via, rng).await,
            _ if deleted < 6 && live.len() > 10 => {
                let dn = self.users[&pick].dn.clone();
                write(s, "delete", &dn, LdapWrite::Delete).await;
                self.note(via, format!("{pick} deleted"));
                self.users.get_mut(&pick).unwrap().deleted = true;
            }
            _ => self.create(s, via, rng).await,
        }
    }

    /// A new user in the root group and maybe one of the groups.
    async fn create(&mut self, s: &mut DcSession, via: &str, rng: &mut Rng) {
        let sam = format!("{}u{}", self.tag, self.next_user);
        self.next_user += 1;
        let dn = format!("CN={sam},{}", self.ou);
        let sn = format!("sn{}", rng.below(1_000_000));
        write(s, "create", &dn, LdapWrite::Add(person_attrs(&sam, &sn))).await;
        let root = self.root.clone();
        write(
            s,
            "add to root",
            &root,
            LdapWrite::Modify(member_mod(true, &dn)),
        )
        .await;
        let mut groups = BTreeSet::new();
        if rng.chance(60) {
            let g = rng.below(GROUPS as u64) as usize;
            let group = self.groups[g].clone();
            write(
                s,
                "add member",
                &group,
                LdapWrite::Modify(member_mod(true, &dn)),
            )
            .await;
            groups.insert(g);
        }
        self.note(via, format!("{sam} created in {groups:?}"));
        self.users.insert(
            sam,
            Want {
                dn,
                sn,
                disabled: false,
                groups,
                deleted: false,
            },
        );
    }

    /// What JumpCloud holds that it should not, and what it lacks: (lost, duplicated, details).
    fn differences(&self, state: &Value) -> (u64, u64, Vec<String>) {
        let mut lost = 0;
        let mut dup = 0;
        let mut details = vec![];
        let empty = vec![];
        let users = state["users"].as_array().unwrap_or(&empty);
        let mine: Vec<&Value> = users
            .iter()
            .filter(|u| {
                u["username"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&self.tag))
            })
            .collect();
        let mut by_name: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        for u in &mine {
            by_name
                .entry(u["username"].as_str().unwrap_or_default())
                .or_default()
                .push(u);
        }
        for (name, list) in &by_name {
            if list.len() > 1 {
                dup += list.len() as u64 - 1;
                details.push(format!("{name}: {} JumpCloud users", list.len()));
            }
            if self.users.get(*name).is_none_or(|w| w.deleted) {
                lost += 1;
                details.push(format!("{name}: in JumpCloud but deleted in AD"));
            }
        }
        let id_of: BTreeMap<&str, &str> = mine
            .iter()
            .filter_map(|u| Some((u["_id"].as_str()?, u["username"].as_str()?)))
            .collect();
        let groups = state["usergroups"].as_array().unwrap_or(&empty);
        let mut group_ids = BTreeMap::new();
        for g in 0..GROUPS {
            let name = self.group_name(g);
            let found: Vec<&Value> = groups.iter().filter(|x| x["name"] == name).collect();
            if found.len() != 1 {
                if found.len() > 1 {
                    dup += found.len() as u64 - 1;
                } else {
                    lost += 1;
                }
                details.push(format!("group {name}: {} in JumpCloud", found.len()));
            }
            if let Some(x) = found.first() {
                group_ids.insert(x["id"].as_str().unwrap_or_default().to_owned(), g);
            }
        }
        let extra_groups = groups
            .iter()
            .filter(|x| x["name"].as_str().is_some_and(|n| n.starts_with(&self.tag)))
            .count()
            .saturating_sub(GROUPS);
        dup += extra_groups as u64;
        let mut have: BTreeMap<(&str, usize), u64> = BTreeMap::new();
        for m in state["memberships"].as_array().unwrap_or(&empty) {
            let (Some(g), Some(u)) = (
                m["group_id"].as_str().and_then(|g| group_ids.get(g)),
                m["user_id"].as_str().and_then(|u| id_of.get(u)),
            ) else {
                continue;
            };
            *have.entry((*u, *g)).or_default() += 1;
        }
        for ((u, g), n) in &have {
            if *n > 1 {
                dup += n - 1;
                details.push(format!("{u} in {}: {n} memberships", self.group_name(*g)));
            }
            if !self
                .users
                .get(*u)
                .is_some_and(|w| !w.deleted && w.groups.contains(g))
            {
                lost += 1;
                details.push(format!("{u} in {} but not in AD", self.group_name(*g)));
            }
        }
        for (name, w) in self.users.iter().filter(|(_, w)| !w.deleted) {
            let Some(u) = by_name.get(name.as_str()).and_then(|l| l.first()) else {
                lost += 1;
                details.push(format!("{name}: missing in JumpCloud"));
                continue;
            };
            if u["lastname"] != w.sn.as_str() {
                lost += 1;
                details.push(format!("{name}: lastname {} != {}", u["lastname"], w.sn));
            }
            let suspended = u["state"] == "SUSPENDED";
            if suspended != w.disabled {
                lost += 1;
                details.push(format!(
                    "{name}: state {} (disabled in AD: {})",
                    u["state"], w.disabled
                ));
            }
            for g in &w.groups {
                if !have.contains_key(&(name.as_str(), *g)) {
                    lost += 1;
                    details.push(format!("{name}: not in {}", self.group_name(*g)));
                }
            }
        }
        (lost, dup, details)
    }
}

/// The most requests the emulator's log shows in any 60-second window (admin calls excluded).
fn max_requests_in_a_minute(log: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut at: Vec<i64> = vec![];
    let mut faults = 0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/__emulator"))
        {
            continue;
        }
        if !v["fault"].is_null() {
            faults += 1;
        }
        if let Some(ms) = v["ts"].as_str().and_then(jcemu::clock::parse_rfc3339_ms) {
            at.push(ms);
        }
    }
    at.sort_unstable();
    let (mut best, mut lo) = (0, 0);
    for hi in 0..at.len() {
        while at[hi] - at[lo] >= 60_000 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    (best as u64, faults)
}

#[tokio::test(flavor = "multi_thread")]
async fn disruptive_faults_agent_killed_at_random_points_under_api_and_dc_faults_loses_nothing() {
    let Some(lab) = support::lab() else { return };
    let kills = env_number("FORESTSYNC_FAULT_KILLS", 20).max(4);
    let seed = env_number(
        "FORESTSYNC_FAULT_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    ) | 1;
    eprintln!("faults: seed {seed} (FORESTSYNC_FAULT_SEED={seed} repeats this run), {kills} kills");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let mut c = Corner::new(lab, &lab.alpha, "faults").await;
    let tag = unique("fz");
    let mut world = World {
        tag: tag.clone(),
        ou: c.ou.clone(),
        root: c.root.clone(),
        groups: vec![],
        users: BTreeMap::new(),
        changes: 0,
        next_user: 0,
        history: vec![],
        started,
    };
    for g in 0..GROUPS {
        let dn = c.group(&world.group_name(g)).await;
        let root = c.root.clone();
        c.add_member(&root, &dn).await;
        world.groups.push(dn);
    }
    for _ in 0..40 {
        world.create(&mut c.admin, "DC1", &mut rng).await;
    }
    world.changes = 0;
    let initial = world.users.clone();

    let dir = scratch("faults");
    std::fs::create_dir_all(&dir).unwrap();
    let request_log = dir.join("requests.jsonl");
    let emu = emulator(jcemu::Config {
        request_log: Some(request_log.clone()),
        ..Default::default()
    })
    .await;
    let client = crate::support::emulator_http(&emu);
    let text = Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], "");
    let fixed = "rate_limit_per_minute = 60000\nburst = 200\n";
    assert!(text.contains(fixed), "the test's config template changed");
    let text = text.replace(
        fixed,
        &format!("rate_limit_per_minute = {BUDGET}\nburst = 20\ntimeout_seconds = 2\n"),
    );
    let mut agent = Agent::start(dir.clone(), &text);

    // The DC faults happen in two of the churn cycles; from the first one on, AD is changed on DC2
    // (DC1 may be down), and the agent must find those changes wherever it reads.
    let churn_from = kills / 2;
    let hang_at = churn_from + rng.below(kills - churn_from);
    let mut stop_at = churn_from + rng.below(kills - churn_from);
    if stop_at == hang_at {
        stop_at = if hang_at + 1 < kills {
            hang_at + 1
        } else {
            churn_from
        };
    }
    let mut dc2: Option<DcSession> = None;
    let _dc1_back = Dc1Back;
    let (mut kills_in_initial, mut api_fault_phases, mut dc_faults) = (0u64, 0u64, 0u64);
    let mut profiles_seen = BTreeSet::new();

    for cycle in 0..kills {
        // The API's behaviour until the next kill.
        let profile = if rng.chance(65) {
            1 + rng.below(PROFILES - 1)
        } else {
            0
        };
        let (name, faults) = fault_profile(profile);
        set_faults(&client, &emu, &faults).await;
        if profile != 0 {
            api_fault_phases += 1;
            profiles_seen.insert(name);
        }
        let dc_fault = if cycle == hang_at {
            Some("hang")
        } else if cycle == stop_at {
            Some("stop")
        } else {
            None
        };
        if cycle >= churn_from {
            if dc_fault.is_some() && dc2.is_none() {
                // Let DC2 catch up with what was made on DC1 before writing there.
                tokio::time::sleep(Duration::from_secs(3)).await;
                dc2 = Some(support::admin_session(lab, &lab.alpha, &lab.alpha.dc_urls[1]).await);
            }
            match dc_fault {
                Some("hang") => signal_dc("alpha-dc1", "-STOP"),
                Some(_) => lab_cmd(&["stop-dc", "alpha-dc1"]),
                None => {}
            }
            dc_faults += u64::from(dc_fault.is_some());
            let via = if dc2.is_some() { "DC2" } else { "DC1" };
            let session = dc2.as_mut().unwrap_or(&mut c.admin);
            for _ in 0..1 + rng.below(4) {
                world.change(session, via, &mut rng).await;
            }
        }
        tokio::time::sleep(rng.millis(300, 3000)).await;
        if initial_sync_incomplete(&world, &initial, &emu.state()) {
            kills_in_initial += 1;
        }
        let line = format!(
            "cycle {cycle}: API {name}{}, kill",
            dc_fault.map(|f| format!(", DC1 {f}")).unwrap_or_default()
        );
        eprintln!("faults: {line}");
        world.note("test", line);
        agent.kill();
        if rng.chance(30) {
            tokio::time::sleep(rng.millis(100, 2000)).await;
        }
        agent.spawn();
        match dc_fault {
            Some("hang") => {
                tokio::time::sleep(Duration::from_secs(4)).await;
                signal_dc("alpha-dc1", "-CONT");
            }
            Some(_) => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                lab_cmd(&["start-dc", "alpha-dc1"]);
            }
            None => {}
        }
    }

    // Faults off; the last agent must converge on AD's state.
    set_faults(&client, &emu, &fault_profile(0).1).await;
    let converge = Instant::now();
    let mut last = (u64::MAX, 0, vec![]);
    while converge.elapsed() < Duration::from_secs(240) {
        last = world.differences(&emu.state());
        if last.0 == 0 && last.1 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converged_in = converge.elapsed();
    let log = agent.log();
    agent.kill();
    emu.shutdown().await;
    let (max_minute, api_faults_injected) = max_requests_in_a_minute(&request_log);
    let panics = log.matches("panicked").count();
    let (lost, duplicated, details) = last;
    let figures = json!({
        "suite": "agent-faults",
        "seed": seed,
        "kills": kills,
        "kills_during_initial_sync": kills_in_initial,
        "api_fault_phases": api_fault_phases,
        "api_fault_kinds": profiles_seen.iter().collect::<Vec<_>>(),
        "api_faults_injected": api_faults_injected,
        "dc_faults": dc_faults,
        "ad_changes": world.changes,
        "users": world.users.len(),
        "lost": lost,
        "duplicated": duplicated,
        "panics": panics,
        "budget_per_minute": BUDGET,
        "max_requests_in_a_minute": max_minute,
        "converged_after_faults_s": converged_in.as_secs_f64(),
        "seconds": started.elapsed().as_secs(),
    });
    println!("FIGURES {figures}");
    eprintln!("FIGURES {figures}");
    assert!(
        lost == 0 && duplicated == 0,
        "JumpCloud differs from AD after the faults (seed {seed}): {details:#?}\nwhat the test did:\n{}\nagent log: {}",
        world.history.join("\n"),
        dir.join("agent.log").display()
    );
    assert_eq!(panics, 0, "the agent panicked:\n{}", tail(&log, 80));
    assert!(
        max_minute <= BUDGET,
        "{max_minute} requests in one minute, over the budget of {BUDGET}"
    );
    assert!(
        kills_in_initial > 0,
        "no kill landed during the initial sync"
    );
    c.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether JumpCloud still lacks part of the initial state (so a kill now interrupts the initial sync).
fn initial_sync_incomplete(world: &World, initial: &BTreeMap<String, Want>, state: &Value) -> bool {
    let present: BTreeSet<&str> = state["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["username"].as_str())
        .collect();
    initial
        .keys()
        .any(|k| !present.contains(k.as_str()) && !world.users[k].deleted)
}

fn now_utc() -> String {
    jcemu::clock::format_ms(jcemu::clock::system_time_ms(std::time::SystemTime::now()))
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Unmounts the test's tmpfs even when the test fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_the_agent_advancing_and_it_resumes_without_loss_when_space_returns() {
    let Some(lab) = support::lab() else { return };
    let dir = scratch("full");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    // The state directory on its own small file system, filled up mid-run.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs"])
        .arg(&state)
        .output()
        .expect("mount runs");
    if !mounted.status.success() {
        eprintln!(
            "skipped: cannot mount a tmpfs here ({}); the full-disk test needs root with CAP_SYS_ADMIN",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return;
    }
    let _unmount = Mounted(state.clone());

    let mut c = Corner::new(lab, &lab.alpha, "full").await;
    let tag = unique("df");
    let root = c.root.clone();
    let mut dns = vec![];
    for i in 0..4 {
        let dn = c.person(&format!("{tag}{i}")).await;
        c.add_member(&root, &dn).await;
        dns.push(dn);
    }
    let emu = emulator(jcemu::Config::default()).await;
    let port = free_port();
    let text = Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], "")
        + &format!("\n[telemetry]\nlisten = \"127.0.0.1:{port}\"\n");
    let mut agent = Agent::start(dir.clone(), &text);
    let mine = |s: &Value| -> Vec<Value> {
        s["users"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|u| u["username"].as_str().is_some_and(|n| n.starts_with(&tag)))
            .cloned()
            .collect()
    };
    crate::import_mode::wait_for(&emu, &agent, Duration::from_secs(60), "the 4 users", |s| {
        mine(s).len() == 4
    })
    .await;

    // Disk full.
    let filler = state.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let first = format!("{tag}0");
    c.set(&dns[0], "sn", "AfterTheDiskFilled").await;
    let late = c.person(&format!("{tag}4")).await;
    c.add_member(&root, &late).await;

    // The agent says so, and advances nothing.
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let body = wait_status(&readyz, 503, "state store", Duration::from_secs(30), &agent).await;
    assert!(body.contains("No space left"), "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = emu.state();
    assert_eq!(
        mine(&s).len(),
        4,
        "a change was applied that the store could not record"
    );
    assert!(
        agent.log().contains("the state store cannot be written"),
        "the log does not say the store is unwritable:\n{}",
        agent.log()
    );

    // Space returns: the agent resumes by itself and delivers both changes, once.
    std::fs::remove_file(&filler).unwrap();
    crate::import_mode::wait_for(
        &emu,
        &agent,
        Duration::from_secs(90),
        "both changes after space returned",
        |s| {
            mine(s).len() == 5
                && crate::import_mode::user(s, &first)
                    .is_some_and(|u| u["lastname"] == "AfterTheDiskFilled")
        },
    )
    .await;
    wait_status(&readyz, 200, "", Duration::from_secs(30), &agent).await;
    // A restart finds a sound store: no re-import, no duplicate.
    agent.kill();
    agent.spawn();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = emu.state();
    let mut names: Vec<String> = mine(&s)
        .iter()
        .filter_map(|u| u["username"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    assert_eq!((mine(&s).len(), names.len()), (5, 5), "no duplicates");
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    agent.kill();
    c.cleanup().await;
}

/// libfaketime, from Debian's `faketime` package (`deploy/test-all` installs it).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The agent's wall clock jumps forward (2 hours, 1 day) and back while AD changes and JumpCloud
/// answers half the requests with 502 (backoff in play): every change still arrives, once. The
/// monotonic clock is left alone, as a real clock step (NTP, a VM resume) leaves it.
#[tokio::test(flavor = "multi_thread")]
async fn wall_clock_jumps_forward_and_back_break_neither_delivery_nor_backoff() {
    let Some(lab) = support::lab() else { return };
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install faketime"
    );
    let mut c = Corner::new(lab, &lab.alpha, "clock").await;
    let tag = unique("ck");
    let root = c.root.clone();
    let mut dns = vec![];
    for i in 0..3 {
        let dn = c.person(&format!("{tag}{i}")).await;
        c.add_member(&root, &dn).await;
        dns.push(dn);
    }
    let emu = emulator(jcemu::Config::default()).await;
    let dir = scratch("clock");
    std::fs::create_dir_all(&dir).unwrap();
    let offset = dir.join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let env = vec![
        ("LD_PRELOAD".to_owned(), LIBFAKETIME.to_owned()),
        (
            "FAKETIME_TIMESTAMP_FILE".to_owned(),
            offset.display().to_string(),
        ),
        ("FAKETIME_CACHE_DURATION".to_owned(), "1".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
        ("FAKETIME_DONT_RESET".to_owned(), "1".to_owned()),
    ];
    let text = Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], "");
    let agent = Agent::start_with_env(dir.clone(), &text, env);
    let mine = |s: &Value| -> usize {
        s["users"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|u| u["username"].as_str().is_some_and(|n| n.starts_with(&tag)))
            .count()
    };
    crate::import_mode::wait_for(&emu, &agent, Duration::from_secs(60), "3 users", |s| {
        mine(s) == 3
    })
    .await;
    let client = crate::support::emulator_http(&emu);
    let mut errors = fault_profile(0).1;
    errors["error_rate"] = json!(0.5);
    set_faults(&client, &emu, &errors).await;

    // (offset, user, new sn): forward 2 h, back 2 h, forward 1 day, back 1 day.
    let steps = [
        ("+2h", 0, "AfterPlusTwoHours"),
        ("+0", 1, "AfterBackTwoHours"),
        ("+1d", 2, "AfterPlusOneDay"),
        ("+0", 0, "AfterBackOneDay"),
    ];
    for (jump, i, sn) in steps {
        std::fs::write(&offset, format!("{jump}\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.set(&dns[i], "sn", sn).await;
        let name = format!("{tag}{i}");
        let took = crate::import_mode::wait_for(
            &emu,
            &agent,
            Duration::from_secs(90),
            &format!("{name}'s sn {sn} after the clock jumped to {jump}"),
            |s| crate::import_mode::user(s, &name).is_some_and(|u| u["lastname"] == sn),
        )
        .await;
        eprintln!("clock {jump}: change delivered in {took:?}");
    }
    // A user created after the jumps arrives too, once.
    let late = c.person(&format!("{tag}3")).await;
    c.add_member(&root, &late).await;
    crate::import_mode::wait_for(&emu, &agent, Duration::from_secs(90), "the 4th user", |s| {
        mine(s) == 4
    })
    .await;
    set_faults(&client, &emu, &fault_profile(0).1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mine(&emu.state()), 4, "no duplicate after the clock jumps");
    // The jumps reached the agent: its log has a line stamped a day ahead.
    let log = agent.log();
    let tomorrow = jcemu::clock::format_ms(
        jcemu::clock::system_time_ms(std::time::SystemTime::now()) + 86_400_000,
    );
    assert!(
        log.lines().any(|l| l.get(..10) == tomorrow.get(..10)),
        "libfaketime did not move the agent's clock (no log line dated {})",
        &tomorrow[..10]
    );
    assert!(!log.contains("panicked"), "{log}");
    drop(agent);
    c.cleanup().await;
}

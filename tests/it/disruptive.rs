//! Tests that stop, freeze or kill things: DC1 stopped or hung mid-sync, the agent SIGKILLed
//! mid-batch. They change the shared lab, so they are named `disruptive_*` and `deploy/test-all` runs
//! them after the others, one at a time (`--test-threads=1`).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::import_mode::{emulator, members, scratch, user, wait_for, Agent, Corner};
use crate::support::{self, unique, Lab};

pub fn lab_cmd(args: &[&str]) {
    let out = Command::new(support::repo_root().join("deploy/lab/lab"))
        .args(args)
        .output()
        .expect("lab script runs");
    assert!(
        out.status.success(),
        "lab {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every process of one DC instance (the master and its workers share its session id).
fn dc_pids(instance: &str) -> Vec<String> {
    let lab_dir = std::env::var("LAB_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| support::repo_root().join("lab-state"));
    // A stopped DC has no pid file: nothing to signal.
    let Ok(master) = std::fs::read_to_string(lab_dir.join(instance).join("run/samba.pid")) else {
        return Vec::new();
    };
    let master = master.trim().to_owned();
    let ps = Command::new("ps")
        .args(["-eo", "pid=,sid="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (pid, sid) = (it.next()?, it.next()?);
            (sid == master).then(|| pid.to_owned())
        })
        .collect()
}

pub fn signal_dc(instance: &str, signal: &str) {
    for pid in dc_pids(instance) {
        let _ = Command::new("kill").args([signal, &pid]).status();
    }
}

/// Restores DC1 even when the test fails half-way.
pub struct Dc1Back;

impl Drop for Dc1Back {
    fn drop(&mut self) {
        signal_dc("alpha-dc1", "-CONT");
        let _ = Command::new(support::repo_root().join("deploy/lab/lab"))
            .args(["start-dc", "alpha-dc1"])
            .output();
    }
}

/// Creates a user in `ou` on the DC `session` is bound to and adds it to `root` there.
async fn add_member_person(
    session: &mut forestsync_actors::directory::DcSession,
    ou: &str,
    root: &str,
    sam: &str,
) -> String {
    let dn = format!("CN={sam},{ou}");
    session
        .add(
            &dn,
            vec![
                support::attr(
                    "objectClass",
                    &["top", "person", "organizationalPerson", "user"],
                ),
                support::attr("userAccountControl", &["544"]),
                support::attr("sAMAccountName", &[sam]),
                support::attr("givenName", &["Fail"]),
                support::attr("sn", &["Over"]),
                support::attr("mail", &[&format!("{sam}@example.test")]),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("create {dn}: {e}"));
    session
        .modify(
            root,
            vec![forestsync_actors::directory::LdapMod::Add(
                b"member".to_vec(),
                [dn.as_bytes().to_vec()].into(),
            )],
        )
        .await
        .unwrap_or_else(|e| panic!("add {dn} to {root}: {e}"));
    dn
}

async fn failover_case(lab: &'static Lab, hang: bool) {
    let mut c = Corner::new(lab, &lab.alpha, if hang { "hang" } else { "down" }).await;
    let (before, during, after) = (unique("b"), unique("d"), unique("a"));
    let root = c.root.clone();
    let u = c.person(&before).await;
    c.add_member(&root, &u).await;
    let emu = emulator(jcemu::Config::default()).await;
    let dir = scratch("failover");
    std::fs::create_dir_all(&dir).unwrap();
    let agent = Agent::start(
        dir.clone(),
        &Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], ""),
    );
    wait_for(&emu, &agent, Duration::from_secs(30), "initial sync", |s| {
        user(s, &before).is_some()
    })
    .await;

    // DC2 must hold this test's OU and root group before DC1 goes away (replication takes seconds).
    let mut dc2 = support::admin_session(lab, &lab.alpha, &lab.alpha.dc_urls[1]).await;
    let replicated = Instant::now();
    while dc2
        .read_entry(&root, &["member"])
        .await
        .unwrap()
        .is_none_or(|e| !e.attrs.contains_key("member"))
    {
        assert!(
            replicated.elapsed() < Duration::from_secs(90),
            "DC2 did not receive the test's objects within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _restore = Dc1Back;
    if hang {
        signal_dc("alpha-dc1", "-STOP");
    } else {
        lab_cmd(&["stop-dc", "alpha-dc1"]);
    }
    // A change made on DC2 while DC1 is unusable.
    let dn = add_member_person(&mut dc2, &c.ou, &root, &during).await;
    let changed = Instant::now();
    let took = wait_for(
        &emu,
        &agent,
        Duration::from_secs(30),
        "change made on DC2 during the outage",
        |s| user(s, &during).is_some(),
    )
    .await;
    eprintln!(
        "DC1 {}: change on DC2 reached JumpCloud {:?} after it was made",
        if hang { "hung" } else { "stopped" },
        changed.elapsed().min(took)
    );
    assert!(
        agent.log().contains("failing over"),
        "the agent should say it failed over:\n{}",
        agent.log()
    );

    // DC1 comes back: changes keep flowing (on DC1 after fail-back, or on DC2).
    if hang {
        signal_dc("alpha-dc1", "-CONT");
    } else {
        lab_cmd(&["start-dc", "alpha-dc1"]);
    }
    let mut dc1 = support::admin_session(lab, &lab.alpha, &lab.alpha.dc_urls[0]).await;
    let dn2 = add_member_person(&mut dc1, &c.ou, &root, &after).await;
    wait_for(
        &emu,
        &agent,
        Duration::from_secs(90),
        "change made on DC1 after it returned",
        |s| user(s, &after).is_some(),
    )
    .await;
    let state = emu.state();
    assert_eq!(
        state["users"].as_array().unwrap().len(),
        3,
        "no change lost, none duplicated: {state}"
    );
    let _ = dc1.delete(&dn).await;
    let _ = dc1.delete(&dn2).await;
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disruptive_dc1_stopped_mid_sync_fails_over_to_dc2_and_back() {
    let Some(lab) = support::lab() else { return };
    failover_case(lab, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disruptive_dc1_hung_mid_sync_fails_over_to_dc2() {
    let Some(lab) = support::lab() else { return };
    failover_case(lab, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disruptive_agent_killed_mid_batch_resumes_without_loss_or_duplicates() {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "kill").await;
    let tag = unique("k");
    let g = c.group(&format!("{tag}-all")).await;
    let root = c.root.clone();
    c.add_member(&root, &g).await;
    let mut dns = vec![];
    for i in 0..150 {
        dns.push(c.person(&format!("{tag}{i}")).await);
    }
    c.admin
        .modify(
            &g,
            vec![forestsync_actors::directory::LdapMod::Add(
                b"member".to_vec(),
                dns.iter().map(|d| d.as_bytes().to_vec()).collect(),
            )],
        )
        .await
        .unwrap();
    // Slow JumpCloud down so the kill lands while the outbox drains.
    let emu = emulator(jcemu::Config {
        latency_ms: 20,
        ..Default::default()
    })
    .await;
    let dir = scratch("kill");
    std::fs::create_dir_all(&dir).unwrap();
    let mut agent = Agent::start(
        dir.clone(),
        &Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], ""),
    );
    wait_for(
        &emu,
        &agent,
        Duration::from_secs(60),
        "the drain under way",
        |s| s["users"].as_array().is_some_and(|u| u.len() >= 20),
    )
    .await;
    agent.kill();
    let at_kill = emu.state()["users"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        at_kill < 150,
        "killed too late to test anything ({at_kill} users already there)"
    );
    // A change while the agent is down, then restart: it resumes from the store (no full re-import needed).
    c.set(&dns[0], "userAccountControl", "546").await;
    agent.spawn();
    let first = format!("{tag}0");
    wait_for(
        &emu,
        &agent,
        Duration::from_secs(120),
        "all 150 users, members, and the change made while down",
        |s| {
            members(s, &format!("{tag}-all")).len() == 150
                && user(s, &first).is_some_and(|u| u["state"] == "SUSPENDED")
        },
    )
    .await;
    let state = emu.state();
    let users = state["users"].as_array().unwrap();
    let mut names: Vec<&str> = users
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(
        (users.len(), names.len()),
        (150, 150),
        "exactly one JumpCloud user per AD user after the SIGKILL"
    );
    assert_eq!(
        state["usergroups"].as_array().unwrap().len(),
        1,
        "exactly one group"
    );
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disruptive_a_429_storm_and_502s_still_deliver_everything_exactly_once() {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "storm").await;
    let tag = unique("t");
    let g = c.group(&format!("{tag}-g")).await;
    let root = c.root.clone();
    c.add_member(&root, &g).await;
    let mut dns = vec![];
    for i in 0..30 {
        let dn = c.person(&format!("{tag}{i}")).await;
        c.add_member(&g, &dn).await;
        dns.push(dn);
    }
    let emu = emulator(jcemu::Config {
        error_rate: 0.3,
        error_statuses: vec![502, 503],
        rate_limit_per_minute: Some(40),
        ..Default::default()
    })
    .await;
    let dir = scratch("storm");
    std::fs::create_dir_all(&dir).unwrap();
    let agent = Agent::start(
        dir.clone(),
        &Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], ""),
    );
    // Let the storm hit, then lift the rate limit (the emulator's window is a fixed minute).
    tokio::time::sleep(Duration::from_secs(8)).await;
    crate::faults::set_faults(
        &crate::support::emulator_http(&emu),
        &emu,
        &serde_json::json!({"rate_limit_per_minute": null}),
    )
    .await;
    // Worst case: a Retry-After of up to 60 s from the emulator's fixed one-minute window, then 30 %
    // 502/503 with backoff capped at 60 s per attempt. The test is about delivery, not speed.
    wait_for(
        &emu,
        &agent,
        Duration::from_secs(240),
        "30 members despite 429s and 502s",
        |s| members(s, &format!("{tag}-g")).len() == 30,
    )
    .await;
    let state = emu.state();
    assert_eq!(
        state["users"].as_array().unwrap().len(),
        30,
        "no duplicates after retries"
    );
    let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap();
    assert!(
        !log.contains(crate::import_mode::API_KEY),
        "the API key leaked into the log"
    );
    c.cleanup().await;
}

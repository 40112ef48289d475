//! A DC failover during churn (stops a lab DC: run it on a lab nobody else is using). A real agent
//! syncs ALPHA (DC1 preferred, DC2 second) into the emulator while a driver changes one user's
//! givenName every `--every-ms`, on DC1. After `--before` seconds DC1 is stopped and the driver goes
//! on against DC2; after `--after` seconds DC1 is started again. Every change is timed from the DC's
//! acknowledgement until JumpCloud shows it.
//!
//! Figures: the latency of changes before, during (made after the stop, on DC2) and after; the
//! failover time (from the stop until the first change made after it is in JumpCloud); missed changes
//! (a user whose JumpCloud name is not its last AD value at the end): must be 0.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use forestsync_actors::directory::DcSession;

use crate::agent::{scratch_dir, Agent, AgentConfig};
use crate::figures::{sample, Figures};
use crate::jumpcloud::{find_user, start_emulator, wait_for_users};
use crate::lab::{
    add_group, add_members, add_ou, add_user, admin_session, delete_ou, lab_command, lab_setup,
    run_tag, set_attr, LabVars,
};
use crate::stats::Samples;

const KEY: &str = "failover-bench-key";
/// LDAP operation timeout of the driver's sessions.
const OPERATION: Duration = Duration::from_secs(30);

pub struct Options {
    pub users: usize,
    pub every_ms: u64,
    pub before: u64,
    pub after: u64,
    pub agent: Option<PathBuf>,
}

struct Pending {
    sam: String,
    value: String,
    made: Instant,
    phase: usize,
}

pub async fn run(o: Options) -> Result<()> {
    let setup = lab_setup(o.agent.clone()).await?;
    let (vars, agent_bin, mut dc1, base) =
        (setup.vars, setup.agent_bin, setup.admin, setup.base_dn);
    let tag = run_tag("fo").replace('-', "");
    let ou = format!("OU={tag},OU=ADI,{base}");
    let root = format!("CN={tag}root,{ou}");
    add_ou(&mut dc1, &ou).await?;
    let result = async {
        add_group(&mut dc1, &root, &format!("{tag}root")).await?;
        let mut users = Vec::new();
        for i in 0..o.users {
            let sam = format!("{tag}u{i}");
            let dn = format!("CN={sam},{ou}");
            add_user(&mut dc1, &dn, &sam, "Start", &[]).await?;
            users.push((sam, dn));
        }
        add_members(
            &mut dc1,
            &root,
            &users.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
        )
        .await?;
        churn(&o, &vars, &agent_bin, &mut dc1, &root, &users).await
    }
    .await;
    // DC1 is back whatever happened.
    let _ = lab_command(&["start-dc", "alpha-dc1"]);
    if let Ok(mut s) = admin_session(&vars, "ALPHA", "DC1", OPERATION).await {
        delete_ou(&mut s, &ou).await;
    }
    result
}

async fn churn(
    o: &Options,
    vars: &LabVars,
    agent_bin: &Path,
    dc1: &mut DcSession,
    root: &str,
    users: &[(String, String)],
) -> Result<()> {
    let emu = start_emulator(KEY, None).await?;
    let dir = scratch_dir("failover")?;
    let config = AgentConfig {
        mode: "ad-authoritative",
        api_key: KEY,
        sections: "[passwords]\nsocket = \"capture.sock\"\n",
        domain_keys: &format!("root_group_dn = \"{root}\"\n"),
    }
    .write(&dir, &emu, vars)?;
    let agent = Agent::start(agent_bin, &config, dir.join("agent.log"), "warn")?;
    wait_for_users(&emu, users.iter().map(|(sam, _)| sam.as_str()), &agent).await?;
    let mut dc2 = admin_session(vars, "ALPHA", "DC2", OPERATION).await?;
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut last: Vec<String> = vec!["Start".into(); users.len()];
    let mut samples = [Samples::default(), Samples::default(), Samples::default()];
    let (mut stopped_at, mut first_after_stop) = (None::<Instant>, None::<Duration>);
    let churn_started = Instant::now();
    let total = Duration::from_secs(o.before + o.after + o.after);
    let mut i = 0usize;
    let mut restarted = false;
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        let phase = match now.duration_since(churn_started).as_secs() {
            s if s < o.before => 0,
            s if s < o.before + o.after => 1,
            _ => 2,
        };
        if phase == 1 && stopped_at.is_none() {
            lab_command(&["stop-dc", "alpha-dc1"])?;
            stopped_at = Some(Instant::now());
            eprintln!(
                "DC1 stopped at {:.1} s",
                churn_started.elapsed().as_secs_f64()
            );
        }
        if phase == 2 && !restarted {
            // Back to DC1: start it (replication brings it up to date) and write there again.
            restarted = true;
            lab_command(&["start-dc", "alpha-dc1"])?;
            *dc1 = admin_session(vars, "ALPHA", "DC1", OPERATION).await?;
            eprintln!(
                "DC1 started again at {:.1} s",
                churn_started.elapsed().as_secs_f64()
            );
        }
        if now >= next && now.duration_since(churn_started) < total {
            let k = i % users.len();
            let (sam, dn) = &users[k];
            let value = format!("v{i}");
            let target: &mut DcSession = if phase == 1 { &mut dc2 } else { dc1 };
            if set_attr(target, dn, "givenName", value.as_bytes())
                .await
                .is_ok()
            {
                last[k] = value.clone();
                pending.push_back(Pending {
                    sam: sam.clone(),
                    value,
                    made: Instant::now(),
                    phase,
                });
            }
            i += 1;
            next += Duration::from_millis(o.every_ms);
        }
        if !pending.is_empty() {
            let state = emu.state();
            pending.retain(|p| {
                let arrived =
                    find_user(&state, &p.sam).is_some_and(|u| u["firstname"] == p.value.as_str());
                if arrived {
                    samples[p.phase].record(p.made.elapsed());
                    if p.phase == 1 && first_after_stop.is_none() {
                        first_after_stop = stopped_at.map(|s| s.elapsed());
                    }
                }
                !arrived
            });
        }
        if now.duration_since(churn_started) >= total && pending.is_empty() {
            break;
        }
        if now.duration_since(churn_started) > total + Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Missed: a user whose JumpCloud name is not its last AD value (after everything settled).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let state = emu.state();
    let missed = users
        .iter()
        .zip(&last)
        .filter(|((sam, _), v)| find_user(&state, sam).is_none_or(|u| u["firstname"] != v.as_str()))
        .count();
    let proc = sample(agent.pid())?;
    let (before, during, after) = (
        samples[0].summary(),
        samples[1].summary(),
        samples[2].summary(),
    );
    println!(
        "changes before the stop: {}; made on DC2 while DC1 was down: {}; after DC1 came back: {}\nfailover: the first change made after the stop reached JumpCloud {:.2} s after the stop; {} changes still waiting at the end; {missed} users missed",
        before.human(),
        during.human(),
        after.human(),
        first_after_stop.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        pending.len(),
    );
    let mut f = Figures::new("failover");
    f.set("users", users.len())
        .set("groups", 1)
        .set("domains", 1)
        .set("dcs", 2)
        .set("changes", i)
        .num("change_latency_ms_p50_ad_to_jumpcloud", before.p50)
        .num("change_latency_ms_p95_ad_to_jumpcloud", before.p95)
        .num("change_latency_ms_p99_ad_to_jumpcloud", before.p99)
        .num("during_failover_latency_ms_p50", during.p50)
        .num("during_failover_latency_ms_p99", during.p99)
        .num("during_failover_latency_ms_max", during.max)
        .num("after_failback_latency_ms_p99", after.p99)
        .num(
            "first_change_after_stop_seconds",
            first_after_stop.map(|d| d.as_secs_f64()).unwrap_or(-1.0),
        )
        // The failover time a user sees: the longest any change made while DC1 was down waited.
        .num("failover_seconds", during.max / 1000.0)
        .set("missed_changes", missed + pending.len())
        .process(&proc, agent_bin);
    println!("{}", f.line());
    drop(agent);
    if missed > 0 {
        bail!("{missed} changes missed");
    }
    Ok(())
}

//! JumpCloud → AD latency on the lab (jumpcloud-authoritative mode): a change made through JumpCloud's
//! public API (suspend/activate, password set), from the moment the API answered until the lab DC shows
//! the result, through a real registered `forestsync run` agent. Prints one JSON line per scenario.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use forestsync_actors::directory::DcSession;
use serde_json::json;

use crate::agent::{register, scratch_dir, Agent, AgentConfig};
use crate::jumpcloud::{start_emulator, Api};
use crate::lab::{add_ou, delete_ou, lab_setup, read_attr, LabSetup, LabVars};
use crate::stats::{figures, Samples};

const KEY: &str = "sync-latency-key";

async fn uac(admin: &mut DcSession, dn: &str) -> Result<Option<u32>> {
    Ok(read_attr(admin, dn, "userAccountControl")
        .await?
        .and_then(|v| v.parse().ok()))
}

pub async fn run(users: usize, changes: usize, agent_bin: Option<PathBuf>) -> Result<()> {
    let LabSetup {
        vars,
        agent_bin,
        mut admin,
        base_dn: base,
    } = lab_setup(agent_bin).await?;
    let tag = format!("sl{:x}", std::process::id());
    let ou = format!("OU={tag},OU=ForestSync,{base}");
    add_ou(&mut admin, &ou).await?;
    let result = measure(&mut admin, &vars, &agent_bin, &ou, &tag, users, changes).await;
    delete_ou(&mut admin, &ou).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    admin: &mut DcSession,
    vars: &LabVars,
    agent_bin: &Path,
    ou: &str,
    tag: &str,
    users: usize,
    changes: usize,
) -> Result<()> {
    let emu = start_emulator(KEY, None).await?;
    let api = Api::new(&emu, KEY)?;
    let ad = api.ad_instance(&vars.get("LAB_ALPHA_BASE_DN")?).await?;
    let key = api.connect_key(&ad).await?;
    let dir = scratch_dir("sync-latency")?;
    let config = AgentConfig {
        mode: "jumpcloud-authoritative",
        api_key: KEY,
        sections: "",
        domain_keys: &format!("ad_instance_id = \"{ad}\"\ntarget_ou = \"{ou}\"\n"),
    }
    .write(&dir, &emu, vars)?;
    register(agent_bin, &config, &key)?;
    let mut ids = Vec::new();
    for i in 0..users {
        let name = format!("{tag}u{i}");
        let id = api.bound_user(&ad, &name, "Sync").await?;
        ids.push((id, format!("CN={name},{ou}")));
    }
    let started = Instant::now();
    let agent = Agent::start(agent_bin, &config, dir.join("agent.log"), "warn")?;
    for (_, dn) in &ids {
        while uac(admin, dn).await?.is_none_or(|u| u & 2 != 0) {
            if started.elapsed() > Duration::from_secs(300) {
                bail!(
                    "initial sync did not finish; see {}",
                    agent.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"scenario": "jumpcloud-initial-to-ad", "users": users, "seconds": seconds, "objects_per_second": users as f64 / seconds})
    );

    let mut samples = Samples::default();
    for i in 0..changes {
        let (id, dn) = &ids[i % ids.len()];
        let suspend = (i / ids.len()) % 2 == 0;
        let state = if suspend { "SUSPENDED" } else { "ACTIVATED" };
        api.update_user(id, json!({"state": state})).await?;
        let t0 = Instant::now();
        while uac(admin, dn)
            .await?
            .is_none_or(|u| (u & 2 != 0) != suspend)
        {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!(
                    "{dn} never became {state}; see {}",
                    agent.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.record(t0.elapsed());
    }
    println!("{}", figures("jumpcloud-change-to-ad", &samples));

    let mut samples = Samples::default();
    for i in 0..changes {
        let (id, dn) = &ids[i % ids.len()];
        let before = read_attr(admin, dn, "adminDescription").await?;
        let password = format!("Bench!{i}x{}Qz9", std::process::id());
        api.call(
            reqwest::Method::POST,
            &format!("/api/systemusers/{id}/password"),
            Some(json!({"password": password})),
        )
        .await?;
        let t0 = Instant::now();
        while read_attr(admin, dn, "adminDescription").await? == before {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the password of {dn} never reached AD; see {}",
                    agent.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.record(t0.elapsed());
    }
    println!("{}", figures("jumpcloud-password-to-ad", &samples));
    drop(agent);
    emu.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

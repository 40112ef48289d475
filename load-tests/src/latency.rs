//! End-to-end latency on the lab: an AD change (disable/enable) and an AD password reset, from the
//! moment the DC acknowledged the LDAP modify until the JumpCloud emulator shows the result, through
//! a real `forestsync run` agent. Prints one JSON line per scenario with p50/p99/max.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use forestsync_actors::directory::DcSession;
use serde_json::{json, Value};

use crate::agent::{scratch_dir, Agent, AgentConfig};
use crate::jumpcloud::{find_user, start_emulator, wait_for_users};
use crate::lab::{
    add_group, add_members, add_ou, add_user, delete_ou, lab_setup, set_attr, LabSetup, LabVars,
};
use crate::stats::{figures, Samples};

const KEY: &str = "latency-bench-key";

fn unicode_pwd(p: &str) -> Vec<u8> {
    format!("\"{p}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

/// The lab's password hook routed to the benchmark's agent while it runs; removed on drop.
struct Hook {
    path: PathBuf,
    _lock: std::fs::File,
}
impl Drop for Hook {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn install_hook(
    hook_dir: &Path,
    agent: &Path,
    config: &Path,
    prefix: &str,
    passthrough: &Path,
) -> Result<Hook> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(hook_dir.join(".capture-password.lock"))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    // The same lock the integration tests take: one owner of the lab's hook at a time.
    while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if Instant::now() > deadline {
            bail!("the lab's password hook is held by another process");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let path = hook_dir.join("capture-password");
    let script = format!(
        "#!/bin/sh\ncase \"$SAMBA_CPS_ACCOUNT_NAME\" in\n  {prefix}*) exec '{a}' capture-password --config '{c}' --domain alpha ;;\nesac\nexec '{a}' capture-password --config '{p}' --domain alpha\n",
        a = agent.display(),
        c = config.display(),
        p = passthrough.display()
    );
    let temp = hook_dir.join(format!(".capture-password.{}", std::process::id()));
    std::fs::write(&temp, script)?;
    std::fs::set_permissions(&temp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::rename(&temp, &path)?;
    Ok(Hook { path, _lock: lock })
}

pub async fn run(users: usize, changes: usize, agent_bin: Option<PathBuf>) -> Result<()> {
    let LabSetup {
        vars,
        agent_bin,
        mut admin,
        base_dn: base,
    } = lab_setup(agent_bin).await?;

    let tag = format!("lat{:x}", std::process::id());
    let ou = format!("OU={tag},OU=ADI,{base}");
    let root = format!("CN={tag}root,{ou}");
    add_ou(&mut admin, &ou).await?;
    let result = async {
        add_group(&mut admin, &root, &format!("{tag}root")).await?;
        let mut dns = Vec::new();
        for i in 0..users {
            let sam = format!("{tag}u{i}");
            let dn = format!("CN={sam},{ou}");
            add_user(&mut admin, &dn, &sam, "Latency", &[]).await?;
            dns.push((sam, dn));
        }
        let members: Vec<String> = dns.iter().map(|(_, dn)| dn.clone()).collect();
        add_members(&mut admin, &root, &members).await?;
        measure(&mut admin, &vars, &agent_bin, &root, &dns, changes).await
    }
    .await;
    delete_ou(&mut admin, &ou).await;
    result
}

async fn measure(
    admin: &mut DcSession,
    vars: &LabVars,
    agent_bin: &Path,
    root: &str,
    dns: &[(String, String)],
    changes: usize,
) -> Result<()> {
    let emu = start_emulator(KEY, None).await?;
    let dir = scratch_dir("latency")?;
    let config = AgentConfig {
        mode: "ad-authoritative",
        api_key: KEY,
        sections: "[passwords]\nsocket = \"capture.sock\"\n",
        domain_keys: &format!("root_group_dn = \"{root}\"\n"),
    }
    .write(&dir, &emu, vars)?;
    let passthrough = dir.join("passthrough.toml");
    std::fs::write(&passthrough, "[passwords]\nenforce_jumpcloud_policy = false\nsocket = \"passthrough/none.sock\"\nspool_dir = \"passthrough/spool\"\nkey_file = \"passthrough/password.key\"\n")?;
    let agent = Agent::start(agent_bin, &config, dir.join("agent.log"), "warn")?;
    let started = Instant::now();
    wait_for_users(&emu, dns.iter().map(|(sam, _)| sam.as_str()), &agent).await?;
    println!(
        "{}",
        json!({"scenario": "initial-import", "users": dns.len(), "seconds": started.elapsed().as_secs_f64()})
    );

    // Disable/enable round trips.
    let cpu_before = crate::figures::sample(agent.pid())?.cpu_seconds;
    let mut samples = Samples::default();
    for i in 0..changes {
        let (sam, dn) = &dns[i % dns.len()];
        let disable = (i / dns.len()) % 2 == 0;
        let uac = if disable { "546" } else { "544" };
        set_attr(admin, dn, "userAccountControl", uac.as_bytes()).await?;
        let t0 = Instant::now();
        let want = if disable { "SUSPENDED" } else { "ACTIVATED" };
        while find_user(&emu.state(), sam).is_none_or(|u| u["state"] != want) {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("{sam} never became {want}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.record(t0.elapsed());
    }
    let cpu = crate::figures::sample(agent.pid())?.cpu_seconds - cpu_before;
    let mut line = figures("ad-change-to-jumpcloud", &samples);
    line["cpu_ms_per_change"] =
        json!((cpu * 1000.0 / samples.len().max(1) as f64 * 100.0).round() / 100.0);
    println!("{line}");

    // Password resets through the capture hook.
    let hook_dir = PathBuf::from(vars.get("LAB_HOOK_DIR")?);
    let prefix = dns[0].0.trim_end_matches(char::is_numeric).to_owned();
    let _hook = install_hook(&hook_dir, agent_bin, &config, &prefix, &passthrough)?;
    let password_date = |state: &Value, id: &Value| -> Option<String> {
        state["passwords"]
            .as_array()?
            .iter()
            .find(|p| &p["user_id"] == id)
            .and_then(|p| p["password_date"].as_str().map(str::to_owned))
    };
    let mut samples = Samples::default();
    for i in 0..changes {
        let (sam, dn) = &dns[i % dns.len()];
        let id = find_user(&emu.state(), sam)
            .map(|u| u["_id"].clone())
            .context("user vanished")?;
        let before = password_date(&emu.state(), &id);
        let password = format!("Lat!{i}x{}Qz9", std::process::id());
        set_attr(admin, dn, "unicodePwd", &unicode_pwd(&password)).await?;
        let t0 = Instant::now();
        while password_date(&emu.state(), &id) == before {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the password of {sam} never reached JumpCloud; see {}",
                    agent.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.record(t0.elapsed());
        // password_date has millisecond resolution; keep changes of one user apart.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let proc = crate::figures::sample(agent.pid())?;
    let mut line = figures("password-to-jumpcloud", &samples);
    line["peak_rss_mb"] = json!((proc.peak_rss_kb as f64 / 1024.0 * 100.0).round() / 100.0);
    line["idle_rss_mb"] = json!((proc.rss_kb as f64 / 1024.0 * 100.0).round() / 100.0);
    println!("{line}");
    drop(agent);
    emu.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

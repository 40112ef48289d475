//! Initial import on the lab: users seeded across ALPHA and BETA (nested groups three deep, every
//! 10th user a direct member of the root group, plus one large group of every ALPHA seed user), read
//! and written into the emulator by a real `forestsync run`; then a quiet period with no change.
//!
//! Figures: the initial sync's duration and objects/s; the same objects read by a raw LDAP search of
//! the same DCs (the agent's speed ÷ the DC's speed cancels machine noise); API requests; the agent's
//! peak and idle RSS and CPU; writes at steady state. `--rate-limit` (per minute) throttles the API:
//! the emulator enforces the budget (429 over it) and the agent is configured with the same budget,
//! so `api_budget_used_ratio` and `throttled_429_total` say how well the agent uses it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use forestsync_actors::directory::read::{ReadSpec, CHANGE_FILTER};
use forestsync_actors::directory::DcSession;

use crate::agent::{scratch_dir, Agent};
use crate::figures::{free_port, ops_get, prom_sum, prom_with, sample, Figures};
use crate::jumpcloud::agent_writes;
use crate::lab::{
    add_group, add_members, admin_session, agent_binary, delete_ou, lab_command, repo, run_tag,
    LabVars,
};

const KEY: &str = "import-bench-key";

pub struct Options {
    pub users: usize,
    pub groups: usize,
    /// API budget per minute (emulator and agent); `None`: unthrottled.
    pub rate_limit: Option<u32>,
    /// Keep the seeded objects (default: deleted at the end).
    pub keep: bool,
    pub agent: Option<PathBuf>,
}

async fn admin(vars: &LabVars, domain: &str) -> Result<DcSession> {
    admin_session(vars, domain, "DC1", Duration::from_secs(600)).await
}

fn seed(domain: &str, users: usize, groups: usize, prefix: &str) -> Result<()> {
    let (users, groups) = (users.to_string(), groups.to_string());
    lab_command(&[
        "seed", "--domain", domain, "--prefix", prefix, "--users", &users, "--groups", &groups,
    ])
}

/// Reads every object the agent's full read reads (same filter, same attributes) with one plain
/// search per domain: the DC's own speed. Returns (objects, seconds).
async fn raw_read(vars: &LabVars) -> Result<(usize, f64)> {
    let (mut objects, mut seconds) = (0usize, 0.0f64);
    for domain in ["ALPHA", "BETA"] {
        let base = vars.get(&format!("LAB_{domain}_BASE_DN"))?;
        let mut s = admin(vars, domain).await?;
        let spec = ReadSpec::new(base.clone());
        let attrs = spec.attributes();
        let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let started = Instant::now();
        let entries = s
            .search(
                &base,
                ldap3::Scope::Subtree,
                CHANGE_FILTER,
                &attrs,
                "raw read",
            )
            .await?;
        seconds += started.elapsed().as_secs_f64();
        objects += entries.len();
    }
    Ok((objects, seconds))
}

pub async fn run(o: Options) -> Result<()> {
    let vars = LabVars::load(&repo())?;
    let agent_bin = agent_binary(o.agent.clone())?;
    let prefix = run_tag("imp").replace('-', "");
    let (ua, ub) = (o.users / 2, o.users - o.users / 2);
    let (ga, gb) = (o.groups / 2, o.groups - o.groups / 2);
    let started = Instant::now();
    eprintln!(
        "seeding {ua} users + {ga} groups into ALPHA, {ub} + {gb} into BETA (prefix {prefix})"
    );
    // Distinct names per domain: the same username in two domains is a reported conflict, not synced.
    let (pa, pb) = (format!("{prefix}a"), format!("{prefix}b"));
    seed("alpha", ua, ga, &pa)?;
    seed("beta", ub, gb, &pb)?;
    let alpha_base = vars.get("LAB_ALPHA_BASE_DN")?;
    let ou_a = format!("OU=Seed-{pa},OU=ADI,{alpha_base}");
    let ou_b = format!("OU=Seed-{pb},OU=ADI,{}", vars.get("LAB_BETA_BASE_DN")?);
    let mut alpha = admin(&vars, "ALPHA").await?;
    // The large group: every ALPHA seed user.
    let big = format!("CN={prefix}-big,{ou_a}");
    add_group(&mut alpha, &big, &format!("{prefix}-big")).await?;
    let members: Vec<String> = (1..=ua)
        .map(|i| format!("CN={pa}-u{i:05},{ou_a}"))
        .collect();
    for chunk in members.chunks(1000) {
        add_members(&mut alpha, &big, chunk).await?;
    }
    add_members(
        &mut alpha,
        &vars.get("LAB_ALPHA_ROOT_GROUP_DN")?,
        std::slice::from_ref(&big),
    )
    .await?;
    eprintln!(
        "seeded in {:.0} s (large group: {} members)",
        started.elapsed().as_secs_f64(),
        members.len()
    );

    let result = measure(&o, &vars, &agent_bin).await;
    if !o.keep {
        delete_ou(&mut alpha, &ou_a).await;
        let mut beta = admin(&vars, "BETA").await?;
        delete_ou(&mut beta, &ou_b).await;
    }
    result
}

async fn measure(o: &Options, vars: &LabVars, agent_bin: &Path) -> Result<()> {
    let (raw_objects, raw_seconds) = raw_read(vars).await?;
    let raw_rate = raw_objects as f64 / raw_seconds.max(1e-9);
    eprintln!(
        "raw read of both domains: {raw_objects} objects in {raw_seconds:.2} s ({raw_rate:.0}/s)"
    );

    let dir = scratch_dir("import")?;
    let log = dir.join("requests.jsonl");
    let emu = jcemu::Emulator::start(jcemu::Config {
        api_keys: vec![KEY.into()],
        request_log: Some(log.clone()),
        rate_limit_per_minute: o.rate_limit,
        retry_after: true,
        ..jcemu::Config::default()
    })
    .await
    .context("starting the emulator")?;
    std::fs::write(dir.join("jcemu-ca.pem"), emu.ca_pem().unwrap_or_default())?;
    let port = free_port()?;
    let (rate, burst) = match o.rate_limit {
        Some(r) => (r, 20.min(r)),
        None => (1_000_000, 1000),
    };
    let mut text = format!(
        "mode = \"ad-authoritative\"\nstate_dir = \"state\"\n[jumpcloud]\nbase_url = \"{url}\"\napi_key = \"{KEY}\"\nca_file = \"jcemu-ca.pem\"\nrate_limit_per_minute = {rate}\nburst = {burst}\n[safety]\nmax_removals = 1000000\n[passwords]\nsocket = \"capture.sock\"\n[telemetry]\nlisten = \"127.0.0.1:{port}\"\n",
        url = emu.base_url(),
    );
    let mut dcs = 0;
    for (name, d) in [("alpha", "ALPHA"), ("beta", "BETA")] {
        let urls: Vec<String> = ["DC1", "DC2"]
            .iter()
            .filter_map(|n| vars.get(&format!("LAB_{d}_{n}_URL")).ok())
            .collect();
        dcs += urls.len();
        text += &format!(
            "[[domain]]\nname = \"{name}\"\ndcs = [{dcs}]\nca_file = \"{ca}\"\nbind_dn = \"{bind}\"\nbind_password = \"{pw}\"\nbase_dn = \"{base}\"\nroot_group_dn = \"{root}\"\n",
            dcs = urls.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", "),
            ca = vars.get("LAB_CA_FILE")?,
            bind = vars.get(&format!("LAB_{d}_BIND_DN"))?,
            pw = vars.get(&format!("LAB_{d}_BIND_PASSWORD"))?,
            base = vars.get(&format!("LAB_{d}_BASE_DN"))?,
            root = vars.get(&format!("LAB_{d}_ROOT_GROUP_DN"))?,
        );
    }
    let config = dir.join("forestsync.toml");
    std::fs::write(&config, text)?;

    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let agent = Agent::start(agent_bin, &config, dir.join("agent.log"), "warn")?;
    let pid = agent.pid();
    // Done: both domains planned, nothing left in the outbox, and the count of written operations
    // unchanged for a second.
    let mut last_written = -1.0;
    let mut peak;
    let (done_at, metrics) = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match sample(pid) {
            Ok(s) => peak = s,
            Err(_) => bail!("the agent exited; log: {}", agent.log()?),
        }
        let Ok(m) = ops_get(&http, port, "/metrics").await else {
            continue;
        };
        let planned = ["alpha", "beta"].iter().all(|d| {
            prom_with(&m, "forestsync_scope_objects", &format!("domain=\"{d}\"")).is_some()
        });
        let pending = prom_sum(&m, "forestsync_outbox_pending").unwrap_or(1.0);
        let written = prom_sum(&m, "forestsync_changes_total").unwrap_or(0.0);
        if planned && pending == 0.0 && written > 0.0 && written == last_written {
            let users = prom_with(&m, "forestsync_scope_objects", "kind=\"users\"").unwrap_or(0.0);
            let in_jc = emu.state()["users"].as_array().map(Vec::len).unwrap_or(0);
            if in_jc as f64 >= users {
                break (t0.elapsed() - Duration::from_millis(500), m);
            }
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("the agent's outbox is empty but JumpCloud holds {in_jc} of {users} users in scope; see {}", agent.log_path().display());
            }
        }
        last_written = written;
        if t0.elapsed() > Duration::from_secs(3600) {
            bail!(
                "no complete import within an hour; log: {}",
                agent.log_path().display()
            );
        }
    };
    let users = prom_with(&metrics, "forestsync_scope_objects", "kind=\"users\"").unwrap_or(0.0);
    let groups = prom_with(&metrics, "forestsync_scope_objects", "kind=\"groups\"").unwrap_or(0.0);
    let secs = done_at.as_secs_f64();
    let objects = users + groups;
    let requests = prom_sum(&metrics, "forestsync_api_requests_total").unwrap_or(0.0);
    let throttled = prom_sum(&metrics, "forestsync_api_throttled_total").unwrap_or(0.0);
    let writes = agent_writes(&log)?;
    let cpu_sync = peak.cpu_seconds;

    // Quiet: nothing changes, the agent must write nothing.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let idle = sample(pid)?;
    let steady_writes = agent_writes(&log)? - writes;

    let mut f = Figures::new(if o.rate_limit.is_some() {
        "import-throttled"
    } else {
        "import"
    });
    f.set("users", users as u64)
        .set("groups", groups as u64)
        .set("domains", 2)
        .set("dcs", dcs)
        .num("initial_sync_seconds", secs)
        .num("objects_per_second", objects / secs)
        .num("raw_search_objects_per_second", raw_rate)
        .num("agent_vs_raw_search_ratio", (objects / secs) / raw_rate)
        .set("api_requests_total", requests as u64)
        .set("api_writes_total", writes)
        .set("steady_state_api_writes", steady_writes)
        .set("throttled_429_total", throttled as u64)
        .process(&idle, agent_bin)
        .num("idle_rss_mb", idle.rss_kb as f64 / 1024.0)
        .num("cpu_seconds_initial_sync", cpu_sync)
        .num("cpu_ms_per_object", cpu_sync * 1000.0 / objects.max(1.0));
    if let Some(budget) = o.rate_limit {
        let allowed = f64::from(budget) / 60.0 * secs;
        f.set("api_budget_per_minute", budget)
            .num("api_requests_per_second", requests / secs)
            .num("api_budget_used_ratio", requests / allowed);
    }
    println!(
        "initial import of {users} users + {groups} groups from 2 domains ({dcs} DCs) in {secs:.1} s = {:.0} objects/s ({:.2} × a raw search of the same DCs); {requests} API requests, {throttled} throttled; peak RSS {:.1} MB, idle {:.1} MB, CPU {cpu_sync:.1} s; {steady_writes} writes in 30 s of quiet",
        objects / secs,
        (objects / secs) / raw_rate,
        peak.peak_rss_kb as f64 / 1024.0,
        idle.rss_kb as f64 / 1024.0,
    );
    println!("{}", f.line());
    drop(agent);
    Ok(())
}

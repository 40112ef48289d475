//! `forestsync-load synthetic`: the agent's own cost per object. A real `forestsync run`
//! (ad-authoritative) reads a generated domain from the in-process synthetic DC
//! ([`crate::synthetic_ldap`]) and writes it to the in-process JumpCloud emulator (rate limit far above
//! what the emulator can serve, so neither side is throttled). The driver waits until JumpCloud holds
//! every user, group and membership, then samples the agent process from /proc: peak RSS (VmHWM), RSS
//! after an idle period (VmRSS), CPU seconds (utime + stime). The emulator and the synthetic DC live in
//! the driver's process, so the agent's figures are its own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::agent::{scratch_dir, Agent};
use crate::jumpcloud::start_emulator;
use crate::synthetic_ldap::{Shape, SyntheticDc, BASE_DN, BIND_DN, BIND_PASSWORD, ROOT_GROUP_DN};

const KEY: &str = "synthetic-bench-key";
/// The agent's default log level: an info filter would add a log line per queued operation.
const LOG_FILTER: &str = "warn";
const POLL: Duration = Duration::from_millis(100);
/// How often the agent's /metrics is read while waiting for the end of its full read.
const METRICS_POLL: Duration = Duration::from_millis(500);

pub struct Options {
    pub users: u64,
    pub groups: u64,
    pub large: Option<u64>,
    pub agent: Option<PathBuf>,
    pub idle_seconds: u64,
    pub timeout_seconds: u64,
}

/// What /proc says about a process.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    vm_rss_kb: u64,
    vm_hwm_kb: u64,
    rss_anon_kb: u64,
    cpu_seconds: f64,
}

fn proc_sample(pid: u32) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (has the agent exited?)"))?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("odd /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    // utime is field 14, stime field 15 (1-based); `fields[0]` is field 3.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ProcSample {
        vm_rss_kb: kb("VmRSS:"),
        vm_hwm_kb: kb("VmHWM:"),
        rss_anon_kb: kb("RssAnon:"),
        cpu_seconds: (ticks(11) + ticks(12)) as f64 / hz,
    })
}

fn mb(kb: u64) -> f64 {
    (kb as f64 / 1024.0 * 10.0).round() / 10.0
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// Counts in the emulator's state: (synthetic users, groups, memberships).
fn counts(state: &Value) -> (u64, u64, u64) {
    let len = |k: &str| state[k].as_array().map_or(0, |a| a.len() as u64);
    let users = state["users"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|u| {
                u["username"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("synu"))
            })
            .count() as u64
    });
    (users, len("usergroups"), len("memberships"))
}

fn count_lines(path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            return Ok(n);
        }
        n += buf[..got].iter().filter(|b| **b == b'\n').count() as u64;
    }
}

/// The agent's Prometheus exposition (its ops endpoint), `None` when not reachable (yet).
async fn metrics(client: &reqwest::Client, url: &str) -> Option<String> {
    client.get(url).send().await.ok()?.text().await.ok()
}

/// The sum of the samples named `name` (any labels) in a Prometheus exposition.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if key == name || key.strip_prefix(name).is_some_and(|r| r.starts_with('{')) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

pub async fn run(o: Options) -> Result<()> {
    let large = o.large.unwrap_or(o.users);
    let shape = Shape::new(o.users, o.groups, large)?;
    let agent_bin = match o.agent {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("forestsync"),
    };
    if !agent_bin.exists() {
        bail!(
            "no agent binary at {}; build it (cargo build --release -p forestsync) or pass --agent",
            agent_bin.display()
        );
    }
    let binary_size_mb = round(
        std::fs::metadata(&agent_bin)?.len() as f64 / (1024.0 * 1024.0),
        2,
    );

    let dc = SyntheticDc::start(shape).await?;
    let dir = scratch_dir("synthetic")?;
    let request_log = dir.join("requests.jsonl");
    let emu = start_emulator(KEY, Some(request_log.clone())).await?;
    std::fs::write(dir.join("jcemu-ca.pem"), emu.ca_pem().unwrap_or_default())?;
    std::fs::write(dir.join("dc-ca.pem"), dc.ca_pem())?;
    // The ops endpoint stays on (the default), on a free port: 9464 may be taken by another agent.
    let ops_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("forestsync.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"ad-authoritative\"\nstate_dir = \"state\"\n[jumpcloud]\nbase_url = \"{url}\"\napi_key = \"{KEY}\"\nca_file = \"jcemu-ca.pem\"\nrate_limit_per_minute = 1000000\nburst = 1000\n[passwords]\nsocket = \"capture.sock\"\n[[domain]]\nname = \"synthetic\"\ndcs = [\"{dc_url}\"]\nca_file = \"dc-ca.pem\"\nbind_dn = \"{BIND_DN}\"\nbind_password = \"{BIND_PASSWORD}\"\nbase_dn = \"{BASE_DN}\"\nroot_group_dn = \"{ROOT_GROUP_DN}\"\n[telemetry]\nlisten = \"127.0.0.1:{ops_port}\"\n",
            url = emu.base_url(),
            dc_url = dc.url(),
        ),
    )?;

    println!(
        "synthetic: {} users, {} groups (+ root, large group of {}), expecting {} memberships in JumpCloud; agent {} ({binary_size_mb} MB); scratch {}",
        shape.users,
        shape.groups,
        shape.large,
        shape.expected_memberships(),
        agent_bin.display(),
        dir.display()
    );
    let agent = Agent::start(&agent_bin, &config, dir.join("agent.log"), LOG_FILTER)?;
    let pid = agent.pid();
    let started = Instant::now();
    let metrics_url = format!("http://127.0.0.1:{ops_port}/metrics");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut next_metrics = started;
    let deadline = started + Duration::from_secs(o.timeout_seconds);

    // When the agent's scope gauge first showed objects: its full read and plan were committed.
    let mut read_done: Option<Duration> = None;
    let mut rss_at_read_kb = 0u64;
    let mut log_size = 0u64;
    let mut last_growth = started;
    let mut next_state_check = started;
    let want = (
        shape.users,
        shape.expected_groups(),
        shape.expected_memberships(),
    );
    let mut last_counts = (0, 0, 0);
    loop {
        if Instant::now() > deadline {
            bail!(
                "the initial sync did not finish within {} s (JumpCloud holds {:?} of {:?} users/groups/memberships); see {}",
                o.timeout_seconds,
                last_counts,
                want,
                agent.log_path().display()
            );
        }
        let sample = proc_sample(pid)
            .with_context(|| format!("the agent stopped; see {}", agent.log_path().display()))?;
        if read_done.is_none() && Instant::now() >= next_metrics {
            next_metrics = Instant::now() + METRICS_POLL;
            if let Some(text) = metrics(&http, &metrics_url).await {
                if metric_sum(&text, "forestsync_scope_objects").unwrap_or(0.0) > 0.0 {
                    read_done = Some(started.elapsed());
                    rss_at_read_kb = sample.vm_rss_kb;
                }
            }
        }
        let size = std::fs::metadata(&request_log).map_or(0, |m| m.len());
        if size != log_size {
            log_size = size;
            last_growth = Instant::now();
        }
        if Instant::now() >= next_state_check {
            let t = Instant::now();
            last_counts = tokio::task::block_in_place(|| counts(&emu.state()));
            // Keep the driver's share of the CPU small: the state document is built from scratch.
            next_state_check = Instant::now() + (t.elapsed() * 5).max(Duration::from_secs(1));
            if last_counts.0 >= want.0 && last_counts.1 >= want.1 && last_counts.2 >= want.2 {
                break;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let synced = proc_sample(pid)?;
    // The last API request the agent made (the request log's last growth), not the poll that saw it.
    let initial_sync = last_growth.duration_since(started);
    let initial_sync_seconds = round(initial_sync.as_secs_f64(), 2);
    println!(
        "synced in {initial_sync_seconds} s; idling {} s before the idle sample",
        o.idle_seconds
    );
    tokio::time::sleep(Duration::from_secs(o.idle_seconds)).await;
    let idle = proc_sample(pid)?;
    let final_metrics = metrics(&http, &metrics_url).await.unwrap_or_default();
    // The agent's own timing of its LDAP reads (the full read is one observation).
    let ldap_read_seconds = metric_sum(
        &final_metrics,
        "forestsync_ldap_search_duration_seconds_sum",
    );
    let log = agent.log()?;
    drop(agent);
    emu.shutdown().await;
    drop(dc);
    let state_db_mb = std::fs::metadata(dir.join("state").join("forestsync.redb"))
        .map(|m| round(m.len() as f64 / (1024.0 * 1024.0), 1))
        .ok();

    let api_requests_total = count_lines(&request_log)?;
    let objects = shape.users + shape.groups + 2;
    let warnings = log.lines().filter(|l| l.contains(" WARN ")).count();
    let errors = log.lines().filter(|l| l.contains(" ERROR ")).count();
    let read_seconds = ldap_read_seconds.map(|s| round(s, 2));
    let read_and_plan_seconds = read_done.map(|d| round(d.as_secs_f64(), 1));
    let figures = json!({
        "scenario": "synthetic",
        "users": shape.users,
        "groups": shape.groups + 2,
        "large_group_members": shape.large,
        "memberships": shape.expected_memberships(),
        "domains": 1,
        "dcs": 1,
        "initial_sync_seconds": initial_sync_seconds,
        "objects_per_second": round(objects as f64 / initial_sync.as_secs_f64().max(0.001), 0),
        "api_requests_total": api_requests_total,
        "peak_rss_mb": mb(idle.vm_hwm_kb),
        "rss_after_read_mb": mb(rss_at_read_kb),
        "rss_at_sync_end_mb": mb(synced.vm_rss_kb),
        "idle_rss_mb": mb(idle.vm_rss_kb),
        "idle_rss_anon_mb": mb(idle.rss_anon_kb),
        "state_db_mb": state_db_mb,
        "idle_seconds": o.idle_seconds,
        "cpu_seconds": round(synced.cpu_seconds, 2),
        "cpu_seconds_incl_idle": round(idle.cpu_seconds, 2),
        "cpu_ms_per_object": round(synced.cpu_seconds * 1000.0 / objects as f64, 3),
        "cpu_ms_per_api_request": round(synced.cpu_seconds * 1000.0 / api_requests_total.max(1) as f64, 3),
        "binary_size_mb": binary_size_mb,
        "read_seconds": read_seconds,
        "read_and_plan_seconds": read_and_plan_seconds,
        "agent_warnings": warnings,
        "agent_errors": errors,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "note": "read_seconds: the agent's forestsync_ldap_search_duration_seconds_sum (its full DirSync read with ranged member reads); read_and_plan_seconds: agent start until its scope gauge showed objects (500 ms polling); the DC and the emulator run in the driver's process",
    });
    println!(
        "agent: peak RSS {} MB (VmHWM; {} MB right after the read), {} MB after {} s idle ({} MB anonymous; state DB {} MB); {} CPU s ({} ms per object, {} ms per API request); {} API requests; LDAP read {:?} s, read + plan {:?} s; {} warnings, {} errors in its log",
        figures["peak_rss_mb"],
        figures["rss_after_read_mb"],
        figures["idle_rss_mb"],
        o.idle_seconds,
        figures["idle_rss_anon_mb"],
        figures["state_db_mb"],
        figures["cpu_seconds"],
        figures["cpu_ms_per_object"],
        figures["cpu_ms_per_api_request"],
        api_requests_total,
        read_seconds,
        read_and_plan_seconds,
        warnings,
        errors
    );
    for line in log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .take(5)
    {
        println!("  agent log: {line}");
    }
    println!("{figures}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

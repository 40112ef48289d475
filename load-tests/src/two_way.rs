//! Two-way mode on the lab: a real registered `forestsync run` in mode two-way against ALPHA and an
//! in-process emulator, with AD-owned users (in the root group, in a scratch OU under OU=ForestSync)
//! and JumpCloud-owned users (bound to the AD instance, created by the agent in the same OU).
//!
//! `two-way-latency` measures each direction's change latency: an AD edit of an AD-owned user from the
//! DC's acknowledgement until the emulator shows it, and a JumpCloud edit of a JumpCloud-owned user
//! from the API's answer until the DC shows it. `two-way-churn` alternates random edits on both sides
//! for minutes. Both then wait a quiet period and count the agent's writes against the real changes:
//! JumpCloud API writes (the emulator's request log: User-Agent `forestsync/…`, any method but GET)
//! per AD change, and AD writes ("updated AD user" in the agent's log) per JumpCloud change. Anything
//! above one write per change is an echo: the agent writing back what it had just written itself. They
//! also count the changes the agent recorded as made on the non-owning side: the benchmarks make none,
//! so each one is the agent mistaking its own write for somebody else's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use forestsync_actors::directory::DcSession;
use serde_json::{json, Value};

use crate::agent::{register, scratch_dir, Agent, AgentConfig};
use crate::jumpcloud::{agent_writes, find_user, start_emulator, Api};
use crate::lab::{
    add_group, add_members, add_ou, add_user, delete_ou, lab_setup, read_attr, run_tag, set_attr,
    LabSetup, LabVars,
};
use crate::stats::Samples;

const KEY: &str = "two-way-bench-key";
/// The agent logs at info for its actors: each AD write is one "updated AD user" line.
const LOG_FILTER: &str = "warn,forestsync_actors=info";
const AD_WRITE_LINE: &str = "updated AD user";
/// The agent's warning for each change it saw on the side that does not own the object.
const NON_OWNER_LINE: &str = "change on the non-owning side";
/// How long the benchmark waits after the last change before it counts the agent's writes.
const QUIET: Duration = Duration::from_secs(5);
/// How long the agent's writes must stay unchanged before sampling starts (after the initial sync).
const SETTLED: Duration = Duration::from_secs(3);
const INITIAL_SYNC_TIMEOUT: Duration = Duration::from_secs(300);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(5);

pub async fn latency(users: usize, changes: usize, agent_bin: Option<PathBuf>) -> Result<()> {
    let mut bench = TwoWayBench::start(agent_bin, "twl", users).await?;
    let result = bench.sample_latency(changes).await;
    bench.finish(keep_files(result.as_ref().ok())).await;
    result?.print(
        &format!("two-way latency: {users} AD-owned + {users} JumpCloud-owned users"),
        json!({
            "scenario": "two-way-latency",
            "users": users,
            "changes": changes,
        }),
    );
    Ok(())
}

pub async fn churn(
    minutes: u64,
    users: usize,
    seed: Option<u64>,
    agent_bin: Option<PathBuf>,
) -> Result<()> {
    let seed = seed.unwrap_or_else(clock_seed);
    let mut bench = TwoWayBench::start(agent_bin, "twc", users).await?;
    let result = bench
        .churn(Duration::from_secs(minutes * 60), &mut Rng(seed))
        .await;
    bench
        .finish(keep_files(result.as_ref().ok().map(|(report, _)| report)))
        .await;
    let (report, rounds) = result?;
    report.print(
        &format!("two-way churn: {minutes} min, {users} AD-owned + {users} JumpCloud-owned users, {rounds} rounds (seed {seed})"),
        json!({
            "scenario": "two-way-churn",
            "minutes": minutes,
            "users": users,
            "rounds": rounds,
            "seed": seed,
        }),
    );
    Ok(())
}

/// An AD edit of an AD-owned user, and the JumpCloud field it shows up in.
#[derive(Clone, Copy)]
enum AdEdit {
    GivenName,
    Title,
}

impl AdEdit {
    fn ad_attribute(self) -> &'static str {
        match self {
            AdEdit::GivenName => "givenName",
            AdEdit::Title => "title",
        }
    }

    fn jumpcloud_field(self) -> &'static str {
        match self {
            AdEdit::GivenName => "firstname",
            AdEdit::Title => "jobTitle",
        }
    }
}

struct AdOwned {
    sam: String,
    dn: String,
}

struct JumpCloudOwned {
    id: String,
    dn: String,
}

/// What the agent did so far: JumpCloud API writes, AD user writes, and changes it recorded as made
/// on the non-owning side (the benchmarks make none: each one is a misjudged echo).
#[derive(Clone, Copy, PartialEq, Eq)]
struct AgentCounts {
    api_writes: usize,
    ad_writes: usize,
    non_owner_records: usize,
}

impl AgentCounts {
    fn since(self, before: AgentCounts) -> AgentCounts {
        AgentCounts {
            api_writes: self.api_writes - before.api_writes,
            ad_writes: self.ad_writes - before.ad_writes,
            non_owner_records: self.non_owner_records - before.non_owner_records,
        }
    }
}

/// What a run measured: latencies per direction, and the agent's writes against the real changes.
struct Report {
    initial_sync: Duration,
    ad_to_jumpcloud: Samples,
    jumpcloud_to_ad: Samples,
    /// What the agent did from the first change until the end of the quiet period.
    agent: AgentCounts,
}

impl Report {
    fn ad_changes(&self) -> usize {
        self.ad_to_jumpcloud.len()
    }

    fn jumpcloud_changes(&self) -> usize {
        self.jumpcloud_to_ad.len()
    }

    /// Writes beyond one per real change (negative would mean a change arrived without a write).
    fn echo_writes(&self) -> i64 {
        (self.agent.api_writes + self.agent.ad_writes) as i64
            - (self.ad_changes() + self.jumpcloud_changes()) as i64
    }

    /// Prints `headline` and the figures for a human, and last one JSON line: `fields` and the figures.
    fn print(&self, headline: &str, mut fields: Value) {
        println!("{headline}");
        self.print_human();
        self.add_json(&mut fields);
        println!("{fields}");
    }

    fn print_human(&self) {
        let (to_jc, to_ad) = (
            self.ad_to_jumpcloud.summary(),
            self.jumpcloud_to_ad.summary(),
        );
        println!("  initial sync: {:.1} s", self.initial_sync.as_secs_f64());
        println!(
            "  AD → JumpCloud ({} changes): {}",
            to_jc.samples,
            to_jc.human()
        );
        println!(
            "  JumpCloud → AD ({} changes): {}",
            to_ad.samples,
            to_ad.human()
        );
        println!(
            "  agent writes (sampling + {} s quiet): {} JumpCloud API writes for {} AD changes ({:.2} per change), {} AD writes for {} JumpCloud changes ({:.2} per change); echo writes: {}; changes recorded as made on the non-owning side: {}",
            QUIET.as_secs(),
            self.agent.api_writes,
            self.ad_changes(),
            per_change(self.agent.api_writes, self.ad_changes()),
            self.agent.ad_writes,
            self.jumpcloud_changes(),
            per_change(self.agent.ad_writes, self.jumpcloud_changes()),
            self.echo_writes(),
            self.agent.non_owner_records,
        );
    }

    fn add_json(&self, line: &mut Value) {
        let figures = json!({
            "initial_sync_seconds": (self.initial_sync.as_secs_f64() * 100.0).round() / 100.0,
            "ad_to_jumpcloud": self.ad_to_jumpcloud.summary().change_latency_json(),
            "jumpcloud_to_ad": self.jumpcloud_to_ad.summary().change_latency_json(),
            "ad_changes": self.ad_changes(),
            "jumpcloud_changes": self.jumpcloud_changes(),
            "api_writes": self.agent.api_writes,
            "ad_writes": self.agent.ad_writes,
            "api_writes_per_change": per_change(self.agent.api_writes, self.ad_changes()),
            "ad_writes_per_change": per_change(self.agent.ad_writes, self.jumpcloud_changes()),
            "echo_writes": self.echo_writes(),
            "non_owner_records": self.agent.non_owner_records,
            "quiet_seconds": QUIET.as_secs(),
        });
        if let (Some(line), Some(figures)) = (line.as_object_mut(), figures.as_object()) {
            line.extend(figures.clone());
        }
    }
}

/// Keep the agent's files for a look when the run failed (no report), saw echo writes, or the agent
/// recorded non-owner changes.
fn keep_files(report: Option<&Report>) -> bool {
    report.is_none_or(|r| r.echo_writes() != 0 || r.agent.non_owner_records != 0)
}

fn per_change(writes: usize, changes: usize) -> f64 {
    if changes == 0 {
        return 0.0;
    }
    (writes as f64 / changes as f64 * 1000.0).round() / 1000.0
}

/// A running two-way set-up: the scratch OU (with the root group and both kinds of users), the
/// emulator, and the agent, past its initial sync.
struct TwoWayBench {
    admin: DcSession,
    ou: String,
    run: AgentRun,
}

/// What lives inside the OU's lifetime: the emulator, the users of both sides, the agent.
struct AgentRun {
    emu: jcemu::Emulator,
    api: Api,
    agent: Agent,
    dir: PathBuf,
    request_log: PathBuf,
    ad_owned: Vec<AdOwned>,
    jumpcloud_owned: Vec<JumpCloudOwned>,
    initial_sync: Duration,
}

impl TwoWayBench {
    /// Creates `users` AD-owned and `users` JumpCloud-owned users, starts the agent and waits until
    /// both are synced. Names start with a unique tag made from `prefix`.
    async fn start(agent_bin: Option<PathBuf>, prefix: &str, users: usize) -> Result<TwoWayBench> {
        if users == 0 {
            bail!("--users must be at least 1");
        }
        let LabSetup {
            vars,
            agent_bin,
            mut admin,
            base_dn,
        } = lab_setup(agent_bin).await?;
        let tag = run_tag(prefix);
        let ou = format!("OU={tag},OU=ForestSync,{base_dn}");
        add_ou(&mut admin, &ou).await?;
        match Self::run_agent(&mut admin, &vars, &agent_bin, &ou, &tag, users).await {
            Ok(run) => Ok(TwoWayBench { admin, ou, run }),
            Err(e) => {
                delete_ou(&mut admin, &ou).await;
                Err(e)
            }
        }
    }

    async fn run_agent(
        admin: &mut DcSession,
        vars: &LabVars,
        agent_bin: &Path,
        ou: &str,
        tag: &str,
        users: usize,
    ) -> Result<AgentRun> {
        let dir = scratch_dir("two-way")?;
        let request_log = dir.join("requests.jsonl");
        let emu = start_emulator(KEY, Some(request_log.clone())).await?;
        let api = Api::new(&emu, KEY)?;
        let ad = api.ad_instance(&vars.get("LAB_ALPHA_BASE_DN")?).await?;

        let root = format!("CN={tag}root,{ou}");
        add_group(admin, &root, &format!("{tag}root")).await?;
        let mut ad_owned = Vec::new();
        for i in 0..users {
            let sam = format!("{tag}a{i}");
            let dn = format!("CN={sam},{ou}");
            add_user(admin, &dn, &sam, "Ad", &[("title", "Start")]).await?;
            ad_owned.push(AdOwned { sam, dn });
        }
        let members: Vec<String> = ad_owned.iter().map(|u| u.dn.clone()).collect();
        add_members(admin, &root, &members).await?;

        let config = AgentConfig {
            mode: "two-way",
            api_key: KEY,
            sections: "[passwords]\nsocket = \"capture.sock\"\n",
            domain_keys: &format!(
                "root_group_dn = \"{root}\"\nad_instance_id = \"{ad}\"\ntarget_ou = \"{ou}\"\n[domain.attributes]\nextra = {{ jobTitle = \"title\" }}\n"
            ),
        }
        .write(&dir, &emu, vars)?;
        register(agent_bin, &config, &api.connect_key(&ad).await?)?;
        let mut jumpcloud_owned = Vec::new();
        for i in 0..users {
            let name = format!("{tag}j{i}");
            let id = api.bound_user(&ad, &name, "Jc").await?;
            let dn = format!("CN={name},{ou}");
            jumpcloud_owned.push(JumpCloudOwned { id, dn });
        }

        let started = Instant::now();
        let agent = Agent::start(agent_bin, &config, dir.join("agent.log"), LOG_FILTER)?;
        let waited_too_long = |agent: &Agent| {
            anyhow::anyhow!(
                "the initial sync did not finish within {INITIAL_SYNC_TIMEOUT:?}; see {}",
                agent.log_path().display()
            )
        };
        while !ad_owned
            .iter()
            .all(|u| find_user(&emu.state(), &u.sam).is_some())
        {
            if started.elapsed() > INITIAL_SYNC_TIMEOUT {
                return Err(waited_too_long(&agent));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for u in &jumpcloud_owned {
            let marker = format!("forestsync:jc={}", u.id);
            while !read_attr(admin, &u.dn, "adminDescription")
                .await?
                .is_some_and(|m| m.starts_with(&marker))
            {
                if started.elapsed() > INITIAL_SYNC_TIMEOUT {
                    return Err(waited_too_long(&agent));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(AgentRun {
            emu,
            api,
            agent,
            dir,
            request_log,
            ad_owned,
            jumpcloud_owned,
            initial_sync: started.elapsed(),
        })
    }

    /// Stops the agent, then removes the OU and the emulator; the scratch directory (config, agent
    /// log, request log) only unless `keep_files`.
    async fn finish(self, keep_files: bool) {
        let TwoWayBench {
            mut admin,
            ou,
            run: AgentRun {
                emu, agent, dir, ..
            },
        } = self;
        drop(agent);
        delete_ou(&mut admin, &ou).await;
        emu.shutdown().await;
        if keep_files {
            eprintln!("kept the agent's files in {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    fn agent_counts(&self) -> Result<AgentCounts> {
        let log = self.run.agent.log()?;
        Ok(AgentCounts {
            api_writes: agent_writes(&self.run.request_log)?,
            ad_writes: log.matches(AD_WRITE_LINE).count(),
            non_owner_records: log.matches(NON_OWNER_LINE).count(),
        })
    }

    /// The agent's counts once they stayed unchanged for [`SETTLED`].
    async fn settled_counts(&self) -> Result<AgentCounts> {
        let started = Instant::now();
        let mut last = self.agent_counts()?;
        let mut unchanged_since = Instant::now();
        while unchanged_since.elapsed() < SETTLED {
            if started.elapsed() > INITIAL_SYNC_TIMEOUT {
                bail!(
                    "the agent kept writing after its initial sync; see {}",
                    self.run.agent.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.agent_counts()?;
            if now != last {
                (last, unchanged_since) = (now, Instant::now());
            }
        }
        Ok(last)
    }

    /// Sets `edit`'s attribute of AD-owned user `user` to `value`; the time from the DC's answer until
    /// the emulator shows it.
    async fn ad_change(&mut self, user: usize, edit: AdEdit, value: &str) -> Result<Duration> {
        let AdOwned { sam, dn } = &self.run.ad_owned[user];
        set_attr(&mut self.admin, dn, edit.ad_attribute(), value.as_bytes()).await?;
        let t0 = Instant::now();
        while find_user(&self.run.emu.state(), sam)
            .is_none_or(|u| u[edit.jumpcloud_field()] != value)
        {
            if t0.elapsed() > CHANGE_TIMEOUT {
                bail!(
                    "{} = {value} of {sam} never reached JumpCloud; see {}",
                    edit.ad_attribute(),
                    self.run.agent.log_path().display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(t0.elapsed())
    }

    /// Sets the first name of JumpCloud-owned user `user` to `value` through the API; the time from
    /// the API's answer until the DC shows it.
    async fn jumpcloud_change(&mut self, user: usize, value: &str) -> Result<Duration> {
        let JumpCloudOwned { id, dn } = &self.run.jumpcloud_owned[user];
        self.run
            .api
            .update_user(id, json!({"firstname": value}))
            .await?;
        let t0 = Instant::now();
        while read_attr(&mut self.admin, dn, "givenName")
            .await?
            .as_deref()
            != Some(value)
        {
            if t0.elapsed() > CHANGE_TIMEOUT {
                bail!(
                    "firstname = {value} of {dn} never reached AD; see {}",
                    self.run.agent.log_path().display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(t0.elapsed())
    }

    /// `changes` edits per direction, alternating: the first name of AD-owned and of JumpCloud-owned
    /// users, round robin; then the quiet period.
    async fn sample_latency(&mut self, changes: usize) -> Result<Report> {
        let before = self.settled_counts().await?;
        let (mut ad_to_jumpcloud, mut jumpcloud_to_ad) = (Samples::default(), Samples::default());
        for i in 0..changes {
            let latency = self
                .ad_change(
                    i % self.run.ad_owned.len(),
                    AdEdit::GivenName,
                    &format!("Ad{i}"),
                )
                .await?;
            ad_to_jumpcloud.record(latency);
            let latency = self
                .jumpcloud_change(i % self.run.jumpcloud_owned.len(), &format!("Jc{i}"))
                .await?;
            jumpcloud_to_ad.record(latency);
        }
        self.report(before, ad_to_jumpcloud, jumpcloud_to_ad).await
    }

    /// For `duration`, alternately an AD edit (given name or title of a random AD-owned user) and a
    /// JumpCloud edit (first name of a random JumpCloud-owned user), each waited for; then the quiet
    /// period. Returns the report and the number of rounds (one edit each).
    async fn churn(&mut self, duration: Duration, rng: &mut Rng) -> Result<(Report, usize)> {
        let before = self.settled_counts().await?;
        let (mut ad_to_jumpcloud, mut jumpcloud_to_ad) = (Samples::default(), Samples::default());
        let started = Instant::now();
        let mut next_progress = Duration::from_secs(60);
        let mut rounds = 0;
        while started.elapsed() < duration {
            rounds += 1;
            let value = format!("C{rounds}");
            if rounds % 2 == 1 {
                let user = rng.below(self.run.ad_owned.len());
                let edit = if rng.below(2) == 0 {
                    AdEdit::GivenName
                } else {
                    AdEdit::Title
                };
                ad_to_jumpcloud.record(self.ad_change(user, edit, &value).await?);
            } else {
                let user = rng.below(self.run.jumpcloud_owned.len());
                jumpcloud_to_ad.record(self.jumpcloud_change(user, &value).await?);
            }
            if started.elapsed() >= next_progress && started.elapsed() < duration {
                eprintln!(
                    "churn: {} min, {rounds} rounds",
                    next_progress.as_secs() / 60
                );
                next_progress += Duration::from_secs(60);
            }
        }
        let report = self
            .report(before, ad_to_jumpcloud, jumpcloud_to_ad)
            .await?;
        Ok((report, rounds))
    }

    /// Waits the quiet period, then counts what the agent did since `before`.
    async fn report(
        &self,
        before: AgentCounts,
        ad_to_jumpcloud: Samples,
        jumpcloud_to_ad: Samples,
    ) -> Result<Report> {
        tokio::time::sleep(QUIET).await;
        Ok(Report {
            initial_sync: self.run.initial_sync,
            ad_to_jumpcloud,
            jumpcloud_to_ad,
            agent: self.agent_counts()?.since(before),
        })
    }
}

/// SplitMix64: enough randomness to pick users and attributes, repeatable from the printed seed.
struct Rng(u64);

impl Rng {
    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

//! forestsync's load driver. Each scenario prints one JSON line of figures.
//!
//! `forestsync-load emulator` measures the JumpCloud emulator's unthrottled throughput, so we know it
//! is never the bottleneck of a sync benchmark. Build with `--release`; the emulator runs in-process
//! and shares the machine's cores with the driver (stated in the output).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use stats::percentile;

mod agent;
mod failover;
mod figures;
mod import;
mod jumpcloud;
mod lab;
mod latency;
mod stats;
mod sync_latency;
mod synthetic;
mod synthetic_ldap;
mod two_way;

#[derive(Parser)]
#[command(
    name = "forestsync-load",
    about = "forestsync benchmarks; one JSON line of figures per scenario"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Throughput of the JumpCloud emulator (no rate limit, no faults).
    Emulator {
        /// Seconds per phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent client connections.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Users created in the create phase (and paged through in the read phase).
        #[arg(long, default_value_t = 20000)]
        users: usize,
        /// Serve plain HTTP instead of HTTPS.
        #[arg(long)]
        http: bool,
    },
    /// AD change → JumpCloud and AD password → JumpCloud latency on the lab (needs `deploy/lab/lab up`).
    Latency {
        /// Users in scope.
        #[arg(long, default_value_t = 50)]
        users: usize,
        /// Measured changes per scenario.
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// The forestsync binary to run as the agent (default: next to this program).
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
    /// JumpCloud change → AD and JumpCloud password → AD latency on the lab (jumpcloud-authoritative).
    SyncLatency {
        /// Users bound to the AD instance.
        #[arg(long, default_value_t = 50)]
        users: usize,
        /// Measured changes per scenario.
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// The forestsync binary to run as the agent (default: next to this program).
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
    /// Two-way mode on the lab: AD → JumpCloud and JumpCloud → AD change latency, and the agent's
    /// writes per real change (echo writes).
    TwoWayLatency {
        /// AD-owned users, and as many JumpCloud-owned users.
        #[arg(long, default_value_t = 50)]
        users: usize,
        /// Measured changes per direction.
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// The forestsync binary to run as the agent (default: next to this program).
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
    /// Initial import on the lab: USERS seeded across ALPHA and BETA (nested groups, one large group)
    /// into the emulator, API unthrottled; then 30 s of quiet (no writes expected).
    Import {
        #[arg(long, default_value_t = 2000)]
        users: usize,
        /// Seeded groups (across both domains), besides the large group.
        #[arg(long, default_value_t = 40)]
        groups: usize,
        /// Keep the seeded objects in the lab afterwards.
        #[arg(long)]
        keep: bool,
        /// The forestsync binary to run as the agent (default: next to this program).
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
    /// The initial import with the API throttled to a budget (emulator answers 429 over it; the agent
    /// is given the same budget): how much of the budget the agent uses, and whether it is ever throttled.
    Throttled {
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 20)]
        groups: usize,
        /// The API budget, requests per minute.
        #[arg(long, default_value_t = 600)]
        budget: u32,
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
    /// A DC failover during churn: DC1 of ALPHA is stopped while changes keep coming (then on DC2), and
    /// started again. Stops a lab DC: run it on a lab nobody else uses.
    Failover {
        #[arg(long, default_value_t = 20)]
        users: usize,
        /// One change every this many milliseconds.
        #[arg(long, default_value_t = 250)]
        every_ms: u64,
        /// Seconds of churn before DC1 is stopped.
        #[arg(long, default_value_t = 15)]
        before: u64,
        /// Seconds DC1 stays down (and of churn after it is back).
        #[arg(long, default_value_t = 20)]
        after: u64,
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
    /// Two-way mode on the lab, long run: random real changes alternating between AD and JumpCloud;
    /// the agent's writes must equal the changes (no echo writes).
    TwoWayChurn {
        /// How long to churn.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// AD-owned users, and as many JumpCloud-owned users.
        #[arg(long, default_value_t = 50)]
        users: usize,
        /// Seed of the choice of users and attributes (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// The forestsync binary to run as the agent (default: next to this program).
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
    /// The agent's own cost per object: an initial sync (ad-authoritative) from an in-process
    /// synthetic LDAPS DC with a generated domain into the in-process emulator; peak and idle RSS,
    /// CPU seconds. Needs no lab.
    Synthetic {
        /// Users in the generated domain (all in scope).
        #[arg(long, default_value_t = 10000)]
        users: u64,
        /// Groups besides the root group and the large group (a tenth first-level, the rest nested
        /// in them; every user in one second-level group).
        #[arg(long, default_value_t = 100)]
        groups: u64,
        /// Members of the large group (default: every user).
        #[arg(long)]
        large_group: Option<u64>,
        /// Seconds the agent idles after the sync before its idle RSS is sampled.
        #[arg(long, default_value_t = 10)]
        idle_seconds: u64,
        /// Give up when the initial sync takes longer.
        #[arg(long, default_value_t = 3600)]
        timeout_seconds: u64,
        /// The forestsync binary to run as the agent (default: next to this program).
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().scenario {
        Scenario::Emulator {
            seconds,
            concurrency,
            users,
            http,
        } => emulator(seconds, concurrency, users, http).await,
        Scenario::Import {
            users,
            groups,
            keep,
            agent,
        } => {
            import::run(import::Options {
                users,
                groups,
                rate_limit: None,
                keep,
                agent,
            })
            .await
        }
        Scenario::Throttled {
            users,
            groups,
            budget,
            keep,
            agent,
        } => {
            import::run(import::Options {
                users,
                groups,
                rate_limit: Some(budget),
                keep,
                agent,
            })
            .await
        }
        Scenario::Failover {
            users,
            every_ms,
            before,
            after,
            agent,
        } => {
            failover::run(failover::Options {
                users,
                every_ms,
                before,
                after,
                agent,
            })
            .await
        }
        Scenario::Latency {
            users,
            changes,
            agent,
        } => latency::run(users, changes, agent).await,
        Scenario::SyncLatency {
            users,
            changes,
            agent,
        } => sync_latency::run(users, changes, agent).await,
        Scenario::TwoWayLatency {
            users,
            changes,
            agent,
        } => two_way::latency(users, changes, agent).await,
        Scenario::TwoWayChurn {
            minutes,
            users,
            seed,
            agent,
        } => two_way::churn(minutes, users, seed, agent).await,
        Scenario::Synthetic {
            users,
            groups,
            large_group,
            idle_seconds,
            timeout_seconds,
            agent,
        } => {
            synthetic::run(synthetic::Options {
                users,
                groups,
                large: large_group,
                agent,
                idle_seconds,
                timeout_seconds,
            })
            .await
        }
    }
}

const KEY: &str = "load-test-key";

async fn emulator(seconds: u64, concurrency: usize, users: usize, http: bool) -> Result<()> {
    let emu = jcemu::Emulator::start(jcemu::Config {
        api_keys: vec![KEY.into()],
        tls: !http,
        ..jcemu::Config::default()
    })
    .await
    .context("starting the emulator")?;
    let mut builder = reqwest::Client::builder().pool_max_idle_per_host(concurrency);
    if let Some(pem) = emu.ca_pem() {
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?);
    }
    let client = builder.build()?;
    let base = emu.base_url();

    // Phase 1: creates (POST /api/systemusers), `users` of them spread over the workers.
    let next = Arc::new(AtomicU64::new(0));
    let create = run_phase(concurrency, Duration::from_secs(seconds), {
        let (client, base, next) = (client.clone(), base.clone(), next.clone());
        move || {
            let (client, base, next) = (client.clone(), base.clone(), next.clone());
            async move {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= users as u64 {
                    return Ok(false);
                }
                let body = json!({"username": format!("load{n}"), "email": format!("load{n}@example.test"), "firstname": "Load", "lastname": format!("User{n}")});
                let r = client.post(format!("{base}/api/systemusers")).header("x-api-key", KEY).json(&body).send().await?;
                anyhow::ensure!(r.status().is_success(), "create: {}", r.status());
                // Read the body: dropping an unread HTTP/2 response makes the client reset the stream.
                r.bytes().await?;
                Ok(true)
            }
        }
    })
    .await?;
    print_figures("emulator-create-users", &create, concurrency, http);

    // Phase 2: full pages of the user list (GET /api/systemusers?limit=100&skip=…&sort=_id), the agent's scan.
    let pages = users.div_ceil(100).max(1) as u64;
    let counter = Arc::new(AtomicU64::new(0));
    let list = run_phase(concurrency, Duration::from_secs(seconds), {
        let (client, base, counter) = (client.clone(), base.clone(), counter.clone());
        move || {
            let (client, base, counter) = (client.clone(), base.clone(), counter.clone());
            async move {
                let page = counter.fetch_add(1, Ordering::Relaxed) % pages;
                let r = client
                    .get(format!(
                        "{base}/api/systemusers?limit=100&skip={}&sort=_id",
                        page * 100
                    ))
                    .header("x-api-key", KEY)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "list: {}", r.status());
                r.bytes().await?;
                Ok(true)
            }
        }
    })
    .await?;
    print_figures("emulator-list-100", &list, concurrency, http);
    emu.shutdown().await;
    Ok(())
}

struct Figures {
    requests: u64,
    elapsed: Duration,
    /// Ascending.
    latencies_ms: Vec<f64>,
}

/// Runs `op` on `concurrency` workers until `duration` passes or an op returns `Ok(false)` (work done).
async fn run_phase<F, Fut>(concurrency: usize, duration: Duration, op: F) -> Result<Figures>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<bool>> + Send + 'static,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < duration {
                let t = Instant::now();
                if !op().await? {
                    break;
                }
                latencies.push(t.elapsed().as_micros() as f64 / 1000.0);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies_ms = Vec::new();
    for w in workers {
        latencies_ms.extend(w.await??);
    }
    latencies_ms.sort_by(|a, b| a.total_cmp(b));
    Ok(Figures {
        requests: latencies_ms.len() as u64,
        elapsed: started.elapsed(),
        latencies_ms,
    })
}

fn print_figures(scenario: &str, f: &Figures, concurrency: usize, http: bool) {
    let line = json!({
        "scenario": scenario,
        "transport": if http { "http" } else { "https" },
        "concurrency": concurrency,
        "requests": f.requests,
        "seconds": (f.elapsed.as_secs_f64() * 100.0).round() / 100.0,
        "requests_per_second": (f.requests as f64 / f.elapsed.as_secs_f64()).round(),
        "p50_ms": percentile(&f.latencies_ms, 0.50),
        "p99_ms": percentile(&f.latencies_ms, 0.99),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "note": "driver and emulator share the machine's cores",
    });
    println!("{line}");
}

//! `jcemu` command line: see README.md.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use jcemu::{Config, DefaultUserState, LimitPolicy, PasswordPolicy};

#[derive(Parser, Debug)]
#[command(name = "jcemu", version, about = "A stateful JumpCloud API emulator")]
struct Cli {
    /// Listen address (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Accepted API key (`x-api-key`); repeat for several keys.
    #[arg(long = "api-key", required = true)]
    api_keys: Vec<String>,
    /// Organisation id (24 hex digits).
    #[arg(long, default_value = jcemu::DEFAULT_ORG_ID)]
    org_id: String,
    /// Spec folder (holding api/1.0/index.yaml and api/2.0/index.yaml): check every request and response.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Where to write the generated CA certificate (PEM).
    #[arg(long, default_value = "jcemu-ca.pem")]
    ca_out: PathBuf,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    http: bool,
    /// Append one JSON line per /api request (secrets redacted).
    #[arg(long)]
    request_log: Option<PathBuf>,
    /// Requests per minute per API key (429 beyond).
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Leave out `Retry-After` on 429.
    #[arg(long)]
    no_retry_after: bool,
    /// Probability of answering with one of --error-statuses without applying the request.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Comma-separated statuses for --error-rate / --commit-then-fail-rate.
    #[arg(long, value_delimiter = ',', default_value = "502,503")]
    error_statuses: Vec<u16>,
    /// Latency added to every /api request.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Probability of closing the connection without a response.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Probability of applying a request and then answering an error anyway.
    #[arg(long, default_value_t = 0.0)]
    commit_then_fail_rate: f64,
    /// Probability of applying a request and then corrupting its successful answer (malformed JSON,
    /// truncated, wrong field types, extra fields, empty body; `PUT /__emulator/faults` picks modes).
    #[arg(long, default_value_t = 0.0)]
    corrupt_rate: f64,
    /// RNG seed (fault injection, salts, connect keys).
    #[arg(long)]
    seed: Option<u64>,
    /// State of users created without `state`: ACTIVATED or STAGED.
    #[arg(long, default_value = "ACTIVATED")]
    default_user_state: String,
    /// Password policy as JSON, e.g. '{"min_length": 12, "history": 5}' (fields not given keep their defaults).
    #[arg(long)]
    password_policy: Option<String>,
    /// Serve 100 when limit > 100 instead of answering 400.
    #[arg(long)]
    clamp_limit: bool,
    /// Adding an existing member/association or removing an absent one answers 204 instead of 409/404.
    #[arg(long)]
    graph_idempotent: bool,
    /// Status of DELETE /usergroups/{id}: 204 or 200.
    #[arg(long, default_value_t = 204)]
    delete_usergroup_status: u16,
    /// Require x-org-id (multi-tenant admin key): 401 when missing.
    #[arg(long)]
    require_org_id: bool,
    /// Do not require Content-Type: application/json on bodies (no 415).
    #[arg(long)]
    no_content_type_check: bool,
    /// Agent channel: a primary agent silent for longer than this loses the role (milliseconds).
    #[arg(long, default_value_t = jcemu::DEFAULT_AGENT_HEARTBEAT_TIMEOUT_MS)]
    agent_heartbeat_timeout_ms: u64,
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let default_user_state = match cli.default_user_state.to_ascii_uppercase().as_str() {
        "ACTIVATED" => DefaultUserState::Activated,
        "STAGED" => DefaultUserState::Staged,
        other => anyhow::bail!("--default-user-state must be ACTIVATED or STAGED, got {other}"),
    };
    let password_policy: PasswordPolicy = match &cli.password_policy {
        Some(j) => {
            serde_json::from_str(j).map_err(|e| anyhow::anyhow!("--password-policy: {e}"))?
        }
        None => PasswordPolicy::default(),
    };
    let defaults = Config::default();
    let mut keys = cli.api_keys.into_iter();
    let config = Config {
        listen: cli.listen,
        api_key: keys.next().unwrap_or_default(),
        api_keys: keys.collect(),
        org_id: cli.org_id,
        spec_dir: cli.spec,
        contract: None,
        tls: !cli.http,
        ca_out: if cli.http { None } else { Some(cli.ca_out) },
        request_log: cli.request_log,
        rate_limit_per_minute: cli.rate_limit,
        retry_after: !cli.no_retry_after,
        error_rate: cli.error_rate,
        error_statuses: cli.error_statuses,
        latency_ms: cli.latency_ms,
        drop_rate: cli.drop_rate,
        commit_then_fail_rate: cli.commit_then_fail_rate,
        corrupt_rate: cli.corrupt_rate,
        corrupt_modes: defaults.corrupt_modes.clone(),
        seed: cli.seed.unwrap_or(defaults.seed),
        password_policy,
        default_user_state,
        limit_over_max: if cli.clamp_limit {
            LimitPolicy::Clamp
        } else {
            LimitPolicy::Reject
        },
        graph_idempotent: cli.graph_idempotent,
        delete_usergroup_status: cli.delete_usergroup_status,
        require_org_id: cli.require_org_id,
        require_content_type: !cli.no_content_type_check,
        agent_heartbeat_timeout_ms: cli.agent_heartbeat_timeout_ms,
        clock_start: None,
    };
    let emu = jcemu::Emulator::start(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "jcemu listening on {}", emu.base_url())?;
        out.flush()?;
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    emu.shutdown().await;
    Ok(())
}

//! The `forestsync` command line.

// Issue #8 ("never panics"): outside tests, no `unwrap()` and no `panic!`. A failure that cannot
// happen is an `expect("<why it cannot fail>")`; one that can is an error with a disposition.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::panic))]

use forestsync::{capture, check, config, register, telemetry, EXIT_CONFIG};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "forestsync",
    version,
    about = "Keeps Active Directory forests and a JumpCloud organisation in agreement",
    after_help = "Exit codes: 0 success; 1 a check or the command failed (explain: user not found); \
                  2 bad usage or an unusable config file (the message names the key and the fix). \
                  capture-password: 0 accepts the password, 1 rejects it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sync daemon in the configured mode.
    Run(ConfigArg),
    /// Validate the config and test every DC and the JumpCloud API key; one line per item.
    Check(ConfigArg),
    /// Dry run: show what the next sync would create, update, suspend and delete; writes nothing.
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Per domain: the DC in use and each DC's health, watermark age, last successful sync, pending
    /// and failed operations, two-way conflicts and non-owner changes, objects and passwords AD
    /// refused. Asks the running agent (admin socket in state_dir); with the agent stopped, reads the
    /// store (no live DC health then).
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Why one user is or is not in JumpCloud (or AD) as it is: domain, DN, objectGUID, scope path
    /// through nested groups (or why not), authority, link, pending and failed operations, errors.
    /// USER: sAMAccountName, userPrincipalName, JumpCloud username or id, or DN. Exit 1 if not found.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// The user to explain.
        user: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Replace the plaintext secrets in the config file by sealed values (in place; the rest of the
    /// file is kept as it is). `run` does the same at every start.
    Seal(ConfigArg),
    /// Password hook called by Samba's `check password script` on every DC (password on stdin).
    /// Exit 0 accepts the password, 1 rejects it; an accepted one goes to the agent or the spool.
    CapturePassword(capture::CaptureArgs),
    /// Register this agent for one domain's JumpCloud AD instance using a one-time connect key;
    /// the agent's credentials are stored sealed under state_dir.
    Register(register::RegisterArgs),
    /// Print the config file reference (every section and key, type, default, meaning) as Markdown.
    ConfigReference,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Path of the TOML configuration file.
    #[arg(long, short = 'c', default_value = "/etc/forestsync/forestsync.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run(arg) = cli.command {
        // `run` sets up its own logs, traces and metrics from the config file.
        return run_command(arg);
    }
    telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("forestsync: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Check(arg) => runtime.block_on(check_command(arg)),
        Command::Run(_) => ExitCode::SUCCESS,
        Command::Plan { config, json } => runtime.block_on(plan_command(config, json)),
        Command::Status { config, json } => status_command(config, json),
        Command::Explain { config, user, json } => explain_command(config, &user, json),
        Command::Seal(arg) => seal_command(arg),
        Command::CapturePassword(args) => capture::run(args, &runtime),
        Command::Register(args) => register::run(args, &runtime),
        Command::ConfigReference => {
            if out(format_args!("{}", forestsync::config_reference::render())) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// `print!` without its panic when standard output is a pipe whose reader has gone
/// (`forestsync config-reference | head`) or a full disk: the error goes to stderr and the caller
/// gets `false` (exit 1 where the output is the command's result).
fn out(args: std::fmt::Arguments<'_>) -> bool {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Ok(()) => true,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "forestsync: cannot write to standard output: {e}"
            );
            false
        }
    }
}

async fn check_command(arg: ConfigArg) -> ExitCode {
    let config = match config::Config::load(&arg.config) {
        Ok(c) => c,
        Err(e) => {
            out(format_args!("FAIL  config     {e}\n"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let report = check::run(&config).await;
    out(format_args!("{}", report.render()));
    let failed = report.failed();
    if failed == 0 {
        out(format_args!("all {} checks passed\n", report.lines.len()));
        ExitCode::SUCCESS
    } else {
        out(format_args!("{failed} check(s) failed\n"));
        ExitCode::from(1)
    }
}

fn load(arg: &ConfigArg) -> Option<config::Config> {
    match config::Config::load(&arg.config) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("forestsync: {e}");
            None
        }
    }
}

fn status_command(arg: ConfigArg, json: bool) -> ExitCode {
    let Some(config) = load(&arg) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let (report, source) = match forestsync::admin::fetch_status(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("forestsync status: {e}");
            return ExitCode::from(1);
        }
    };
    note_source(&source);
    if json {
        return print_json(&report);
    }
    match forestsync::status::render(&report, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forestsync status: {e}");
            ExitCode::from(1)
        }
    }
}

fn explain_command(arg: ConfigArg, user: &str, json: bool) -> ExitCode {
    let Some(config) = load(&arg) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let (report, source) = match forestsync::admin::fetch_explain(&config, user) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("forestsync explain: {e}");
            return ExitCode::from(1);
        }
    };
    note_source(&source);
    let code = if json {
        print_json(&report)
    } else {
        match forestsync::explain::render(&report, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("forestsync explain: {e}");
                return ExitCode::from(1);
            }
        }
    };
    if report.matches.is_empty() {
        eprintln!("forestsync explain: {user}: not found in any configured domain");
        return ExitCode::from(1);
    }
    code
}

/// Says on stderr where a report came from when no agent answered.
fn note_source(source: &forestsync::admin::Source) {
    if let forestsync::admin::Source::Store { why } = source {
        eprintln!("forestsync: read from the state store ({why})");
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(text) if out(format_args!("{text}\n")) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("forestsync: cannot encode the report: {e}");
            ExitCode::from(1)
        }
    }
}

fn seal_command(arg: ConfigArg) -> ExitCode {
    let Some(before) = load(&arg) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let fields = match forestsync::seal::seal_file(&before.path, &before.seal_key_file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("forestsync: {e}");
            return ExitCode::from(1);
        }
    };
    // The sealed file must give back exactly the secrets the plaintext one gave.
    let Some(after) = load(&arg) else {
        return ExitCode::from(1);
    };
    let same = before.jumpcloud.api_key.expose() == after.jumpcloud.api_key.expose()
        && before
            .domains
            .iter()
            .zip(&after.domains)
            .all(|(a, b)| a.bind_password.expose() == b.bind_password.expose());
    if !same {
        eprintln!(
            "forestsync: {} no longer yields the same secrets after sealing; restore it from your backup",
            before.path.display()
        );
        return ExitCode::from(1);
    }
    if fields.is_empty() {
        out(format_args!(
            "nothing to seal in {}: no plaintext secret\n",
            before.path.display()
        ));
    } else {
        out(format_args!(
            "sealed {} in {} (key {})\n",
            fields.join(", "),
            before.path.display(),
            before.seal_key_file.display()
        ));
    }
    ExitCode::SUCCESS
}

fn run_command(arg: ConfigArg) -> ExitCode {
    let Some(config) = load(&arg) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    // Before the runtime: the OTLP client is a blocking one with its own thread.
    let telemetry = match telemetry::init_agent(&config.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("forestsync: {e}");
            return ExitCode::from(1);
        }
    };
    // `System::new()` panics when the runtime cannot be created (no file descriptor left for epoll,
    // say); the same runtime built here fails with a message instead.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("forestsync: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let system = actix::System::with_tokio_rt(move || runtime);
    let result = system.block_on(async {
        forestsync::seal::seal_on_start(&config);
        if let Some(addr) = config.telemetry.listen {
            // Syncing matters more than being watched: a taken port is loud, not fatal (probes
            // and scrapes then fail, which is how it gets noticed).
            match forestsync::ops_http::serve(addr, telemetry.metrics()).await {
                Ok(bound) => tracing::info!(%bound, "ops endpoint: /metrics, /healthz, /readyz"),
                Err(e) => {
                    tracing::error!(error = %e, "ops endpoint not started");
                    eprintln!("forestsync: {e}");
                }
            }
        }
        forestsync::wiring::start(&config).await?;
        if config.mode != forestsync::config::Mode::JumpcloudAuthoritative {
            forestsync::progress_line::spawn(config.domains.len());
        }
        tracing::info!(mode = %config.mode, "forestsync running");
        shutdown_signal().await;
        tracing::info!("shutting down");
        Ok::<(), forestsync::wiring::WiringError>(())
    });
    drop(system);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forestsync: {e}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn plan_command(arg: ConfigArg, json: bool) -> ExitCode {
    let Some(config) = load(&arg) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    match forestsync::dry_run::run(&config).await {
        Ok(r) => {
            let written = if json {
                out(format_args!("{}\n", forestsync::dry_run::render_json(&r)))
            } else {
                out(format_args!("{}", forestsync::dry_run::render_table(&r)))
            };
            if written {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("forestsync plan: {e}");
            ExitCode::from(1)
        }
    }
}

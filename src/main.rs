//! The `forestsync` command line.

use forestsync::{check, config, telemetry};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "forestsync",
    version,
    about = "Keeps Active Directory forests and a JumpCloud organisation in agreement"
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
    /// Show the running agent's state: domains, DCs in use, watermarks, queued operations.
    Status(ConfigArg),
    /// Encrypt the secrets in a config file in place.
    Seal(ConfigArg),
    /// Password hook called by Samba's `check password script` on every DC (password on stdin).
    CapturePassword,
    /// Register this agent with the JumpCloud AD instance using a one-time connect key.
    Register {
        #[command(flatten)]
        config: ConfigArg,
        /// The connect key from the Admin Portal (one-time use, valid 7 days).
        #[arg(long)]
        connect_key: String,
    },
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Path of the TOML configuration file.
    #[arg(long, short = 'c', default_value = "/etc/forestsync/forestsync.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Run(_) | Command::Plan { .. } | Command::Status(_) | Command::Seal(_) => {
            not_yet("issue #3")
        }
        Command::CapturePassword => not_yet("issue #3"),
        Command::Register { .. } => not_yet("a later issue"),
    }
}

async fn check_command(arg: ConfigArg) -> ExitCode {
    let config = match config::Config::load(&arg.config) {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL  config     {}", e);
            return ExitCode::from(1);
        }
    };
    let report = check::run(&config).await;
    print!("{}", report.render());
    let failed = report.failed();
    if failed == 0 {
        println!("all {} checks passed", report.lines.len());
        ExitCode::SUCCESS
    } else {
        println!("{failed} check(s) failed");
        ExitCode::from(1)
    }
}

fn not_yet(issue: &str) -> ExitCode {
    eprintln!("forestsync: this subcommand is not implemented yet ({issue})");
    ExitCode::from(2)
}

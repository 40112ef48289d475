//! The forestsync program: configuration, the subcommands, telemetry set-up, wiring of the engine
//! (`forestsync-actors`). The binary in `main.rs` is only argument parsing on top of this.

pub mod admin;
pub mod capture;
pub mod check;
pub mod config;
pub mod config_reference;
pub mod dry_run;
pub mod explain;
pub mod ops_http;
pub mod progress_line;
pub mod register;
pub mod seal;
pub mod status;
pub mod telemetry;
pub mod wiring;

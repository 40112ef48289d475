//! The forestsync program: configuration, the subcommands, telemetry set-up, wiring of the engine
//! (`forestsync-actors`). The binary in `main.rs` is only argument parsing on top of this.

// Issue #8 ("never panics"): outside tests, no `unwrap()` and no `panic!`. A failure that cannot
// happen is an `expect("<why it cannot fail>")`; one that can is an error with a disposition.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::panic))]

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

/// Exit codes of every subcommand except `capture-password` (0 accepts, 1 rejects the password):
/// success.
pub const EXIT_OK: u8 = 0;
/// A check failed, the command failed at run time, or `explain` found no such user.
pub const EXIT_FAILURE: u8 = 1;
/// Bad usage (clap's own code for an unknown flag or subcommand) or an unusable config file: the
/// message names the key and the fix; nothing was contacted or written.
pub const EXIT_CONFIG: u8 = 2;

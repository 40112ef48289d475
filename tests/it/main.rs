//! forestsync's integration tests: one binary, run against the lab's real Samba AD DCs
//! (`deploy/lab/lab up`) and the JumpCloud emulator (`jcemu`, started in-process per test).
//!
//! Lab tests read the lab's `LAB_*` variables (from the environment, or from `lab-state/env.sh`).
//! Without a lab they skip with a message, unless `FORESTSYNC_REQUIRE_LAB=1` (set by CI), where a
//! missing lab is a failure.

mod ad_writes;
mod bad_config;
mod bad_ldap;
mod check_command;
mod config_reference;
mod delivery;
mod directory_reads;
mod disruptive;
mod emulator;
mod faults;
mod import_mode;
mod lab_dcs;
mod password_capture;
mod register;
mod seal;
mod security;
mod status_explain;
mod support;
mod sync_disruptive;
mod sync_guard;
mod sync_mode;
mod telemetry;
mod two_way;

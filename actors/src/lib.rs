//! forestsync's engine: everything the actors are and need.
//!
//! Module map (see ARCHITECTURE.md for the invariants):
//! - [`disposition`]: how every error in the engine is classified (retry, fail over, throttled, fatal, bad input).
//! - [`secret`]: the redacting wrapper every credential travels in.
//! - [`trust`]: the one place that builds rustls client configurations (LDAP and HTTPS share it).
//! - [`directory`]: Active Directory over LDAP (connect, bind, rootDSE, rights probes).
//! - [`cloud`]: the JumpCloud API client.
//! - [`channel`]: the agent channel (JumpCloud → agent change feed, password payloads, reports) and
//!   the agent's registration and credentials.
//! - [`sealed`]: sealing secrets at rest (the installation's seal key, `fs1:` values).
//! - [`store`]: the durable store (redb): snapshots + watermarks per domain, outbox, quarantine, links, meta.
//! - [`executor`]: runs queued JumpCloud operations idempotently through one rate limiter, with retries.
//! - [`health`]: live health (DC reachability and the DC in use, API key accepted, last sync per direction).
//! - [`metrics`]: the engine's OpenTelemetry instruments (no-ops until the binary installs a provider).
//! - [`password`]: password capture (hook rules, socket, encrypted spool) and commit confirmation.

// Issue #8 ("never panics"): outside tests, no `unwrap()` and no `panic!`. A failure that cannot
// happen is an `expect("<why it cannot fail>")`; one that can is an error with a disposition.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::panic))]

pub mod api;
pub mod change_trace;
pub mod channel;
pub mod cloud;
pub mod coordinator;
pub mod dc;
pub mod directory;
pub mod disposition;
pub mod domain;
pub mod executor;
pub mod health;
pub mod metrics;
pub mod model;
pub mod password;
pub mod plan;
pub mod progress;
pub mod sealed;
pub mod secret;
pub mod store;
pub mod trust;
pub mod two_way;

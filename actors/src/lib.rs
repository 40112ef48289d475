//! forestsync's engine: everything the actors are and need.
//!
//! Module map (see ARCHITECTURE.md for the invariants):
//! - [`disposition`]: how every error in the engine is classified (retry, fail over, throttled, fatal, bad input).
//! - [`secret`]: the redacting wrapper every credential travels in.
//! - [`trust`]: the one place that builds rustls client configurations (LDAP and HTTPS share it).
//! - [`directory`]: Active Directory over LDAP (connect, bind, rootDSE, rights probes).
//! - [`cloud`]: the JumpCloud API client.

pub mod cloud;
pub mod directory;
pub mod disposition;
pub mod model;
pub mod plan;
pub mod secret;
pub mod trust;

//! jcemu: a stateful JumpCloud API emulator (v1 `/api` and v2 `/api/v2` on one HTTPS listener), optionally
//! checked request-by-request against JumpCloud's published OpenAPI specs. See README.md for the contract.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jcemu::Error> {
//! let emu = jcemu::Emulator::start(jcemu::Config { api_key: "k".into(), ..jcemu::Config::default() }).await?;
//! let url = emu.base_url(); // https://127.0.0.1:PORT
//! let ca = emu.ca_pem();    // Some(PEM) to trust
//! emu.shutdown().await;
//! # Ok(()) }
//! ```

pub mod spec;

mod admin;
mod api;
/// A throw-away CA and server certificate (also used by the load tests' synthetic DC).
pub mod certs;
mod channel;
pub mod clock;
mod coalesce;
mod config;
mod conn_exec;
mod error;
mod http;
mod password;
mod query;
mod reqlog;
mod server;
mod shared;
mod store;
mod v1;
mod v2;

pub use config::{
    is_object_id, Config, CorruptMode, DefaultUserState, FaultSettings, LimitPolicy,
    PasswordPolicy, Settings, DEFAULT_AGENT_HEARTBEAT_TIMEOUT_MS, DEFAULT_API_KEY, DEFAULT_ORG_ID,
};
pub use error::Error;
pub use server::Emulator;

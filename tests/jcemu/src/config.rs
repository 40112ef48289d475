//! Emulator configuration (library `Config`) and the run-time adjustable settings behind
//! `/__emulator/faults` and `/__emulator/settings`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::spec;

/// The API key accepted when `Config::api_key` is left at its default.
pub const DEFAULT_API_KEY: &str = "jcemu-api-key";
/// The organisation id used when `Config::org_id` is left at its default (24 hex digits, like a real ObjectId).
pub const DEFAULT_ORG_ID: &str = "5f0c1e2d3a4b5c6d7e8f9a0b";

/// State of a user created without `state` (JumpCloud: the org setting
/// `settings.newSystemUserStateDefaults.manualEntry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DefaultUserState {
    #[default]
    Activated,
    Staged,
}

impl DefaultUserState {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultUserState::Activated => "ACTIVATED",
            DefaultUserState::Staged => "STAGED",
        }
    }
}

/// What to do with `limit` above 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LimitPolicy {
    /// 400 Bad Request (default: surfaces clients that ask for more than JumpCloud's documented maximum).
    #[default]
    Reject,
    /// Silently serve 100.
    Clamp,
}

/// JumpCloud-side password policy applied to every password set through the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PasswordPolicy {
    /// Minimum length in characters (violation `minLength`). Default 8.
    pub min_length: usize,
    /// At least one lowercase letter (violation `lowercase`). Default true.
    pub require_lowercase: bool,
    /// At least one uppercase letter (violation `uppercase`). Default true.
    pub require_uppercase: bool,
    /// At least one digit (violation `number`). Default true.
    pub require_number: bool,
    /// At least one character that is neither a letter, a digit nor whitespace (violation `specialCharacter`).
    /// Default true.
    pub require_special: bool,
    /// The password must not contain the username, compared case-insensitively (violation `containsUsername`).
    /// Default true.
    pub disallow_username: bool,
    /// The new password must differ from the last N passwords of the user, the current one included (violation
    /// `passwordHistory`). 0 disables the check. Default 3.
    pub history: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            min_length: 8,
            require_lowercase: true,
            require_uppercase: true,
            require_number: true,
            require_special: true,
            disallow_username: true,
            history: 3,
        }
    }
}

/// Fault injection settings (`GET/PUT /__emulator/faults`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Requests per minute per API key (fixed one-minute window per key); beyond it 429. `None` = unlimited.
    pub rate_limit_per_minute: Option<u32>,
    /// Send `Retry-After: <seconds until the window ends>` with 429s.
    pub retry_after: bool,
    /// Probability (0..=1) of answering an `/api` request with one of `error_statuses` without applying it.
    pub error_rate: f64,
    /// Statuses used by `error_rate` and `commit_then_fail_rate` (default 502, 503).
    pub error_statuses: Vec<u16>,
    /// Added to every `/api` request before it is handled.
    pub latency_ms: u64,
    /// Probability (0..=1) of closing the connection without any response (the request is not applied).
    pub drop_rate: f64,
    /// Probability (0..=1) of applying a request and then answering one of `error_statuses` anyway (tests
    /// recovery of non-idempotent calls such as `POST /systemusers`).
    pub commit_then_fail_rate: f64,
    /// Probability (0..=1) of applying a request and then corrupting its successful (2xx) answer in one of
    /// `corrupt_modes`, picked at random (tests the client's handling of garbled answers).
    pub corrupt_rate: f64,
    /// The corruptions `corrupt_rate` picks from (default: all of them).
    pub corrupt_modes: Vec<CorruptMode>,
}

/// How `corrupt_rate` garbles a successful answer (the request was applied either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorruptMode {
    /// Not JSON at all (`{"_id": oops`).
    MalformedJson,
    /// The JSON cut off in the middle.
    Truncated,
    /// Valid JSON whose known fields have the wrong type (strings become numbers, numbers and
    /// booleans strings, objects arrays), in the object and in every object of a list or `results`.
    WrongTypes,
    /// Valid JSON with extra, unknown fields (JumpCloud adds fields over time): must be accepted.
    ExtraFields,
    /// Status 200 with an empty body.
    EmptyBody,
}

impl CorruptMode {
    pub const ALL: [CorruptMode; 5] = [
        CorruptMode::MalformedJson,
        CorruptMode::Truncated,
        CorruptMode::WrongTypes,
        CorruptMode::ExtraFields,
        CorruptMode::EmptyBody,
    ];

    /// The request log's `fault` value.
    pub fn fault_name(self) -> &'static str {
        match self {
            CorruptMode::MalformedJson => "corrupt_malformed_json",
            CorruptMode::Truncated => "corrupt_truncated",
            CorruptMode::WrongTypes => "corrupt_wrong_types",
            CorruptMode::ExtraFields => "corrupt_extra_fields",
            CorruptMode::EmptyBody => "corrupt_empty_body",
        }
    }
}

impl Default for FaultSettings {
    fn default() -> Self {
        FaultSettings {
            rate_limit_per_minute: None,
            retry_after: true,
            error_rate: 0.0,
            error_statuses: vec![502, 503],
            latency_ms: 0,
            drop_rate: 0.0,
            commit_then_fail_rate: 0.0,
            corrupt_rate: 0.0,
            corrupt_modes: CorruptMode::ALL.to_vec(),
        }
    }
}

impl FaultSettings {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
            ("commit_then_fail_rate", self.commit_then_fail_rate),
            ("corrupt_rate", self.corrupt_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be between 0 and 1, got {v}"));
            }
        }
        if self.error_statuses.is_empty() {
            return Err("error_statuses must not be empty".into());
        }
        if self.corrupt_modes.is_empty() {
            return Err("corrupt_modes must not be empty".into());
        }
        if let Some(s) = self
            .error_statuses
            .iter()
            .find(|s| !(400..=599).contains(*s))
        {
            return Err(format!("error_statuses must be 4xx/5xx codes, got {s}"));
        }
        if self.rate_limit_per_minute == Some(0) {
            return Err("rate_limit_per_minute must be at least 1 (or null for unlimited)".into());
        }
        Ok(())
    }
}

/// Behaviour switches (`GET/PUT /__emulator/settings`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub default_user_state: DefaultUserState,
    pub password_policy: PasswordPolicy,
    pub limit_over_max: LimitPolicy,
    /// `true`: adding an existing member/association or removing an absent one answers 204.
    /// `false` (default): 409 "already exists" / 404 "not found".
    pub graph_idempotent: bool,
    /// Status of `DELETE /usergroups/{id}`: 204 (default, no body) or 200 (the deleted group).
    pub delete_usergroup_status: u16,
    /// Require `x-org-id` on every request (multi-tenant admin key): 401 when missing.
    pub require_org_id: bool,
    /// Require `Content-Type: application/json` on POST/PUT/PATCH with a body (415 otherwise). Default true.
    pub require_content_type: bool,
    /// Agent channel (AGENT-CHANNEL.md): a primary agent whose last contact is older than this loses the role
    /// to the next agent of its AD instance that polls. Spelled as in AGENT-CHANNEL.md (`agent_heartbeat_timeout_ms`
    /// is accepted by `PUT /__emulator/settings` too). Default 30000.
    #[serde(rename = "agentHeartbeatTimeoutMs")]
    pub agent_heartbeat_timeout_ms: u64,
}

/// Default of `Settings::agent_heartbeat_timeout_ms`.
pub const DEFAULT_AGENT_HEARTBEAT_TIMEOUT_MS: u64 = 30_000;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_user_state: DefaultUserState::Activated,
            password_policy: PasswordPolicy::default(),
            limit_over_max: LimitPolicy::Reject,
            graph_idempotent: false,
            delete_usergroup_status: 204,
            require_org_id: false,
            require_content_type: true,
            agent_heartbeat_timeout_ms: DEFAULT_AGENT_HEARTBEAT_TIMEOUT_MS,
        }
    }
}

impl Settings {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.delete_usergroup_status != 200 && self.delete_usergroup_status != 204 {
            return Err(format!(
                "delete_usergroup_status must be 200 or 204, got {}",
                self.delete_usergroup_status
            ));
        }
        if self.agent_heartbeat_timeout_ms == 0 {
            return Err("agentHeartbeatTimeoutMs must be at least 1".into());
        }
        Ok(())
    }
}

/// Everything needed to start an emulator. `Config::default()` gives an HTTPS emulator on `127.0.0.1:0`
/// accepting [`DEFAULT_API_KEY`] for org [`DEFAULT_ORG_ID`], without spec checking and without faults.
#[derive(Clone)]
pub struct Config {
    /// Listen address; port 0 picks a free port (read it back with `Emulator::addr`).
    pub listen: SocketAddr,
    /// The accepted API key (`x-api-key`). Ignored when empty.
    pub api_key: String,
    /// More accepted API keys (all of `api_key` and `api_keys` are accepted).
    pub api_keys: Vec<String>,
    /// The organisation id (24 hex digits) returned in `organization` and checked against `x-org-id`.
    pub org_id: String,
    /// Directory holding `api/1.0/index.yaml` and `api/2.0/index.yaml`: turns on spec conformance checking.
    pub spec_dir: Option<PathBuf>,
    /// An already loaded contract (takes precedence over `spec_dir`; share one `Arc` across emulators).
    pub contract: Option<Arc<spec::Contract>>,
    /// HTTPS with a generated CA (default) or plain HTTP.
    pub tls: bool,
    /// Where to write the generated CA certificate (PEM). `None`: not written (read it with `Emulator::ca_pem`).
    pub ca_out: Option<PathBuf>,
    /// Append one JSON line per `/api` request to this file.
    pub request_log: Option<PathBuf>,
    pub rate_limit_per_minute: Option<u32>,
    pub retry_after: bool,
    pub error_rate: f64,
    pub error_statuses: Vec<u16>,
    pub latency_ms: u64,
    pub drop_rate: f64,
    pub commit_then_fail_rate: f64,
    pub corrupt_rate: f64,
    pub corrupt_modes: Vec<CorruptMode>,
    /// Seed of the RNG behind fault injection, password salts and connect keys (runs are repeatable).
    pub seed: u64,
    pub password_policy: PasswordPolicy,
    pub default_user_state: DefaultUserState,
    pub limit_over_max: LimitPolicy,
    pub graph_idempotent: bool,
    pub delete_usergroup_status: u16,
    pub require_org_id: bool,
    pub require_content_type: bool,
    /// Agent channel: primary-agent heartbeat timeout in milliseconds (default 30000).
    pub agent_heartbeat_timeout_ms: u64,
    /// Initial emulator clock (default: the real time). The clock then runs with real time and can be moved with
    /// `POST /__emulator/clock`.
    pub clock_start: Option<SystemTime>,
}

impl Default for Config {
    fn default() -> Self {
        let f = FaultSettings::default();
        let s = Settings::default();
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            api_key: DEFAULT_API_KEY.to_string(),
            api_keys: Vec::new(),
            org_id: DEFAULT_ORG_ID.to_string(),
            spec_dir: None,
            contract: None,
            tls: true,
            ca_out: None,
            request_log: None,
            rate_limit_per_minute: f.rate_limit_per_minute,
            retry_after: f.retry_after,
            error_rate: f.error_rate,
            error_statuses: f.error_statuses,
            latency_ms: f.latency_ms,
            drop_rate: f.drop_rate,
            commit_then_fail_rate: f.commit_then_fail_rate,
            corrupt_rate: f.corrupt_rate,
            corrupt_modes: f.corrupt_modes,
            seed: 0x006a_6365_6d75,
            password_policy: s.password_policy,
            default_user_state: s.default_user_state,
            limit_over_max: s.limit_over_max,
            graph_idempotent: s.graph_idempotent,
            delete_usergroup_status: s.delete_usergroup_status,
            require_org_id: s.require_org_id,
            require_content_type: s.require_content_type,
            agent_heartbeat_timeout_ms: s.agent_heartbeat_timeout_ms,
            clock_start: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field(
                "api_keys",
                &(usize::from(!self.api_key.is_empty()) + self.api_keys.len()),
            )
            .field("org_id", &self.org_id)
            .field("spec_dir", &self.spec_dir)
            .field("contract", &self.contract.as_ref().map(|_| "<loaded>"))
            .field("tls", &self.tls)
            .field("ca_out", &self.ca_out)
            .field("request_log", &self.request_log)
            .field("faults", &self.faults())
            .field("settings", &self.settings())
            .field("seed", &self.seed)
            .field("clock_start", &self.clock_start)
            .finish()
    }
}

impl Config {
    pub(crate) fn faults(&self) -> FaultSettings {
        FaultSettings {
            rate_limit_per_minute: self.rate_limit_per_minute,
            retry_after: self.retry_after,
            error_rate: self.error_rate,
            error_statuses: self.error_statuses.clone(),
            latency_ms: self.latency_ms,
            drop_rate: self.drop_rate,
            commit_then_fail_rate: self.commit_then_fail_rate,
            corrupt_rate: self.corrupt_rate,
            corrupt_modes: self.corrupt_modes.clone(),
        }
    }

    pub(crate) fn settings(&self) -> Settings {
        Settings {
            default_user_state: self.default_user_state,
            password_policy: self.password_policy.clone(),
            limit_over_max: self.limit_over_max,
            graph_idempotent: self.graph_idempotent,
            delete_usergroup_status: self.delete_usergroup_status,
            require_org_id: self.require_org_id,
            require_content_type: self.require_content_type,
            agent_heartbeat_timeout_ms: self.agent_heartbeat_timeout_ms,
        }
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        if !self.api_key.is_empty() {
            keys.push(self.api_key.clone());
        }
        keys.extend(self.api_keys.iter().filter(|k| !k.is_empty()).cloned());
        keys
    }
}

/// True when `s` is 24 hexadecimal digits (a MongoDB ObjectId as JumpCloud uses them).
pub fn is_object_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

//! The configuration file: TOML, loaded, resolved (relative paths, secrets) and validated in one go.
//!
//! Every problem found is reported at once, each naming the key and the fix. Unknown keys are
//! rejected, so a typo never silently falls back to a default.

use std::fmt;
use std::path::{Path, PathBuf};

use forestsync_actors::password::policy::JumpCloudPolicy;
use forestsync_actors::sealed::{is_sealed, SealKey};
use forestsync_actors::secret::Secret;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// Which side is the source of truth (the vendor document's three configurations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// AD → JumpCloud ("Manage users, groups, and passwords in AD").
    AdAuthoritative,
    /// Both ways ("Manage users and passwords in either system, or both").
    TwoWay,
    /// JumpCloud → AD, into a target OU ("Manage users, groups, and passwords in JumpCloud").
    JumpcloudAuthoritative,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::AdAuthoritative => "ad-authoritative",
            Mode::TwoWay => "two-way",
            Mode::JumpcloudAuthoritative => "jumpcloud-authoritative",
        })
    }
}

/// Where the JumpCloud username comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
pub enum UsernameSource {
    #[default]
    #[serde(rename = "sAMAccountName")]
    SamAccountName,
    #[serde(rename = "userPrincipalName")]
    UserPrincipalName,
}

/// What happens in JumpCloud when a user leaves the scope in AD (deleted, moved out, removed from the root group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LeaveScopeAction {
    /// Delete the JumpCloud user (the vendor's default, `UserDissociationAction = remove`).
    #[default]
    Delete,
    /// Suspend the JumpCloud user and keep it.
    Suspend,
    /// Keep the user, unbound from the AD instance (JumpCloud manages it from then on).
    Unbind,
}

/// What happens in AD when a user or group leaves the AD instance's scope in JumpCloud (unbound or
/// deleted there) — JumpCloud → AD modes only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AdRemovalAction {
    /// Disable the AD user (userAccountControl ACCOUNTDISABLE) and empty the AD group; both are kept.
    #[default]
    Disable,
    /// Delete the AD user or group.
    Delete,
    /// Leave the AD object as it is (no longer updated).
    Leave,
}

/// What happens when an AD user matches an existing JumpCloud user by username.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UsernameCollision {
    /// Report the collision and leave the JumpCloud user alone.
    #[default]
    ReportAndSkip,
    /// Bind the existing JumpCloud user to the AD user and manage it from then on.
    TakeOver,
}

// ---- file shape (wire types: only serde sees these) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileShape {
    mode: Mode,
    state_dir: Option<PathBuf>,
    seal_key_file: Option<PathBuf>,
    jumpcloud: JumpCloudShape,
    #[serde(rename = "domain", default)]
    domains: Vec<DomainShape>,
    #[serde(default)]
    safety: SafetyShape,
    #[serde(default)]
    passwords: PasswordsShape,
    two_way: Option<TwoWayShape>,
    #[serde(default)]
    telemetry: TelemetryShape,
}

/// `[telemetry]`: the ops endpoint, log format and OTLP export. Every key is optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TelemetryShape {
    listen: Option<String>,
    log_format: Option<String>,
    otlp_endpoint: Option<String>,
    otlp_ca_file: Option<PathBuf>,
    export_interval_seconds: Option<u64>,
}

/// How log events are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal (journald, containers), text on a terminal.
    Auto,
    Json,
    Text,
}

/// `[telemetry]`, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served (default `127.0.0.1:9464`); `None` = off.
    pub listen: Option<std::net::SocketAddr>,
    pub log_format: LogFormat,
    /// OTLP/HTTP (protobuf) base URL, e.g. `http://collector:4318`; `None` = the standard
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` variables decide, and without them nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// Extra CA for an https OTLP endpoint (the system's web roots are always trusted).
    pub otlp_ca_file: Option<PathBuf>,
    /// How often metrics are pushed over OTLP.
    pub export_interval: std::time::Duration,
}

/// The ops endpoint's default address: loopback, so nothing is exposed unless asked.
pub const DEFAULT_TELEMETRY_LISTEN: &str = "127.0.0.1:9464";

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            listen: DEFAULT_TELEMETRY_LISTEN.parse().ok(),
            log_format: LogFormat::Auto,
            otlp_endpoint: None,
            otlp_ca_file: None,
            export_interval: std::time::Duration::from_secs(30),
        }
    }
}

impl TelemetryShape {
    fn resolve(
        self,
        relative: &dyn Fn(PathBuf) -> PathBuf,
        problems: &mut Vec<String>,
    ) -> TelemetryConfig {
        let mut t = TelemetryConfig::default();
        if let Some(l) = self.listen {
            if l == "off" {
                t.listen = None;
            } else {
                match l.parse() {
                    Ok(addr) => t.listen = Some(addr),
                    Err(_) => problems.push(format!("telemetry.listen {l:?} is not an address:port; fix: e.g. \"127.0.0.1:9464\" (\"0.0.0.0:9464\" in a pod), or \"off\"")),
                }
            }
        }
        if let Some(f) = self.log_format {
            match f.as_str() {
                "auto" => t.log_format = LogFormat::Auto,
                "json" => t.log_format = LogFormat::Json,
                "text" => t.log_format = LogFormat::Text,
                _ => problems.push(format!("telemetry.log_format {f:?} is not known; fix: \"auto\" (JSON unless on a terminal), \"json\" or \"text\"")),
            }
        }
        if let Some(e) = self.otlp_endpoint {
            match url::Url::parse(&e) {
                Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
                    t.otlp_endpoint = Some(e)
                }
                _ => problems.push(format!("telemetry.otlp_endpoint {e:?} is not an http(s) URL; fix: the collector's OTLP/HTTP address, e.g. \"http://collector:4318\"")),
            }
        }
        t.otlp_ca_file = self.otlp_ca_file.map(relative);
        if let Some(s) = self.export_interval_seconds {
            if s == 0 {
                problems.push(
                    "telemetry.export_interval_seconds must be at least 1; fix: e.g. 30".into(),
                );
            } else if s > MAX_INTERVAL_SECONDS {
                problems.push(format!("telemetry.export_interval_seconds {s} is more than {MAX_INTERVAL_SECONDS} (a day); fix: e.g. 30"));
            } else {
                t.export_interval = std::time::Duration::from_secs(s);
            }
        }
        t
    }
}

/// `[two_way]`: authority rules of mode `two-way`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TwoWayShape {
    password_authority: Option<String>,
    non_owner_changes: Option<String>,
}

/// Mode two-way's rules (`[two_way]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwoWayConfig {
    /// Whose password a user's is when its JumpCloud attribute `forestsync_password_authority`
    /// does not say: `ad` (default) or `jumpcloud`.
    pub password_authority: forestsync_actors::two_way::Side,
    /// A change on the side that does not own it: `revert` (default) or `ignore`; recorded either way.
    pub non_owner_changes: forestsync_actors::two_way::NonOwnerChange,
}

impl Default for TwoWayConfig {
    fn default() -> Self {
        TwoWayConfig {
            password_authority: forestsync_actors::two_way::Side::Ad,
            non_owner_changes: forestsync_actors::two_way::NonOwnerChange::Revert,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JumpCloudShape {
    #[serde(default = "default_console")]
    base_url: String,
    api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    api_key_env: Option<String>,
    org_id: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default = "default_rate")]
    rate_limit_per_minute: u32,
    #[serde(default = "default_burst")]
    burst: u32,
    #[serde(default = "default_timeout")]
    timeout_seconds: u64,
    /// Where the sync-agent channel lives (default: the base URL's origin + `/__agent-channel/v1/`).
    agent_channel_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainShape {
    name: String,
    dcs: Vec<String>,
    ca_file: Option<PathBuf>,
    bind_dn: String,
    bind_password: Option<String>,
    bind_password_file: Option<PathBuf>,
    bind_password_env: Option<String>,
    base_dn: String,
    root_group_dn: Option<String>,
    #[serde(default)]
    username_source: UsernameSource,
    ad_instance_id: Option<String>,
    target_ou: Option<String>,
    upn_suffix: Option<String>,
    #[serde(default)]
    on_jumpcloud_removal: AdRemovalAction,
    #[serde(default)]
    adopt_existing: bool,
    #[serde(default)]
    on_leave_scope: LeaveScopeAction,
    #[serde(default)]
    username_collision: UsernameCollision,
    #[serde(default)]
    attributes: AttributeMap,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SafetyShape {
    max_removals: Option<u32>,
    max_removal_percent: Option<u32>,
}

/// `[passwords]`: the capture hook and the agent's capture inbox. Every key is optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PasswordsShape {
    enforce_jumpcloud_policy: Option<bool>,
    min_length: Option<usize>,
    require_lowercase: Option<bool>,
    require_uppercase: Option<bool>,
    require_number: Option<bool>,
    require_special: Option<bool>,
    socket: Option<PathBuf>,
    spool_dir: Option<PathBuf>,
    key_file: Option<PathBuf>,
    fail_closed: Option<bool>,
    confirm_window_seconds: Option<u64>,
}

/// What `forestsync capture-password` reads: only `state_dir`, `[passwords]` and the domain names,
/// so a hook on a DC never needs (or fails on) the agent's secrets.
#[derive(Deserialize)]
pub(crate) struct HookFileShape {
    state_dir: Option<PathBuf>,
    #[serde(default)]
    passwords: PasswordsShape,
    #[serde(rename = "domain", default)]
    domains: Vec<HookDomainShape>,
}

#[derive(Deserialize)]
struct HookDomainShape {
    name: String,
}

fn default_console() -> String {
    "https://console.jumpcloud.com".into()
}
fn default_rate() -> u32 {
    600
}
fn default_burst() -> u32 {
    20
}
fn default_timeout() -> u64 {
    30
}

/// AD attribute → JumpCloud field mapping. The four required fields have the usual AD sources.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeMap {
    #[serde(default = "AttributeMap::default_firstname")]
    pub firstname: String,
    #[serde(default = "AttributeMap::default_lastname")]
    pub lastname: String,
    #[serde(default = "AttributeMap::default_email")]
    pub email: String,
    /// Extra JumpCloud fields (e.g. `jobTitle = "title"`, `department = "department"`).
    #[serde(default)]
    pub extra: std::collections::BTreeMap<String, String>,
}

impl AttributeMap {
    fn default_firstname() -> String {
        "givenName".into()
    }
    fn default_lastname() -> String {
        "sn".into()
    }
    fn default_email() -> String {
        "mail".into()
    }
}

impl Default for AttributeMap {
    fn default() -> Self {
        AttributeMap {
            firstname: Self::default_firstname(),
            lastname: Self::default_lastname(),
            email: Self::default_email(),
            extra: Default::default(),
        }
    }
}

// ---- resolved configuration (what the program uses) ----

#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub mode: Mode,
    pub state_dir: PathBuf,
    pub jumpcloud: JumpCloudConfig,
    pub domains: Vec<DomainConfig>,
    pub safety: SafetyConfig,
    pub passwords: PasswordsConfig,
    /// `[two_way]` (defaults when absent; only read in mode two-way).
    pub two_way: TwoWayConfig,
    /// The key that seals secrets in this file and the agent credentials (see [`seal_key_file`]).
    pub seal_key_file: PathBuf,
    /// `[telemetry]` (defaults when absent).
    pub telemetry: TelemetryConfig,
}

#[derive(Clone, Debug)]
pub struct JumpCloudConfig {
    pub base_url: String,
    pub api_key: Secret,
    pub org_id: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub rate_limit_per_minute: u32,
    pub burst: u32,
    pub timeout: std::time::Duration,
    pub agent_channel_url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct DomainConfig {
    pub name: String,
    /// In preference order: the first reachable one is used, the rest are failover targets.
    pub dcs: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub bind_dn: String,
    pub bind_password: Secret,
    pub base_dn: String,
    /// The ADI root group (AD → JumpCloud modes; empty in `jumpcloud-authoritative`).
    pub root_group_dn: String,
    pub username_source: UsernameSource,
    /// JumpCloud → AD (jumpcloud-authoritative, two-way): what the domain is in JumpCloud and where
    /// JumpCloud's users and groups are written.
    pub to_ad: Option<ToAdConfig>,
    pub on_leave_scope: LeaveScopeAction,
    pub username_collision: UsernameCollision,
    pub attributes: AttributeMap,
}

/// A domain's JumpCloud → AD settings.
#[derive(Clone, Debug)]
pub struct ToAdConfig {
    /// The JumpCloud AD instance (`/activedirectories/{id}`) this domain is.
    pub ad_instance_id: String,
    /// The OU new users and groups are created in.
    pub target_ou: String,
    /// `userPrincipalName` = `<username>@<upn_suffix>` (default: the domain's DNS name from base_dn).
    pub upn_suffix: String,
    pub on_removal: AdRemovalAction,
    /// Take over an unmanaged, unprivileged AD user with the same sAMAccountName (default: report it).
    pub adopt_existing: bool,
}

#[derive(Clone, Debug)]
pub struct SafetyConfig {
    /// A batch that would delete or suspend more than this many objects stops until allowed.
    pub max_removals: u32,
    /// … or more than this share of the scope, whichever is lower.
    pub max_removal_percent: u32,
}

/// `[passwords]`, resolved. Defaults: JumpCloud's policy enforced (8 characters, lower, upper, number,
/// special), socket `/run/forestsync/capture.sock`, spool `<state_dir>/password-spool`, key
/// `<state_dir>/password.key`, fail open, 120 s confirmation window.
#[derive(Clone, Debug)]
pub struct PasswordsConfig {
    /// Also refuse, at the DC, passwords JumpCloud's policy would refuse.
    pub enforce_jumpcloud_policy: bool,
    pub jumpcloud_policy: JumpCloudPolicy,
    /// The agent's capture socket (root-only, mode 0600).
    pub socket: PathBuf,
    /// Where the hook writes captures, encrypted, when the agent does not answer.
    pub spool_dir: PathBuf,
    /// The 32-byte spool key (created 0600 by whichever side needs it first).
    pub key_file: PathBuf,
    /// When the hook can neither deliver nor spool an accepted password: reject the change (true)
    /// or let it through uncaptured (false, the default: a broken capture path never blocks users).
    pub fail_closed: bool,
    /// How long a captured password waits for AD to confirm the commit (pwdLastSet).
    pub confirm_window: std::time::Duration,
}

/// What the capture hook needs from the config file.
#[derive(Clone, Debug)]
pub struct HookConfig {
    pub passwords: PasswordsConfig,
    /// The configured `[[domain]]` names.
    pub domains: Vec<String>,
}

const DEFAULT_STATE_DIR: &str = "/var/lib/forestsync";
/// The longest API request timeout accepted (an hour: longer is a typo, and overflows timers).
const MAX_TIMEOUT_SECONDS: u64 = 3600;
/// The longest confirmation window and metrics export interval accepted (a day).
const MAX_INTERVAL_SECONDS: u64 = 86_400;
const DEFAULT_CAPTURE_SOCKET: &str = "/run/forestsync/capture.sock";

impl PasswordsConfig {
    /// The defaults, as if `[passwords]` were absent and `state_dir` unset.
    pub fn defaults() -> Self {
        PasswordsShape::default().resolve(Path::new(DEFAULT_STATE_DIR), &|p| p, &mut Vec::new())
    }
}

impl PasswordsShape {
    fn resolve(
        self,
        state_dir: &Path,
        relative: &dyn Fn(PathBuf) -> PathBuf,
        problems: &mut Vec<String>,
    ) -> PasswordsConfig {
        let defaults = JumpCloudPolicy::default();
        let p = PasswordsConfig {
            enforce_jumpcloud_policy: self.enforce_jumpcloud_policy.unwrap_or(true),
            jumpcloud_policy: JumpCloudPolicy {
                min_length: self.min_length.unwrap_or(defaults.min_length),
                require_lowercase: self.require_lowercase.unwrap_or(defaults.require_lowercase),
                require_uppercase: self.require_uppercase.unwrap_or(defaults.require_uppercase),
                require_number: self.require_number.unwrap_or(defaults.require_number),
                require_special: self.require_special.unwrap_or(defaults.require_special),
            },
            socket: self
                .socket
                .map(relative)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CAPTURE_SOCKET)),
            spool_dir: self
                .spool_dir
                .map(relative)
                .unwrap_or_else(|| state_dir.join("password-spool")),
            key_file: self
                .key_file
                .map(relative)
                .unwrap_or_else(|| state_dir.join("password.key")),
            fail_closed: self.fail_closed.unwrap_or(false),
            confirm_window: std::time::Duration::from_secs(
                self.confirm_window_seconds.unwrap_or(120),
            ),
        };
        if p.jumpcloud_policy.min_length > 256 {
            problems.push(format!("passwords.min_length {} is more than 256 (AD's limit); fix: JumpCloud's minimum password length, e.g. 8", p.jumpcloud_policy.min_length));
        }
        if p.confirm_window.is_zero() {
            problems
                .push("passwords.confirm_window_seconds must be at least 1; fix: e.g. 120".into());
        } else if p.confirm_window.as_secs() > MAX_INTERVAL_SECONDS {
            problems.push(format!("passwords.confirm_window_seconds {} is more than {MAX_INTERVAL_SECONDS} (a day); fix: e.g. 120", p.confirm_window.as_secs()));
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if p.socket.as_os_str().len() > 107 {
            problems.push(format!(
                "passwords.socket {} is longer than 107 bytes (the unix socket limit); fix: use a shorter path",
                p.socket.display()
            ));
        }
        if p.spool_dir == p.key_file || p.key_file.starts_with(&p.spool_dir) {
            problems.push("passwords.key_file must not be inside passwords.spool_dir; fix: put the key next to the spool, e.g. key_file = \"/var/lib/forestsync/password.key\"".into());
        }
        p
    }
}

impl HookConfig {
    /// Reads only what the capture hook needs: `state_dir`, `[passwords]` (checked as strictly as
    /// by [`Config::load`]) and the domain names. Other sections are not validated here.
    pub fn load(path: &Path) -> Result<HookConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// [`HookConfig::load`] of `text` as if read from `path` (relative paths resolve against its directory).
    pub fn parse(path: &Path, text: &str) -> Result<HookConfig, ConfigError> {
        let shape: HookFileShape =
            toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let relative = |p: PathBuf| if p.is_relative() { base_dir.join(p) } else { p };
        let state_dir = shape
            .state_dir
            .map(relative)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let mut problems = Vec::new();
        let passwords = shape
            .passwords
            .resolve(&state_dir, &relative, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.into(),
                problems,
            });
        }
        Ok(HookConfig {
            passwords,
            domains: shape.domains.into_iter().map(|d| d.name).collect(),
        })
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config = Self::parse(path, &text)?;
        let problems = config.unusable_files();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.into(),
                problems,
            });
        }
        Ok(config)
    }

    /// The CA files named by the config that cannot be used (unreadable, not PEM, no certificate),
    /// each naming its key and the fix. [`Config::load`] checks them; [`Config::parse`] only reads
    /// the text (and secret files).
    pub fn unusable_files(&self) -> Vec<String> {
        let mut cas = Vec::new();
        if let Some(f) = &self.jumpcloud.ca_file {
            cas.push(("jumpcloud.ca_file".to_owned(), f));
        }
        for (i, d) in self.domains.iter().enumerate() {
            if let Some(f) = &d.ca_file {
                cas.push((format!("domain[{i}] ({}): ca_file", d.name), f));
            }
        }
        if let Some(f) = &self.telemetry.otlp_ca_file {
            cas.push(("telemetry.otlp_ca_file".to_owned(), f));
        }
        cas.into_iter()
            .filter_map(|(key, file)| {
                forestsync_actors::trust::client_config(Some(file))
                    .err()
                    .map(|e| {
                        let e = e.to_string();
                        if e.contains("fix:") {
                            format!("{key}: {e}")
                        } else {
                            format!("{key}: {e}; fix: point it at the CA certificate (PEM) that issued the server's certificate")
                        }
                    })
            })
            .collect()
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let shape: FileShape = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut problems = Vec::new();
        let relative = |p: PathBuf| if p.is_relative() { base_dir.join(p) } else { p };
        let state_dir = shape
            .state_dir
            .clone()
            .map(&relative)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let seal_key_file = seal_key_file(shape.seal_key_file.clone().map(&relative), &state_dir);
        let mut unsealer = Unsealer::new(&seal_key_file);

        let jc = shape.jumpcloud;
        let api_key = resolve_secret(
            "jumpcloud.api_key",
            API_KEY_PURPOSE,
            jc.api_key,
            jc.api_key_file.map(&relative),
            jc.api_key_env,
            &mut unsealer,
            &mut problems,
        );
        match url::Url::parse(&jc.base_url) {
            Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => {}
            _ => problems.push(format!(
                "jumpcloud.base_url {:?} is not an https URL; fix: e.g. \"https://console.jumpcloud.com\" (EU: https://console.eu.jumpcloud.com)",
                jc.base_url
            )),
        }
        if let Some(org) = &jc.org_id {
            if org.len() != 24 || !org.chars().all(|c| c.is_ascii_hexdigit()) {
                problems.push(format!("jumpcloud.org_id {org:?} is not a 24-hex organisation id; fix: copy it from the Admin Portal or remove the key"));
            }
        }
        if jc.rate_limit_per_minute == 0 {
            problems.push(
                "jumpcloud.rate_limit_per_minute must be at least 1; fix: e.g. 600 (the default)"
                    .into(),
            );
        }
        if jc.burst == 0 {
            problems.push("jumpcloud.burst must be at least 1; fix: e.g. 20 (the default)".into());
        }
        if jc.timeout_seconds > MAX_TIMEOUT_SECONDS {
            problems.push(format!("jumpcloud.timeout_seconds {} is more than {MAX_TIMEOUT_SECONDS}; fix: e.g. 30 (the default)", jc.timeout_seconds));
        }
        if let Some(u) = &jc.agent_channel_url {
            match url::Url::parse(u) {
                Ok(p) if (p.scheme() == "https" || p.scheme() == "http") && p.host().is_some() => {}
                _ => problems.push(format!("jumpcloud.agent_channel_url {u:?} is not an http(s) URL; fix: e.g. \"https://channel.example.com/__agent-channel/v1/\", or remove the key to use the base URL's")),
            }
        }

        if shape.domains.is_empty() {
            problems.push("no [[domain]] section; fix: add one per AD domain (see config/ad-authoritative.toml)".into());
        }
        let mut domains = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, d) in shape.domains.into_iter().enumerate() {
            let at = format!("domain[{i}] ({})", d.name);
            if d.name.trim().is_empty() || !names.insert(d.name.to_lowercase()) {
                problems.push(format!("{at}: name must be non-empty and unique; fix: give each [[domain]] its own name, e.g. name = \"alpha\""));
            }
            if d.dcs.is_empty() {
                problems.push(format!("{at}: dcs is empty; fix: list the domain's DCs in preference order, e.g. [\"ldaps://dc1.example.com\"]"));
            }
            for dc in &d.dcs {
                if let Err(e) = forestsync_actors::directory::DcEndpoint::parse(dc) {
                    problems.push(format!("{at}: dcs: {e}"));
                }
            }
            let writes_ad = shape.mode != Mode::AdAuthoritative;
            let reads_ad = shape.mode != Mode::JumpcloudAuthoritative;
            let root_group_dn = match d.root_group_dn {
                Some(dn) => dn,
                None if reads_ad => {
                    problems.push(format!("{at}: root_group_dn is missing; fix: the DN of the ADI security group whose (nested) members are synced, e.g. \"CN=JumpCloud,OU=ADI,DC=example,DC=com\""));
                    String::new()
                }
                None => String::new(),
            };
            let to_ad = if writes_ad {
                match (&d.ad_instance_id, &d.target_ou) {
                    (Some(id), Some(ou)) => {
                        if id.len() != 24 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                            problems.push(format!("{at}: ad_instance_id {id:?} is not a 24-hex JumpCloud id; fix: copy it from the AD instance's page or GET /api/v2/activedirectories"));
                        }
                        if !looks_like_dn(ou)
                            || !ou.to_lowercase().ends_with(&d.base_dn.to_lowercase())
                        {
                            problems.push(format!("{at}: target_ou {ou:?} is not a DN under base_dn {:?}; fix: e.g. \"OU=JumpCloud,{}\"", d.base_dn, d.base_dn));
                        }
                        Some(ToAdConfig {
                            ad_instance_id: id.clone(),
                            target_ou: ou.clone(),
                            upn_suffix: d
                                .upn_suffix
                                .clone()
                                .unwrap_or_else(|| dns_name(&d.base_dn)),
                            on_removal: d.on_jumpcloud_removal,
                            adopt_existing: d.adopt_existing,
                        })
                    }
                    _ => {
                        problems.push(format!("{at}: mode {} writes to AD: ad_instance_id and target_ou are required; fix: the JumpCloud AD instance id of this domain and the OU to create users and groups in", shape.mode));
                        None
                    }
                }
            } else {
                if d.ad_instance_id.is_some() || d.target_ou.is_some() || d.upn_suffix.is_some() {
                    problems.push(format!("{at}: ad_instance_id, target_ou and upn_suffix are only used when JumpCloud writes to AD (modes two-way, jumpcloud-authoritative); fix: remove them or change mode"));
                }
                None
            };
            for (key, dn) in [
                ("bind_dn", &d.bind_dn),
                ("base_dn", &d.base_dn),
                ("root_group_dn", &root_group_dn),
            ] {
                if key == "root_group_dn" && dn.is_empty() {
                    continue;
                }
                if !looks_like_dn(dn) {
                    problems.push(format!("{at}: {key} {dn:?} is not a DN; fix: e.g. \"CN=JumpCloud,OU=ADI,DC=example,DC=com\""));
                }
            }
            if looks_like_dn(&root_group_dn)
                && looks_like_dn(&d.base_dn)
                && !root_group_dn
                    .to_lowercase()
                    .ends_with(&d.base_dn.to_lowercase())
            {
                problems.push(format!(
                    "{at}: root_group_dn {:?} is not under base_dn {:?}; fix: the DN of a group in this domain, ending in {:?}",
                    root_group_dn, d.base_dn, d.base_dn
                ));
            }
            let bind_password = resolve_secret(
                &format!("{at}.bind_password"),
                &bind_password_purpose(&d.name),
                d.bind_password,
                d.bind_password_file.map(&relative),
                d.bind_password_env,
                &mut unsealer,
                &mut problems,
            );
            domains.push(DomainConfig {
                name: d.name,
                dcs: d.dcs,
                ca_file: d.ca_file.map(&relative),
                bind_dn: d.bind_dn,
                bind_password,
                base_dn: d.base_dn,
                root_group_dn,
                username_source: d.username_source,
                to_ad,
                on_leave_scope: d.on_leave_scope,
                username_collision: d.username_collision,
                attributes: d.attributes,
            });
        }

        let safety = SafetyConfig {
            max_removals: shape.safety.max_removals.unwrap_or(500),
            max_removal_percent: shape.safety.max_removal_percent.unwrap_or(20),
        };
        if safety.max_removal_percent > 100 {
            problems.push(format!("safety.max_removal_percent {} is not between 0 and 100; fix: a share of the scope in percent, e.g. 20", safety.max_removal_percent));
        }
        let passwords = shape
            .passwords
            .resolve(&state_dir, &relative, &mut problems);

        let mut two_way = TwoWayConfig::default();
        if let Some(t) = &shape.two_way {
            if shape.mode != Mode::TwoWay {
                problems.push(format!("[two_way] is only read in mode two-way (this file says {}); fix: remove the section or change mode", shape.mode));
            }
            if let Some(v) = &t.password_authority {
                match forestsync_actors::two_way::Side::parse(v) {
                    Some(side) => two_way.password_authority = side,
                    None => problems.push(format!("two_way.password_authority {v:?} is not a side; fix: \"ad\" or \"jumpcloud\"")),
                }
            }
            if let Some(v) = &t.non_owner_changes {
                match v.as_str() {
                    "revert" => two_way.non_owner_changes = forestsync_actors::two_way::NonOwnerChange::Revert,
                    "ignore" => two_way.non_owner_changes = forestsync_actors::two_way::NonOwnerChange::Ignore,
                    _ => problems.push(format!("two_way.non_owner_changes {v:?} is not known; fix: \"revert\" (write the owner's value back) or \"ignore\" (leave it, record it)")),
                }
            }
        }

        let telemetry = shape.telemetry.resolve(&relative, &mut problems);

        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.into(),
                problems,
            });
        }
        Ok(Config {
            path: path.into(),
            mode: shape.mode,
            state_dir,
            jumpcloud: JumpCloudConfig {
                base_url: jc.base_url,
                api_key,
                org_id: jc.org_id,
                ca_file: jc.ca_file.map(&relative),
                rate_limit_per_minute: jc.rate_limit_per_minute,
                burst: jc.burst,
                timeout: std::time::Duration::from_secs(jc.timeout_seconds.max(1)),
                agent_channel_url: jc.agent_channel_url,
            },
            domains,
            safety,
            passwords,
            two_way,
            seal_key_file,
            telemetry,
        })
    }
}

/// A TOML or shape error, located: the line, the key's dotted path (`jumpcloud.burst`,
/// `domain.bind_dn`), serde's message and a fix from the reference table (the key's type, accepted
/// values and an example). One line.
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().replace('\n', " ");
    // On a character boundary, so the slices below cannot panic whatever span the parser reports.
    let start = e.span().map(|s| {
        let mut at = s.start.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    });
    // The table the error is in (the last header at or before the error's line) and the key on it.
    let (mut section, mut key, mut line_no) = (String::new(), None::<String>, None);
    if let Some(start) = start {
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        line_no = Some(text[..start].matches('\n').count() + 1);
        for line in text[..line_start]
            .lines()
            .chain(text[line_start..].lines().take(1))
        {
            let t = line.trim();
            if t.starts_with('[') {
                section = t
                    .trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned();
            }
        }
        let here = text[line_start..].lines().next().unwrap_or("").trim();
        if !here.starts_with('[') {
            if let Some((k, _)) = here.split_once('=') {
                let k = k.trim().trim_matches('"').trim_matches('\'');
                if !k.is_empty() {
                    key = Some(k.to_owned());
                }
            }
        }
    }
    // serde names the field itself in these messages.
    let named = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    let missing = named("missing field `");
    let unknown = named("unknown field `");
    if let Some(k) = missing.clone().or(unknown.clone()) {
        key = Some(k);
    }
    let dotted = match (&section, &key) {
        (s, Some(k)) if s.is_empty() => k.clone(),
        (s, Some(k)) => format!("{s}.{k}"),
        (s, None) if s.is_empty() => String::new(),
        (s, None) => format!("[{s}]"),
    };
    let doc = key.as_deref().and_then(|k| {
        crate::config_reference::SECTIONS
            .iter()
            .filter(|sec| sec.path == section)
            .flat_map(|sec| sec.keys.iter())
            .find(|d| d.names().iter().any(|n| n == k))
    });
    let described = |d: &crate::config_reference::KeyDoc| {
        let k = key.as_deref().unwrap_or(d.key);
        if k != d.key {
            // `X_file` / `X_env` of a secret.
            return format!("{dotted} is a string (a file path or a variable name)");
        }
        let values = if d.values.is_empty() {
            String::new()
        } else {
            format!(
                ", one of {}",
                d.values
                    .iter()
                    .map(|v| format!("\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        format!(
            "{dotted} is {} {}{values}, e.g. {} = {}",
            if d.ty.name().starts_with(['a', 'i']) {
                "an"
            } else {
                "a"
            },
            d.ty.name(),
            d.key,
            d.example
        )
    };
    let fix = if unknown.is_some() {
        format!(
            "remove {dotted} or correct its spelling (docs/config-reference.md lists every key)"
        )
    } else if let Some(m) = &missing {
        match doc {
            Some(d) => format!("add it: {}", described(d)),
            None if section.is_empty() => {
                format!("add the [{m}] section (see config/ad-authoritative.toml)")
            }
            None => format!("add {m} (docs/config-reference.md)"),
        }
    } else if let Some(d) = doc {
        described(d)
    } else {
        "correct the TOML there (docs/config-reference.md has every key and its type)".to_owned()
    };
    let at = match (line_no, dotted.is_empty()) {
        (Some(n), false) => format!("line {n}: {dotted}: "),
        (Some(n), true) => format!("line {n}: "),
        (None, false) => format!("{dotted}: "),
        (None, true) => String::new(),
    };
    ConfigError::Syntax {
        path: path.into(),
        message: format!("{at}{message}; fix: {fix}"),
    }
}

/// `DC=alpha,DC=example,DC=com` → `alpha.example.com`.
fn dns_name(base_dn: &str) -> String {
    base_dn
        .split(',')
        .filter_map(|rdn| rdn.split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("dc"))
        .map(|(_, v)| v.trim())
        .collect::<Vec<_>>()
        .join(".")
}

fn looks_like_dn(dn: &str) -> bool {
    dn.split(',').all(|rdn| {
        rdn.split_once('=')
            .is_some_and(|(k, v)| !k.trim().is_empty() && !v.trim().is_empty())
    })
}

/// The sealing purpose of `jumpcloud.api_key` (a sealed value opens only for the field it was sealed for).
pub const API_KEY_PURPOSE: &str = "jumpcloud.api_key";

/// The sealing purpose of a domain's bind password (bound to the domain's name).
pub fn bind_password_purpose(domain: &str) -> String {
    format!("domain.{domain}.bind_password")
}

/// Where the seal key is: `FORESTSYNC_SEAL_KEY_FILE`, else a systemd credential named
/// `forestsync-seal-key` (`LoadCredential=`), else the config's `seal_key_file`, else
/// `<state_dir>/seal.key` (created with mode 0600 the first time something is sealed).
pub fn seal_key_file(configured: Option<PathBuf>, state_dir: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("FORESTSYNC_SEAL_KEY_FILE").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|v| !v.is_empty()) {
        let p = Path::new(&dir).join("forestsync-seal-key");
        if p.exists() {
            return p;
        }
    }
    configured.unwrap_or_else(|| forestsync_actors::channel::seal_key_path(state_dir))
}

/// Opens sealed values, loading the key on first use.
struct Unsealer<'a> {
    path: &'a Path,
    key: Option<Result<SealKey, String>>,
}

impl<'a> Unsealer<'a> {
    fn new(path: &'a Path) -> Self {
        Unsealer { path, key: None }
    }

    fn open(&mut self, key_name: &str, purpose: &str, sealed: &str) -> Result<String, String> {
        let path = self.path;
        let key = self
            .key
            .get_or_insert_with(|| SealKey::load(path).map_err(|e| e.to_string()));
        let key = key.as_ref().map_err(|e| {
            format!("{key_name} is sealed, but the seal key cannot be used: {e}; fix: restore the key file the value was sealed with (or set FORESTSYNC_SEAL_KEY_FILE), or write the plaintext again and re-seal")
        })?;
        let bytes = key
            .unseal(purpose, sealed)
            .map_err(|e| format!("{key_name}: {e}"))?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("{key_name}: the sealed value is not UTF-8 text; fix: write the plaintext again and re-seal"))
    }
}

/// Exactly one of `literal`, `file`, `env` must be given. The value never appears in a message. A
/// literal sealed by `forestsync seal` (`fs1:…`) is opened with the seal key for `purpose`; an
/// environment variable that is not set is looked for as `<VAR>_FILE` (a file holding the value,
/// as container platforms provide secrets).
fn resolve_secret(
    key: &str,
    purpose: &str,
    literal: Option<String>,
    file: Option<PathBuf>,
    env: Option<String>,
    unsealer: &mut Unsealer<'_>,
    problems: &mut Vec<String>,
) -> Secret {
    let given = literal.is_some() as u8 + file.is_some() as u8 + env.is_some() as u8;
    if given != 1 {
        let field = key.rsplit('.').next().unwrap_or(key);
        problems.push(format!(
            "{key}: give exactly one of {field}, {field}_file, {field}_env (found {given}); fix: prefer {field}_file pointing at a root-only file"
        ));
        return Secret::new("");
    }
    let value = if let Some(v) = literal {
        if is_sealed(&v) {
            match unsealer.open(key, purpose, &v) {
                Ok(v) => v,
                Err(problem) => {
                    problems.push(problem);
                    return Secret::new("");
                }
            }
        } else {
            v
        }
    } else if let Some(path) = file {
        match std::fs::read_to_string(&path) {
            Ok(v) => v.trim_end_matches(['\n', '\r']).to_owned(),
            Err(e) => {
                problems.push(format!("{key}_file {}: cannot read: {e}; fix: point it at a readable (root-only) file holding the secret", path.display()));
                return Secret::new("");
            }
        }
    } else if let Some(var) = env {
        match std::env::var(&var) {
            Ok(v) => v,
            Err(_) => match std::env::var_os(format!("{var}_FILE")) {
                Some(path) => match std::fs::read_to_string(&path) {
                    Ok(v) => v.trim_end_matches(['\n', '\r']).to_owned(),
                    Err(e) => {
                        problems.push(format!(
                            "{key}_env: {var} is not set and {var}_FILE {}: cannot read: {e}; fix: set {var}, or make {var}_FILE a readable file",
                            Path::new(&path).display()
                        ));
                        return Secret::new("");
                    }
                },
                None => {
                    problems.push(format!(
                        "{key}_env: environment variable {var} (or {var}_FILE) is not set; fix: set it in the agent's environment, or use {key}_file"
                    ));
                    return Secret::new("");
                }
            },
        }
    } else {
        unreachable!("exactly one source was checked above")
    };
    if value.is_empty() {
        problems.push(format!(
            "{key}: the value is empty; fix: give the secret (prefer {key}_file)"
        ));
    }
    Secret::new(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_next_to_multibyte_characters_are_reported_not_panicked() {
        for text in [
            "mode = \"é",
            "é = 1",
            "mode = éé",
            "[jumpcloud]\napi_key = 1é",
            "[é\n",
            "mode = \"ad-authoritative\"\n[[domain]]\nname = \"ü\" ü",
        ] {
            let r = Config::parse(Path::new("/etc/forestsync.toml"), text);
            assert!(r.is_err(), "{text:?}");
        }
    }

    const GOOD: &str = r#"
mode = "ad-authoritative"
[jumpcloud]
base_url = "https://127.0.0.1:8443"
api_key = "k-123"
[[domain]]
name = "alpha"
dcs = ["ldaps://127.0.0.2", "ldaps://127.0.0.12"]
bind_dn = "CN=svc-forestsync,CN=Users,DC=alpha,DC=test"
bind_password = "s3cret-Pw"
base_dn = "DC=alpha,DC=test"
root_group_dn = "CN=JumpCloud,OU=ADI,DC=alpha,DC=test"
"#;

    #[test]
    fn a_minimal_file_loads_with_defaults() {
        let c = Config::parse(Path::new("/etc/forestsync/c.toml"), GOOD).unwrap();
        assert_eq!(c.mode, Mode::AdAuthoritative);
        assert_eq!(c.domains[0].username_source, UsernameSource::SamAccountName);
        assert_eq!(c.domains[0].on_leave_scope, LeaveScopeAction::Delete);
        assert_eq!(c.domains[0].attributes.lastname, "sn");
        assert_eq!(
            (c.safety.max_removals, c.safety.max_removal_percent),
            (500, 20)
        );
        assert!(
            !format!("{c:?}").contains("s3cret-Pw"),
            "Debug output leaks the bind password"
        );
        assert!(
            !format!("{c:?}").contains("k-123"),
            "Debug output leaks the API key"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_all_reported_with_the_key() {
        let typo = GOOD.replace("bind_dn =", "bind_dm =");
        let e = Config::parse(Path::new("c.toml"), &typo)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bind_dm"), "{e}");

        let bad = GOOD
            .replace("ldaps://127.0.0.12", "http://127.0.0.12")
            .replace("CN=JumpCloud,OU=ADI,DC=alpha,DC=test", "JumpCloud")
            .replace(
                "api_key = \"k-123\"",
                "api_key = \"k\"\napi_key_env = \"X\"",
            );
        let e = Config::parse(Path::new("c.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 problem(s)"), "{e}");
        assert!(e.contains("http://127.0.0.12"), "{e}");
        assert!(e.contains("root_group_dn"), "{e}");
        assert!(e.contains("jumpcloud.api_key"), "{e}");
    }

    #[test]
    fn passwords_section_defaults_and_overrides() {
        let c = Config::parse(Path::new("/etc/forestsync/c.toml"), GOOD).unwrap();
        let p = &c.passwords;
        assert!(p.enforce_jumpcloud_policy && !p.fail_closed);
        assert_eq!(p.jumpcloud_policy, JumpCloudPolicy::default());
        assert_eq!(p.jumpcloud_policy.min_length, 8);
        assert_eq!(p.socket, Path::new("/run/forestsync/capture.sock"));
        assert_eq!(p.spool_dir, Path::new("/var/lib/forestsync/password-spool"));
        assert_eq!(p.key_file, Path::new("/var/lib/forestsync/password.key"));
        assert_eq!(p.confirm_window, std::time::Duration::from_secs(120));

        let text = format!(
            "state_dir = \"state\"\n{GOOD}\n[passwords]\nenforce_jumpcloud_policy = false\nmin_length = 12\nrequire_special = false\nsocket = \"run/c.sock\"\nfail_closed = true\nconfirm_window_seconds = 30\n"
        );
        let c = Config::parse(Path::new("/srv/fs/c.toml"), &text).unwrap();
        let p = &c.passwords;
        assert!(!p.enforce_jumpcloud_policy && p.fail_closed);
        assert_eq!(p.jumpcloud_policy.min_length, 12);
        assert!(!p.jumpcloud_policy.require_special && p.jumpcloud_policy.require_number);
        assert_eq!(p.socket, Path::new("/srv/fs/run/c.sock"));
        assert_eq!(p.spool_dir, Path::new("/srv/fs/state/password-spool"));
        assert_eq!(p.confirm_window, std::time::Duration::from_secs(30));

        let typo = format!("{GOOD}\n[passwords]\nfail_close = true\n");
        let e = Config::parse(Path::new("c.toml"), &typo)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fail_close"), "{e}");
        let bad = format!(
            "{GOOD}\n[passwords]\nconfirm_window_seconds = 0\nsocket = \"/{}\"\n",
            "x".repeat(120)
        );
        let e = Config::parse(Path::new("c.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 problem(s)") && e.contains("107 bytes"), "{e}");
    }

    #[test]
    fn the_hook_reads_only_passwords_state_dir_and_domain_names() {
        let dir = std::env::temp_dir().join(format!("fs-hookcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        // The bind password file does not exist: the agent's loader fails, the hook's does not.
        let text = GOOD.replace(
            "bind_password = \"s3cret-Pw\"",
            "bind_password_file = \"missing.pw\"",
        ) + "\n[passwords]\nspool_dir = \"spool\"\n";
        std::fs::write(&path, text).unwrap();
        assert!(Config::load(&path).is_err());
        let h = HookConfig::load(&path).unwrap();
        assert_eq!(h.domains, vec!["alpha".to_string()]);
        assert_eq!(h.passwords.spool_dir, dir.join("spool"));
        assert_eq!(
            h.passwords.key_file,
            Path::new("/var/lib/forestsync/password.key")
        );
        std::fs::write(&path, "[passwords]\nsokcet = \"/x\"\n").unwrap();
        assert!(HookConfig::load(&path)
            .unwrap_err()
            .to_string()
            .contains("sokcet"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jumpcloud_authoritative_needs_an_instance_and_a_target_ou_not_a_root_group() {
        let jc = GOOD
            .replace("ad-authoritative", "jumpcloud-authoritative")
            .replace(
            "root_group_dn = \"CN=JumpCloud,OU=ADI,DC=alpha,DC=test\"",
            "ad_instance_id = \"0123456789abcdef01234567\"\ntarget_ou = \"OU=FS,DC=alpha,DC=test\"",
        );
        let c = Config::parse(Path::new("c.toml"), &jc).unwrap();
        let t = c.domains[0].to_ad.as_ref().unwrap();
        assert_eq!(t.upn_suffix, "alpha.test");
        assert_eq!(t.on_removal, AdRemovalAction::Disable);
        assert!(!t.adopt_existing);
        let missing = jc.replace("target_ou = \"OU=FS,DC=alpha,DC=test\"", "");
        let e = Config::parse(Path::new("c.toml"), &missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("target_ou are required"), "{e}");
        let outside = jc.replace("OU=FS,DC=alpha,DC=test", "OU=FS,DC=beta,DC=test");
        let e = Config::parse(Path::new("c.toml"), &outside)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a DN under base_dn"), "{e}");
        let e = Config::parse(
            Path::new("c.toml"),
            &GOOD.replace(
                "root_group_dn = \"CN=JumpCloud,OU=ADI,DC=alpha,DC=test\"",
                "",
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("root_group_dn is missing"), "{e}");
    }

    #[test]
    fn secrets_from_missing_files_name_the_file_not_the_value() {
        let text = GOOD.replace(
            "bind_password = \"s3cret-Pw\"",
            "bind_password_file = \"nope/pw\"",
        );
        let e = Config::parse(Path::new("/tmp/cfg/c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/tmp/cfg/nope/pw"),
            "relative paths resolve against the config file's folder: {e}"
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The commented examples under config/ stay loadable: only the secret files are missing.
    #[test]
    fn example_configs_parse_and_fail_only_on_missing_secret_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            seen += 1;
            match Config::load(&path) {
                Ok(_) => {}
                Err(ConfigError::Invalid { problems, .. }) => {
                    for p in &problems {
                        assert!(
                            p.contains("_file") && p.contains("cannot read"),
                            "{}: {p}",
                            path.display()
                        );
                    }
                }
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
        assert!(seen >= 1, "no example configs under {}", dir.display());
    }
}

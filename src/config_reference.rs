//! The configuration reference: every section and key of the config file, its type, default,
//! meaning and the modes that read it, kept here next to the parser (`config.rs`) and printed as
//! Markdown by `forestsync config-reference` (checked in as `docs/config-reference.md`).
//!
//! The table cannot drift from the parser silently; the tests below prove, against the serde shapes
//! themselves: every documented key is accepted and every accepted key is documented (a recording
//! `Deserializer` walks the shapes and collects the field lists serde hands it), documented types
//! and enum values are the parser's, documented defaults are what [`Config::parse`] resolves, each
//! optional key changes the resolved config, each required key is required, and the checked-in
//! Markdown is this module's output.

use std::fmt::Write as _;

use crate::config::Mode;

/// The value type of a key, as written in TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    String,
    /// A file system path; relative paths are resolved against the config file's folder.
    Path,
    Integer,
    Bool,
    /// A string array.
    StringArray,
    /// A table of string → string.
    StringTable,
    /// One of [`KeyDoc::values`], checked by serde.
    Enum,
}

impl Type {
    pub fn name(self) -> &'static str {
        match self {
            Type::String => "string",
            Type::Path => "path",
            Type::Integer => "integer",
            Type::Bool => "bool",
            Type::StringArray => "array of strings",
            Type::StringTable => "table of strings",
            Type::Enum => "string",
        }
    }
}

/// What a key is when it is not in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDefault {
    /// It must be given (in the modes that read it).
    Required,
    /// This value (a TOML literal).
    Value(&'static str),
    /// Computed from other keys by `rule`; for the reference's minimal config it is `in_minimal`.
    Derived {
        rule: &'static str,
        in_minimal: &'static str,
    },
    /// Not set; what happens then.
    Unset(&'static str),
}

/// One key of the config file.
#[derive(Clone, Copy, Debug)]
pub struct KeyDoc {
    pub key: &'static str,
    pub ty: Type,
    pub default: KeyDefault,
    /// The modes whose agent reads the key, within its section's (others accept it, or reject it
    /// where `meaning` says so). See [`SectionDoc::modes_of`].
    pub modes: &'static [Mode],
    /// A secret: given as exactly one of `key`, `key_file`, `key_env`; written ones get sealed.
    pub secret: bool,
    /// The accepted values of an enumerated string (empty: any value of the type).
    pub values: &'static [&'static str],
    /// A valid value (TOML literal), different from the default.
    pub example: &'static str,
    pub meaning: &'static str,
}

/// One section (table) of the config file.
#[derive(Clone, Copy, Debug)]
pub struct SectionDoc {
    /// The dotted path of the table ("" for the top level).
    pub path: &'static str,
    /// An array of tables (`[[domain]]`).
    pub array: bool,
    pub modes: &'static [Mode],
    pub about: &'static str,
    pub keys: &'static [KeyDoc],
}

impl SectionDoc {
    /// The modes that read `k`: the key's modes within the section's.
    pub fn modes_of(&self, k: &KeyDoc) -> Vec<Mode> {
        k.modes
            .iter()
            .copied()
            .filter(|m| self.modes.contains(m))
            .collect()
    }

    /// How the section starts in the file (`[jumpcloud]`, `[[domain]]`; nothing for the top level).
    pub fn header(&self) -> String {
        match (self.path, self.array) {
            ("", _) => String::new(),
            (p, true) => format!("[[{p}]]"),
            (p, false) => format!("[{p}]"),
        }
    }
}

const ALL: &[Mode] = &[
    Mode::AdAuthoritative,
    Mode::TwoWay,
    Mode::JumpcloudAuthoritative,
];
const AD_TO_JC: &[Mode] = &[Mode::AdAuthoritative, Mode::TwoWay];
const JC_TO_AD: &[Mode] = &[Mode::JumpcloudAuthoritative, Mode::TwoWay];
const TWO_WAY: &[Mode] = &[Mode::TwoWay];

const fn key(key: &'static str, ty: Type, default: KeyDefault, example: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        ty,
        default,
        modes: ALL,
        secret: false,
        values: &[],
        example,
        meaning: "",
    }
}

impl KeyDoc {
    const fn modes(mut self, modes: &'static [Mode]) -> Self {
        self.modes = modes;
        self
    }
    const fn values(mut self, values: &'static [&'static str]) -> Self {
        self.values = values;
        self
    }
    const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }
    const fn means(mut self, meaning: &'static str) -> Self {
        self.meaning = meaning;
        self
    }

    /// The names this key may be written as: itself, and for a secret also `_file` and `_env`.
    pub fn names(&self) -> Vec<String> {
        if self.secret {
            vec![
                self.key.to_owned(),
                format!("{}_file", self.key),
                format!("{}_env", self.key),
            ]
        } else {
            vec![self.key.to_owned()]
        }
    }
}

use KeyDefault::{Derived, Required, Unset, Value};

/// Every section and key of the config file, in the order the reference shows them.
pub const SECTIONS: &[SectionDoc] = &[
    SectionDoc {
        path: "",
        array: false,
        modes: ALL,
        about: "Keys at the top of the file, before any section.",
        keys: &[
            key("mode", Type::Enum, Required, "\"two-way\"")
                .values(&["ad-authoritative", "two-way", "jumpcloud-authoritative"])
                .means("Which side is the source of truth: `ad-authoritative` (AD → JumpCloud), `two-way` (both ways, owner per object and per password), `jumpcloud-authoritative` (JumpCloud → AD, into a target OU)."),
            key("state_dir", Type::Path, Value("\"/var/lib/forestsync\""), "\"/srv/forestsync/state\"")
                .means("Where the agent keeps its durable state: the store (ids, links, watermarks, queued operations), agent credentials, `approve-removals`, and the default seal and spool key files."),
            key("seal_key_file", Type::Path, Derived { rule: "`<state_dir>/seal.key`", in_minimal: "\"/var/lib/forestsync/seal.key\"" }, "\"/etc/forestsync/seal.key\"")
                .means("The key that seals secrets written in this file and the agent credentials (32 bytes, 0600, created on first use). `FORESTSYNC_SEAL_KEY_FILE`, then a systemd credential `forestsync-seal-key`, take precedence over it."),
        ],
    },
    SectionDoc {
        path: "jumpcloud",
        array: false,
        modes: ALL,
        about: "The JumpCloud organisation and how the agent talks to its API. Required.",
        keys: &[
            key("base_url", Type::String, Value("\"https://console.jumpcloud.com\""), "\"https://console.eu.jumpcloud.com\"")
                .means("The console of the organisation's region (EU `https://console.eu.jumpcloud.com`, IN `https://console.in.jumpcloud.com`); http(s) only."),
            key("api_key", Type::String, Required, "\"jc-api-key-0123\"")
                .secret()
                .means("An API key of an admin account dedicated to this integration."),
            key("org_id", Type::String, Unset("no `x-org-id` header"), "\"5f0c0c0c0c0c0c0c0c0c0c0c\"")
                .means("Multi-tenant (MSP) admins only: the 24-hex organisation id, sent as `x-org-id`."),
            key("ca_file", Type::Path, Unset("the Mozilla roots (`webpki-roots`)"), "\"/etc/forestsync/jumpcloud-ca.pem\"")
                .means("Trust only this CA (PEM) for the API."),
            key("rate_limit_per_minute", Type::Integer, Value("600"), "300")
                .means("The one limiter every request to JumpCloud goes through (both directions); at least 1."),
            key("burst", Type::Integer, Value("20"), "5")
                .means("Requests the limiter lets through at once; at least 1."),
            key("timeout_seconds", Type::Integer, Value("30"), "60")
                .means("Timeout of one API request (0 counts as 1; at most 3600)."),
            key("agent_channel_url", Type::String, Unset("the base URL's origin + `/__agent-channel/v1/`"), "\"https://channel.example.com/__agent-channel/v1/\"")
                .modes(JC_TO_AD)
                .means("Where the sync-agent channel (change long poll, password payloads, status reports) lives."),
        ],
    },
    SectionDoc {
        path: "domain",
        array: true,
        modes: ALL,
        about: "One per AD domain (or forest), at least one; each is synced by its own domain actor, concurrently.",
        keys: &[
            key("name", Type::String, Required, "\"alpha\"")
                .means("The domain's name in forestsync (commands' `--domain`, logs, sealing purposes); non-empty, unique (case-insensitive)."),
            key("dcs", Type::StringArray, Required, "[\"ldaps://dc1.alpha.example.com\"]")
                .means("The DCs in preference order; the agent fails over to the next one when a DC is down or hung and fails back. `ldaps://host[:636]`, or `ldap://host[:389]` which is always upgraded with StartTLS; there is no clear-text option."),
            key("ca_file", Type::Path, Unset("the Mozilla roots (`webpki-roots`)"), "\"/etc/forestsync/alpha-ca.pem\"")
                .means("The CA (PEM) that issued the DCs' certificates; certificates must name the host."),
            key("bind_dn", Type::String, Required, "\"CN=svc-forestsync,CN=Users,DC=alpha,DC=example,DC=com\"")
                .means("The least-privilege service account (never a domain admin; the rights per mode are in README.md)."),
            key("bind_password", Type::String, Required, "\"s3cret-Pw\"")
                .secret()
                .means("The service account's password."),
            key("base_dn", Type::String, Required, "\"DC=alpha,DC=example,DC=com\"")
                .means("The domain's root DN; root_group_dn and target_ou must be under it."),
            key("root_group_dn", Type::String, Required, "\"CN=JumpCloud,OU=ADI,DC=alpha,DC=example,DC=com\"")
                .modes(AD_TO_JC)
                .means("The ADI root security group: its members, nested to any depth, are the scope synced to JumpCloud. Not needed in `jumpcloud-authoritative`."),
            key("username_source", Type::Enum, Value("\"sAMAccountName\""), "\"userPrincipalName\"")
                .modes(AD_TO_JC)
                .values(&["sAMAccountName", "userPrincipalName"])
                .means("The AD attribute the JumpCloud username comes from."),
            key("on_leave_scope", Type::Enum, Value("\"delete\""), "\"suspend\"")
                .modes(AD_TO_JC)
                .values(&["delete", "suspend", "unbind"])
                .means("When a user leaves the scope in AD (deleted, moved out, removed from the root group): delete the JumpCloud user (ADI's `remove`), suspend it, or unbind it (kept, managed in JumpCloud from then on)."),
            key("username_collision", Type::Enum, Value("\"report-and-skip\""), "\"take-over\"")
                .modes(AD_TO_JC)
                .values(&["report-and-skip", "take-over"])
                .means("When an AD user's username already exists in JumpCloud: report it and leave the JumpCloud user alone, or bind it and manage it from then on."),
            key("ad_instance_id", Type::String, Required, "\"5f0c0c0c0c0c0c0c0c0c0c0c\"")
                .modes(JC_TO_AD)
                .means("The JumpCloud AD instance this domain is (24 hex, `GET /api/v2/activedirectories`); its bound users and groups are written to AD. An error in `ad-authoritative`."),
            key("target_ou", Type::String, Required, "\"OU=JumpCloud,DC=alpha,DC=example,DC=com\"")
                .modes(JC_TO_AD)
                .means("The OU (under base_dn) JumpCloud's users (`CN=<username>`) and groups are created in. An error in `ad-authoritative`."),
            key("upn_suffix", Type::String, Derived { rule: "the domain's DNS name from base_dn", in_minimal: "\"alpha.example.com\"" }, "\"example.com\"")
                .modes(JC_TO_AD)
                .means("`userPrincipalName` = `<username>@<upn_suffix>` for users created in AD. An error in `ad-authoritative`."),
            key("on_jumpcloud_removal", Type::Enum, Value("\"disable\""), "\"delete\"")
                .modes(JC_TO_AD)
                .values(&["disable", "delete", "leave"])
                .means("When a user or group is unbound from the AD instance or deleted in JumpCloud: disable the AD user and empty the AD group (both kept), delete them, or leave them as they are (no longer updated)."),
            key("adopt_existing", Type::Bool, Value("false"), "true")
                .modes(JC_TO_AD)
                .means("Take over an unmanaged, unprivileged AD user with the same sAMAccountName instead of reporting it."),
        ],
    },
    SectionDoc {
        path: "domain.attributes",
        array: false,
        modes: ALL,
        about: "The attribute mapping of the `[[domain]]` above it. AD → JumpCloud: the AD attributes JumpCloud's fields are read from; JumpCloud → AD: the AD attributes they are written to.",
        keys: &[
            key("firstname", Type::String, Value("\"givenName\""), "\"displayName\"")
                .means("The AD attribute of JumpCloud's `firstname`."),
            key("lastname", Type::String, Value("\"sn\""), "\"surname\"")
                .means("The AD attribute of JumpCloud's `lastname`."),
            key("email", Type::String, Value("\"mail\""), "\"userPrincipalName\"")
                .means("The AD attribute of JumpCloud's `email`."),
            key("extra", Type::StringTable, Value("{}"), "{ jobTitle = \"title\", department = \"department\" }")
                .means("Extra JumpCloud fields (keys) and their AD attributes (values)."),
        ],
    },
    SectionDoc {
        path: "safety",
        array: false,
        modes: ALL,
        about: "The removal guard: a batch that would delete, suspend or disable more than the lower of these stops with a message until allowed with `echo N > <state_dir>/approve-removals`.",
        keys: &[
            key("max_removals", Type::Integer, Value("500"), "50")
                .means("At most this many removals in one batch."),
            key("max_removal_percent", Type::Integer, Value("20"), "5")
                .means("At most this share (0–100) of the scope, or of the managed objects in JumpCloud → AD."),
        ],
    },
    SectionDoc {
        path: "passwords",
        array: false,
        modes: AD_TO_JC,
        about: "Password capture on the DCs: Samba's `check password script` runs `forestsync capture-password --config F --domain NAME`, which enforces AD complexity (and JumpCloud's policy), then hands an accepted password to the agent over a root-only socket, or spools it encrypted when the agent is down. The agent forwards it once AD committed it. The hook reads only `state_dir`, this section and the domains' `name`s.",
        keys: &[
            key("enforce_jumpcloud_policy", Type::Bool, Value("true"), "false")
                .means("Also refuse, at the DC, passwords JumpCloud's policy (the keys below) would refuse."),
            key("min_length", Type::Integer, Value("8"), "12")
                .means("JumpCloud's minimum password length (at most 256)."),
            key("require_lowercase", Type::Bool, Value("true"), "false")
                .means("JumpCloud's policy requires a lowercase letter."),
            key("require_uppercase", Type::Bool, Value("true"), "false")
                .means("JumpCloud's policy requires an uppercase letter."),
            key("require_number", Type::Bool, Value("true"), "false")
                .means("JumpCloud's policy requires a digit."),
            key("require_special", Type::Bool, Value("true"), "false")
                .means("JumpCloud's policy requires a special character."),
            key("socket", Type::Path, Value("\"/run/forestsync/capture.sock\""), "\"/run/fs/capture.sock\"")
                .means("The agent's capture socket (root-only, 0600); at most 107 bytes."),
            key("spool_dir", Type::Path, Derived { rule: "`<state_dir>/password-spool`", in_minimal: "\"/var/lib/forestsync/password-spool\"" }, "\"/var/spool/forestsync\"")
                .means("Where the hook writes captures, encrypted, when the agent does not answer."),
            key("key_file", Type::Path, Derived { rule: "`<state_dir>/password.key`", in_minimal: "\"/var/lib/forestsync/password.key\"" }, "\"/etc/forestsync/password.key\"")
                .means("The 32-byte spool key (created 0600 by whichever side needs it first); not inside spool_dir."),
            key("fail_closed", Type::Bool, Value("false"), "true")
                .means("When the hook can neither deliver nor spool an accepted password: reject the change (true) or let it through uncaptured (false: a broken capture path never blocks users)."),
            key("confirm_window_seconds", Type::Integer, Value("120"), "30")
                .means("How long a captured password waits for AD to confirm the commit (pwdLastSet); at least 1, at most 86400."),
        ],
    },
    SectionDoc {
        path: "two_way",
        array: false,
        modes: TWO_WAY,
        about: "Mode two-way's authority rules. An error in the other modes.",
        keys: &[
            key("password_authority", Type::String, Value("\"ad\""), "\"jumpcloud\"")
                .modes(TWO_WAY)
                .values(&["ad", "jumpcloud"])
                .means("Whose a user's password is when its JumpCloud attribute `forestsync_password_authority` does not say. A password changed on the other side is not propagated (and is recorded)."),
            key("non_owner_changes", Type::String, Value("\"revert\""), "\"ignore\"")
                .modes(TWO_WAY)
                .values(&["revert", "ignore"])
                .means("A change on the side that does not own the object: write the owner's value back, or leave it (the owner's next change of that attribute wins). Recorded either way (`forestsync status`)."),
        ],
    },
    SectionDoc {
        path: "telemetry",
        array: false,
        modes: ALL,
        about: "The ops endpoint, the log format and OTLP export.",
        keys: &[
            key("listen", Type::String, Value("\"127.0.0.1:9464\""), "\"0.0.0.0:9464\"")
                .means("Where `/metrics`, `/healthz` and `/readyz` are served (`address:port`; `0.0.0.0:9464` in a pod), or `\"off\"`. A port in use is logged as an error; syncing goes on."),
            key("log_format", Type::String, Value("\"auto\""), "\"json\"")
                .values(&["auto", "json", "text"])
                .means("How log events are written to stderr: `auto` is JSON unless stderr is a terminal. `FORESTSYNC_LOG_FORMAT` overrides it; `FORESTSYNC_LOG` sets the filter (default `warn`)."),
            key("otlp_endpoint", Type::String, Unset("the standard `OTEL_EXPORTER_OTLP_*ENDPOINT` variables decide; without them nothing is exported"), "\"http://collector:4318\"")
                .means("OTLP/HTTP (protobuf) base URL of a collector; http(s) only."),
            key("otlp_ca_file", Type::Path, Unset("the system's web roots only"), "\"/etc/forestsync/otlp-ca.pem\"")
                .means("An extra CA for an https OTLP endpoint."),
            key("export_interval_seconds", Type::Integer, Value("30"), "10")
                .means("How often metrics are pushed over OTLP; at least 1, at most 86400."),
        ],
    },
];

const PREAMBLE: &str = "\
# forestsync configuration reference

<!-- Generated by `forestsync config-reference` from src/config_reference.rs; do not edit by hand.
     Regenerate: cargo run -q -- config-reference > docs/config-reference.md -->

The config file is TOML (default path `/etc/forestsync/forestsync.toml`, `--config` to change it). It is read,
resolved and validated in one go: every problem is reported at once, naming the key and the fix. Unknown keys are
errors, so a typo never silently falls back to a default. Relative paths are resolved against the config file's
folder. Commented examples, one per mode: `config/ad-authoritative.toml`, `config/two-way.toml`,
`config/jumpcloud-authoritative.toml`.

\"Read in\" names the modes whose agent reads a key; `all` is every mode. The capture hook
(`forestsync capture-password`) reads only `state_dir`, `[passwords]` and the domains' `name`s.

## Secrets and sealing

A secret (marked *secret* below) is given as exactly one of three keys:

| key | the value is |
|---|---|
| `X_file` (preferred) | the content of this file (trailing newlines dropped); relative to the config file's folder; keep it root-only |
| `X_env` | the environment variable of this name; when it is not set, the file named by `<VAR>_FILE` (as container platforms provide secrets) |
| `X` | written in the config file; sealed in place (see below) |

Sealing: `forestsync seal --config F`, and `forestsync run` at every start, replace each secret written in the file
by a sealed value (`fs1:…`, ChaCha20-Poly1305 bound to the field, e.g. `jumpcloud.api_key` or
`domain.<name>.bind_password`), keeping every other byte of the file (comments, order, spacing); the rewrite is
atomic and keeps the file's mode. A file that cannot be rewritten (read-only, a mounted ConfigMap) is a warning at
start, not an error. Values already sealed, and secrets given by `X_file` or `X_env`, are left alone. The seal key is
the first of: `FORESTSYNC_SEAL_KEY_FILE`; a systemd credential `forestsync-seal-key` (`LoadCredential=`);
`seal_key_file`; `<state_dir>/seal.key` (32 bytes, 0600, created the first time something is sealed). A wrong key,
an altered value or a value pasted into another field is an error naming the field, never an empty secret.
";

fn modes_text(modes: &[Mode]) -> String {
    if ALL.iter().all(|m| modes.contains(m)) {
        "all".into()
    } else {
        modes
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn default_text(d: KeyDefault) -> String {
    match d {
        Required => "**required**".into(),
        Value(v) => format!("`{v}`"),
        Derived { rule, .. } => rule.into(),
        Unset(what) => format!("unset: {what}"),
    }
}

fn type_text(k: &KeyDoc) -> String {
    let mut t = k.ty.name().to_owned();
    if !k.values.is_empty() {
        let values: Vec<_> = k.values.iter().map(|v| format!("`{v}`")).collect();
        t = format!("{t}: {}", values.join(", "));
    }
    if k.secret {
        t.push_str(" (*secret*)");
    }
    t
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The reference, as Markdown (what `forestsync config-reference` prints).
pub fn render() -> String {
    let mut out = String::from(PREAMBLE);
    for s in SECTIONS {
        let title = if s.path.is_empty() {
            "Top level".to_owned()
        } else {
            format!("`{}`", s.header())
        };
        let _ = write!(out, "\n## {title}\n\n{}", s.about);
        if s.modes != ALL {
            let _ = write!(out, " Read in: {}.", modes_text(s.modes));
        }
        out.push_str("\n\n| key | type | default | read in | meaning |\n|---|---|---|---|---|\n");
        for k in s.keys {
            let names: Vec<_> = k.names().iter().map(|n| format!("`{n}`")).collect();
            let mut meaning = k.meaning.to_owned();
            if k.secret {
                let _ = write!(
                    meaning,
                    " Exactly one of `{0}`, `{0}_file`, `{0}_env`; a written `{0}` is sealed.",
                    k.key
                );
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                names.join(" / "),
                cell(&type_text(k)),
                cell(&default_text(k.default)),
                modes_text(&s.modes_of(k)),
                cell(&meaning),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod bad_input;

//! Secrets at rest in the config file: `forestsync seal` (and `run` at start) replaces plaintext
//! secrets by sealed values in place, keeping the rest of the file byte for byte; sealed values open
//! only with their key, for their field, unaltered. These need no lab: the CLI runs on a scratch file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use forestsync::config::{Config, ConfigError};

use crate::support::unique;

const API_KEY: &str = "jc-Api-Key-0123456789";
const ALPHA_PW: &str = "alpha bind pw \"quoted\" \\ slash";
const BETA_PW: &str = "béta-pässword";

struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(unique(&format!("forestsync-seal-{tag}-")));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("forestsync.toml")
    }

    /// An ad-authoritative config with two plaintext bind passwords and a plaintext API key, with
    /// comments and spacing a sealer must keep.
    fn write_plaintext(&self) -> String {
        let text = format!(
            r#"# forestsync test config — comments and spacing must survive sealing
mode = "ad-authoritative"
state_dir = "state"   # relative to this file

[jumpcloud]
base_url = "https://127.0.0.1:1"
api_key    =   "{API_KEY}"   # the admin's key
rate_limit_per_minute = 600

[[domain]]
name = "alpha"
dcs = ["ldaps://127.0.0.1:1"]
bind_dn = "CN=svc,DC=alpha,DC=test"
bind_password = '{ALPHA_PW_LITERAL}'
base_dn = "DC=alpha,DC=test"
root_group_dn = "CN=JumpCloud,DC=alpha,DC=test"

[[domain]]
name = "beta"
dcs = ["ldaps://127.0.0.1:1"]
bind_dn = "CN=svc,DC=beta,DC=test"
bind_password = "{BETA_PW}"
base_dn = "DC=beta,DC=test"
root_group_dn = "CN=JumpCloud,DC=beta,DC=test"
"#,
            ALPHA_PW_LITERAL = ALPHA_PW,
        );
        std::fs::write(self.config(), &text).unwrap();
        std::fs::set_permissions(self.config(), std::fs::Permissions::from_mode(0o640)).unwrap();
        text
    }

    fn text(&self) -> String {
        std::fs::read_to_string(self.config()).unwrap()
    }

    fn key_file(&self) -> PathBuf {
        self.dir.join("state").join("seal.key")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn forestsync(args: &[&str], config: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_forestsync"));
    cmd.args(args).arg("--config").arg(config);
    cmd.env_remove("FORESTSYNC_SEAL_KEY_FILE")
        .env_remove("CREDENTIALS_DIRECTORY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text_of(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The problems `Config::load` reports (panics if it loads).
fn problems(config: &Path) -> Vec<String> {
    match Config::load(config) {
        Ok(_) => panic!("{} loaded", config.display()),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn secrets(config: &Path) -> (String, Vec<String>) {
    let c = Config::load(config).unwrap_or_else(|e| panic!("{e}"));
    (
        c.jumpcloud.api_key.expose().to_owned(),
        c.domains
            .iter()
            .map(|d| d.bind_password.expose().to_owned())
            .collect(),
    )
}

#[test]
fn seal_replaces_only_the_secret_values_and_they_load_back_the_same() {
    let s = Scratch::new("fresh");
    let before = s.write_plaintext();
    let out = forestsync(&["seal"], &s.config(), &[]);
    assert!(out.status.success(), "{}", text_of(&out));
    let said = text_of(&out);
    assert!(
        said.contains("jumpcloud.api_key") && said.contains("alpha") && said.contains("beta"),
        "{said}"
    );
    let after = s.text();
    for secret in [API_KEY, "alpha bind pw", BETA_PW] {
        assert!(
            !after.contains(secret),
            "{secret:?} still in clear:\n{after}"
        );
    }
    // Every line but the three secret lines is byte-identical; those keep their key and comment.
    let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    assert_eq!(b.len(), a.len());
    let mut changed = 0;
    for (x, y) in b.iter().zip(&a) {
        if x != y {
            changed += 1;
            let key = x.split('=').next().unwrap();
            assert!(y.starts_with(key), "{x:?} became {y:?}");
            assert!(y.contains("\"fs1:"), "{y:?}");
            if x.contains('#') {
                assert!(y.ends_with("# the admin's key"), "{y:?}");
            }
        }
    }
    assert_eq!(changed, 3, "{after}");
    assert_eq!(
        std::fs::metadata(s.config()).unwrap().permissions().mode() & 0o777,
        0o640,
        "the file keeps its mode"
    );
    assert_eq!(
        std::fs::metadata(s.key_file())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "the key file is private"
    );
    assert_eq!(
        secrets(&s.config()),
        (
            API_KEY.to_owned(),
            vec![ALPHA_PW.to_owned(), BETA_PW.to_owned()]
        )
    );

    // Sealing again changes nothing.
    let out = forestsync(&["seal"], &s.config(), &[]);
    assert!(out.status.success(), "{}", text_of(&out));
    assert!(
        text_of(&out).contains("nothing to seal"),
        "{}",
        text_of(&out)
    );
    assert_eq!(s.text(), after);
}

#[test]
fn a_wrong_key_a_tampered_value_or_a_moved_value_is_an_error_naming_the_field() {
    let s = Scratch::new("bad");
    s.write_plaintext();
    assert!(forestsync(&["seal"], &s.config(), &[]).status.success());
    let sealed = s.text();

    // Another installation's key.
    let good_key = std::fs::read(s.key_file()).unwrap();
    let mut other = good_key.clone();
    other[0] ^= 0xff;
    std::fs::write(s.key_file(), &other).unwrap();
    let p = problems(&s.config());
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(
        p.iter()
            .any(|m| m.contains("jumpcloud.api_key") && m.contains("does not open")),
        "{p:?}"
    );
    std::fs::write(s.key_file(), &good_key).unwrap();

    // One altered character.
    let start = sealed.find("api_key").unwrap();
    let at = start + sealed[start..].find("fs1:").unwrap() + 10;
    let mut bytes = sealed.clone().into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(s.config(), &bytes).unwrap();
    let p = problems(&s.config());
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("jumpcloud.api_key"), "{p:?}");

    // Alpha's sealed password pasted into beta: sealed values are bound to their field.
    let value = |t: &str, domain: &str| -> String {
        let at = t.find(&format!("name = \"{domain}\"")).unwrap();
        let line = t[at..]
            .lines()
            .find(|l| l.starts_with("bind_password"))
            .unwrap();
        line.to_owned()
    };
    let (alpha_line, beta_line) = (value(&sealed, "alpha"), value(&sealed, "beta"));
    std::fs::write(s.config(), sealed.replace(&beta_line, &alpha_line)).unwrap();
    let p = problems(&s.config());
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("domain[1] (beta).bind_password"), "{p:?}");

    // No key at all: the error says what is missing and how to fix it; never an empty secret.
    std::fs::write(s.config(), &sealed).unwrap();
    std::fs::remove_file(s.key_file()).unwrap();
    let p = problems(&s.config());
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(
        p[0].contains("is sealed, but the seal key cannot be used"),
        "{p:?}"
    );
    assert!(p[0].contains("seal.key"), "{p:?}");
}

#[test]
fn the_key_can_live_elsewhere_and_secrets_can_come_from_var_file() {
    let s = Scratch::new("env");
    s.write_plaintext();
    let key = s.dir.join("elsewhere.key");
    let key_env = [("FORESTSYNC_SEAL_KEY_FILE", key.to_str().unwrap())];
    let out = forestsync(&["seal"], &s.config(), &key_env);
    assert!(out.status.success(), "{}", text_of(&out));
    assert!(key.exists() && !s.key_file().exists());
    // `status` loads the config (and opens the store): with the key it works, without it the error
    // names the missing key.
    let out = forestsync(&["status"], &s.config(), &key_env);
    assert!(out.status.success(), "{}", text_of(&out));
    let out = forestsync(&["status"], &s.config(), &[]);
    assert!(!out.status.success());
    assert!(
        text_of(&out).contains("jumpcloud.api_key is sealed, but the seal key cannot be used"),
        "{}",
        text_of(&out)
    );

    // api_key_env = "VAR": VAR_FILE (a container secret) is read when VAR is not set.
    let env_cfg = s.dir.join("env.toml");
    let secret_file = s.dir.join("api-key.txt");
    std::fs::write(&secret_file, format!("{API_KEY}\n")).unwrap();
    let var = unique("FORESTSYNC_TEST_KEY_");
    std::fs::write(
        &env_cfg,
        std::fs::read_to_string(s.config())
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("api_key") {
                    format!("api_key_env = \"{var}\"")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let file_var = format!("{var}_FILE");
    let with_file = [
        key_env[0],
        (file_var.as_str(), secret_file.to_str().unwrap()),
    ];
    let out = forestsync(&["seal"], &env_cfg, &with_file);
    assert!(out.status.success(), "{}", text_of(&out));
    assert!(
        text_of(&out).contains("nothing to seal"),
        "{}",
        text_of(&out)
    );
    let out = forestsync(&["seal"], &env_cfg, &key_env);
    assert!(!out.status.success());
    assert!(
        text_of(&out).contains(&format!("{var} (or {var}_FILE) is not set")),
        "{}",
        text_of(&out)
    );
}

#[test]
fn run_seals_the_file_at_start() {
    let s = Scratch::new("run");
    s.write_plaintext();
    // JumpCloud is unreachable: the agent stops early, but only after sealing its config.
    let out = forestsync(&["run"], &s.config(), &[]);
    assert!(!out.status.success(), "{}", text_of(&out));
    assert!(!s.text().contains(API_KEY), "{}", s.text());
    assert_eq!(secrets(&s.config()).0, API_KEY);
}

//! `forestsync register`: redeems a one-time connect key for one configured domain and stores the
//! agent's credentials sealed under `state_dir`.
//!
//! The connect key comes from exactly one of `--connect-key`, `--connect-key-file` or the
//! environment variable `FORESTSYNC_CONNECT_KEY` (the last two keep it off the command line and out
//! of `ps`). Nothing printed here ever holds the key, the agent secret or the payload key.

use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use forestsync_actors::channel::{self, AgentCredentials};
use forestsync_actors::sealed::SealKey;
use forestsync_actors::secret::Secret;
use forestsync_actors::trust;
use zeroize::Zeroizing;

use crate::config::Config;

/// The environment variable that may hold the connect key.
pub const CONNECT_KEY_ENV: &str = "FORESTSYNC_CONNECT_KEY";

/// `Debug` is written by hand: the connect key is a credential and never printed.
#[derive(clap::Args)]
pub struct RegisterArgs {
    /// Path of the TOML configuration file.
    #[arg(long, short = 'c', default_value = "/etc/forestsync/forestsync.toml")]
    pub config: PathBuf,
    /// The configured domain (`[[domain]] name`) this agent serves.
    #[arg(long)]
    pub domain: String,
    /// The connect key from the Admin Portal (one-time use, valid 7 days). Prefer
    /// --connect-key-file or FORESTSYNC_CONNECT_KEY: a command line is visible to every local user.
    #[arg(long, value_name = "KEY")]
    pub connect_key: Option<String>,
    /// A file holding the connect key (surrounding whitespace is ignored).
    #[arg(long, value_name = "PATH")]
    pub connect_key_file: Option<PathBuf>,
    /// Replace credentials already stored for this domain (the agent they belong to stays registered
    /// in JumpCloud until removed there).
    #[arg(long)]
    pub force: bool,
}

impl std::fmt::Debug for RegisterArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterArgs")
            .field("config", &self.config)
            .field("domain", &self.domain)
            .field(
                "connect_key",
                &self.connect_key.as_ref().map(|_| "<redacted>"),
            )
            .field("connect_key_file", &self.connect_key_file)
            .field("force", &self.force)
            .finish()
    }
}

/// Runs the subcommand: one line on stdout on success, one error line on stderr and exit 1 otherwise
/// (2 when the config file is unusable).
pub fn run(args: RegisterArgs, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let env_key = std::env::var(CONNECT_KEY_ENV).ok().map(Zeroizing::new);
    let result = connect_key_from(
        args.connect_key.as_deref(),
        args.connect_key_file.as_deref(),
        env_key.as_ref().map(|k| k.as_str()),
    )
    .and_then(|key| runtime.block_on(register(&args, &key)));
    match result {
        Ok(line) => {
            // Registered either way: a closed stdout is not worth a panic (`println!` panics).
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("forestsync register: {e:#}");
            if e.downcast_ref::<crate::config::ConfigError>().is_some() {
                ExitCode::from(crate::EXIT_CONFIG)
            } else {
                ExitCode::from(crate::EXIT_FAILURE)
            }
        }
    }
}

/// The connect key from exactly one source: the flag, the file, or the environment variable.
pub fn connect_key_from(
    flag: Option<&str>,
    file: Option<&Path>,
    env: Option<&str>,
) -> anyhow::Result<Secret> {
    let given: Vec<&str> = [
        flag.map(|_| "--connect-key"),
        file.map(|_| "--connect-key-file"),
        env.map(|_| CONNECT_KEY_ENV),
    ]
    .into_iter()
    .flatten()
    .collect();
    let value = match (flag, file, env) {
        _ if given.len() > 1 => bail!(
            "the connect key is given more than once ({}); fix: use exactly one of --connect-key, --connect-key-file or {CONNECT_KEY_ENV}",
            given.join(", ")
        ),
        (Some(k), None, None) => Zeroizing::new(k.to_owned()),
        (None, Some(path), None) => read_key_file(path)?,
        (None, None, Some(k)) => Zeroizing::new(k.to_owned()),
        _ => bail!(
            "no connect key; fix: pass --connect-key-file PATH (or --connect-key KEY, or set {CONNECT_KEY_ENV}) with the key from the JumpCloud console (AD instance → Install New Agent)"
        ),
    };
    let trimmed = value.trim();
    if trimmed.is_empty() {
        bail!(
            "the connect key is empty; fix: {}",
            channel::NEW_CONNECT_KEY_FIX
        );
    }
    Ok(Secret::new(trimmed))
}

fn read_key_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .with_context(|| format!("cannot read the connect key file {}", path.display()))?;
    Ok(text)
}

/// Registers and stores the credentials; returns the line to print.
async fn register(args: &RegisterArgs, connect_key: &Secret) -> anyhow::Result<String> {
    let config = Config::load(&args.config)?;
    let domain = config
        .domains
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(&args.domain))
        .ok_or_else(|| {
            anyhow!(
                "domain {:?} is not in {}; configured domains: {}",
                args.domain,
                config.path.display(),
                config
                    .domains
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;

    ensure_state_dir(&config.state_dir)?;
    let creds_path = channel::credentials_path(&config.state_dir, &domain.name);
    let key_path = config.seal_key_file.clone();
    if !args.force && std::fs::symlink_metadata(&creds_path).is_ok() {
        let whose = SealKey::load(&key_path)
            .ok()
            .and_then(|k| AgentCredentials::load(&creds_path, &k).ok().flatten())
            .map(|c| format!(" (agent {})", c.agent_id))
            .unwrap_or_default();
        bail!(
            "domain {} already has agent credentials{whose} in {}; fix: use --force to replace them (nothing was sent: the connect key is still unused)",
            domain.name,
            creds_path.display()
        );
    }
    let seal_key = SealKey::load_or_create(&key_path)?;

    let tls = trust::client_config(config.jumpcloud.ca_file.as_deref())?;
    let base = channel::channel_base_from_api_url(&config.jumpcloud.base_url)?;
    let hostname = channel::local_hostname()
        .ok_or_else(|| anyhow!("cannot determine this machine's host name"))?;
    let registration = channel::register(
        &base,
        tls,
        connect_key,
        &hostname,
        env!("CARGO_PKG_VERSION"),
    )
    .await?;
    let creds = &registration.credentials;
    creds.save(&creds_path, &seal_key).with_context(|| {
        format!(
            "registered as agent {} but could not store its credentials (the connect key is now used); fix the cause, then {}",
            creds.agent_id,
            channel::NEW_CONNECT_KEY_FIX
        )
    })?;
    Ok(format!(
        "registered domain {} as agent {} of AD instance {}{} ({}); credentials sealed in {} (key {})",
        domain.name,
        creds.agent_id,
        creds.activedirectory_id,
        if creds.domain.is_empty() {
            String::new()
        } else {
            format!(" [{}]", creds.domain)
        },
        if registration.primary {
            "primary"
        } else {
            "standby: another agent is primary"
        },
        creds_path.display(),
        key_path.display()
    ))
}

/// Creates the state directory with mode 0700 when it is missing.
fn ensure_state_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_key_source() {
        let dir = std::env::temp_dir().join(format!("fs-register-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "  ck-from-file\n").unwrap();

        assert_eq!(
            connect_key_from(Some("ck-flag"), None, None)
                .unwrap()
                .expose(),
            "ck-flag"
        );
        assert_eq!(
            connect_key_from(None, Some(&file), None).unwrap().expose(),
            "ck-from-file"
        );
        assert_eq!(
            connect_key_from(None, None, Some("ck-env"))
                .unwrap()
                .expose(),
            "ck-env"
        );
        let none = connect_key_from(None, None, None).unwrap_err().to_string();
        assert!(none.contains("--connect-key-file"), "{none}");
        let two = connect_key_from(Some("ck-flag"), None, Some("ck-env"))
            .unwrap_err()
            .to_string();
        assert!(two.contains("more than once"), "{two}");
        assert!(!two.contains("ck-flag") && !two.contains("ck-env"), "{two}");
        let empty = connect_key_from(Some("  "), None, None)
            .unwrap_err()
            .to_string();
        assert!(empty.contains("empty"), "{empty}");
        let missing = connect_key_from(None, Some(&dir.join("nope")), None)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! `forestsync capture-password`: the program Samba's `check password script` runs on every DC.
//!
//! Samba starts it before committing a new password, with the password on stdin (no trailing
//! newline) and `SAMBA_CPS_ACCOUNT_NAME`, `SAMBA_CPS_USER_PRINCIPAL_NAME`, `SAMBA_CPS_FULL_NAME` in
//! the environment; exit 0 accepts the password, anything else rejects it ("does not meet the
//! complexity criteria"), and the password change waits for us. So:
//!
//! 1. **Rules.** AD complexity (the hook replaces Samba's own check), then JumpCloud's policy when
//!    `[passwords] enforce_jumpcloud_policy` (the default). A refusal exits 1 and writes one line to
//!    stderr (Samba's log) naming the rule, never the password.
//! 2. **Hand-off.** An accepted password goes to the agent over its local unix socket
//!    (`[passwords] socket`; only a root-owned, mode-0600 socket is used) within 300 ms; if the agent
//!    does not take it, it is written encrypted to the spool (`[passwords] spool_dir`, key
//!    `key_file`) for the agent to pick up later.
//! 3. **Fail open.** Delivery problems never fail the password change: when even the spool write
//!    fails the hook logs it and exits 0 (exit 1 only with `fail_closed = true`). A config file the
//!    hook cannot read is treated the same way: the rules still run with their defaults, the password
//!    is not captured. Whatever happens, the hook exits within 2 s (a watchdog ends it: rejecting
//!    when no verdict was reached, else per `fail_closed`).
//!
//! **Bad input** is refused within the budget, with one line on stderr that never holds the input:
//! stdin longer than 8 KiB (read no further), empty, not UTF-8 or holding a NUL byte → exit 1
//! (rejected). A password the rules accept but that cannot be attributed → exit 0 (accepted, NOT
//! captured; exit 1 with `fail_closed = true`): no `SAMBA_CPS_ACCOUNT_NAME`, or a `--domain` that is
//! not a configured `[[domain]]` (the agent could not place it). Whether the account is in the sync
//! scope is the agent's call: it drops captures for accounts it does not sync.
//!
//! Exit codes: 0 accepts the password (captured or not), 1 rejects it; nothing else.
//!
//! Only `state_dir`, `[passwords]` and the domain names are read from the config file
//! ([`HookConfig::load`]): the hook never needs the agent's credentials. The clear password lives in
//! a zeroized stdin buffer and in [`Secret`]s; it is never printed.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use forestsync_actors::password::policy::{check_ad_complexity, PolicyViolation};
use forestsync_actors::password::{client, new_capture_id, spool, CapturedPassword, PasswordError};
use forestsync_actors::secret::Secret;
use zeroize::Zeroizing;

use crate::config::{HookConfig, PasswordsConfig};

/// The whole run, whatever blocks.
pub const BUDGET: Duration = Duration::from_secs(2);
/// How long the agent gets to take the password before the hook spools it.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_millis(300);
/// Longest accepted stdin (AD passwords are at most 256 characters).
const MAX_PASSWORD_BYTES: usize = 8 * 1024;

const EXIT_ACCEPT: u8 = 0;
const EXIT_REJECT: u8 = 1;

#[derive(clap::Args, Debug)]
pub struct CaptureArgs {
    /// Path of the TOML configuration file (only state_dir, [passwords] and domain names are read).
    #[arg(long, short = 'c', default_value = "/etc/forestsync/forestsync.toml")]
    pub config: PathBuf,
    /// The forestsync domain (`[[domain]] name`) of the DC this hook runs on.
    #[arg(long)]
    pub domain: String,
}

/// What Samba tells the hook about the account.
#[derive(Clone, Debug, Default)]
pub struct Account {
    pub name: String,
    pub upn: Option<String>,
    pub full_name: String,
}

impl Account {
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .map(|v| v.to_string_lossy().trim().to_owned())
                .unwrap_or_default()
        };
        let upn = var("SAMBA_CPS_USER_PRINCIPAL_NAME");
        Account {
            name: var("SAMBA_CPS_ACCOUNT_NAME"),
            upn: (!upn.is_empty()).then_some(upn),
            full_name: var("SAMBA_CPS_FULL_NAME"),
        }
    }
}

/// The verdict on one password.
pub fn check(
    password: &str,
    account: &Account,
    passwords: &PasswordsConfig,
) -> Result<(), PolicyViolation> {
    check_ad_complexity(password, &account.name, &account.full_name)?;
    if passwords.enforce_jumpcloud_policy {
        passwords.jumpcloud_policy.check(password)?;
    }
    Ok(())
}

/// How an accepted password reached the agent.
#[derive(Debug)]
pub enum Delivery {
    Socket,
    Spooled { socket_error: PasswordError },
}

/// Hands an accepted capture to the agent, or spools it. `Err` = neither worked.
pub async fn deliver(
    capture: &CapturedPassword,
    passwords: &PasswordsConfig,
) -> Result<Delivery, (PasswordError, PasswordError)> {
    let socket_error = match client::deliver(&passwords.socket, capture, DELIVERY_TIMEOUT).await {
        Ok(()) => return Ok(Delivery::Socket),
        Err(e) => e,
    };
    let spooled = spool::CaptureKey::load_or_create(&passwords.key_file)
        .and_then(|key| spool::write(&passwords.spool_dir, &key, capture));
    match spooled {
        Ok(_) => Ok(Delivery::Spooled { socket_error }),
        Err(spool_error) => Err((socket_error, spool_error)),
    }
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "forestsync capture-password: {line}");
    let _ = err.flush();
}

/// Reads stdin to EOF into a fixed, zeroized buffer (never reallocated, so no stray copies).
fn read_password() -> Result<Zeroizing<Vec<u8>>, String> {
    let mut buf = Zeroizing::new(vec![0u8; MAX_PASSWORD_BYTES + 1]);
    let mut filled = 0;
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled > MAX_PASSWORD_BYTES {
                    return Err(format!("longer than {MAX_PASSWORD_BYTES} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read stdin: {e}")),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Entry point of the subcommand. Never returns later than [`BUDGET`] after it started.
pub fn run(args: CaptureArgs, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let started = Instant::now();
    let captured_at = SystemTime::now();
    // The exit code the watchdog uses: reject until a verdict is reached.
    let on_timeout = Arc::new(AtomicU8::new(EXIT_REJECT));
    {
        let on_timeout = on_timeout.clone();
        // `thread::spawn` panics (exit 101) when the system is out of threads; the hook's exit codes
        // are 0 and 1 only, and without the watchdog the 2 s budget cannot be kept: reject now.
        let watchdog = std::thread::Builder::new().spawn(move || {
            std::thread::sleep(BUDGET.saturating_sub(started.elapsed()));
            let code = on_timeout.load(Ordering::SeqCst);
            say(format_args!(
                "gave up after {} ms ({})",
                BUDGET.as_millis(),
                if code == EXIT_ACCEPT {
                    "password accepted, capture unfinished"
                } else {
                    "no verdict: rejecting"
                }
            ));
            std::process::exit(code.into());
        });
        if let Err(e) = watchdog {
            say(format_args!(
                "cannot start the {} ms watchdog ({e}): rejecting",
                BUDGET.as_millis()
            ));
            return ExitCode::from(EXIT_REJECT);
        }
    }

    let account = Account::from_env();
    let who = format!(
        "account {:?} (domain {:?})",
        account.name.as_str(),
        args.domain
    );
    let (config, config_error) = match HookConfig::load(&args.config) {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e.to_string().replace('\n', " "))),
    };
    let passwords = config
        .as_ref()
        .map(|c| c.passwords.clone())
        .unwrap_or_else(PasswordsConfig::defaults);

    let raw = match read_password() {
        Ok(raw) => raw,
        Err(why) => {
            say(format_args!("rejected the password for {who}: {why}"));
            return ExitCode::from(EXIT_REJECT);
        }
    };
    let Ok(password) = std::str::from_utf8(&raw) else {
        say(format_args!(
            "rejected the password for {who}: it is not valid UTF-8"
        ));
        return ExitCode::from(EXIT_REJECT);
    };
    if password.is_empty() {
        say(format_args!("rejected the password for {who}: it is empty"));
        return ExitCode::from(EXIT_REJECT);
    }
    if password.contains('\0') {
        say(format_args!(
            "rejected the password for {who}: it contains a NUL byte"
        ));
        return ExitCode::from(EXIT_REJECT);
    }
    if let Err(rule) = check(password, &account, &passwords) {
        say(format_args!("rejected the password for {who}: {rule}"));
        return ExitCode::from(EXIT_REJECT);
    }

    // Accepted. From here on nothing may fail the change unless fail_closed says so.
    let not_captured = if passwords.fail_closed && config.is_some() {
        EXIT_REJECT
    } else {
        EXIT_ACCEPT
    };
    on_timeout.store(not_captured, Ordering::SeqCst);
    if let Some(e) = config_error {
        say(format_args!(
            "password for {who} accepted but NOT captured: cannot use the config: {e}"
        ));
        return ExitCode::from(EXIT_ACCEPT);
    }
    if let Some(c) = &config {
        if !c
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&args.domain))
        {
            say(format_args!(
                "password for {who} accepted but NOT captured: --domain {:?} is not a configured [[domain]] name; fix: pass the [[domain]] name of this DC's domain in the hook's command line",
                args.domain
            ));
            return ExitCode::from(not_captured);
        }
    }
    if account.name.is_empty() {
        say(format_args!(
            "password accepted but NOT captured: Samba passed no SAMBA_CPS_ACCOUNT_NAME"
        ));
        return ExitCode::from(not_captured);
    }
    let id = match new_capture_id() {
        Ok(id) => id,
        Err(e) => {
            say(format_args!(
                "password for {who} accepted but NOT captured: {e}"
            ));
            return ExitCode::from(not_captured);
        }
    };
    let capture = CapturedPassword {
        id,
        domain: args.domain.clone(),
        account: account.name.clone(),
        upn: account.upn.clone(),
        captured_at,
        password: Secret::new(password),
    };
    drop(raw);
    let outcome = runtime.block_on(deliver(&capture, &passwords));
    drop(capture);
    match outcome {
        Ok(Delivery::Socket) => ExitCode::from(EXIT_ACCEPT),
        Ok(Delivery::Spooled { socket_error }) => {
            say(format_args!(
                "agent not reachable ({socket_error}); password for {who} queued encrypted in {}",
                passwords.spool_dir.display()
            ));
            ExitCode::from(EXIT_ACCEPT)
        }
        Err((socket_error, spool_error)) => {
            say(format_args!(
                "password for {who} NOT captured: agent not reachable ({socket_error}) and the spool failed ({spool_error}){}",
                if not_captured == EXIT_REJECT {
                    "; rejecting the change (fail_closed = true)"
                } else {
                    ""
                }
            ));
            ExitCode::from(not_captured)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_combines_ad_complexity_and_the_jumpcloud_policy() {
        let mut passwords = PasswordsConfig::defaults();
        let account = Account {
            name: "jdoe".into(),
            upn: None,
            full_name: "John Doe".into(),
        };
        // (password, enforce JumpCloud policy, accepted)
        let cases = [
            ("Kq7#mVt2-Plain-9x", true, true),
            ("aaaaaaaa1", true, false),    // AD: 2 categories
            ("Abcdefgh1", true, false),    // AD ok, JumpCloud: no special character
            ("Abcdefgh1", false, true),    // … accepted when the policy is off
            ("Ab1!", false, true),         // length is Samba's business, not AD complexity's
            ("Ab1!", true, false),         // … but JumpCloud's minimum length applies
            ("xJDOE-2024!a", true, false), // contains the account name
            ("Johnny-2024!", true, false), // contains a full-name token
        ];
        for (pw, enforce, accepted) in cases {
            passwords.enforce_jumpcloud_policy = enforce;
            assert_eq!(
                check(pw, &account, &passwords).is_ok(),
                accepted,
                "{pw:?} with enforce_jumpcloud_policy = {enforce}"
            );
        }
    }
}

//! The lab side of the benchmarks: the lab's variables, an admin session on ALPHA's DC1, and the LDAP
//! writes the benchmarks make (scratch OUs, users, groups, attribute edits).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use forestsync_actors::directory::{DcEndpoint, DcSession, LdapMod, Timeouts};
use forestsync_actors::secret::Secret;
use forestsync_actors::trust;

/// The lab's `LAB_*` variables: from the environment, else from `lab-state/env.sh`.
pub struct LabVars(HashMap<String, String>);

impl LabVars {
    pub fn load(repo: &Path) -> Result<LabVars> {
        let mut vars: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("LAB_"))
            .collect();
        if !vars.contains_key("LAB_CA_FILE") {
            let file = repo.join("lab-state/env.sh");
            let text = std::fs::read_to_string(&file).with_context(|| {
                format!(
                    "no LAB_* variables and no {}; run deploy/lab/lab up",
                    file.display()
                )
            })?;
            for line in text.lines().filter_map(|l| l.strip_prefix("export ")) {
                if let Some((k, v)) = line.split_once('=') {
                    vars.insert(k.to_owned(), v.trim_matches('\'').to_owned());
                }
            }
        }
        Ok(LabVars(vars))
    }

    pub fn get(&self, key: &str) -> Result<String> {
        self.0
            .get(key)
            .cloned()
            .with_context(|| format!("{key} not set"))
    }
}

/// What every lab benchmark starts from: the lab's variables, the agent binary (checked), and an
/// admin session on ALPHA's DC1.
pub struct LabSetup {
    pub vars: LabVars,
    pub agent_bin: PathBuf,
    pub admin: DcSession,
    pub base_dn: String,
}

pub async fn lab_setup(agent_bin: Option<PathBuf>) -> Result<LabSetup> {
    let vars = LabVars::load(&repo())?;
    let agent_bin = agent_binary(agent_bin)?;
    let base_dn = vars.get("LAB_ALPHA_BASE_DN")?;
    let admin = admin_session(&vars, "ALPHA", "DC1", Duration::from_secs(60)).await?;
    Ok(LabSetup {
        vars,
        agent_bin,
        admin,
        base_dn,
    })
}

/// The repository's root (where `deploy/lab/lab` is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The agent binary: `--agent`, or the `forestsync` next to this program; checked to exist.
pub fn agent_binary(agent: Option<PathBuf>) -> Result<PathBuf> {
    let bin = match agent {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("forestsync"),
    };
    if !bin.exists() {
        bail!(
            "{} not found; build it (cargo build --release -p forestsync) or pass --agent",
            bin.display()
        );
    }
    Ok(bin)
}

/// A verified LDAPS session on the lab's `domain` (`ALPHA`, `BETA`) DC `dc` (`DC1`, `DC2`), bound as
/// the domain's Administrator.
pub async fn admin_session(
    vars: &LabVars,
    domain: &str,
    dc: &str,
    operation: Duration,
) -> Result<DcSession> {
    let tls = trust::client_config(Some(Path::new(&vars.get("LAB_CA_FILE")?)))?;
    let mut session = DcSession::connect(
        &DcEndpoint::parse(&vars.get(&format!("LAB_{domain}_{dc}_URL"))?)?,
        tls,
        Timeouts {
            connect: Duration::from_secs(5),
            operation,
        },
    )
    .await?;
    session
        .bind(
            &vars.get(&format!("LAB_ADMIN_DN_{domain}"))?,
            &Secret::new(vars.get("LAB_ADMIN_PASSWORD")?),
        )
        .await?;
    Ok(session)
}

/// Runs `deploy/lab/lab ARGS` (seed, stop-dc, start-dc …); its output is the error when it fails.
pub fn lab_command(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(repo().join("deploy/lab/lab"))
        .args(args)
        .output()
        .context("running deploy/lab/lab")?;
    if !out.status.success() {
        bail!(
            "lab {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A unique name for this run's objects: `prefix`, the process id, and a few digits of the clock (so
/// a leftover of an earlier run with the same process id does not collide). At most 11 characters,
/// leaving room for a suffix within sAMAccountName's 20.
pub fn run_tag(prefix: &str) -> String {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() % 0x1000)
        .unwrap_or(0);
    format!("{prefix}{:x}{clock:03x}", std::process::id())
}

pub fn attr(name: &str, values: &[&str]) -> (Vec<u8>, HashSet<Vec<u8>>) {
    (
        name.as_bytes().to_vec(),
        values.iter().map(|v| v.as_bytes().to_vec()).collect(),
    )
}

pub async fn add_ou(admin: &mut DcSession, dn: &str) -> Result<()> {
    admin
        .add(
            dn,
            vec![attr("objectClass", &["top", "organizationalUnit"])],
        )
        .await
        .with_context(|| format!("creating {dn}"))
}

/// Deletes the OU and everything in it, deepest first. Best effort: a benchmark's own error matters more.
pub async fn delete_ou(admin: &mut DcSession, dn: &str) {
    let mut dns = match admin
        .search(
            dn,
            ldap3::Scope::Subtree,
            "(objectClass=*)",
            &["1.1"],
            "cleanup",
        )
        .await
    {
        Ok(entries) => entries.into_iter().map(|e| e.dn).collect::<Vec<_>>(),
        Err(e) => {
            eprintln!("cleanup: cannot list {dn}: {e}");
            return;
        }
    };
    // Children have longer DNs than their parents: deepest first, the OU last.
    dns.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for d in dns {
        if let Err(e) = admin.delete(&d).await {
            eprintln!("cleanup: cannot delete {d}: {e}");
        }
    }
}

/// A global security group.
pub async fn add_group(admin: &mut DcSession, dn: &str, sam: &str) -> Result<()> {
    admin
        .add(
            dn,
            vec![
                attr("objectClass", &["top", "group"]),
                attr("sAMAccountName", &[sam]),
                attr("groupType", &["-2147483646"]),
            ],
        )
        .await
        .with_context(|| format!("creating group {dn}"))
}

/// An enabled user without a password (sAMAccountName `sam`, mail `<sam>@example.test`), plus `extra`
/// attributes.
pub async fn add_user(
    admin: &mut DcSession,
    dn: &str,
    sam: &str,
    given_name: &str,
    extra: &[(&str, &str)],
) -> Result<()> {
    let mut attrs = vec![
        attr(
            "objectClass",
            &["top", "person", "organizationalPerson", "user"],
        ),
        attr("userAccountControl", &["544"]),
        attr("sAMAccountName", &[sam]),
        attr("givenName", &[given_name]),
        attr("sn", &[sam]),
        attr("mail", &[&format!("{sam}@example.test")]),
    ];
    attrs.extend(extra.iter().map(|(name, value)| attr(name, &[value])));
    admin
        .add(dn, attrs)
        .await
        .with_context(|| format!("creating user {dn}"))
}

pub async fn add_members(admin: &mut DcSession, group: &str, members: &[String]) -> Result<()> {
    admin
        .modify(
            group,
            vec![LdapMod::Add(
                b"member".to_vec(),
                members.iter().map(|d| d.as_bytes().to_vec()).collect(),
            )],
        )
        .await
        .with_context(|| format!("adding members to {group}"))
}

/// Replaces attribute `name` of `dn` with the one value `value`.
pub async fn set_attr(admin: &mut DcSession, dn: &str, name: &str, value: &[u8]) -> Result<()> {
    admin
        .modify(
            dn,
            vec![LdapMod::Replace(
                name.as_bytes().to_vec(),
                [value.to_vec()].into(),
            )],
        )
        .await
        .with_context(|| format!("setting {name} of {dn}"))
}

/// The first value of attribute `name` of `dn`; `None` when the object or the attribute is missing.
pub async fn read_attr(admin: &mut DcSession, dn: &str, name: &str) -> Result<Option<String>> {
    Ok(admin
        .read_entry(dn, &[name])
        .await
        .with_context(|| format!("reading {name} of {dn}"))?
        .and_then(|e| e.attrs.get(name).and_then(|v| v.first().cloned())))
}

//! End-to-end latency on the lab: an AD change (disable/enable) and an AD password reset, from the
//! moment the DC acknowledged the LDAP modify until the JumpCloud emulator shows the result, through
//! a real `forestsync run` agent. Prints one JSON line per scenario with p50/p99/max.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use forestsync_actors::directory::{DcEndpoint, DcSession, LdapMod, Timeouts};
use forestsync_actors::secret::Secret;
use forestsync_actors::trust;
use serde_json::{json, Value};

const KEY: &str = "latency-bench-key";

pub fn lab_vars(repo: &Path) -> Result<HashMap<String, String>> {
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
    Ok(vars)
}

pub fn attr(name: &str, values: &[&str]) -> (Vec<u8>, std::collections::HashSet<Vec<u8>>) {
    (
        name.as_bytes().to_vec(),
        values.iter().map(|v| v.as_bytes().to_vec()).collect(),
    )
}

fn unicode_pwd(p: &str) -> Vec<u8> {
    format!("\"{p}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn figures(scenario: &str, mut samples: Vec<f64>) -> Value {
    samples.sort_by(|a, b| a.total_cmp(b));
    json!({
        "scenario": scenario,
        "samples": samples.len(),
        "p50_ms": percentile(&samples, 0.5),
        "p99_ms": percentile(&samples, 0.99),
        "max_ms": samples.last().copied().unwrap_or(0.0),
    })
}

pub struct KillOnDrop(pub Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lab's password hook routed to the benchmark's agent while it runs; removed on drop.
struct Hook {
    path: PathBuf,
    _lock: std::fs::File,
}
impl Drop for Hook {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn install_hook(
    hook_dir: &Path,
    agent: &Path,
    config: &Path,
    prefix: &str,
    passthrough: &Path,
) -> Result<Hook> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(hook_dir.join(".capture-password.lock"))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    // The same lock the integration tests take: one owner of the lab's hook at a time.
    while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if Instant::now() > deadline {
            bail!("the lab's password hook is held by another process");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let path = hook_dir.join("capture-password");
    let script = format!(
        "#!/bin/sh\ncase \"$SAMBA_CPS_ACCOUNT_NAME\" in\n  {prefix}*) exec '{a}' capture-password --config '{c}' --domain alpha ;;\nesac\nexec '{a}' capture-password --config '{p}' --domain alpha\n",
        a = agent.display(),
        c = config.display(),
        p = passthrough.display()
    );
    let temp = hook_dir.join(format!(".capture-password.{}", std::process::id()));
    std::fs::write(&temp, script)?;
    std::fs::set_permissions(&temp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::rename(&temp, &path)?;
    Ok(Hook { path, _lock: lock })
}

/// What both latency benchmarks start from: the lab's variables, the agent binary (checked), and an
/// admin session on ALPHA's DC1.
pub struct LabSetup {
    pub vars: HashMap<String, String>,
    pub agent_bin: PathBuf,
    pub admin: DcSession,
    pub base_dn: String,
}

pub async fn lab_setup(agent_bin: Option<PathBuf>) -> Result<LabSetup> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let vars = lab_vars(&repo)?;
    let get = |k: &str| vars.get(k).cloned().with_context(|| format!("{k} not set"));
    let agent_bin = match agent_bin {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("forestsync"),
    };
    if !agent_bin.exists() {
        bail!(
            "{} not found; build it (cargo build --release -p forestsync) or pass --agent",
            agent_bin.display()
        );
    }
    let ca = PathBuf::from(get("LAB_CA_FILE")?);
    let base_dn = get("LAB_ALPHA_BASE_DN")?;
    let tls = trust::client_config(Some(&ca))?;
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        operation: Duration::from_secs(60),
    };
    let mut admin = DcSession::connect(
        &DcEndpoint::parse(&get("LAB_ALPHA_DC1_URL")?)?,
        tls,
        timeouts,
    )
    .await?;
    admin
        .bind(
            &get("LAB_ADMIN_DN_ALPHA")?,
            &Secret::new(get("LAB_ADMIN_PASSWORD")?),
        )
        .await?;
    Ok(LabSetup {
        vars,
        agent_bin,
        admin,
        base_dn,
    })
}

pub async fn run(users: usize, changes: usize, agent_bin: Option<PathBuf>) -> Result<()> {
    let LabSetup {
        vars,
        agent_bin,
        mut admin,
        base_dn: base,
    } = lab_setup(agent_bin).await?;

    let tag = format!("lat{:x}", std::process::id());
    let ou = format!("OU={tag},OU=ADI,{base}");
    let root = format!("CN={tag}root,{ou}");
    admin
        .add(
            &ou,
            vec![attr("objectClass", &["top", "organizationalUnit"])],
        )
        .await?;
    admin
        .add(
            &root,
            vec![
                attr("objectClass", &["top", "group"]),
                attr("sAMAccountName", &[&format!("{tag}root")]),
                attr("groupType", &["-2147483646"]),
            ],
        )
        .await?;
    let mut dns = Vec::new();
    for i in 0..users {
        let sam = format!("{tag}u{i}");
        let dn = format!("CN={sam},{ou}");
        admin
            .add(
                &dn,
                vec![
                    attr(
                        "objectClass",
                        &["top", "person", "organizationalPerson", "user"],
                    ),
                    attr("userAccountControl", &["544"]),
                    attr("sAMAccountName", &[&sam]),
                    attr("givenName", &["Latency"]),
                    attr("sn", &[&sam]),
                    attr("mail", &[&format!("{sam}@example.test")]),
                ],
            )
            .await?;
        dns.push((sam, dn));
    }
    admin
        .modify(
            &root,
            vec![LdapMod::Add(
                b"member".to_vec(),
                dns.iter().map(|(_, d)| d.as_bytes().to_vec()).collect(),
            )],
        )
        .await?;

    let result = measure(&mut admin, &vars, &agent_bin, &root, &dns, changes).await;
    for (_, dn) in &dns {
        let _ = admin.delete(dn).await;
    }
    let _ = admin.delete(&root).await;
    let _ = admin.delete(&ou).await;
    result
}

async fn measure(
    admin: &mut DcSession,
    vars: &HashMap<String, String>,
    agent_bin: &Path,
    root: &str,
    dns: &[(String, String)],
    changes: usize,
) -> Result<()> {
    let get = |k: &str| vars.get(k).cloned().with_context(|| format!("{k} not set"));
    let emu = jcemu::Emulator::start(jcemu::Config {
        api_keys: vec![KEY.into()],
        ..jcemu::Config::default()
    })
    .await?;
    let dir = std::env::temp_dir().join(format!("forestsync-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("jcemu-ca.pem"), emu.ca_pem().unwrap_or_default())?;
    let config = dir.join("forestsync.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"ad-authoritative\"\nstate_dir = \"state\"\n[jumpcloud]\nbase_url = \"{url}\"\napi_key = \"{KEY}\"\nca_file = \"jcemu-ca.pem\"\nrate_limit_per_minute = 60000\nburst = 200\n[passwords]\nsocket = \"capture.sock\"\n[[domain]]\nname = \"alpha\"\ndcs = [\"{dc1}\", \"{dc2}\"]\nca_file = \"{ca}\"\nbind_dn = \"{bind}\"\nbind_password = \"{pw}\"\nbase_dn = \"{base}\"\nroot_group_dn = \"{root}\"\n",
            url = emu.base_url(),
            dc1 = get("LAB_ALPHA_DC1_URL")?,
            dc2 = get("LAB_ALPHA_DC2_URL")?,
            ca = get("LAB_CA_FILE")?,
            bind = get("LAB_ALPHA_BIND_DN")?,
            pw = get("LAB_ALPHA_BIND_PASSWORD")?,
            base = get("LAB_ALPHA_BASE_DN")?,
        ),
    )?;
    let passthrough = dir.join("passthrough.toml");
    std::fs::write(&passthrough, "[passwords]\nenforce_jumpcloud_policy = false\nsocket = \"passthrough/none.sock\"\nspool_dir = \"passthrough/spool\"\nkey_file = \"passthrough/password.key\"\n")?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let _agent = KillOnDrop(
        Command::new(agent_bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("FORESTSYNC_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let find = |state: &Value, sam: &str| {
        state["users"]
            .as_array()
            .and_then(|u| u.iter().find(|u| u["username"] == sam).cloned())
    };
    let started = Instant::now();
    while !dns.iter().all(|(sam, _)| find(&emu.state(), sam).is_some()) {
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "initial sync did not finish; see {}",
                dir.join("agent.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{}",
        json!({"scenario": "initial-import", "users": dns.len(), "seconds": started.elapsed().as_secs_f64()})
    );

    // Disable/enable round trips.
    let mut samples = Vec::new();
    for i in 0..changes {
        let (sam, dn) = &dns[i % dns.len()];
        let disable = (i / dns.len()) % 2 == 0;
        let uac = if disable { "546" } else { "544" };
        admin
            .modify(
                dn,
                vec![LdapMod::Replace(
                    b"userAccountControl".to_vec(),
                    [uac.as_bytes().to_vec()].into(),
                )],
            )
            .await?;
        let t0 = Instant::now();
        let want = if disable { "SUSPENDED" } else { "ACTIVATED" };
        while find(&emu.state(), sam)
            .map(|u| u["state"] != want)
            .unwrap_or(true)
        {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("{sam} never became {want}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!("{}", figures("ad-change-to-jumpcloud", samples));

    // Password resets through the capture hook.
    let hook_dir = vars
        .get("LAB_HOOK_DIR")
        .map(PathBuf::from)
        .context("LAB_HOOK_DIR not set")?;
    let prefix = dns[0].0.trim_end_matches(char::is_numeric).to_owned();
    let _hook = install_hook(&hook_dir, agent_bin, &config, &prefix, &passthrough)?;
    let password_date = |state: &Value, id: &Value| -> Option<String> {
        state["passwords"]
            .as_array()?
            .iter()
            .find(|p| &p["user_id"] == id)
            .and_then(|p| p["password_date"].as_str().map(str::to_owned))
    };
    let mut samples = Vec::new();
    for i in 0..changes {
        let (sam, dn) = &dns[i % dns.len()];
        let id = find(&emu.state(), sam)
            .map(|u| u["_id"].clone())
            .context("user vanished")?;
        let before = password_date(&emu.state(), &id);
        let password = format!("Lat!{i}x{}Qz9", std::process::id());
        admin
            .modify(
                dn,
                vec![LdapMod::Replace(
                    b"unicodePwd".to_vec(),
                    [unicode_pwd(&password)].into(),
                )],
            )
            .await?;
        let t0 = Instant::now();
        while password_date(&emu.state(), &id) == before {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the password of {sam} never reached JumpCloud; see {}",
                    dir.join("agent.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        // password_date has millisecond resolution; keep changes of one user apart.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{}", figures("password-to-jumpcloud", samples));
    emu.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

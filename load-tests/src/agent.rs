//! The agent under test: a real `forestsync` binary, configured for the lab's ALPHA domain and an
//! in-process JumpCloud emulator, run as a child process that is killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::lab::LabVars;

/// A scratch directory for one benchmark run (`$TMPDIR/forestsync-<name>-<pid>`), created.
pub fn scratch_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("forestsync-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The agent's `forestsync.toml` for domain alpha of the lab, talking to an emulator.
pub struct AgentConfig<'a> {
    /// `ad-authoritative`, `jumpcloud-authoritative` or `two-way`.
    pub mode: &'a str,
    pub api_key: &'a str,
    /// Sections after `[jumpcloud]` (e.g. `[passwords]`).
    pub sections: &'a str,
    /// Keys of the `[[domain]]` after its connection settings (and any `[domain.*]` tables).
    pub domain_keys: &'a str,
}

impl AgentConfig<'_> {
    /// Writes `forestsync.toml` and the emulator's CA into `dir`; returns the config's path. The state
    /// directory is `dir/state`.
    pub fn write(&self, dir: &Path, emu: &jcemu::Emulator, vars: &LabVars) -> Result<PathBuf> {
        std::fs::write(dir.join("jcemu-ca.pem"), emu.ca_pem().unwrap_or_default())
            .context("writing the emulator's CA")?;
        let text = format!(
            "mode = \"{mode}\"\nstate_dir = \"state\"\n[jumpcloud]\nbase_url = \"{url}\"\napi_key = \"{key}\"\nca_file = \"jcemu-ca.pem\"\nrate_limit_per_minute = 60000\nburst = 200\n{sections}[[domain]]\nname = \"alpha\"\ndcs = [\"{dc1}\", \"{dc2}\"]\nca_file = \"{ca}\"\nbind_dn = \"{bind}\"\nbind_password = \"{pw}\"\nbase_dn = \"{base}\"\n{domain_keys}",
            mode = self.mode,
            url = emu.base_url(),
            key = self.api_key,
            sections = self.sections,
            dc1 = vars.get("LAB_ALPHA_DC1_URL")?,
            dc2 = vars.get("LAB_ALPHA_DC2_URL")?,
            ca = vars.get("LAB_CA_FILE")?,
            bind = vars.get("LAB_ALPHA_BIND_DN")?,
            pw = vars.get("LAB_ALPHA_BIND_PASSWORD")?,
            base = vars.get("LAB_ALPHA_BASE_DN")?,
            domain_keys = self.domain_keys,
        );
        let config = dir.join("forestsync.toml");
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        Ok(config)
    }
}

/// `forestsync register` for domain alpha with a one-time connect key.
pub fn register(agent_bin: &Path, config: &Path, connect_key: &str) -> Result<()> {
    let out = Command::new(agent_bin)
        .args(["register", "--config"])
        .arg(config)
        .args(["--domain", "alpha", "--connect-key", connect_key])
        .output()
        .with_context(|| format!("running {}", agent_bin.display()))?;
    if !out.status.success() {
        bail!("register failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A running `forestsync run`; killed (and reaped) when dropped.
pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Starts `forestsync run` with `FORESTSYNC_LOG=<log_filter>`, its stderr appended to `log`.
    pub fn start(agent_bin: &Path, config: &Path, log: PathBuf, log_filter: &str) -> Result<Agent> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(agent_bin)
            .args(["run", "--config"])
            .arg(config)
            .env("FORESTSYNC_LOG", log_filter)
            .env("FORESTSYNC_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", agent_bin.display()))?;
        Ok(Agent { child, log })
    }

    /// The agent's process id (for /proc samples).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the agent's log goes (for error messages).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The agent's log so far.
    pub fn log(&self) -> Result<String> {
        std::fs::read_to_string(&self.log)
            .with_context(|| format!("reading {}", self.log.display()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

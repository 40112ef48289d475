//! The JumpCloud side of the lab benchmarks: an in-process emulator and a small client for its public
//! API (what an admin does in the console).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// An emulator over HTTPS that accepts `api_key`; with `request_log`, every `/api` request is appended
/// to that file as one JSON line.
pub async fn start_emulator(
    api_key: &str,
    request_log: Option<PathBuf>,
) -> Result<jcemu::Emulator> {
    jcemu::Emulator::start(jcemu::Config {
        api_keys: vec![api_key.into()],
        request_log,
        ..jcemu::Config::default()
    })
    .await
    .context("starting the emulator")
}

pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    pub fn new(emu: &jcemu::Emulator, api_key: &str) -> Result<Api> {
        let ca_pem = emu.ca_pem().context("the emulator serves HTTPS")?;
        Ok(Api {
            http: reqwest::Client::builder()
                .use_rustls_tls()
                .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
                .build()?,
            base: emu.base_url(),
            key: api_key.to_owned(),
        })
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut r = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("x-api-key", &self.key);
        if let Some(b) = &body {
            r = r.json(b);
        }
        let resp = r.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{method} {path} -> {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A new AD instance for the domain `domain_dn` → its id.
    pub async fn ad_instance(&self, domain_dn: &str) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/api/v2/activedirectories",
                Some(json!({"domain": domain_dn, "useCase": "JCASAUTHORITY"})),
            )
            .await?;
        Ok(v["id"].as_str().context("AD instance id")?.to_owned())
    }

    /// A one-time connect key for a sync agent of AD instance `ad`.
    pub async fn connect_key(&self, ad: &str) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v2/activedirectories/{ad}/agents"),
                Some(json!({"agentType": "SYNC"})),
            )
            .await?;
        Ok(v["connectKey"].as_str().context("connect key")?.to_owned())
    }

    /// An active user (email `<username>@example.test`, last name = username) bound to AD instance
    /// `ad` → its id.
    pub async fn bound_user(&self, ad: &str, username: &str, firstname: &str) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/api/systemusers",
                Some(json!({"username": username, "email": format!("{username}@example.test"), "firstname": firstname, "lastname": username, "state": "ACTIVATED"})),
            )
            .await?;
        let id = v["_id"].as_str().context("user id")?.to_owned();
        self.call(
            reqwest::Method::POST,
            &format!("/api/v2/activedirectories/{ad}/associations"),
            Some(json!({"op": "add", "type": "user", "id": id})),
        )
        .await?;
        Ok(id)
    }

    /// Changes fields of user `id` (`PUT /api/systemusers/{id}`).
    pub async fn update_user(&self, id: &str, fields: Value) -> Result<()> {
        self.call(
            reqwest::Method::PUT,
            &format!("/api/systemusers/{id}"),
            Some(fields),
        )
        .await
        .map(drop)
    }
}

/// The user named `username` in the emulator's state document.
pub fn find_user<'a>(state: &'a Value, username: &str) -> Option<&'a Value> {
    state["users"]
        .as_array()?
        .iter()
        .find(|u| u["username"] == username)
}

/// Waits until the emulator holds a user named each of `usernames` (the agent's initial sync), for
/// at most 300 s; the error names the agent's log.
pub async fn wait_for_users<'a>(
    emu: &jcemu::Emulator,
    usernames: impl Iterator<Item = &'a str> + Clone,
    agent: &crate::agent::Agent,
) -> Result<()> {
    let started = std::time::Instant::now();
    while !usernames
        .clone()
        .all(|name| find_user(&emu.state(), name).is_some())
    {
        if started.elapsed() > std::time::Duration::from_secs(300) {
            bail!(
                "initial sync did not finish; see {}",
                agent.log_path().display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

/// How many requests in the emulator's request log (JSON lines) are writes by a forestsync agent:
/// its User-Agent starts with `forestsync/`, its method is not GET.
pub fn agent_writes(request_log: &Path) -> Result<usize> {
    let text = match std::fs::read_to_string(request_log) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", request_log.display())),
    };
    let mut writes = 0;
    // A line without its newline is still being written: it is counted next time.
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let request: Value = serde_json::from_str(line)
            .with_context(|| format!("a line of {}: {line}", request_log.display()))?;
        let by_agent = request["user_agent"]
            .as_str()
            .is_some_and(|a| a.starts_with("forestsync/"));
        if by_agent && request["method"] != "GET" {
            writes += 1;
        }
    }
    Ok(writes)
}

//! JumpCloud → AD latency on the lab (jumpcloud-authoritative mode): a change made through JumpCloud's
//! public API (suspend/activate, password set), from the moment the API answered until the lab DC shows
//! the result, through a real registered `forestsync run` agent. Prints one JSON line per scenario.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use forestsync_actors::directory::DcSession;
use serde_json::{json, Value};

use crate::latency::{attr, figures, lab_setup, KillOnDrop, LabSetup};

const KEY: &str = "sync-latency-key";

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut r = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("x-api-key", KEY);
        if let Some(b) = &body {
            r = r.json(b);
        }
        let resp = r.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{method} {path} -> {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

async fn uac(admin: &mut DcSession, dn: &str) -> Result<Option<u32>> {
    Ok(admin
        .read_entry(dn, &["userAccountControl"])
        .await?
        .and_then(|e| {
            e.attrs
                .get("userAccountControl")
                .and_then(|v| v.first().cloned())
        })
        .and_then(|v| v.parse().ok()))
}

async fn marker(admin: &mut DcSession, dn: &str) -> Result<Option<String>> {
    Ok(admin
        .read_entry(dn, &["adminDescription"])
        .await?
        .and_then(|e| {
            e.attrs
                .get("adminDescription")
                .and_then(|v| v.first().cloned())
        }))
}

pub async fn run(users: usize, changes: usize, agent_bin: Option<PathBuf>) -> Result<()> {
    let LabSetup {
        vars,
        agent_bin,
        mut admin,
        base_dn: base,
    } = lab_setup(agent_bin).await?;
    let tag = format!("sl{:x}", std::process::id());
    let ou = format!("OU={tag},OU=ForestSync,{base}");
    admin
        .add(
            &ou,
            vec![attr("objectClass", &["top", "organizationalUnit"])],
        )
        .await?;
    let result = measure(&mut admin, &vars, &agent_bin, &ou, &tag, users, changes).await;
    if let Ok(children) = admin
        .search(
            &ou,
            ldap3::Scope::OneLevel,
            "(objectClass=*)",
            &["1.1"],
            "cleanup",
        )
        .await
    {
        for c in children {
            let _ = admin.delete(&c.dn).await;
        }
    }
    let _ = admin.delete(&ou).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    admin: &mut DcSession,
    vars: &std::collections::HashMap<String, String>,
    agent_bin: &Path,
    ou: &str,
    tag: &str,
    users: usize,
    changes: usize,
) -> Result<()> {
    let get = |k: &str| vars.get(k).cloned().with_context(|| format!("{k} not set"));
    let emu = jcemu::Emulator::start(jcemu::Config {
        api_keys: vec![KEY.into()],
        ..jcemu::Config::default()
    })
    .await?;
    let ca_pem = emu.ca_pem().unwrap_or_default();
    let api = Api {
        http: reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
            .build()?,
        base: emu.base_url(),
    };
    let base_dn = get("LAB_ALPHA_BASE_DN")?;
    let ad = api
        .call(
            reqwest::Method::POST,
            "/api/v2/activedirectories",
            Some(json!({"domain": base_dn, "useCase": "JCASAUTHORITY"})),
        )
        .await?["id"]
        .as_str()
        .context("AD instance id")?
        .to_owned();
    let key = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v2/activedirectories/{ad}/agents"),
            Some(json!({"agentType": "SYNC"})),
        )
        .await?["connectKey"]
        .as_str()
        .context("connect key")?
        .to_owned();
    let dir = std::env::temp_dir().join(format!("forestsync-sync-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("jcemu-ca.pem"), &ca_pem)?;
    let config = dir.join("forestsync.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"jumpcloud-authoritative\"\nstate_dir = \"state\"\n[jumpcloud]\nbase_url = \"{url}\"\napi_key = \"{KEY}\"\nca_file = \"jcemu-ca.pem\"\nrate_limit_per_minute = 60000\nburst = 200\n[[domain]]\nname = \"alpha\"\ndcs = [\"{dc1}\", \"{dc2}\"]\nca_file = \"{ca}\"\nbind_dn = \"{bind}\"\nbind_password = \"{pw}\"\nbase_dn = \"{base_dn}\"\nad_instance_id = \"{ad}\"\ntarget_ou = \"{ou}\"\n",
            url = emu.base_url(),
            dc1 = get("LAB_ALPHA_DC1_URL")?,
            dc2 = get("LAB_ALPHA_DC2_URL")?,
            ca = get("LAB_CA_FILE")?,
            bind = get("LAB_ALPHA_BIND_DN")?,
            pw = get("LAB_ALPHA_BIND_PASSWORD")?,
        ),
    )?;
    let out = Command::new(agent_bin)
        .args(["register", "--config"])
        .arg(&config)
        .args(["--domain", "alpha", "--connect-key", &key])
        .output()?;
    if !out.status.success() {
        bail!("register failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut ids = Vec::new();
    for i in 0..users {
        let name = format!("{tag}u{i}");
        let v = api
            .call(
                reqwest::Method::POST,
                "/api/systemusers",
                Some(json!({"username": name, "email": format!("{name}@example.test"), "firstname": "Sync", "lastname": name, "state": "ACTIVATED"})),
            )
            .await?;
        let id = v["_id"].as_str().context("user id")?.to_owned();
        api.call(
            reqwest::Method::POST,
            &format!("/api/v2/activedirectories/{ad}/associations"),
            Some(json!({"op": "add", "type": "user", "id": id})),
        )
        .await?;
        ids.push((id, format!("CN={name},{ou}")));
    }
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let started = Instant::now();
    let _agent = KillOnDrop(
        Command::new(agent_bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("FORESTSYNC_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    for (_, dn) in &ids {
        while uac(admin, dn).await?.is_none_or(|u| u & 2 != 0) {
            if started.elapsed() > Duration::from_secs(300) {
                bail!(
                    "initial sync did not finish; see {}",
                    dir.join("agent.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"scenario": "jumpcloud-initial-to-ad", "users": users, "seconds": seconds, "objects_per_second": users as f64 / seconds})
    );

    let mut samples = Vec::new();
    for i in 0..changes {
        let (id, dn) = &ids[i % ids.len()];
        let suspend = (i / ids.len()) % 2 == 0;
        let state = if suspend { "SUSPENDED" } else { "ACTIVATED" };
        api.call(
            reqwest::Method::PUT,
            &format!("/api/systemusers/{id}"),
            Some(json!({"state": state})),
        )
        .await?;
        let t0 = Instant::now();
        while uac(admin, dn)
            .await?
            .is_none_or(|u| (u & 2 != 0) != suspend)
        {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!(
                    "{dn} never became {state}; see {}",
                    dir.join("agent.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!("{}", figures("jumpcloud-change-to-ad", samples));

    let mut samples = Vec::new();
    for i in 0..changes {
        let (id, dn) = &ids[i % ids.len()];
        let before = marker(admin, dn).await?;
        let password = format!("Bench!{i}x{}Qz9", std::process::id());
        api.call(
            reqwest::Method::POST,
            &format!("/api/systemusers/{id}/password"),
            Some(json!({"password": password})),
        )
        .await?;
        let t0 = Instant::now();
        while marker(admin, dn).await? == before {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the password of {dn} never reached AD; see {}",
                    dir.join("agent.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!("{}", figures("jumpcloud-password-to-ad", samples));
    emu.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

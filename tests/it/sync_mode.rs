//! JumpCloud-authoritative mode end to end: the real `forestsync register` and `forestsync run` against
//! the lab DCs and the emulator. Each test has its own emulator, AD instance, agent(s) and target OU
//! (a fresh OU under the lab's OU=ForestSync, where the service account is delegated), makes changes
//! through JumpCloud's public API and waits for AD to follow.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use forestsync_actors::directory::DcSession;
use serde_json::{json, Value};

use crate::import_mode::{emulator, scratch, Agent, API_KEY};
use crate::support::{self, attr, unique, Lab, LabDomain};

pub const SYNC: Duration = Duration::from_secs(30);

/// A small admin client for JumpCloud's public API (what an admin does in the console).
pub struct JcAdmin {
    http: reqwest::Client,
    base: String,
}

impl JcAdmin {
    pub fn new(emu: &jcemu::Emulator) -> JcAdmin {
        let ca = reqwest::Certificate::from_pem(emu.ca_pem().unwrap().as_bytes()).unwrap();
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(ca)
            .build()
            .unwrap();
        JcAdmin {
            http,
            base: emu.base_url(),
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("x-api-key", API_KEY);
        if let Some(b) = &body {
            r = r.json(b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(
            status.is_success(),
            "{method} {path} {body:?} -> {status}: {text}"
        );
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Value {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// An AD instance for `domain_dn` → its id.
    pub async fn ad_instance(&self, domain_dn: &str) -> String {
        let v = self
            .post(
                "/api/v2/activedirectories",
                json!({"domain": domain_dn, "useCase": "JCASAUTHORITY"}),
            )
            .await;
        v["id"].as_str().unwrap().to_owned()
    }

    /// A sync agent's one-time connect key.
    pub async fn connect_key(&self, ad: &str) -> String {
        let v = self
            .post(
                &format!("/api/v2/activedirectories/{ad}/agents"),
                json!({"agentType": "SYNC"}),
            )
            .await;
        v["connectKey"].as_str().unwrap().to_owned()
    }

    pub async fn user(&self, username: &str, extra: Value) -> String {
        let mut body = json!({
            "username": username,
            "email": format!("{username}@example.test"),
            "firstname": "Jo",
            "lastname": username,
            "state": "ACTIVATED",
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let v = self.post("/api/systemusers", body).await;
        v["_id"].as_str().unwrap().to_owned()
    }

    pub async fn group(&self, name: &str) -> String {
        let v = self
            .post(
                "/api/v2/usergroups",
                json!({"name": name, "description": "from JumpCloud"}),
            )
            .await;
        v["id"].as_str().unwrap().to_owned()
    }

    pub async fn bind(&self, ad: &str, kind: &str, id: &str, op: &str) {
        self.post(
            &format!("/api/v2/activedirectories/{ad}/associations"),
            json!({"op": op, "type": kind, "id": id}),
        )
        .await;
    }

    pub async fn member(&self, group: &str, user: &str, op: &str) {
        self.post(
            &format!("/api/v2/usergroups/{group}/members"),
            json!({"op": op, "type": "user", "id": user}),
        )
        .await;
    }

    pub async fn set_password(&self, user: &str, password: &str) {
        self.post(
            &format!("/api/systemusers/{user}/password"),
            json!({"password": password}),
        )
        .await;
    }

    /// The syncStatus JumpCloud shows for `user` on the AD instance (from the agent's reports).
    pub async fn sync_status(&self, ad: &str, user: &str) -> Value {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v2/activedirectories/{ad}/users?syncStatus=true&limit=100"),
                None,
            )
            .await;
        v.as_array()
            .into_iter()
            .flatten()
            .find(|u| u["id"] == user)
            .map(|u| u["syncStatus"].clone())
            .unwrap_or(Value::Null)
    }
}

/// A fresh OU under the lab's OU=ForestSync (the service account's delegation is inherited).
pub struct TargetOu {
    pub dn: String,
    pub admin: DcSession,
}

impl TargetOu {
    pub async fn new(lab: &Lab, d: &LabDomain, tag: &str) -> TargetOu {
        let mut admin = support::admin_session(lab, d, &d.dc_urls[0]).await;
        let dn = format!("OU={},OU=ForestSync,{}", unique(tag), d.base_dn);
        admin
            .add(
                &dn,
                vec![attr("objectClass", &["top", "organizationalUnit"])],
            )
            .await
            .unwrap();
        TargetOu { dn, admin }
    }

    /// The entry `CN=<cn>` in the OU with the given attributes, or `None`.
    pub async fn entry(&mut self, cn: &str, attrs: &[&str]) -> Option<ldap3::SearchEntry> {
        let dn = format!("CN={cn},{}", self.dn);
        self.admin.read_entry(&dn, attrs).await.unwrap()
    }

    pub async fn first(&mut self, cn: &str, a: &str) -> Option<String> {
        self.entry(cn, &[a])
            .await
            .and_then(|e| e.attrs.get(a).and_then(|v| v.first().cloned()))
    }

    /// Deletes the OU and everything in it.
    pub async fn cleanup(mut self) {
        let dn = self.dn.clone();
        if let Ok(children) = self
            .admin
            .search(
                &dn,
                ldap3::Scope::OneLevel,
                "(objectClass=*)",
                &["1.1"],
                "cleanup",
            )
            .await
        {
            for c in children {
                let _ = self.admin.delete(&c.dn).await;
            }
        }
        let _ = self.admin.delete(&dn).await;
    }
}

/// The jumpcloud-authoritative config for one domain.
pub fn sync_config(
    lab: &Lab,
    emu: &jcemu::Emulator,
    dir: &Path,
    d: &LabDomain,
    ad: &str,
    ou: &str,
    extra: &str,
) -> String {
    let ca = dir.join("jcemu-ca.pem");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&ca, emu.ca_pem().unwrap()).unwrap();
    format!(
        "mode = \"jumpcloud-authoritative\"\nstate_dir = \"{state}\"\n\n[jumpcloud]\nbase_url = \"{url}\"\napi_key = \"{API_KEY}\"\nca_file = \"{ca}\"\nrate_limit_per_minute = 60000\nburst = 200\n\n[safety]\nmax_removal_percent = 100\n\n[[domain]]\nname = \"alpha\"\ndcs = [{dcs}]\nca_file = \"{labca}\"\nbind_dn = \"{bind}\"\nbind_password = \"{pw}\"\nbase_dn = \"{base}\"\nad_instance_id = \"{ad}\"\ntarget_ou = \"{ou}\"\n{extra}",
        state = dir.join("state").display(),
        url = emu.base_url(),
        ca = ca.display(),
        dcs = d.dc_urls.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", "),
        labca = lab.ca_file.display(),
        bind = d.bind_dn,
        pw = d.bind_password.expose(),
        base = d.base_dn,
    )
}

/// `forestsync register` with `key`; (success, stdout + stderr).
pub fn register(config: &Path, key: &str, force: bool) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_forestsync"));
    cmd.args(["register", "--config"]).arg(config).args([
        "--domain",
        "alpha",
        "--connect-key",
        key,
    ]);
    if force {
        cmd.arg("--force");
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Writes the config, registers with a fresh connect key, starts the agent.
pub async fn start_agent(jc: &JcAdmin, ad: &str, dir: PathBuf, text: &str) -> Agent {
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("forestsync.toml");
    std::fs::write(&config, text).unwrap();
    let (ok, out) = register(&config, &jc.connect_key(ad).await, false);
    assert!(ok, "register failed: {out}");
    Agent::start(dir, text)
}

/// Polls AD (through `check`) until it returns `Some`, or fails after `within` with the agent log.
pub async fn wait_ad<T>(
    ou: &mut TargetOu,
    agent: &Agent,
    within: Duration,
    what: &str,
    mut check: impl for<'a> FnMut(
        &'a mut TargetOu,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Option<T>> + 'a>,
    >,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check(ou).await {
            return v;
        }
        if started.elapsed() > within {
            panic!(
                "timed out after {within:?} waiting for: {what}\nagent log:\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const UAC_DISABLED: u32 = 2;

fn uac(v: Option<String>) -> Option<u32> {
    v.and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn users_follow_jumpcloud_create_update_suspend_activate_unbind_delete() {
    let Some(lab) = support::lab() else { return };
    let emu = emulator(jcemu::Config::default()).await;
    let jc = JcAdmin::new(&emu);
    let ad = jc.ad_instance(&lab.alpha.base_dn).await;
    let mut ou = TargetOu::new(lab, &lab.alpha, "sync-users").await;
    let dir = scratch("sync-users");
    let text = sync_config(lab, &emu, &dir, &lab.alpha, &ad, &ou.dn, "");
    let tag = unique("u");
    let (a, b) = (
        format!("{}a", &tag[..tag.len().min(14)]),
        format!("{}b", &tag[..tag.len().min(14)]),
    );
    let ua = jc.user(&a, json!({"jobTitle": "Ops"})).await;
    let ub = jc.user(&b, json!({})).await;
    jc.bind(&ad, "user", &ua, "add").await;
    let agent = start_agent(&jc, &ad, dir, &text).await;

    // Created (enabled) by the initial reconcile; the unbound user is not.
    let a2 = a.clone();
    let created = wait_ad(
        &mut ou,
        &agent,
        SYNC,
        "user a created and enabled",
        move |ou| {
            let a = a2.clone();
            Box::pin(async move {
                uac(ou.first(&a, "userAccountControl").await).filter(|u| u & UAC_DISABLED == 0)
            })
        },
    )
    .await;
    assert_eq!(created & UAC_DISABLED, 0);
    assert_eq!(
        ou.first(&a, "userPrincipalName").await.unwrap(),
        format!("{a}@alpha.test")
    );
    assert_eq!(ou.first(&a, "sn").await.unwrap(), a);
    assert!(
        ou.entry(&b, &["cn"]).await.is_none(),
        "an unbound user is not created"
    );

    // Bound later → created; updated; suspended; activated.
    jc.bind(&ad, "user", &ub, "add").await;
    let b2 = b.clone();
    wait_ad(&mut ou, &agent, SYNC, "user b created", move |ou| {
        let b = b2.clone();
        Box::pin(async move { ou.first(&b, "cn").await })
    })
    .await;
    jc.put(
        &format!("/api/systemusers/{ua}"),
        json!({"lastname": "Renamed"}),
    )
    .await;
    let a2 = a.clone();
    wait_ad(&mut ou, &agent, SYNC, "sn updated", move |ou| {
        let a = a2.clone();
        Box::pin(async move { ou.first(&a, "sn").await.filter(|v| v == "Renamed") })
    })
    .await;
    jc.put(
        &format!("/api/systemusers/{ua}"),
        json!({"state": "SUSPENDED"}),
    )
    .await;
    let a2 = a.clone();
    wait_ad(&mut ou, &agent, SYNC, "suspended → disabled", move |ou| {
        let a = a2.clone();
        Box::pin(async move {
            uac(ou.first(&a, "userAccountControl").await).filter(|u| u & UAC_DISABLED != 0)
        })
    })
    .await;
    jc.put(
        &format!("/api/systemusers/{ua}"),
        json!({"state": "ACTIVATED"}),
    )
    .await;
    let a2 = a.clone();
    wait_ad(&mut ou, &agent, SYNC, "activated → enabled", move |ou| {
        let a = a2.clone();
        Box::pin(async move {
            uac(ou.first(&a, "userAccountControl").await).filter(|u| u & UAC_DISABLED == 0)
        })
    })
    .await;

    // Unbound → disabled (the default), kept; deleted in JumpCloud → disabled too.
    jc.bind(&ad, "user", &ua, "remove").await;
    let a2 = a.clone();
    wait_ad(&mut ou, &agent, SYNC, "unbound → disabled", move |ou| {
        let a = a2.clone();
        Box::pin(async move {
            uac(ou.first(&a, "userAccountControl").await).filter(|u| u & UAC_DISABLED != 0)
        })
    })
    .await;
    jc.delete(&format!("/api/systemusers/{ub}")).await;
    let b2 = b.clone();
    wait_ad(&mut ou, &agent, SYNC, "deleted → disabled", move |ou| {
        let b = b2.clone();
        Box::pin(async move {
            uac(ou.first(&b, "userAccountControl").await).filter(|u| u & UAC_DISABLED != 0)
        })
    })
    .await;
    assert!(
        ou.entry(&a, &["cn"]).await.is_some() && ou.entry(&b, &["cn"]).await.is_some(),
        "disable keeps the accounts"
    );
    drop(agent);
    ou.cleanup().await;
}

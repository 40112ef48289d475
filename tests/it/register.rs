//! `forestsync register` as the admin runs it: the real binary, a config file and the emulator's agent
//! channel (tests/jcemu/AGENT-CHANNEL.md). A connect key is redeemed once; the credentials land
//! sealed and private under state_dir; a used or expired key is refused naming the fix; secrets are
//! never printed. Then the stored credentials drive the engine's channel client (poll, password
//! payload, report). No lab DC is needed: register only reads the config.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use forestsync_actors::channel::{
    self, AgentChannel, AgentCredentials, EventKind, HttpChannel, Report, ReportCode, ReportKind,
    Role,
};
use forestsync_actors::sealed::SealKey;
use forestsync_actors::trust;
use serde_json::{json, Value};

use crate::support::unique;

const API_KEY: &str = "register-test-key-0123456789";

struct Env {
    emu: jcemu::Emulator,
    http: reqwest::Client,
    dir: PathBuf,
    ca: PathBuf,
    config: PathBuf,
}

impl Env {
    async fn start() -> Env {
        let emu = jcemu::Emulator::start(jcemu::Config {
            api_keys: vec![API_KEY.into()],
            ..jcemu::Config::default()
        })
        .await
        .expect("emulator starts");
        let dir = std::env::temp_dir().join(unique("forestsync-register-"));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("jcemu-ca.pem");
        let pem = emu.ca_pem().expect("HTTPS emulator has a CA");
        std::fs::write(&ca, &pem).unwrap();
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        let config = dir.join("forestsync.toml");
        // The DCs are never contacted by `register`; they only have to be valid config.
        std::fs::write(
            &config,
            format!(
                r#"mode = "ad-authoritative"
state_dir = "state"
[jumpcloud]
base_url = "{base}"
api_key = "{API_KEY}"
ca_file = "{ca}"

[[domain]]
name = "alpha"
dcs = ["ldaps://127.0.0.2"]
bind_dn = "CN=svc-forestsync,CN=Users,DC=alpha,DC=test"
bind_password = "not-used-here"
base_dn = "DC=alpha,DC=test"
root_group_dn = "CN=JumpCloud,OU=ADI,DC=alpha,DC=test"

[[domain]]
name = "beta"
dcs = ["ldaps://127.0.0.3"]
bind_dn = "CN=svc-forestsync,CN=Users,DC=beta,DC=test"
bind_password = "not-used-here"
base_dn = "DC=beta,DC=test"
root_group_dn = "CN=JumpCloud,OU=ADI,DC=beta,DC=test"
"#,
                base = emu.base_url(),
                ca = ca.display(),
            ),
        )
        .unwrap();
        Env {
            emu,
            http,
            dir,
            ca,
            config,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.emu.base_url()))
            .header("x-api-key", API_KEY);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let r = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {status} {v}");
        v
    }

    /// `POST /api/v2/activedirectories` (public API).
    async fn create_ad(&self, domain: &str) -> String {
        let v = self
            .post("/api/v2/activedirectories", json!({"domain": domain}))
            .await;
        v["id"].as_str().expect("AD id").to_owned()
    }

    /// `POST /api/v2/activedirectories/{ad}/agents` → (agent id, connect key).
    async fn connect_key(&self, ad: &str) -> (String, String) {
        let v = self
            .post(
                &format!("/api/v2/activedirectories/{ad}/agents"),
                json!({"agentType": "SYNC"}),
            )
            .await;
        (
            v["id"].as_str().expect("agent id").to_owned(),
            v["connectKey"].as_str().expect("connectKey").to_owned(),
        )
    }
}

/// Runs `forestsync register --config … <args>` with `env` added; (success, stdout + stderr).
fn run_register(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_forestsync"));
    cmd.args(["register", "--config"])
        .arg(config)
        .args(args)
        .env_remove("FORESTSYNC_CONNECT_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("forestsync runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn register(config: &Path, args: Vec<String>, env: Vec<(String, String)>) -> (bool, String) {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_register(&config, &args, &env)
    })
    .await
    .unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn register_seals_credentials_and_refuses_used_and_expired_keys() {
    let env = Env::start().await;
    let ad = env.create_ad("DC=alpha;DC=test").await;
    let (agent, key) = env.connect_key(&ad).await;

    // The key from a file (kept off the command line).
    let key_file = env.dir.join("connect-key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let (ok, out) = register(
        &env.config,
        strings(&[
            "--domain",
            "alpha",
            "--connect-key-file",
            key_file.to_str().unwrap(),
        ]),
        vec![],
    )
    .await;
    assert!(ok, "register failed:\n{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("registered"))
        .unwrap_or_else(|| panic!("no success line:\n{out}"));
    assert!(line.contains(&agent), "{line}");
    assert!(line.contains(&ad), "{line}");
    assert!(line.contains("primary"), "{line}");
    let creds_path = env.state_dir().join("agent-alpha.sealed");
    assert!(line.contains(&creds_path.display().to_string()), "{line}");

    // Sealed and private: mode 0600 (state dir 0700), neither the key nor the agent secret in clear.
    let meta = std::fs::metadata(&creds_path).expect("credentials file exists");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(env.state_dir()).unwrap().mode() & 0o777,
        0o700
    );
    let seal_key_path = channel::seal_key_path(&env.state_dir());
    assert_eq!(
        std::fs::metadata(&seal_key_path).unwrap().mode() & 0o777,
        0o600
    );
    let stored = std::fs::read(&creds_path).unwrap();
    let contains = |needle: &str| stored.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        !contains(&key),
        "connect key in clear in the credentials file"
    );
    let seal_key = SealKey::load(&seal_key_path).unwrap();
    let creds = AgentCredentials::load(&creds_path, &seal_key)
        .unwrap()
        .expect("credentials stored");
    assert_eq!(creds.agent_id, agent);
    assert_eq!(creds.activedirectory_id, ad);
    assert_eq!(creds.agent_secret.expose().len(), 64);
    assert!(
        !contains(creds.agent_secret.expose()),
        "agent secret in clear in the credentials file"
    );
    assert!(!out.contains(creds.agent_secret.expose()) && !out.contains(&key));

    // The emulator saw this host.
    let state = env.emu.state();
    let a = state["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["id"] == agent.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(a["state"], "active", "{a}");
    assert_eq!(
        a["hostname"].as_str(),
        channel::local_hostname().as_deref(),
        "{a}"
    );

    // Existing credentials: refused without --force, before the key is sent.
    let (agent2, key2) = env.connect_key(&ad).await;
    let (ok, out) = register(
        &env.config,
        strings(&["--domain", "alpha"]),
        vec![("FORESTSYNC_CONNECT_KEY".into(), key2.clone())],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("already has agent credentials"), "{out}");
    assert!(out.contains("--force"), "{out}");
    assert!(!out.contains(&key2));

    // The used key again (with --force to get past the stored credentials): "already used".
    let (ok, out) = register(
        &env.config,
        strings(&["--domain", "alpha", "--force", "--connect-key", &key]),
        vec![],
    )
    .await;
    assert!(!ok, "a used key must fail:\n{out}");
    assert!(out.contains("already used"), "{out}");
    assert!(out.contains("Install New Agent"), "{out}");
    assert!(!out.contains(&key), "the key was printed:\n{out}");
    // ...and the stored credentials are untouched.
    let still = AgentCredentials::load(&creds_path, &seal_key)
        .unwrap()
        .unwrap();
    assert_eq!(still.agent_id, agent);

    // Two key sources at once: refused.
    let (ok, out) = register(
        &env.config,
        strings(&["--domain", "alpha", "--force", "--connect-key", &key2]),
        vec![("FORESTSYNC_CONNECT_KEY".into(), key2.clone())],
    )
    .await;
    assert!(!ok && out.contains("more than once"), "{out}");

    // Unknown domain: the configured names are listed.
    let (ok, out) = register(
        &env.config,
        strings(&["--domain", "gamma", "--connect-key", &key2]),
        vec![],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("gamma") && out.contains("alpha") && out.contains("beta"),
        "{out}"
    );

    // The second key, 8 days later: "expired".
    let (status, v) = env
        .call(
            reqwest::Method::POST,
            "/__emulator/clock",
            Some(json!({"advance_seconds": 8 * 24 * 3600})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (ok, out) = register(
        &env.config,
        strings(&["--domain", "alpha", "--force"]),
        vec![("FORESTSYNC_CONNECT_KEY".into(), key2.clone())],
    )
    .await;
    assert!(!ok, "an expired key must fail:\n{out}");
    assert!(out.contains("expired"), "{out}");
    assert!(out.contains("Install New Agent"), "{out}");
    assert!(!out.contains(&key2));
    let agents = env.emu.state()["agents"].clone();
    let a2 = agents
        .as_array()
        .and_then(|a| a.iter().find(|x| x["id"] == agent2.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    assert_ne!(a2["state"], "active", "{a2}");

    env.emu.shutdown().await;
    let _ = std::fs::remove_dir_all(&env.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registered_agent_polls_decrypts_its_passwords_and_reports() {
    let env = Env::start().await;
    let ad = env.create_ad("DC=beta;DC=test").await;
    let (agent, key) = env.connect_key(&ad).await;
    let (ok, out) = register(
        &env.config,
        strings(&["--domain", "beta"]),
        vec![("FORESTSYNC_CONNECT_KEY".into(), key)],
    )
    .await;
    assert!(ok, "{out}");

    let state = env.state_dir();
    let seal_key = SealKey::load(&channel::seal_key_path(&state)).unwrap();
    let creds = AgentCredentials::load(&channel::credentials_path(&state, "beta"), &seal_key)
        .unwrap()
        .unwrap();
    let tls = trust::client_config(Some(&env.ca)).unwrap();
    let base = channel::channel_base_from_api_url(&format!("{}/api", env.emu.base_url())).unwrap();
    let ch = HttpChannel::new(base, tls, creds, Duration::from_secs(5)).unwrap();
    assert_eq!(ch.agent_id(), agent);

    let first = ch.poll(0, Duration::ZERO).await.unwrap();
    assert_eq!(first.role, Role::Primary, "{first:?}");
    assert_eq!(first.primary_agent.as_deref(), Some(agent.as_str()));

    // A user bound to this AD instance gets a password: the event carries it for this agent.
    let user = env
        .post(
            "/api/systemusers",
            json!({"username": "regtest", "email": "regtest@beta.test"}),
        )
        .await["_id"]
        .as_str()
        .expect("user id")
        .to_owned();
    env.post(
        &format!("/api/v2/activedirectories/{ad}/associations"),
        json!({"op": "add", "type": "user", "id": user}),
    )
    .await;
    let password = "Reg1ster!Passw0rd";
    env.post(
        &format!("/api/systemusers/{user}/password"),
        json!({ "password": password }),
    )
    .await;

    let page = ch.poll(first.acked, Duration::from_secs(5)).await.unwrap();
    let ev = page
        .events
        .iter()
        .find(|e| e.kind == EventKind::Password && e.id == user)
        .unwrap_or_else(|| panic!("no password event: {page:?}"));
    assert!(!format!("{page:?}").contains(password));
    let got = ch
        .open_password(ev)
        .unwrap()
        .expect("payload for this agent");
    assert_eq!(got.expose(), password);

    // A long poll with nothing new waits, then returns empty (and acknowledges what it read).
    let head = page.head;
    let started = std::time::Instant::now();
    let idle = ch.poll(head, Duration::from_millis(600)).await.unwrap();
    assert!(idle.events.is_empty(), "{idle:?}");
    assert_eq!(idle.acked, head);
    assert!(started.elapsed() >= Duration::from_millis(500));

    ch.report(vec![Report {
        kind: ReportKind::Password,
        id: user.clone(),
        seq: ev.seq,
        code: ReportCode::Ok,
        message: String::new(),
    }])
    .await
    .unwrap();
    let reports = env.emu.state()["agentReports"].to_string();
    assert!(reports.contains(&user), "{reports}");

    // The agent removed in JumpCloud: its credentials are refused as fatal, naming the fix.
    let (status, _) = env
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v2/activedirectories/{ad}/agents/{agent}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let err = ch.poll(head, Duration::ZERO).await.unwrap_err();
    assert!(
        err.to_string().contains("run forestsync register again"),
        "{err}"
    );
    assert_eq!(
        forestsync_actors::disposition::Classified::disposition(&err),
        forestsync_actors::disposition::Disposition::Fatal
    );

    env.emu.shutdown().await;
    let _ = std::fs::remove_dir_all(&env.dir);
}

//! Test harness: an in-process emulator and a reqwest client that trusts its CA.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use jcemu::{Config, Emulator};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

pub const KEY: &str = "test-key";

pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn total(&self) -> Option<usize> {
        self.header("x-total-count").and_then(|v| v.parse().ok())
    }

    pub fn id(&self) -> String {
        self.json
            .get("_id")
            .or_else(|| self.json.get("id"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }
}

pub struct Emu {
    pub emu: Emulator,
    pub client: reqwest::Client,
    pub base: String,
    pub key: String,
}

pub fn config() -> Config {
    Config {
        api_key: KEY.into(),
        ..Config::default()
    }
}

pub async fn start(cfg: Config) -> Emu {
    let emu = Emulator::start(cfg).await.expect("emulator starts");
    let mut b = reqwest::Client::builder().tls_built_in_root_certs(false);
    if let Some(pem) = emu.ca_pem() {
        b = b.add_root_certificate(
            reqwest::Certificate::from_pem(pem.as_bytes()).expect("CA PEM parses"),
        );
    }
    let client = b.build().expect("client builds");
    let base = emu.base_url();
    Emu {
        emu,
        client,
        base,
        key: KEY.into(),
    }
}

pub async fn default() -> Emu {
    start(config()).await
}

/// The shared spec folder: `JC_SPEC_DIR` or `../shared/jumpcloud-api` next to the repository.
pub fn spec_dir() -> PathBuf {
    std::env::var_os("JC_SPEC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/jumpcloud-api"
            ))
        })
}

/// The contract, parsed once per test binary.
pub fn contract() -> Arc<jcemu::spec::Contract> {
    static C: OnceLock<Arc<jcemu::spec::Contract>> = OnceLock::new();
    C.get_or_init(|| {
        let dir = spec_dir();
        assert!(
            dir.join("api/1.0/index.yaml").is_file() && dir.join("api/2.0/index.yaml").is_file(),
            "JumpCloud spec files not found under {} (set JC_SPEC_DIR)",
            dir.display()
        );
        Arc::new(
            jcemu::spec::Contract::load(&dir)
                .unwrap_or_else(|e| panic!("loading the spec from {}: {e}", dir.display())),
        )
    })
    .clone()
}

pub fn temp_path(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("jcemu-{}-{nanos}-{name}", std::process::id()))
}

impl Emu {
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut rb = self.client.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(serde_json::to_vec(b).expect("serialises"));
        }
        let r = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {path}: {e}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        Resp {
            status,
            headers,
            json,
            text,
        }
    }

    /// An `/api` call with the API key.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Resp {
        let key = self.key.clone();
        self.raw(
            method,
            path,
            body,
            &[("x-api-key", &key), ("accept", "application/json")],
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }

    /// An `/__emulator` call (no key).
    pub async fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Resp {
        self.raw(method, &format!("/__emulator{path}"), body, &[])
            .await
    }

    pub async fn create_user(&self, username: &str) -> String {
        let r = self
            .post(
                "/api/systemusers",
                &serde_json::json!({"username": username, "email": format!("{username}@example.test"),
                                    "firstname": "F", "lastname": "L"}),
            )
            .await;
        assert_eq!(r.status, 200, "create {username}: {}", r.text);
        r.id()
    }

    pub async fn create_group(&self, name: &str) -> String {
        let r = self
            .post("/api/v2/usergroups", &serde_json::json!({"name": name}))
            .await;
        assert_eq!(r.status, 201, "create group {name}: {}", r.text);
        r.id()
    }

    pub async fn create_ad(&self, domain: &str) -> String {
        let r = self
            .admin(
                Method::POST,
                "/activedirectories",
                Some(&serde_json::json!({"domain": domain})),
            )
            .await;
        assert_eq!(r.status, 201, "create AD {domain}: {}", r.text);
        r.id()
    }

    pub async fn violations(&self) -> Value {
        self.admin(Method::GET, "/violations", None).await.json
    }
}

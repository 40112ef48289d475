//! The agent channel stand-in under `/__agent-channel/v1` (AGENT-CHANNEL.md): register with a connect key,
//! long-poll the organisation's changes (heartbeat and primary election included), post status reports.
//! Not a JumpCloud API: outside `/api`, not checked against the specs, not in the request log. Secrets
//! (agent secrets, payload keys, passwords) are never logged.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Map, Value};

use crate::api::json_response;
use crate::query::Params;
use crate::shared::Shared;
use crate::store::ad::ConnectError;
use crate::store::channel::{ChannelError, NewReport};

type Sh = State<Arc<Shared>>;

/// Longest accepted `wait_ms`.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Default and largest `limit`.
pub const DEFAULT_LIMIT: usize = 500;
pub const MAX_LIMIT: usize = 1000;
/// Most reports accepted in one `POST /reports`.
pub const MAX_REPORTS: usize = 10_000;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/__agent-channel/v1/register", post(register))
        .route("/__agent-channel/v1/changes", get(changes))
        .route("/__agent-channel/v1/reports", post(reports))
}

/// `{"code": "<machine code>", "message": "<text>"}`.
fn err(status: u16, code: &str, message: impl AsRef<str>) -> Response {
    json_response(
        status,
        &json!({"code": code, "message": message.as_ref()}),
        &[],
    )
}

/// An error answer of a helper (small, unlike a `Response`).
struct ChErr {
    status: u16,
    code: &'static str,
    message: String,
}

impl ChErr {
    fn bad_request(message: impl Into<String>) -> ChErr {
        ChErr {
            status: 400,
            code: "bad_request",
            message: message.into(),
        }
    }

    fn unauthorized() -> ChErr {
        ChErr {
            status: 401,
            code: "unauthorized",
            message: "unknown agent or wrong credentials".into(),
        }
    }

    fn response(self) -> Response {
        err(self.status, self.code, self.message)
    }
}

fn unauthorized() -> Response {
    ChErr::unauthorized().response()
}

/// `N` cryptographically random bytes (system RNG, not the emulator's seeded one).
pub fn random_bytes<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).ok()?;
    Some(b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn parse_object(bytes: &Bytes) -> Result<Map<String, Value>, ChErr> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ChErr::bad_request("body must be a JSON object")),
        Err(e) => Err(ChErr::bad_request(format!("invalid JSON body: {e}"))),
    }
}

fn optional_string<'m>(m: &'m Map<String, Value>, k: &str) -> Result<Option<&'m str>, ChErr> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ChErr::bad_request(format!("{k} must be a string"))),
    }
}

/// `POST /__agent-channel/v1/register`.
async fn register(State(sh): Sh, body: Bytes) -> Response {
    let m = match parse_object(&body) {
        Ok(m) => m,
        Err(e) => return e.response(),
    };
    let key = match optional_string(&m, "connectKey") {
        Ok(Some(k)) if !k.is_empty() => k.to_string(),
        Ok(_) => return err(400, "bad_request", "connectKey is required"),
        Err(e) => return e.response(),
    };
    let mut info = Map::new();
    for k in ["hostname", "version", "hostType"] {
        match optional_string(&m, k) {
            Ok(Some(v)) => {
                info.insert(k.into(), json!(v));
            }
            Ok(None) => {}
            Err(e) => return e.response(),
        }
    }
    if let Some(t) = info.get("hostType").and_then(Value::as_str) {
        if t != "DOMAIN_CONTROLLER" && t != "MEMBER_SERVER" {
            return err(
                400,
                "bad_request",
                "hostType must be DOMAIN_CONTROLLER or MEMBER_SERVER",
            );
        }
    }
    let (Some(secret), Some(payload_key)) = (random_bytes::<32>(), random_bytes::<32>()) else {
        return err(500, "internal", "no system randomness");
    };
    let secret = hex(&secret);
    let now = sh.clock.now_ms();
    let mut store = sh.store.write();
    let connected = match store.connect_agent(&key, &info, now) {
        Ok(v) => v,
        Err(ConnectError::Unknown) => {
            return err(404, "connect_key_unknown", "connect key not found")
        }
        Err(ConnectError::Used) => return err(410, "connect_key_used", "connect key already used"),
        Err(ConnectError::Expired) => {
            return err(410, "connect_key_expired", "connect key expired")
        }
    };
    let agent_id = connected
        .get("agentId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let ad_id = connected
        .get("activedirectoryId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    store.set_channel_credentials(&agent_id, secret.clone(), payload_key);
    let domain = store
        .ads
        .get(&ad_id)
        .and_then(|d| d.get("domain"))
        .cloned()
        .unwrap_or(Value::Null);
    let primary = store.is_primary(&agent_id);
    drop(store);
    tracing::debug!(agent = %agent_id, activedirectory = %ad_id, primary, "agent registered on the channel");
    json_response(
        201,
        &json!({
            "agentId": agent_id,
            "activedirectoryId": ad_id,
            "domain": domain,
            "agentSecret": secret,
            "payloadKey": hex(&payload_key),
            "primary": primary,
        }),
        &[],
    )
}

/// The agent id of a valid `Authorization: Bearer <agentId>.<agentSecret>`.
fn authenticate(sh: &Shared, headers: &HeaderMap) -> Result<String, ChErr> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(ChErr::unauthorized)?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or_else(ChErr::unauthorized)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ChErr::unauthorized());
    }
    let (agent_id, secret) = token
        .trim()
        .split_once('.')
        .ok_or_else(ChErr::unauthorized)?;
    match sh.store.read().channel_auth(agent_id, secret) {
        Ok(()) => Ok(agent_id.to_string()),
        Err(ChannelError::Unauthorized) => Err(ChErr::unauthorized()),
    }
}

/// An unsigned integer query parameter in `lo..=hi` (default when absent).
fn number(params: &Params, name: &str, default: u64, lo: u64, hi: u64) -> Result<u64, ChErr> {
    let Some(raw) = params.get(name) else {
        return Ok(default);
    };
    match raw.trim().parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(ChErr::bad_request(format!(
            "{name} must be an integer between {lo} and {hi}"
        ))),
    }
}

/// Marks an agent as being in a long poll for as long as it lives (also when the client goes away).
struct Waiting {
    sh: Arc<Shared>,
    agent_id: String,
}

impl Waiting {
    fn new(sh: Arc<Shared>, agent_id: &str) -> Waiting {
        sh.store.write().channel_waiting(agent_id, 1);
        Waiting {
            sh,
            agent_id: agent_id.to_string(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.sh.store.write().channel_waiting(&self.agent_id, -1);
    }
}

/// `GET /__agent-channel/v1/changes?after&wait_ms&limit`.
async fn changes(State(sh): Sh, headers: HeaderMap, uri: Uri) -> Response {
    let agent_id = match authenticate(&sh, &headers) {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    let params = Params::parse(uri.query());
    let parsed = (|| {
        Ok::<_, ChErr>((
            number(&params, "after", 0, 0, u64::MAX)?,
            number(&params, "wait_ms", 0, 0, MAX_WAIT_MS)?,
            number(&params, "limit", DEFAULT_LIMIT as u64, 1, MAX_LIMIT as u64)?,
        ))
    })();
    let (after, wait_ms, limit) = match parsed {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let limit = usize::try_from(limit).unwrap_or(DEFAULT_LIMIT);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut rx = sh.store.read().channel_subscribe();
    let mut waiting: Option<Waiting> = None;
    loop {
        // anything appended from here on wakes the wait below
        rx.borrow_and_update();
        let timeout = sh.settings.read().agent_heartbeat_timeout_ms;
        let reply =
            sh.store
                .write()
                .channel_poll(&agent_id, after, limit, sh.clock.now_ms(), timeout);
        let reply = match reply {
            Ok(r) => r,
            Err(ChannelError::Unauthorized) => return unauthorized(),
        };
        if !reply.primary || !reply.events.is_empty() || tokio::time::Instant::now() >= deadline {
            drop(waiting);
            return json_response(200, &reply.to_json(), &[]);
        }
        if waiting.is_none() {
            waiting = Some(Waiting::new(sh.clone(), &agent_id));
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            // a new event (or the deadline: one last pass answers)
            Ok(Ok(())) | Err(_) => {}
            // the sender lives as long as the store: cannot happen, but never spin
            Ok(Err(_)) => tokio::time::sleep_until(deadline).await,
        }
    }
}

/// `POST /__agent-channel/v1/reports` → 204.
async fn reports(State(sh): Sh, headers: HeaderMap, body: Bytes) -> Response {
    let agent_id = match authenticate(&sh, &headers) {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    let m = match parse_object(&body) {
        Ok(m) => m,
        Err(e) => return e.response(),
    };
    let Some(list) = m.get("reports").and_then(Value::as_array) else {
        return err(400, "bad_request", "body must be {\"reports\": [...]}");
    };
    if list.len() > MAX_REPORTS {
        return err(
            400,
            "bad_request",
            format!("at most {MAX_REPORTS} reports per request"),
        );
    }
    let mut parsed = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        match parse_report(r) {
            Ok(p) => parsed.push(p),
            Err(e) => return err(400, "bad_request", format!("reports[{i}]: {e}")),
        }
    }
    let now = sh.clock.now_ms();
    match sh.store.write().channel_reports(&agent_id, parsed, now) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(ChannelError::Unauthorized) => unauthorized(),
    }
}

fn parse_report(r: &Value) -> Result<NewReport, String> {
    let m = r.as_object().ok_or("must be an object")?;
    let s = |k: &str| m.get(k).and_then(Value::as_str);
    let kind = s("kind").ok_or("kind is required (password, user or user_group)")?;
    if !["password", "user", "user_group"].contains(&kind) {
        return Err(format!(
            "kind must be password, user or user_group, got '{kind}'"
        ));
    }
    let id = s("id")
        .filter(|i| !i.is_empty())
        .ok_or("id is required (a JumpCloud id)")?;
    let seq = m
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or("seq must be a non-negative integer")?;
    let code = s("code").ok_or("code is required (ok, rejected or error)")?;
    if !["ok", "rejected", "error"].contains(&code) {
        return Err(format!("code must be ok, rejected or error, got '{code}'"));
    }
    let message = match m.get("message") {
        None | Some(Value::Null) => "",
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err("message must be a string".into()),
    };
    Ok(NewReport {
        kind: kind.to_string(),
        id: id.to_string(),
        seq,
        code: code.to_string(),
        message: message.to_string(),
    })
}

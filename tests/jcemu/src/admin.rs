//! Emulator control under `/__emulator/` (no API key; never under `/api`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::api::json_response;
use crate::clock::parse_rfc3339_ms;
use crate::config::{FaultSettings, Settings};
use crate::http::{error_body, ApiError};
use crate::shared::Shared;
use crate::store::ad::ConnectError;
use crate::store::users::UserCtx;

type Sh = State<Arc<Shared>>;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/__emulator/state", get(state))
        .route("/__emulator/reset", post(reset))
        .route("/__emulator/faults", get(get_faults).put(put_faults))
        .route("/__emulator/settings", get(get_settings).put(put_settings))
        .route("/__emulator/clock", get(get_clock).post(set_clock))
        .route("/__emulator/activedirectories", post(create_ad))
        .route("/__emulator/api-keys", put(put_keys))
        .route(
            "/__emulator/violations",
            get(violations).delete(clear_violations),
        )
        .route("/__emulator/requests", get(requests))
        .route("/__emulator/agents/connect", post(connect))
        .route("/__emulator/agents/{agent_id}", put(agent_state))
        .route("/__emulator/users", post(seed_users))
        // bulk seeding bodies can be large (100k users ≈ 10 MB)
        .layer(DefaultBodyLimit::max(512 * 1024 * 1024))
}

fn err(status: u16, message: impl AsRef<str>) -> Response {
    json_response(status, &error_body(status, message.as_ref()), &[])
}

fn ok(status: u16, v: &Value) -> Response {
    json_response(status, v, &[])
}

fn api_err(e: ApiError) -> Response {
    json_response(e.status, &e.body, &[])
}

#[allow(clippy::result_large_err)]
fn parse(bytes: &Bytes) -> Result<Value, Response> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(bytes).map_err(|e| err(400, format!("invalid JSON body: {e}")))
}

async fn state(State(sh): Sh) -> Response {
    let doc = sh.store.read().state_document(sh.clock.now_ms());
    ok(200, &doc)
}

async fn reset(State(sh): Sh) -> Response {
    sh.store.write().reset();
    sh.reset_counters();
    StatusCode::NO_CONTENT.into_response()
}

/// Replaces only the fields given in `body` (unknown fields → 400).
fn merge<T: Serialize + DeserializeOwned>(current: &T, body: Value) -> Result<T, String> {
    let Value::Object(changes) = body else {
        return Err("body must be a JSON object".into());
    };
    let mut v = serde_json::to_value(current).map_err(|e| e.to_string())?;
    let Some(m) = v.as_object_mut() else {
        return Err("internal: settings are not an object".into());
    };
    for (k, val) in changes {
        m.insert(k, val);
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

async fn get_faults(State(sh): Sh) -> Response {
    let f = sh.faults.read().clone();
    ok(200, &json!(f))
}

async fn put_faults(State(sh): Sh, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let current = sh.faults.read().clone();
    let new: FaultSettings = match merge(&current, body) {
        Ok(n) => n,
        Err(e) => return err(400, e),
    };
    if let Err(e) = new.validate() {
        return err(400, e);
    }
    *sh.faults.write() = new.clone();
    ok(200, &json!(new))
}

async fn get_settings(State(sh): Sh) -> Response {
    let s = sh.settings.read().clone();
    ok(200, &json!(s))
}

async fn put_settings(State(sh): Sh, body: Bytes) -> Response {
    let mut body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // the agent channel's setting is spelled as in AGENT-CHANNEL.md; the snake_case spelling of the other
    // settings is accepted too
    if let Some(m) = body.as_object_mut() {
        if let Some(v) = m.remove("agent_heartbeat_timeout_ms") {
            m.entry("agentHeartbeatTimeoutMs").or_insert(v);
        }
    }
    let current = sh.settings.read().clone();
    let new: Settings = match merge(&current, body) {
        Ok(n) => n,
        Err(e) => return err(400, e),
    };
    if let Err(e) = new.validate() {
        return err(400, e);
    }
    *sh.settings.write() = new.clone();
    ok(200, &json!(new))
}

async fn get_clock(State(sh): Sh) -> Response {
    ok(200, &json!({"now": sh.clock.now_string()}))
}

async fn set_clock(State(sh): Sh, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match (body.get("advance_seconds"), body.get("now")) {
        (Some(a), None) => match a.as_f64() {
            Some(s) if s.is_finite() => sh.clock.advance_ms((s * 1000.0) as i64),
            _ => return err(400, "advance_seconds must be a number"),
        },
        (None, Some(n)) => match n.as_str().and_then(parse_rfc3339_ms) {
            Some(ms) => sh.clock.set_ms(ms),
            None => return err(400, "now must be an RFC 3339 date-time"),
        },
        _ => {
            return err(
                400,
                "give exactly one of {\"advance_seconds\": N} or {\"now\": \"<RFC 3339>\"}",
            )
        }
    }
    ok(200, &json!({"now": sh.clock.now_string()}))
}

async fn create_ad(State(sh): Sh, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let r = sh
        .store
        .write()
        .create_ad(Some(&body), &sh.org_id, sh.clock.now_ms());
    match r {
        Ok(doc) => ok(201, &Value::Object(doc)),
        Err(e) => api_err(e),
    }
}

async fn put_keys(State(sh): Sh, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(keys) = body.get("keys").and_then(Value::as_array) else {
        return err(400, "body must be {\"keys\": [\"k1\", …]}");
    };
    let mut new = std::collections::HashSet::new();
    for k in keys {
        match k.as_str() {
            Some(s) if !s.is_empty() => {
                new.insert(s.to_string());
            }
            _ => return err(400, "keys must be non-empty strings"),
        }
    }
    let n = new.len();
    *sh.keys.write() = new;
    ok(200, &json!({"keys": n}))
}

async fn violations(State(sh): Sh) -> Response {
    let v = sh.violations.lock().clone();
    ok(200, &json!({"count": v.len(), "violations": v}))
}

async fn clear_violations(State(sh): Sh) -> Response {
    sh.violations.lock().clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn requests(State(sh): Sh) -> Response {
    let r: Vec<Value> = sh.recent.lock().iter().cloned().collect();
    ok(200, &json!({"count": r.len(), "requests": r}))
}

async fn connect(State(sh): Sh, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(m) = body.as_object() else {
        return err(400, "body must be a JSON object");
    };
    let Some(key) = m
        .get("connectKey")
        .or_else(|| m.get("connect_key"))
        .and_then(Value::as_str)
    else {
        return err(400, "connectKey is required");
    };
    let r = sh.store.write().connect_agent(key, m, sh.clock.now_ms());
    match r {
        Ok(v) => ok(200, &v),
        Err(ConnectError::Unknown) => err(404, "connect key not found"),
        Err(ConnectError::Used) => err(409, "connect key already used"),
        Err(ConnectError::Expired) => err(410, "connect key expired"),
    }
}

async fn agent_state(State(sh): Sh, Path(agent_id): Path<String>, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(state) = body.get("state").and_then(Value::as_str) else {
        return err(400, "state is required");
    };
    let r = sh
        .store
        .write()
        .set_agent_state(&agent_id, state, sh.clock.now_ms());
    match r {
        Ok(v) => ok(200, &v),
        Err(e) => api_err(e),
    }
}

/// Bulk creation through the same validation as `POST /systemusers` (for load tests): a list of
/// `systemuserputpost` objects or `{"users": [...]}`. Stops at the first failure.
async fn seed_users(State(sh): Sh, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let users = match &body {
        Value::Array(a) => a.clone(),
        Value::Object(m) => match m.get("users").and_then(Value::as_array) {
            Some(a) => a.clone(),
            None => return err(400, "body must be a list of users or {\"users\": [...]}"),
        },
        _ => return err(400, "body must be a list of users or {\"users\": [...]}"),
    };
    let settings = sh.settings.read().clone();
    let mut ids = Vec::with_capacity(users.len());
    for (i, u) in users.iter().enumerate() {
        let salt = if u.get("password").is_some() {
            sh.salt()
        } else {
            [0; 16]
        };
        let ctx = UserCtx {
            now_ms: sh.clock.now_ms(),
            org_id: &sh.org_id,
            default_state: settings.default_user_state.as_str(),
            policy: &settings.password_policy,
            full_details: true,
            salt,
        };
        let r = sh.store.write().create_user(Some(u), &ctx);
        match r {
            Ok(doc) => ids.push(doc.get("_id").cloned().unwrap_or(Value::Null)),
            Err(e) => {
                return ok(
                    e.status,
                    &json!({"created": ids, "failed_index": i, "error": e.body}),
                );
            }
        }
    }
    ok(201, &json!({"created": ids}))
}

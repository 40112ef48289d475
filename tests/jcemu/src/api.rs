//! The `/api/**` pipeline: auth, routing (against the spec when loaded), org id, rate limit, content type,
//! request conformance, faults, dispatch to the v1/v2 handlers, response conformance, request log.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body as AxumBody, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::any;
use axum::{Extension, Router};
use serde_json::{json, Value};

use crate::clock::{format_ms, system_time_ms};
use crate::config::{is_object_id, CorruptMode};
use crate::http::{error_body, ApiError, ApiResponse, ApiResult, Body};
use crate::query::Params;
use crate::reqlog::redact;
use crate::server::ConnCtl;
use crate::shared::{Rate, Shared, Violation};
use crate::spec::{self, OperationRef, RequestParts};
use crate::{admin, channel, v1, v2};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    fn spec(self) -> spec::Api {
        match self {
            Version::V1 => spec::Api::V1,
            Version::V2 => spec::Api::V2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// What a handler sees of the request.
pub struct Req {
    pub query: Params,
    pub body: Option<Value>,
    /// No body bytes at all (or only whitespace).
    pub body_empty: bool,
    /// `x-eventually-consistent: true`
    pub eventual: bool,
}

impl Req {
    /// `fullValidationDetails=password`
    pub fn full_details(&self) -> bool {
        self.query
            .all("fullValidationDetails")
            .any(|v| v.split(',').any(|x| x.trim() == "password"))
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api", any(handle))
        .route("/api/{*rest}", any(handle))
        .merge(admin::routes())
        .merge(channel::routes())
        .fallback(fallback)
        .with_state(shared)
}

async fn fallback(uri: Uri) -> Response {
    json_response(
        404,
        &error_body(404, &format!("no route {}", uri.path())),
        &[],
    )
}

pub fn json_response(status: u16, body: &Value, extra: &[(&'static str, String)]) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(AxumBody::from(bytes));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(v) {
            r.headers_mut().insert(*k, v);
        }
    }
    r
}

fn to_http(resp: ApiResponse, retry_after: Option<u64>) -> Response {
    let mut extra: Vec<(&'static str, String)> = Vec::new();
    if let Some(n) = resp.total_count {
        extra.push(("x-total-count", n.to_string()));
    }
    if let Some(s) = retry_after {
        extra.push(("retry-after", s.to_string()));
    }
    match resp.body {
        Body::Json(v) => json_response(resp.status, &v, &extra),
        Body::Raw(bytes) => {
            let mut r = Response::new(AxumBody::from(bytes));
            *r.status_mut() =
                StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            for (k, v) in extra {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    r.headers_mut().insert(k, v);
                }
            }
            r
        }
        Body::Empty => {
            let mut r = Response::new(AxumBody::empty());
            *r.status_mut() =
                StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            for (k, v) in extra {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    r.headers_mut().insert(k, v);
                }
            }
            r
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(x) = hex {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits `/api/...` into the API version and the path relative to its base (`/api` or `/api/v2`).
fn split_api_path(path: &str) -> Option<(Version, String)> {
    let rest = path.strip_prefix("/api")?;
    let (version, rel) = match rest.strip_prefix("/v2") {
        Some(r) if r.is_empty() || r.starts_with('/') => (Version::V2, r),
        _ => (Version::V1, rest),
    };
    let mut rel = if rel.is_empty() {
        "/".to_string()
    } else {
        rel.to_string()
    };
    while rel.len() > 1 && rel.ends_with('/') {
        rel.pop();
    }
    Some((version, rel))
}

/// Why a response is not checked against the spec.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Yes,
    /// injected fault or rate limit: deliberately outside the contract
    Fault(&'static str),
    /// route unknown to the spec or not implemented by jcemu
    NoOperation,
}

struct Outcome {
    resp: ApiResponse,
    check: Check,
    retry_after: Option<u64>,
    dropped: bool,
}

impl Outcome {
    fn checked(resp: ApiResponse) -> Outcome {
        Outcome {
            resp,
            check: Check::Yes,
            retry_after: None,
            dropped: false,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn process(
    sh: &Shared,
    ctl: Option<&ConnCtl>,
    method: &Method,
    version: Version,
    rel: &str,
    params: Params,
    headers: &HeaderMap,
    header_pairs: &[(String, String)],
    bytes: &Bytes,
    op: Option<&OperationRef>,
) -> Outcome {
    // 1. API key
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if key.is_empty() || !sh.key_valid(key) {
        return Outcome::checked(ApiResponse::json(
            401,
            json!({"code": 401, "message": "Unauthenticated", "status": "Unauthorized"}),
        ));
    }
    // 2. route
    if sh.contract.is_some() && op.is_none() {
        let msg = format!(
            "no operation {} {} in the {} spec",
            method,
            rel,
            version.name()
        );
        return Outcome {
            check: Check::NoOperation,
            ..Outcome::checked(ApiError::not_found(msg).into())
        };
    }
    let settings_org = sh.settings.read().require_org_id;
    // 3. organisation
    match headers
        .get("x-org-id")
        .map(|v| v.to_str().unwrap_or("\u{0}"))
    {
        Some(org) if !org.is_empty() => {
            if !is_object_id(org) {
                return Outcome::checked(
                    ApiError::bad_request("x-org-id is not a valid organization id").into(),
                );
            }
            if org != sh.org_id {
                return Outcome::checked(ApiError::not_found("organization not found").into());
            }
        }
        _ if settings_org => {
            return Outcome::checked(
                ApiError::new(401, "x-org-id is required for this API key").into(),
            );
        }
        _ => {}
    }
    // 4. rate limit
    let faults = sh.faults.read().clone();
    if let Rate::Limited { retry_after_secs } = sh.rate_check(key, faults.rate_limit_per_minute) {
        return Outcome {
            resp: ApiError::new(429, "Too Many Requests").into(),
            check: Check::Fault("rate_limit"),
            retry_after: faults.retry_after.then_some(retry_after_secs),
            dropped: false,
        };
    }
    // 5. content type and JSON body
    let body_empty = bytes.iter().all(u8::is_ascii_whitespace);
    let writes = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if writes && !body_empty && sh.settings.read().require_content_type {
        let is_json = content_type
            .and_then(|c| c.split(';').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Outcome::checked(
                ApiError::new(415, "Content-Type must be application/json").into(),
            );
        }
    }
    let body = if body_empty || !writes {
        None
    } else {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                return Outcome::checked(
                    ApiError::bad_request(format!("invalid JSON body: {e}")).into(),
                )
            }
        }
    };
    // 6. request conformance
    if let (Some(contract), Some(op)) = (sh.contract.as_ref(), op) {
        // Documented deviations (activate `email` bool/string, search `filter` list) are tolerated by the
        // checker itself (spec::DEVIATIONS).
        let parts = RequestParts {
            query: params.pairs(),
            headers: header_pairs,
            body: body.as_ref(),
            content_type,
        };
        if let Err(v) = contract.check_request(op, &parts) {
            let message = v.to_string();
            sh.record_violation(Violation {
                ts: sh.clock.now_string(),
                kind: "request",
                method: method.to_string(),
                path: rel.to_string(),
                operation_id: Some(op.operation_id.clone()),
                status: Some(400),
                violations: v.0.clone(),
            });
            return Outcome::checked(ApiResponse::json(
                400,
                json!({"code": 400, "message": message, "status": "Bad Request"}),
            ));
        }
    }
    // 7. faults before handling
    if faults.latency_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(faults.latency_ms)).await;
    }
    if sh.chance(faults.drop_rate) {
        if let Some(ctl) = ctl {
            ctl.drop.notify_one();
            return Outcome {
                resp: ApiResponse::empty(0),
                check: Check::Fault("drop"),
                retry_after: None,
                dropped: true,
            };
        }
    }
    if sh.chance(faults.error_rate) {
        let status = sh.pick(&faults.error_statuses).unwrap_or(503);
        return Outcome {
            resp: ApiError::new(
                status,
                format!("{} (injected by jcemu)", crate::http::reason(status)),
            )
            .into(),
            check: Check::Fault("error"),
            retry_after: None,
            dropped: false,
        };
    }
    // 8. handle
    let segs: Vec<String> = rel
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let req = Req {
        query: params,
        body,
        body_empty,
        eventual: headers
            .get("x-eventually-consistent")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
    };
    let result: Option<ApiResult> = match version {
        Version::V1 => v1::dispatch(sh, method, &segs, &req),
        Version::V2 => v2::dispatch(sh, method, &segs, &req),
    };
    let Some(result) = result else {
        let (status, msg) = if op.is_some() {
            (
                501,
                format!(
                    "{method} {rel} is in JumpCloud's {} spec but not implemented by jcemu",
                    version.name()
                ),
            )
        } else {
            (404, format!("no route {method} {rel}"))
        };
        return Outcome {
            check: Check::NoOperation,
            ..Outcome::checked(ApiError::new(status, msg).into())
        };
    };
    let resp = result.unwrap_or_else(ApiResponse::from);
    // 9. commit, then fail anyway
    if (200..300).contains(&resp.status) && sh.chance(faults.commit_then_fail_rate) {
        let status = sh.pick(&faults.error_statuses).unwrap_or(502);
        return Outcome {
            resp: ApiError::new(
                status,
                format!(
                    "{} (injected by jcemu after applying the request)",
                    crate::http::reason(status)
                ),
            )
            .into(),
            check: Check::Fault("commit_then_fail"),
            retry_after: None,
            dropped: false,
        };
    }
    // 10. apply, then garble the answer
    if (200..300).contains(&resp.status) && sh.chance(faults.corrupt_rate) {
        if let Some(mode) = sh.pick(&faults.corrupt_modes) {
            return Outcome {
                resp: corrupt(resp, mode),
                check: Check::Fault(mode.fault_name()),
                retry_after: None,
                dropped: false,
            };
        }
    }
    Outcome::checked(resp)
}

/// A successful answer garbled per `mode` (status and headers kept; an empty-body mode answers 200).
fn corrupt(mut resp: ApiResponse, mode: CorruptMode) -> ApiResponse {
    let json = match &resp.body {
        Body::Json(v) => serde_json::to_vec(v).unwrap_or_default(),
        Body::Raw(b) => b.clone(),
        Body::Empty => b"{}".to_vec(),
    };
    let value = || serde_json::from_slice::<Value>(&json).unwrap_or(Value::Null);
    resp.body = match mode {
        CorruptMode::MalformedJson => Body::Raw(b"{\"_id\": oops, <html>".to_vec()),
        CorruptMode::Truncated => Body::Raw(json[..json.len() / 2].to_vec()),
        CorruptMode::WrongTypes => {
            let mut v = value();
            wrong_types(&mut v, 0);
            Body::Json(v)
        }
        CorruptMode::ExtraFields => {
            let mut v = value();
            extra_fields(&mut v, 0);
            Body::Json(v)
        }
        CorruptMode::EmptyBody => {
            resp.status = 200;
            Body::Empty
        }
    };
    resp
}

/// Every field of the answer's objects (the object, a list's objects, `results`) with another type.
fn wrong_types(v: &mut Value, depth: u8) {
    match v {
        Value::Array(items) if depth < 2 => {
            items.iter_mut().for_each(|i| wrong_types(i, depth + 1))
        }
        Value::Object(map) => {
            for (k, field) in map.iter_mut() {
                if k == "results" && depth < 2 {
                    wrong_types(field, depth + 1);
                    continue;
                }
                *field = match field {
                    Value::String(_) => json!(12345),
                    Value::Number(_) | Value::Bool(_) | Value::Null => json!("not-the-right-type"),
                    Value::Object(_) => json!([1, 2, 3]),
                    Value::Array(_) => json!({"unexpected": "object"}),
                };
            }
        }
        _ => {}
    }
}

/// Unknown fields added to the answer's objects (the object, a list's objects, `results`).
fn extra_fields(v: &mut Value, depth: u8) {
    match v {
        Value::Array(items) if depth < 2 => {
            items.iter_mut().for_each(|i| extra_fields(i, depth + 1))
        }
        Value::Object(map) => {
            if let Some(results) = map.get_mut("results") {
                if depth < 2 {
                    extra_fields(results, depth + 1);
                }
            }
            map.insert(
                "jcemuFutureField".into(),
                json!({"nested": [1, "two", null], "flag": true}),
            );
            map.insert("jcemu_added_at".into(), json!("2030-01-01T00:00:00Z"));
        }
        _ => {}
    }
}

async fn handle(
    State(sh): State<Arc<Shared>>,
    ctl: Option<Extension<ConnCtl>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let started = Instant::now();
    let path = uri.path().to_string();
    let Some((version, rel)) = split_api_path(&path) else {
        return json_response(404, &error_body(404, &format!("no route {path}")), &[]);
    };
    let params = Params::parse(uri.query());
    // only the conformance checker needs the headers as pairs
    let header_pairs: Vec<(String, String)> = if sh.contract.is_some() {
        headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    let op = sh
        .contract
        .as_ref()
        .and_then(|c| c.operation(version.spec(), method.as_str(), &rel));
    let out = process(
        &sh,
        ctl.as_ref().map(|e| &e.0),
        &method,
        version,
        &rel,
        params,
        &headers,
        &header_pairs,
        &bytes,
        op.as_ref(),
    )
    .await;

    // response conformance
    if let (Some(contract), Some(op), Check::Yes) = (sh.contract.as_ref(), op.as_ref(), out.check) {
        let raw;
        let body = match &out.resp.body {
            Body::Json(v) => Some(v),
            Body::Raw(b) => {
                raw = serde_json::from_slice::<Value>(b).ok();
                raw.as_ref()
            }
            Body::Empty => None,
        };
        if let Err(v) = contract.check_response(op, out.resp.status, body) {
            sh.record_violation(Violation {
                ts: sh.clock.now_string(),
                kind: "response",
                method: method.to_string(),
                path: rel.clone(),
                operation_id: Some(op.operation_id.clone()),
                status: Some(out.resp.status),
                violations: v.0.clone(),
            });
        }
    }

    // request log
    let logged_body = if bytes.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => redact(&v),
            Err(_) => Value::String(format!("<{} bytes, not JSON>", bytes.len())),
        }
    };
    let fault = match out.check {
        Check::Fault(f) => Some(f),
        _ => None,
    };
    let entry = json!({
        "ts": format_ms(system_time_ms(std::time::SystemTime::now())),
        "method": method.as_str(),
        "path": path,
        "query": uri.query(),
        "status": if out.dropped { Value::Null } else { json!(out.resp.status) },
        "body": logged_body,
        "operation": op.as_ref().map(|o| o.operation_id.clone()),
        "fault": fault,
        "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
        "user_agent": headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok()),
    });
    if let Some(log) = &sh.log {
        log.write(entry.clone());
    }
    sh.remember(entry);

    if out.dropped {
        // The connection task closes the socket; never answer.
        std::future::pending::<()>().await;
    }
    to_http(out.resp, out.retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths() {
        assert_eq!(
            split_api_path("/api/systemusers"),
            Some((Version::V1, "/systemusers".into()))
        );
        assert_eq!(
            split_api_path("/api/v2/usergroups/"),
            Some((Version::V2, "/usergroups".into()))
        );
        assert_eq!(split_api_path("/api/v2"), Some((Version::V2, "/".into())));
        assert_eq!(
            split_api_path("/api/v2x"),
            Some((Version::V1, "/v2x".into()))
        );
        assert_eq!(split_api_path("/other"), None);
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
    }
}

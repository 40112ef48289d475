//! Response values produced by the `/api` handlers and JumpCloud's error bodies.

use serde_json::{json, Value};

/// The reason phrase JumpCloud puts into `Error.status` for generic errors.
pub fn reason(status: u16) -> &'static str {
    axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// `{"code", "message", "status"}` (JumpCloud's `Error`).
pub fn error_body(status: u16, message: &str) -> Value {
    json!({"code": status, "message": message, "status": reason(status)})
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub body: Value,
}

impl ApiError {
    pub fn new(status: u16, message: impl AsRef<str>) -> ApiError {
        ApiError {
            status,
            body: error_body(status, message.as_ref()),
        }
    }

    /// A v2 error with a machine-readable `status` (`nullName`, `invalidName`, …).
    pub fn coded(status: u16, message: impl AsRef<str>, code: &str) -> ApiError {
        ApiError {
            status,
            body: json!({"code": status, "message": message.as_ref(), "status": code}),
        }
    }

    /// `ErrorDetails`: `Error` plus google.rpc details.
    pub fn details(
        status: u16,
        message: impl AsRef<str>,
        status_text: &str,
        details: Vec<Value>,
    ) -> ApiError {
        ApiError {
            status,
            body: json!({"code": status, "message": message.as_ref(), "status": status_text, "details": details}),
        }
    }

    /// A google.rpc.BadRequest detail with one field violation per description.
    pub fn field_violations(field: &str, descriptions: &[&str]) -> Value {
        let list: Vec<Value> = descriptions
            .iter()
            .map(|d| json!({"field": field, "description": d}))
            .collect();
        json!({"fieldViolationsList": list, "@type": "type.googleapis.com/google.rpc.BadRequest"})
    }

    pub fn bad_request(message: impl AsRef<str>) -> ApiError {
        ApiError::new(400, message)
    }

    pub fn not_found(message: impl AsRef<str>) -> ApiError {
        ApiError::new(404, message)
    }

    pub fn conflict(message: impl AsRef<str>) -> ApiError {
        ApiError::new(409, message)
    }
}

#[derive(Debug, Clone)]
pub enum Body {
    Json(Value),
    /// Already serialised JSON (fast path for large lists; only used when no spec checking is configured).
    Raw(Vec<u8>),
    Empty,
}

#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Body,
    /// Sent as `x-total-count` (v2 lists).
    pub total_count: Option<usize>,
}

impl ApiResponse {
    pub fn json(status: u16, v: Value) -> ApiResponse {
        ApiResponse {
            status,
            body: Body::Json(v),
            total_count: None,
        }
    }

    pub fn ok(v: Value) -> ApiResponse {
        ApiResponse::json(200, v)
    }

    pub fn empty(status: u16) -> ApiResponse {
        ApiResponse {
            status,
            body: Body::Empty,
            total_count: None,
        }
    }

    pub fn list(items: Vec<Value>, total: usize) -> ApiResponse {
        ApiResponse {
            status: 200,
            body: Body::Json(Value::Array(items)),
            total_count: Some(total),
        }
    }
}

impl From<ApiError> for ApiResponse {
    fn from(e: ApiError) -> ApiResponse {
        ApiResponse::json(e.status, e.body)
    }
}

pub type ApiResult = Result<ApiResponse, ApiError>;

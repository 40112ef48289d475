//! Request plumbing shared by the user, group and graph calls: URLs with encoded query strings, one
//! request each, classified answers, JSON bodies read leniently (unknown fields are ignored: JumpCloud
//! adds fields) but never loosely: an answer that is not JSON is [`CloudError::Garbled`], a known field
//! of the wrong type is [`CloudError::BadResponse`] naming the field. Bodies are never logged.

use reqwest::{Method, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{CloudClient, CloudError};

impl CloudClient {
    /// `base + path`, with `query` form-encoded (`$`, `:`, spaces, `&`, `#`, `+` … are escaped).
    pub(super) fn url_with(&self, path: &str, query: &[(&str, &str)]) -> String {
        let raw = self.url(path);
        if query.is_empty() {
            return raw;
        }
        match url::Url::parse(&raw) {
            Ok(mut u) => {
                u.query_pairs_mut().extend_pairs(query.iter().copied());
                u.to_string()
            }
            // `CloudClient::new` validated the base URL; a path that breaks it is a bug, kept visible.
            Err(_) => raw,
        }
    }

    /// Sends one request (with an optional JSON body) and passes a 2xx response through.
    pub(super) async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: &str,
        body: Option<&B>,
    ) -> Result<Response, CloudError> {
        let response = self.send_raw(method, url, body).await?;
        CloudError::check_status(url, response).await
    }

    /// Sends one request without looking at the status. Each request is a client span (HTTP
    /// semantic conventions) and counts in the API metrics; a 401/403 marks the key refused in the
    /// health registry, any other answer marks it accepted.
    pub(super) async fn send_raw<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: &str,
        body: Option<&B>,
    ) -> Result<Response, CloudError> {
        let operation = operation_name(&method, url);
        let span = tracing::info_span!(
            "jumpcloud.request",
            otel.name = %format!("{} {}", method, operation),
            otel.kind = "client",
            http.request.method = %method,
            url.full = %url,
            server.address = url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default(),
            http.response.status_code = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let mut request = self.http.request(method.clone(), url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let result = tracing::Instrument::instrument(request.send(), span.clone())
            .await
            .map_err(|e| CloudError::from_transport(url, e));
        let status = match &result {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        match status {
            0 => {
                span.record("error.type", "transport");
            }
            s => {
                span.record("http.response.status_code", s);
                if s >= 400 {
                    span.record("error.type", s.to_string().as_str());
                }
            }
        }
        match status {
            401 | 403 => crate::health::api_key_refused(&format!(
                "{status} from {operation}; fix: check the API key, its admin role and org_id"
            )),
            0 => {}
            _ => crate::health::api_ok(),
        }
        let m = crate::metrics::get();
        let labels = [
            opentelemetry::KeyValue::new("operation", operation.clone()),
            opentelemetry::KeyValue::new("status", i64::from(status)),
        ];
        m.api_requests.add(1, &labels);
        if status == 429 {
            m.throttled.add(
                1,
                &[opentelemetry::KeyValue::new("operation", operation.clone())],
            );
        }
        m.api_duration.record(
            started.elapsed().as_secs_f64(),
            &[
                opentelemetry::KeyValue::new("http.request.method", method.to_string()),
                opentelemetry::KeyValue::new("http.response.status_code", i64::from(status)),
                opentelemetry::KeyValue::new("operation", operation),
            ],
        );
        result
    }

    pub(super) async fn read_json<T: DeserializeOwned>(
        url: &str,
        response: Response,
    ) -> Result<T, CloudError> {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CloudError::from_transport(url, e))?;
        decode_json(url, &bytes)
    }
}

/// A 2xx answer's body as `T`: empty or not JSON (malformed, truncated) is [`CloudError::Garbled`];
/// JSON whose known field has the wrong type is [`CloudError::BadResponse`] naming the field (its
/// path, e.g. `results[3].username`); unknown fields are ignored. Values are never quoted.
pub(crate) fn decode_json<T: DeserializeOwned>(url: &str, bytes: &[u8]) -> Result<T, CloudError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(CloudError::Garbled {
            url: url.to_owned(),
            detail: "empty body".into(),
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| CloudError::Garbled {
            url: url.to_owned(),
            detail: format!(
                "not JSON ({} at line {} column {} of {} bytes)",
                match e.classify() {
                    serde_json::error::Category::Eof => "cut off",
                    _ => "syntax error",
                },
                e.line(),
                e.column(),
                bytes.len()
            ),
        })?;
    serde_path_to_error::deserialize(value).map_err(|e| CloudError::BadResponse {
        url: url.to_owned(),
        detail: format!("field `{}`: {}", e.path(), type_error(e.inner())),
    })
}

/// serde's message without the offending value (`invalid type: string, expected a boolean`).
fn type_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    for prefix in ["invalid type: ", "invalid value: ", "unknown variant "] {
        if let Some(rest) = text.strip_prefix(prefix) {
            let kind = if prefix == "unknown variant " {
                ""
            } else {
                rest.split([' ', ',']).next().unwrap_or("")
            };
            let expected = rest.rfind(", expected").map_or("", |i| &rest[i..]);
            return format!("{prefix}{kind}{expected}");
        }
    }
    text
}

/// A string field of a JumpCloud object: absent or null is `None`, a string `Some`, any other type
/// a [`CloudError::BadResponse`] naming `what` and the field.
pub(crate) fn string_field(
    url: &str,
    what: &str,
    m: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<Option<String>, CloudError> {
    match m.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CloudError::BadResponse {
            url: url.to_owned(),
            detail: format!(
                "{what} field `{key}`: invalid type: {}, expected a string",
                json_type(other)
            ),
        }),
    }
}

pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl CloudError {
    /// The HTTP status behind this error, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            CloudError::Unauthenticated { .. } => Some(401),
            CloudError::Forbidden { .. } => Some(403),
            CloudError::Throttled { .. } => Some(429),
            CloudError::Server { status, .. } | CloudError::Rejected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// A 404 answer (the object, or the edge, is not there).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// A request's low-cardinality name: the URL path with ids replaced by `{id}`, e.g.
/// `/api/systemusers/{id}` (no query string, no host).
pub(crate) fn operation_name(_method: &Method, url: &str) -> String {
    let path = url::Url::parse(url)
        .map(|u| u.path().to_string())
        .unwrap_or_default();
    path.split('/')
        .map(|seg| {
            let is_id = seg.len() >= 16 && seg.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
            if is_id {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Path segments are JumpCloud ids (24 hex digits); anything else is escaped so it cannot change the path.
pub(super) fn seg(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disposition::{Classified, Disposition};
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct User {
        #[serde(rename = "_id")]
        id: Option<String>,
        username: Option<String>,
        suspended: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Page {
        #[serde(rename = "totalCount")]
        total_count: Option<u64>,
        results: Vec<User>,
    }

    /// Every kind of garbled 2xx answer: a named, classified error (retry: the operation may have
    /// been applied), never a panic; unknown fields are accepted.
    #[test]
    fn garbled_and_mistyped_answers_are_named_errors_and_extra_fields_are_fine() {
        let good = br#"{"totalCount": 1, "results": [{"_id": "a1", "username": "jdoe", "suspended": false}]}"#;
        let page: Page = decode_json("u", good).unwrap();
        assert_eq!(page.results[0].username.as_deref(), Some("jdoe"));

        let extra = br#"{"totalCount": 1, "newThing": {"x": [1]}, "results": [{"_id": "a1", "username": "jdoe", "futureField": true}]}"#;
        assert!(decode_json::<Page>("u", extra).is_ok());

        let mut tried = 2;
        for (body, garbled, names) in [
            (&b""[..], true, "empty body"),
            (b"  \n", true, "empty body"),
            (b"{\"_id\": oops, <html>", true, "syntax error"),
            (&good[..good.len() / 2], true, "cut off"),
            (b"<html>502 Bad Gateway</html>", true, "syntax error"),
            (b"\xff\xfe\x00garbage", true, "syntax error"),
            (
                br#"{"totalCount": "one", "results": []}"#,
                false,
                "field `totalCount`",
            ),
            (
                br#"{"results": [{"_id": "a1", "username": 12345}]}"#,
                false,
                "field `results[0].username`",
            ),
            (
                br#"{"results": [{"_id": "a1"}, {"_id": ["x"]}]}"#,
                false,
                "field `results[1]._id`",
            ),
            (br#"{"results": {"_id": "a1"}}"#, false, "field `results`"),
            (br#"[1, 2]"#, false, "unexpected response: field `"),
            (
                br#"{"results": [{"suspended": "yes"}]}"#,
                false,
                "results[0].suspended",
            ),
        ] {
            let e = decode_json::<Page>("https://jc/api/x", body).unwrap_err();
            let text = e.to_string();
            assert_eq!(matches!(e, CloudError::Garbled { .. }), garbled, "{text}");
            assert!(text.contains(names), "{text}");
            assert!(text.starts_with("https://jc/api/x"), "{text}");
            assert!(
                !text.contains("12345") && !text.contains("yes\""),
                "value quoted: {text}"
            );
            assert_eq!(e.disposition(), Disposition::Retry, "{text}");
            tried += 1;
        }
        eprintln!("API answers tried: {tried}");
    }
}

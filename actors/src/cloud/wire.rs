//! Request plumbing shared by the user, group and graph calls: URLs with encoded query strings, one
//! request each, classified answers, JSON bodies read leniently. Bodies are never logged.

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
        serde_json::from_slice(&bytes).map_err(|e| CloudError::BadResponse {
            url: url.to_owned(),
            detail: e.to_string(),
        })
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

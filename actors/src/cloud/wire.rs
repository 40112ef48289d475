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

    /// Sends one request without looking at the status.
    pub(super) async fn send_raw<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: &str,
        body: Option<&B>,
    ) -> Result<Response, CloudError> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(body);
        }
        request
            .send()
            .await
            .map_err(|e| CloudError::from_transport(url, e))
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

/// Path segments are JumpCloud ids (24 hex digits); anything else is escaped so it cannot change the path.
pub(super) fn seg(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

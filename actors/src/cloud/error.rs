//! The cloud module's error type and its classification (JumpCloud best-practice: permanent vs temporary).

use std::time::Duration;

use crate::disposition::{Classified, Disposition};

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("JumpCloud base URL {url:?} is not usable: {reason}; fix: use e.g. https://console.jumpcloud.com")]
    BadBaseUrl { url: String, reason: String },
    #[error("the API key contains characters not allowed in an HTTP header; fix: copy the key again without spaces or newlines")]
    BadApiKey,
    #[error("org id {org_id:?} contains characters not allowed in an HTTP header; fix: use the 24-hex organisation id")]
    BadOrgId { org_id: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("{url}: TLS certificate not trusted: {detail}; fix: set ca_file in [jumpcloud] to the CA that issued the server's certificate (or remove it to trust the public roots)")]
    Tls { url: String, detail: String },
    #[error("{url}: TLS certificate name mismatch: the server's certificate does not name the host in base_url ({detail}); fix: use a base_url whose host the certificate lists in its subjectAltName")]
    TlsName { url: String, detail: String },
    #[error("{url}: cannot connect: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url}: no answer in time")]
    Timeout { url: String },
    #[error(
        "{url}: 401 Unauthenticated; fix: check the API key (a reset key invalidates the old one)"
    )]
    Unauthenticated { url: String },
    #[error("{url}: 403 {message}; fix: check the key's admin role and x-org-id, or wait if the source IP was blocked for traffic")]
    Forbidden { url: String, message: String },
    #[error("{url}: 429 Too Many Requests")]
    Throttled {
        url: String,
        retry_after: Option<Duration>,
    },
    #[error("{url}: server error {status}: {message}")]
    Server {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: rejected with {status}: {message}")]
    Rejected {
        url: String,
        status: u16,
        message: String,
    },
    /// A successful answer whose known field has the wrong type (or is missing where required).
    #[error("{url}: unexpected response: {detail}")]
    BadResponse { url: String, detail: String },
    /// A successful answer that cannot be read at all: empty, not JSON, cut off.
    #[error("{url}: unreadable response: {detail}")]
    Garbled { url: String, detail: String },
}

impl Classified for CloudError {
    fn disposition(&self) -> Disposition {
        match self {
            CloudError::BadBaseUrl { .. }
            | CloudError::BadApiKey
            | CloudError::BadOrgId { .. }
            | CloudError::Client(_)
            | CloudError::Tls { .. }
            | CloudError::TlsName { .. }
            | CloudError::Unauthenticated { .. }
            | CloudError::Forbidden { .. } => Disposition::Fatal,
            // An answer that cannot be read says nothing about the operation: it may have been
            // applied (replays are idempotent: creates adopt by back-link), so it is retried within
            // the budget, then left queued and reported; never quarantined (that would lose it).
            CloudError::Unreachable { .. }
            | CloudError::Timeout { .. }
            | CloudError::Server { .. }
            | CloudError::BadResponse { .. }
            | CloudError::Garbled { .. } => Disposition::Retry,
            CloudError::Throttled { retry_after, .. } => Disposition::Throttled {
                retry_after: *retry_after,
            },
            CloudError::Rejected { .. } => Disposition::BadInput,
        }
    }
}

impl CloudError {
    pub(super) fn from_transport(url: &str, e: reqwest::Error) -> Self {
        if e.is_timeout() {
            return CloudError::Timeout {
                url: url.to_owned(),
            };
        }
        let chain = error_chain(&e);
        if chain.contains("NotValidForName") || chain.contains("not valid for name") {
            return CloudError::TlsName {
                url: url.to_owned(),
                detail: chain,
            };
        }
        if chain.contains("certificate")
            || chain.contains("InvalidCertificate")
            || chain.contains("UnknownIssuer")
        {
            return CloudError::Tls {
                url: url.to_owned(),
                detail: chain,
            };
        }
        CloudError::Unreachable {
            url: url.to_owned(),
            detail: chain,
        }
    }

    /// Passes a 2xx response through; turns anything else into the matching error.
    pub(super) async fn check_status(
        url: &str,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, CloudError> {
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response.text().await.unwrap_or_default();
        let message = error_message(&body);
        let url = url.to_owned();
        Err(match status {
            401 => CloudError::Unauthenticated { url },
            403 => CloudError::Forbidden { url, message },
            429 => CloudError::Throttled { url, retry_after },
            500..=599 => CloudError::Server {
                url,
                status,
                message,
            },
            _ => CloudError::Rejected {
                url,
                status,
                message,
            },
        })
    }
}

/// `Retry-After` as delay-seconds. (The HTTP-date form is rare in APIs; it is treated as absent.)
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The `message` of a JumpCloud `Error` body, or the raw body (bodies may be empty or not JSON).
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_and_error_bodies_are_read_leniently() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(
            error_message(r#"{"code":400,"message":"User already exists","status":"Bad Request"}"#),
            "User already exists"
        );
        assert_eq!(error_message(""), "");
        assert_eq!(
            error_message("<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
    }

    #[test]
    fn statuses_are_classified() {
        let t = CloudError::Throttled {
            url: "u".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            t.disposition(),
            Disposition::Throttled {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            CloudError::Unauthenticated { url: "u".into() }.disposition(),
            Disposition::Fatal
        );
        assert_eq!(
            CloudError::Server {
                url: "u".into(),
                status: 502,
                message: String::new()
            }
            .disposition(),
            Disposition::Retry
        );
    }
}

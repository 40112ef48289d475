//! The agent channel's error type and its classification. Messages name what failed and the fix;
//! they never hold a connect key, an agent secret, a payload key or a password (server messages
//! are scrubbed of the secrets in play before they are kept).

use std::path::PathBuf;
use std::time::Duration;

use crate::disposition::{Classified, Disposition};
use crate::sealed::SealError;

/// How to get a new connect key; every connect-key error ends with it.
pub const NEW_CONNECT_KEY_FIX: &str = "create a new connect key in the JumpCloud console (AD instance → Install New Agent) or with POST /activedirectories/{id}/agents";

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("JumpCloud base URL {url:?} cannot locate the agent channel: {reason}; fix: set jumpcloud.base_url to e.g. https://console.jumpcloud.com")]
    BadBaseUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("the connect key is empty or holds characters a key cannot hold (spaces, newlines, control characters); fix: copy the key again, or {NEW_CONNECT_KEY_FIX}")]
    ConnectKeyInvalid,
    #[error("connect key unknown: JumpCloud does not know this key (mistyped, or its agent or AD instance was deleted); fix: {NEW_CONNECT_KEY_FIX}")]
    ConnectKeyUnknown,
    #[error("connect key already used: a connect key registers one agent only once; fix: {NEW_CONNECT_KEY_FIX}")]
    ConnectKeyUsed,
    #[error("connect key expired: connect keys are valid for 7 days; fix: {NEW_CONNECT_KEY_FIX}")]
    ConnectKeyExpired,
    #[error("the stored agent credentials cannot be sent (the agent id or secret holds characters not allowed in an HTTP header); fix: run forestsync register again")]
    BadCredentials,
    #[error("{url}: agent credentials refused: this agent was removed or re-registered; run forestsync register again")]
    Unauthorized { url: String },
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
    #[error("{url}: no answer in time")]
    Timeout { url: String },
    #[error("{url}: cannot connect: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url}: TLS certificate not trusted: {detail}; fix: set jumpcloud.ca_file to the CA that issued the server's certificate")]
    Tls { url: String, detail: String },
    #[error("{url}: 404: the server has no agent channel here; fix: check jumpcloud.base_url (the channel lives at <base>/__agent-channel/v1/)")]
    NoChannel { url: String },
    #[error("{url}: rejected with {status} {code}: {message}")]
    Rejected {
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("malformed {what} from the agent channel: {detail}")]
    Malformed { what: String, detail: String },
    #[error("password event {seq}: the payload is malformed: {detail}")]
    BadPayload { seq: u64, detail: String },
    #[error("password event {seq} (user {user_id}): the payload does not decrypt with this agent's payload key (altered, or encrypted for another agent)")]
    Decrypt { seq: u64, user_id: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("agent credentials file {path} is refused: {reason}; fix: {fix}")]
    CredentialsFile {
        path: PathBuf,
        reason: String,
        fix: String,
    },
    #[error("agent credentials file {path}: {source}")]
    Seal { path: PathBuf, source: SealError },
}

impl Classified for ChannelError {
    fn disposition(&self) -> Disposition {
        match self {
            ChannelError::BadBaseUrl { .. }
            | ChannelError::Client(_)
            | ChannelError::BadCredentials
            | ChannelError::Unauthorized { .. }
            | ChannelError::Tls { .. }
            | ChannelError::NoChannel { .. }
            | ChannelError::Io { .. }
            | ChannelError::CredentialsFile { .. }
            // Credentials that do not open cannot be used by anything: an operator must act.
            | ChannelError::Seal { .. } => Disposition::Fatal,
            ChannelError::ConnectKeyInvalid
            | ChannelError::ConnectKeyUnknown
            | ChannelError::ConnectKeyUsed
            | ChannelError::ConnectKeyExpired
            | ChannelError::Rejected { .. }
            | ChannelError::Malformed { .. }
            | ChannelError::BadPayload { .. }
            | ChannelError::Decrypt { .. } => Disposition::BadInput,
            ChannelError::Throttled { retry_after, .. } => Disposition::Throttled {
                retry_after: *retry_after,
            },
            ChannelError::Server { .. }
            | ChannelError::Timeout { .. }
            | ChannelError::Unreachable { .. } => Disposition::Retry,
        }
    }
}

impl ChannelError {
    pub(super) fn from_transport(url: &str, e: reqwest::Error) -> Self {
        if e.is_timeout() {
            return ChannelError::Timeout {
                url: url.to_owned(),
            };
        }
        let chain = error_chain(&e);
        if chain.contains("certificate")
            || chain.contains("InvalidCertificate")
            || chain.contains("UnknownIssuer")
        {
            return ChannelError::Tls {
                url: url.to_owned(),
                detail: chain,
            };
        }
        ChannelError::Unreachable {
            url: url.to_owned(),
            detail: chain,
        }
    }

    /// The error for a non-2xx answer. `status`, `retry_after` and the body's `code`/`message` decide;
    /// `secrets` are scrubbed from the server's message before it is kept.
    pub(super) fn from_status(
        url: &str,
        status: u16,
        retry_after: Option<Duration>,
        body: &str,
        secrets: &[&str],
    ) -> Self {
        let (code, message) = error_body(body);
        let message = scrub(&message, secrets);
        let url = url.to_owned();
        match code.as_str() {
            "connect_key_unknown" => return ChannelError::ConnectKeyUnknown,
            "connect_key_used" => return ChannelError::ConnectKeyUsed,
            "connect_key_expired" => return ChannelError::ConnectKeyExpired,
            _ => {}
        }
        match status {
            401 => ChannelError::Unauthorized { url },
            429 => ChannelError::Throttled { url, retry_after },
            500..=599 => ChannelError::Server {
                url,
                status,
                message,
            },
            // A 404 without one of the channel's codes: no channel at this address.
            404 if code.is_empty() => ChannelError::NoChannel { url },
            _ => ChannelError::Rejected {
                url,
                status,
                code,
                message,
            },
        }
    }
}

/// `Retry-After` as delay-seconds (the HTTP-date form is treated as absent).
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// `(code, message)` of a `{"code", "message"}` body; a body that is not such JSON gives an empty code
/// and (the start of) the raw text as the message.
fn error_body(body: &str) -> (String, String) {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => {
            let code = match v.get("code") {
                Some(serde_json::Value::String(s)) => s.clone(),
                _ => String::new(),
            };
            let message = v
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
                .unwrap_or_default();
            (code, message)
        }
        Err(_) => (String::new(), body.to_owned()),
    }
}

/// `text` with every occurrence of a (non-trivial) secret replaced by `<redacted>`, cut to 200
/// characters and to one line.
pub(super) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s, "<redacted>");
    }
    let out: String = out
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    out.trim().to_owned()
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
    fn statuses_and_codes_are_classified() {
        let e = |status, body: &str| ChannelError::from_status("u", status, None, body, &[]);
        let used = e(
            410,
            r#"{"code":"connect_key_used","message":"connect key already used"}"#,
        );
        assert!(matches!(used, ChannelError::ConnectKeyUsed));
        assert_eq!(used.disposition(), Disposition::BadInput);
        assert!(used.to_string().contains("already used"));
        assert!(used.to_string().contains("Install New Agent"));
        assert!(used
            .to_string()
            .contains("POST /activedirectories/{id}/agents"));
        assert!(matches!(
            e(410, r#"{"code":"connect_key_expired","message":"x"}"#),
            ChannelError::ConnectKeyExpired
        ));
        assert!(e(410, r#"{"code":"connect_key_expired"}"#)
            .to_string()
            .contains("expired"));
        assert!(matches!(
            e(404, r#"{"code":"connect_key_unknown","message":"x"}"#),
            ChannelError::ConnectKeyUnknown
        ));
        assert!(matches!(e(404, ""), ChannelError::NoChannel { .. }));
        assert_eq!(e(404, "").disposition(), Disposition::Fatal);

        let unauth = e(401, r#"{"code":"unauthorized","message":"nope"}"#);
        assert_eq!(unauth.disposition(), Disposition::Fatal);
        assert!(unauth
            .to_string()
            .contains("agent credentials refused: this agent was removed or re-registered; run forestsync register again"));

        let throttled = ChannelError::from_status("u", 429, Some(Duration::from_secs(4)), "", &[]);
        assert_eq!(
            throttled.disposition(),
            Disposition::Throttled {
                retry_after: Some(Duration::from_secs(4))
            }
        );
        for s in [500, 502, 503, 504] {
            assert_eq!(e(s, "<html>").disposition(), Disposition::Retry);
        }
        let bad = e(400, r#"{"code":"bad_request","message":"no connectKey"}"#);
        assert_eq!(bad.disposition(), Disposition::BadInput);
        assert!(bad.to_string().contains("bad_request"), "{bad}");
        assert_eq!(
            ChannelError::Timeout { url: "u".into() }.disposition(),
            Disposition::Retry
        );
        assert_eq!(
            ChannelError::Unreachable {
                url: "u".into(),
                detail: String::new()
            }
            .disposition(),
            Disposition::Retry
        );
    }

    #[test]
    fn server_messages_are_scrubbed_of_secrets() {
        let err = ChannelError::from_status(
            "u",
            400,
            None,
            r#"{"code":"bad_request","message":"key ck-SECRET-123 is\nodd"}"#,
            &["ck-SECRET-123"],
        );
        let text = err.to_string();
        assert!(!text.contains("ck-SECRET-123"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(!text.contains('\n'));
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("soon"), None);
    }
}

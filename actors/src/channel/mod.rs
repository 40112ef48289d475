//! The agent channel: how JumpCloud tells its AD sync agent *what* changed (and hands it password
//! payloads encrypted for it), and how the agent reports back. The contract is
//! `tests/jcemu/AGENT-CHANNEL.md` (an emulator-only stand-in for JumpCloud's private channel).
//!
//! - [`AgentChannel`] is the one seam the engine talks to; [`HttpChannel`] implements it over HTTPS.
//! - [`register`] redeems a one-time connect key for [`AgentCredentials`] (agent id + secret +
//!   32-byte payload key), which are stored sealed ([`crate::sealed`]) in one file per domain
//!   ([`credentials_path`], key at [`seal_key_path`]).
//!
//! Everything the public API offers is still read through [`crate::cloud`]; this module only knows
//! the channel's URLs and JSON. It does no retries and keeps no state beyond the credentials:
//! the caller owns the cursor (`after`) and acts on each error's [`crate::disposition::Disposition`].
//! Nothing here logs or formats a connect key, agent secret, payload key or password.

mod error;
mod wire;

use std::fmt;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};
use url::Url;
use zeroize::{Zeroize, Zeroizing};

pub use error::{ChannelError, NEW_CONNECT_KEY_FIX};
pub use wire::{
    parse_change_page, parse_registration, parse_rfc3339_ms, ChangePage, ChannelEvent, EventKind,
    EventOp, RegistrationWire, Report, ReportCode, ReportKind, Role,
};

use crate::sealed::{self, SealKey};
use crate::secret::Secret;

/// A boxed, sendable future (the trait stays object-safe without an async-trait crate).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The longest long poll the channel accepts (`wait_ms` ≤ 30000).
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// How long [`register`] waits for an answer.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// The path of the channel under the JumpCloud base URL's origin.
pub const CHANNEL_PATH: &str = "/__agent-channel/v1/";

const TAG_LEN: usize = 16;
const CREDENTIALS_VERSION: u32 = 1;
const MAX_CREDENTIALS_FILE: u64 = 64 * 1024;

/// The agent's side of the channel.
pub trait AgentChannel: Send + Sync {
    /// Acknowledges every event `<= after` (when primary) and returns the next page, waiting up to
    /// `wait` (capped at [`MAX_WAIT`]) for an event. Every call is also the agent's heartbeat.
    fn poll(&self, after: u64, wait: Duration) -> BoxFuture<'_, Result<ChangePage, ChannelError>>;

    /// Sends status reports (an empty list sends nothing).
    fn report(&self, reports: Vec<Report>) -> BoxFuture<'_, Result<(), ChannelError>>;

    /// The password a password event carries for this agent, or `None` when its payload is null
    /// (the user is not in this agent's scope).
    fn open_password(&self, event: &ChannelEvent) -> Result<Option<Secret>, ChannelError>;

    /// This agent's id.
    fn agent_id(&self) -> &str;
}

/// The 32-byte key password payloads are encrypted with for this agent. Zeroized on drop; `Debug`
/// is redacted.
#[derive(Clone)]
pub struct PayloadKey(Zeroizing<[u8; 32]>);

impl PayloadKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut key = PayloadKey(Zeroizing::new([0u8; 32]));
        key.0.copy_from_slice(&bytes);
        let mut bytes = bytes;
        bytes.zeroize();
        key
    }

    /// The key bytes. Call only to decrypt.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PayloadKey(<redacted>)")
    }
}

/// What a registration yields and the agent keeps (sealed) to use the channel.
#[derive(Clone)]
pub struct AgentCredentials {
    pub agent_id: String,
    pub activedirectory_id: String,
    /// The AD instance's domain as JumpCloud holds it.
    pub domain: String,
    pub agent_secret: Secret,
    pub payload_key: PayloadKey,
}

impl fmt::Debug for AgentCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCredentials")
            .field("agent_id", &self.agent_id)
            .field("activedirectory_id", &self.activedirectory_id)
            .field("domain", &self.domain)
            .field("agent_secret", &"<redacted>")
            .field("payload_key", &"<redacted>")
            .finish()
    }
}

/// The credentials file's JSON (inside the seal).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialsDoc {
    v: u32,
    agent_id: String,
    activedirectory_id: String,
    domain: String,
    agent_secret: String,
    payload_key: String,
}

impl Drop for CredentialsDoc {
    fn drop(&mut self) {
        self.agent_secret.zeroize();
        self.payload_key.zeroize();
    }
}

/// `<state_dir>/agent-<domain>.sealed`: the domain name lower-cased, characters other than
/// `a-z 0-9 . _ -` replaced by `_`.
pub fn credentials_path(state_dir: &Path, domain: &str) -> PathBuf {
    let name: String = domain
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join(format!("agent-{name}.sealed"))
}

/// `<state_dir>/seal.key`: the installation's seal key.
pub fn seal_key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("seal.key")
}

/// The seal purpose of a credentials file: bound to its file name, so a file copied to another
/// domain's name does not open.
fn credentials_purpose(path: &Path) -> String {
    format!(
        "agent-credentials:{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    )
}

impl AgentCredentials {
    /// Writes the credentials to `path` as one sealed JSON document (mode 0600, atomically: temp
    /// file, fsync, rename, directory fsync).
    pub fn save(&self, path: &Path, key: &SealKey) -> Result<(), ChannelError> {
        let doc = CredentialsDoc {
            v: CREDENTIALS_VERSION,
            agent_id: self.agent_id.clone(),
            activedirectory_id: self.activedirectory_id.clone(),
            domain: self.domain.clone(),
            agent_secret: self.agent_secret.expose().to_owned(),
            payload_key: sealed::hex_encode(self.payload_key.expose()),
        };
        let mut json = Zeroizing::new(Vec::with_capacity(1024));
        serde_json::to_writer(&mut *json, &doc).map_err(|e| ChannelError::CredentialsFile {
            path: path.into(),
            reason: format!("cannot encode the credentials: {e}"),
            fix: "report this bug".into(),
        })?;
        drop(doc);
        let mut text = key
            .seal(&credentials_purpose(path), &json)
            .map_err(|source| ChannelError::Seal {
                path: path.into(),
                source,
            })?;
        text.push('\n');
        sealed::write_private_atomic(path, text.as_bytes()).map_err(|e| match e {
            sealed::SealError::Io {
                path,
                action,
                source,
            } => ChannelError::Io {
                path,
                action,
                source,
            },
            other => ChannelError::Seal {
                path: path.into(),
                source: other,
            },
        })
    }

    /// Reads the credentials at `path`; `None` when the file does not exist. A file that is not
    /// private (0600, ours), does not open with `key`, or holds no valid document is an error.
    pub fn load(path: &Path, key: &SealKey) -> Result<Option<Self>, ChannelError> {
        let mut f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ChannelError::Io {
                    path: path.into(),
                    action: "open the agent credentials file",
                    source,
                })
            }
        };
        let io = |action: &'static str| {
            move |source| ChannelError::Io {
                path: path.into(),
                action,
                source,
            }
        };
        let meta = f
            .metadata()
            .map_err(io("stat the agent credentials file"))?;
        sealed::check_private_file(path, &meta).map_err(|(reason, fix)| {
            ChannelError::CredentialsFile {
                path: path.into(),
                reason,
                fix,
            }
        })?;
        let refused = |reason: &str| ChannelError::CredentialsFile {
            path: path.into(),
            reason: reason.to_owned(),
            fix: "run forestsync register again with a new connect key (--force replaces the file)"
                .into(),
        };
        if meta.len() > MAX_CREDENTIALS_FILE {
            return Err(refused("it is larger than any credentials file"));
        }
        let mut text = Zeroizing::new(String::new());
        f.read_to_string(&mut text)
            .map_err(io("read the agent credentials file"))?;
        let json = key
            .unseal(&credentials_purpose(path), &text)
            .map_err(|source| ChannelError::Seal {
                path: path.into(),
                source,
            })?;
        let mut doc: CredentialsDoc = serde_json::from_slice(&json)
            .map_err(|_| refused("the sealed document is not the credentials JSON"))?;
        if doc.v != CREDENTIALS_VERSION {
            return Err(refused(&format!(
                "version {} is not supported (expected {CREDENTIALS_VERSION})",
                doc.v
            )));
        }
        let payload_key = wire::decode_key(&doc.payload_key)
            .ok_or_else(|| refused("the payload key is not 32 bytes of hex"))?;
        if !wire::is_header_safe(&doc.agent_id) || !wire::is_header_safe(&doc.agent_secret) {
            return Err(refused("the agent id or secret is empty or not printable"));
        }
        Ok(Some(AgentCredentials {
            agent_id: std::mem::take(&mut doc.agent_id),
            activedirectory_id: std::mem::take(&mut doc.activedirectory_id),
            domain: std::mem::take(&mut doc.domain),
            agent_secret: Secret::new(std::mem::take(&mut doc.agent_secret)),
            payload_key: PayloadKey(payload_key),
        }))
    }
}

/// What [`register`] returns: the credentials, and whether the server made this agent primary.
#[derive(Debug)]
pub struct Registration {
    pub credentials: AgentCredentials,
    pub primary: bool,
}

/// The channel's base URL for the JumpCloud base URL the config holds (with or without a path):
/// `<scheme>://<host>[:<port>]/__agent-channel/v1/`.
pub fn channel_base_from_api_url(base_url: &str) -> Result<Url, ChannelError> {
    let bad = |reason: &str| ChannelError::BadBaseUrl {
        url: base_url.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(base_url.trim()).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(bad("the scheme must be https"));
    }
    if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    url.set_username("").map_err(|()| bad("it has no host"))?;
    url.set_password(None).map_err(|()| bad("it has no host"))?;
    url.set_path(CHANNEL_PATH);
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The channel base with a trailing `/`, so relative joins stay under it.
fn normalized_base(base: &Url) -> Result<Url, ChannelError> {
    if base.cannot_be_a_base() || !matches!(base.scheme(), "https" | "http") {
        return Err(ChannelError::BadBaseUrl {
            url: base.to_string(),
            reason: "not an http(s) URL".into(),
        });
    }
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

fn endpoint(base: &Url, path: &str) -> Result<Url, ChannelError> {
    base.join(path).map_err(|e| ChannelError::BadBaseUrl {
        url: base.to_string(),
        reason: e.to_string(),
    })
}

fn http_client(
    tls: Arc<ClientConfig>,
    headers: HeaderMap,
    timeout: Duration,
) -> Result<reqwest::Client, ChannelError> {
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .default_headers(headers)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("forestsync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ChannelError::Client(e.to_string()))
}

/// Reads a response: the body of a 2xx, or the classified error.
async fn read_body(
    url: &str,
    response: reqwest::Response,
    secrets: &[&str],
) -> Result<bytes::Bytes, ChannelError> {
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return response
            .bytes()
            .await
            .map_err(|e| ChannelError::from_transport(url, e));
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(error::parse_retry_after);
    let body = response.text().await.unwrap_or_default();
    Err(ChannelError::from_status(
        url,
        status,
        retry_after,
        &body,
        secrets,
    ))
}

/// Redeems a one-time connect key: `POST <channel_base>/register`.
pub async fn register(
    channel_base: &Url,
    tls: Arc<ClientConfig>,
    connect_key: &Secret,
    hostname: &str,
    version: &str,
) -> Result<Registration, ChannelError> {
    let key = connect_key.expose().trim();
    if !wire::is_header_safe(key) {
        return Err(ChannelError::ConnectKeyInvalid);
    }
    let base = normalized_base(channel_base)?;
    let url = endpoint(&base, "register")?;
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    let http = http_client(tls, headers, REGISTER_TIMEOUT)?;
    let url_text = url.to_string();
    let response = http
        .post(url)
        .json(&wire::RegisterBody {
            connect_key: key,
            hostname,
            version,
        })
        .send()
        .await
        .map_err(|e| ChannelError::from_transport(&url_text, e))?;
    let body = Zeroizing::new(read_body(&url_text, response, &[key]).await?.to_vec());
    let r = wire::parse_registration(&body)?;
    Ok(Registration {
        credentials: AgentCredentials {
            agent_id: r.agent_id,
            activedirectory_id: r.activedirectory_id,
            domain: r.domain,
            agent_secret: r.agent_secret,
            payload_key: PayloadKey(r.payload_key),
        },
        primary: r.primary,
    })
}

/// [`AgentChannel`] over HTTPS with the agent's bearer credentials.
pub struct HttpChannel {
    http: reqwest::Client,
    base: Url,
    creds: AgentCredentials,
    request_timeout: Duration,
}

impl fmt::Debug for HttpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpChannel")
            .field("base", &self.base.as_str())
            .field("agent_id", &self.creds.agent_id)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpChannel {
    /// A channel at `channel_base` (see [`channel_base_from_api_url`]). `request_timeout` bounds each
    /// request; a long poll gets its wait on top.
    pub fn new(
        channel_base: Url,
        tls: Arc<ClientConfig>,
        creds: AgentCredentials,
        request_timeout: Duration,
    ) -> Result<Self, ChannelError> {
        let base = normalized_base(&channel_base)?;
        if !wire::is_header_safe(&creds.agent_id)
            || !wire::is_header_safe(creds.agent_secret.expose())
        {
            return Err(ChannelError::BadCredentials);
        }
        let mut bearer = Zeroizing::new(String::with_capacity(
            8 + creds.agent_id.len() + creds.agent_secret.expose().len(),
        ));
        bearer.push_str("Bearer ");
        bearer.push_str(&creds.agent_id);
        bearer.push('.');
        bearer.push_str(creds.agent_secret.expose());
        let mut auth = HeaderValue::from_str(&bearer).map_err(|_| ChannelError::BadCredentials)?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(AUTHORIZATION, auth);
        let request_timeout = request_timeout.max(Duration::from_millis(100));
        let http = http_client(tls, headers, request_timeout)?;
        Ok(HttpChannel {
            http,
            base,
            creds,
            request_timeout,
        })
    }

    fn secrets(&self) -> [&str; 1] {
        [self.creds.agent_secret.expose()]
    }

    async fn poll_once(&self, after: u64, wait: Duration) -> Result<ChangePage, ChannelError> {
        let wait = wait.min(MAX_WAIT);
        let mut url = endpoint(&self.base, "changes")?;
        url.query_pairs_mut()
            .append_pair("after", &after.to_string())
            .append_pair("wait_ms", &wait.as_millis().to_string());
        let url_text = url.to_string();
        let response = self
            .http
            .get(url)
            .timeout(wait + self.request_timeout)
            .send()
            .await
            .map_err(|e| ChannelError::from_transport(&url_text, e))?;
        let body = read_body(&url_text, response, &self.secrets()).await?;
        wire::parse_change_page(&body)
    }

    async fn report_once(&self, reports: Vec<Report>) -> Result<(), ChannelError> {
        if reports.is_empty() {
            return Ok(());
        }
        let url = endpoint(&self.base, "reports")?;
        let url_text = url.to_string();
        let response = self
            .http
            .post(url)
            .json(&wire::ReportsBody { reports: &reports })
            .send()
            .await
            .map_err(|e| ChannelError::from_transport(&url_text, e))?;
        read_body(&url_text, response, &self.secrets())
            .await
            .map(drop)
    }
}

impl AgentChannel for HttpChannel {
    fn poll(&self, after: u64, wait: Duration) -> BoxFuture<'_, Result<ChangePage, ChannelError>> {
        Box::pin(self.poll_once(after, wait))
    }

    fn report(&self, reports: Vec<Report>) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(self.report_once(reports))
    }

    fn open_password(&self, event: &ChannelEvent) -> Result<Option<Secret>, ChannelError> {
        open_payload(&self.creds, event)
    }

    fn agent_id(&self) -> &str {
        &self.creds.agent_id
    }
}

/// Decrypts `event`'s payload with `creds.payload_key` and associated data
/// `"<agentId>|<userId>|<seq>"`; `None` when the event carries none.
pub fn open_payload(
    creds: &AgentCredentials,
    event: &ChannelEvent,
) -> Result<Option<Secret>, ChannelError> {
    let Some(payload) = event.payload() else {
        return Ok(None);
    };
    let bad = |detail: &str| ChannelError::BadPayload {
        seq: event.seq,
        detail: detail.to_owned(),
    };
    let raw = sealed::hex_decode(payload).ok_or_else(|| bad("it is not hexadecimal"))?;
    if raw.len() < NONCE_LEN + TAG_LEN {
        return Err(bad("it is too short to hold a nonce and a tag"));
    }
    let nonce =
        Nonce::try_assume_unique_for_key(&raw[..NONCE_LEN]).map_err(|_| bad("bad nonce"))?;
    let key = UnboundKey::new(&CHACHA20_POLY1305, creds.payload_key.expose())
        .map(LessSafeKey::new)
        .map_err(|_| bad("the payload key is unusable"))?;
    let aad = format!("{}|{}|{}", creds.agent_id, event.id, event.seq);
    let mut buf = Zeroizing::new(raw[NONCE_LEN..].to_vec());
    let plain_len = key
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf[..])
        .map_err(|_| ChannelError::Decrypt {
            seq: event.seq,
            user_id: event.id.clone(),
        })?
        .len();
    let password = std::str::from_utf8(&buf[..plain_len])
        .map_err(|_| bad("the decrypted password is not UTF-8"))?;
    Ok(Some(Secret::new(password)))
}

/// This machine's host name (`gethostname(2)`, else `/proc/sys/kernel/hostname`).
pub fn local_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let from_libc = (rc == 0)
        .then(|| {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).trim().to_owned()
        })
        .filter(|h| !h.is_empty());
    from_libc.or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disposition::{Classified, Disposition};
    use ring::rand::{SecureRandom, SystemRandom};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

    fn creds() -> AgentCredentials {
        AgentCredentials {
            agent_id: "671000000000000000000042".into(),
            activedirectory_id: "671000000000000000000041".into(),
            domain: "DC=alpha;DC=test".into(),
            agent_secret: Secret::new("5ec7".repeat(16)),
            payload_key: PayloadKey::from_bytes([0x42; 32]),
        }
    }

    /// Encrypts exactly as AGENT-CHANNEL.md says the server does.
    fn encrypt(key: &[u8; 32], agent: &str, user: &str, seq: u64, password: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).unwrap();
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap());
        let mut buf = password.to_vec();
        let aad = format!("{agent}|{user}|{seq}");
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut buf,
        )
        .unwrap();
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&buf);
        sealed::hex_encode(&raw)
    }

    fn password_event(seq: u64, user: &str, payload: Option<String>) -> ChannelEvent {
        ChannelEvent::new(seq, 0, EventKind::Password, EventOp::Update, user).with_payload(payload)
    }

    #[test]
    fn payloads_decrypt_with_the_agents_key_and_binding() {
        let c = creds();
        let pw = "Neue-Passwört-1!";
        let payload = encrypt(&[0x42; 32], &c.agent_id, "u1", 17, pw.as_bytes());
        let e = password_event(17, "u1", Some(payload.clone()));
        let got = open_payload(&c, &e).unwrap().unwrap();
        assert_eq!(got.expose(), pw);
        // Upper-case hex is hex too.
        let upper = password_event(17, "u1", Some(payload.to_uppercase()));
        assert_eq!(open_payload(&c, &upper).unwrap().unwrap().expose(), pw);

        // Null payload: no password for this agent.
        assert!(open_payload(&c, &password_event(17, "u1", None))
            .unwrap()
            .is_none());

        // Another seq, another user, another agent, another key: does not decrypt.
        for (seq, user, agent, key) in [
            (18, "u1", c.agent_id.as_str(), [0x42; 32]),
            (17, "u2", c.agent_id.as_str(), [0x42; 32]),
            (17, "u1", "671000000000000000000043", [0x42; 32]),
            (17, "u1", c.agent_id.as_str(), [0x43; 32]),
        ] {
            let p = encrypt(&key, agent, user, seq, pw.as_bytes());
            let e = password_event(17, "u1", Some(p));
            let err = open_payload(&c, &e).unwrap_err();
            assert!(
                matches!(err, ChannelError::Decrypt { seq: 17, .. }),
                "{err}"
            );
            assert_eq!(err.disposition(), Disposition::BadInput);
            assert!(!err.to_string().contains(pw));
        }

        // Malformed payloads.
        for (bad, needle) in [
            ("xyz0".to_owned(), "not hexadecimal"),
            ("abc".to_owned(), "not hexadecimal"),
            ("00".repeat(27), "too short"),
            (
                encrypt(&[0x42; 32], &c.agent_id, "u1", 17, &[0xff, 0xfe]),
                "not UTF-8",
            ),
        ] {
            let err = open_payload(&c, &password_event(17, "u1", Some(bad))).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
            assert_eq!(err.disposition(), Disposition::BadInput);
        }
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let c = creds();
        let text = format!("{c:?}");
        assert!(!text.contains("5ec7"), "{text}");
        assert!(!text.contains("42, 42") && !text.contains("4242"), "{text}");
        assert!(text.contains("671000000000000000000042"));
        let page_text = format!("{:?}", PayloadKey::from_bytes([7; 32]));
        assert_eq!(page_text, "PayloadKey(<redacted>)");
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let mut r = [0u8; 8];
        SystemRandom::new().fill(&mut r).unwrap();
        let d = std::env::temp_dir().join(format!(
            "fs-channel-{tag}-{}-{}",
            std::process::id(),
            sealed::hex_encode(&r)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        d
    }

    #[test]
    fn credentials_round_trip_sealed_and_private() {
        let root = temp_dir("creds");
        let state = root.join("state");
        let key = SealKey::load_or_create(&seal_key_path(&state)).unwrap();
        let path = credentials_path(&state, "Alpha");
        assert_eq!(path, state.join("agent-alpha.sealed"));
        assert!(AgentCredentials::load(&path, &key).unwrap().is_none());

        let c = creds();
        c.save(&path, &key).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("fs1:"));
        assert!(!text.contains(c.agent_secret.expose()));
        assert!(!text.contains(&sealed::hex_encode(c.payload_key.expose())));
        assert!(!text.contains(&c.agent_id), "the whole document is sealed");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);

        let back = AgentCredentials::load(&path, &key).unwrap().unwrap();
        assert_eq!(back.agent_id, c.agent_id);
        assert_eq!(back.activedirectory_id, c.activedirectory_id);
        assert_eq!(back.domain, c.domain);
        assert_eq!(back.agent_secret, c.agent_secret);
        assert_eq!(back.payload_key.expose(), c.payload_key.expose());

        // Another seal key: refused, naming the file.
        let other = SealKey::generate().unwrap();
        let err = AgentCredentials::load(&path, &other).unwrap_err();
        assert!(err.to_string().contains("agent-alpha.sealed"), "{err}");
        assert!(!err.to_string().contains("5ec7"));

        // Copied to another domain's name: refused (the purpose binds the file name).
        let beta = credentials_path(&state, "beta");
        std::fs::copy(&path, &beta).unwrap();
        std::fs::set_permissions(&beta, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            AgentCredentials::load(&beta, &key),
            Err(ChannelError::Seal { .. })
        ));

        // Group-readable: refused with the fix.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = AgentCredentials::load(&path, &key).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert_eq!(err.disposition(), Disposition::Fatal);

        // Garbage: refused, not a panic.
        std::fs::write(&path, "garbage").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(AgentCredentials::load(&path, &key).is_err());
        let doc = key
            .seal(&credentials_purpose(&path), br#"{"v":1}"#)
            .unwrap();
        std::fs::write(&path, doc).unwrap();
        let err = AgentCredentials::load(&path, &key).unwrap_err();
        assert!(matches!(err, ChannelError::CredentialsFile { .. }), "{err}");

        // Saving again replaces atomically (no temp file left).
        c.save(&path, &key).unwrap();
        let names: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn paths_are_sanitised() {
        let s = Path::new("/var/lib/forestsync");
        assert_eq!(
            credentials_path(s, "Corp.Example-1"),
            s.join("agent-corp.example-1.sealed")
        );
        assert_eq!(
            credentials_path(s, "../etc/x y"),
            s.join("agent-.._etc_x_y.sealed")
        );
        assert_eq!(seal_key_path(s), s.join("seal.key"));
    }

    #[test]
    fn channel_base_keeps_the_origin_only() {
        for (given, want) in [
            (
                "https://console.jumpcloud.com",
                "https://console.jumpcloud.com/__agent-channel/v1/",
            ),
            (
                "https://console.jumpcloud.com/api",
                "https://console.jumpcloud.com/__agent-channel/v1/",
            ),
            (
                "https://127.0.0.1:8443/api/v2/?x=1#f",
                "https://127.0.0.1:8443/__agent-channel/v1/",
            ),
            (
                "http://user:pw@localhost:8080/",
                "http://localhost:8080/__agent-channel/v1/",
            ),
            ("https://[::1]:9/", "https://[::1]:9/__agent-channel/v1/"),
        ] {
            assert_eq!(
                channel_base_from_api_url(given).unwrap().as_str(),
                want,
                "{given}"
            );
        }
        for bad in [
            "",
            "console.jumpcloud.com",
            "ftp://x/",
            "mailto:a@b",
            "https://",
        ] {
            let err = channel_base_from_api_url(bad).unwrap_err();
            assert_eq!(err.disposition(), Disposition::Fatal, "{bad}");
        }
        let base = channel_base_from_api_url("https://h:1").unwrap();
        assert_eq!(
            endpoint(&base, "changes").unwrap().as_str(),
            "https://h:1/__agent-channel/v1/changes"
        );
        let no_slash = Url::parse("https://h:1/__agent-channel/v1").unwrap();
        assert_eq!(
            endpoint(&normalized_base(&no_slash).unwrap(), "reports")
                .unwrap()
                .as_str(),
            "https://h:1/__agent-channel/v1/reports"
        );
    }

    #[test]
    fn bad_credentials_and_keys_are_refused_before_any_request() {
        let tls = crate::trust::client_config(None).unwrap();
        let base = channel_base_from_api_url("https://127.0.0.1:1").unwrap();
        let mut c = creds();
        c.agent_secret = Secret::new("has space");
        let err =
            HttpChannel::new(base.clone(), tls.clone(), c, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ChannelError::BadCredentials));
        let ch =
            HttpChannel::new(base.clone(), tls.clone(), creds(), Duration::from_secs(1)).unwrap();
        assert!(!format!("{ch:?}").contains("5ec7"));
        assert_eq!(ch.agent_id(), "671000000000000000000042");

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for key in ["", "  ", "two words", "line\nbreak"] {
            let err = rt
                .block_on(register(&base, tls.clone(), &Secret::new(key), "h", "v"))
                .unwrap_err();
            assert!(matches!(err, ChannelError::ConnectKeyInvalid), "{err}");
            assert!(err.to_string().contains("Install New Agent"));
        }
        // Nothing listens on port 1: a retryable connection error.
        let err = rt
            .block_on(register(&base, tls, &Secret::new("ck-1234"), "h", "v"))
            .unwrap_err();
        assert_eq!(err.disposition(), Disposition::Retry, "{err}");
        assert!(!err.to_string().contains("ck-1234"));
        // Empty reports send nothing (so no connection error either).
        rt.block_on(ch.report(Vec::new())).unwrap();
    }

    /// A plain-HTTP server answering each connection with the next canned response (after its
    /// delay) and recording the requests it read.
    struct Mock {
        base: Url,
        requests: Arc<std::sync::Mutex<Vec<String>>>,
    }

    async fn mock(responses: Vec<(Duration, String)>) -> Mock {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            for (delay, response) in responses {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                tokio::time::sleep(delay).await;
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            }
        });
        Mock {
            base: Url::parse(&format!("http://{addr}{CHANNEL_PATH}")).unwrap(),
            requests,
        }
    }

    fn reply(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
            body.len()
        )
    }

    fn channel(base: &Url, request_timeout: Duration) -> HttpChannel {
        let tls = crate::trust::client_config(None).unwrap();
        HttpChannel::new(base.clone(), tls, creds(), request_timeout).unwrap()
    }

    #[tokio::test]
    async fn poll_and_report_speak_the_contract() {
        let page = r#"{"role":"primary","primaryAgent":"671000000000000000000042","acked":5,"head":6,"events":[{"seq":6,"at":"2026-11-26T07:00:00Z","kind":"user","op":"update","id":"u1"}]}"#;
        let m = mock(vec![
            (Duration::ZERO, reply("200 OK", "", page)),
            (Duration::ZERO, reply("204 No Content", "", "")),
        ])
        .await;
        let ch = channel(&m.base, Duration::from_secs(5));
        let got = ch.poll(5, Duration::ZERO).await.unwrap();
        assert_eq!(got.role, Role::Primary);
        assert_eq!(got.events[0].seq, 6);
        ch.report(vec![Report {
            kind: ReportKind::User,
            id: "u1".into(),
            seq: 6,
            code: ReportCode::Ok,
            message: String::new(),
        }])
        .await
        .unwrap();
        let reqs = m.requests.lock().unwrap().clone();
        let bearer = format!(
            "authorization: Bearer 671000000000000000000042.{}",
            "5ec7".repeat(16)
        );
        assert!(
            reqs[0].starts_with("GET /__agent-channel/v1/changes?after=5&wait_ms=0 HTTP/1.1"),
            "{}",
            reqs[0]
        );
        assert!(
            reqs[0].to_lowercase().contains(&bearer.to_lowercase()),
            "{}",
            reqs[0]
        );
        assert!(
            reqs[1].starts_with("POST /__agent-channel/v1/reports HTTP/1.1"),
            "{}",
            reqs[1]
        );
        assert!(reqs[1].to_lowercase().contains("authorization: bearer "));
        assert!(
            reqs[1].ends_with(
                r#"{"reports":[{"kind":"user","id":"u1","seq":6,"code":"ok","message":""}]}"#
            ),
            "{}",
            reqs[1]
        );
    }

    #[tokio::test]
    async fn answers_are_classified() {
        let m = mock(vec![
            (
                Duration::ZERO,
                reply(
                    "401 Unauthorized",
                    "",
                    r#"{"code":"unauthorized","message":"unknown agent or wrong credentials"}"#,
                ),
            ),
            (
                Duration::ZERO,
                reply(
                    "429 Too Many Requests",
                    "retry-after: 7\r\n",
                    r#"{"code":"throttled","message":"slow down"}"#,
                ),
            ),
            (Duration::ZERO, reply("503 Service Unavailable", "", "")),
            (Duration::ZERO, reply("200 OK", "", "{not json")),
            (
                Duration::ZERO,
                reply(
                    "400 Bad Request",
                    "",
                    r#"{"code":"bad_request","message":"wait_ms out of range"}"#,
                ),
            ),
        ])
        .await;
        let ch = channel(&m.base, Duration::from_secs(5));
        let next = || ch.poll(1, Duration::ZERO);
        let e = next().await.unwrap_err();
        assert!(matches!(e, ChannelError::Unauthorized { .. }), "{e}");
        assert_eq!(e.disposition(), Disposition::Fatal);
        assert!(!e.to_string().contains("5ec7"));
        let e = next().await.unwrap_err();
        assert_eq!(
            e.disposition(),
            Disposition::Throttled {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        let e = next().await.unwrap_err();
        assert_eq!(e.disposition(), Disposition::Retry, "{e}");
        let e = next().await.unwrap_err();
        assert!(matches!(e, ChannelError::Malformed { .. }), "{e}");
        assert_eq!(e.disposition(), Disposition::BadInput);
        let e = next().await.unwrap_err();
        assert!(e.to_string().contains("wait_ms out of range"), "{e}");
        assert_eq!(e.disposition(), Disposition::BadInput);
    }

    #[tokio::test]
    async fn the_long_poll_gets_its_wait_on_top_of_the_request_timeout() {
        let empty = r#"{"role":"primary","acked":0,"head":0,"events":[]}"#;
        let m = mock(vec![
            // Slower than request_timeout, within wait + request_timeout.
            (Duration::from_millis(1200), reply("200 OK", "", empty)),
            // Slower than request_timeout with no wait.
            (Duration::from_secs(3), reply("200 OK", "", empty)),
        ])
        .await;
        let ch = channel(&m.base, Duration::from_millis(700));
        let page = ch.poll(0, Duration::from_secs(2)).await.unwrap();
        assert!(page.events.is_empty());
        assert!(m.requests.lock().unwrap()[0].contains("wait_ms=2000"));
        let e = ch.poll(0, Duration::ZERO).await.unwrap_err();
        assert!(matches!(e, ChannelError::Timeout { .. }), "{e}");
        assert_eq!(e.disposition(), Disposition::Retry);
        // A wait beyond the channel's maximum is capped.
        let m = mock(vec![(Duration::ZERO, reply("200 OK", "", empty))]).await;
        channel(&m.base, Duration::from_secs(5))
            .poll(0, Duration::from_secs(90))
            .await
            .unwrap();
        assert!(m.requests.lock().unwrap()[0].contains("wait_ms=30000"));
    }

    #[tokio::test]
    async fn register_sends_the_key_once_and_reads_the_answer() {
        let ok = format!(
            r#"{{"agentId":"a1","activedirectoryId":"ad1","domain":"DC=alpha;DC=test","agentSecret":"{}","payloadKey":"{}","primary":false}}"#,
            "ab".repeat(32),
            "0f".repeat(32)
        );
        let m = mock(vec![
            (Duration::ZERO, reply("201 Created", "", &ok)),
            (
                Duration::ZERO,
                reply(
                    "410 Gone",
                    "",
                    r#"{"code":"connect_key_used","message":"connect key ck-live-1 already used"}"#,
                ),
            ),
            (Duration::ZERO, reply("404 Not Found", "", "")),
        ])
        .await;
        let tls = crate::trust::client_config(None).unwrap();
        let key = Secret::new(" ck-live-1\n");
        let r = register(&m.base, tls.clone(), &key, "dc1.alpha.test", "0.1.0")
            .await
            .unwrap();
        assert!(!r.primary);
        assert_eq!(r.credentials.agent_id, "a1");
        assert_eq!(r.credentials.payload_key.expose(), &[0x0f; 32]);
        let req = m.requests.lock().unwrap()[0].clone();
        assert!(
            req.starts_with("POST /__agent-channel/v1/register HTTP/1.1"),
            "{req}"
        );
        assert!(
            req.ends_with(
                r#"{"connectKey":"ck-live-1","hostname":"dc1.alpha.test","version":"0.1.0"}"#
            ),
            "{req}"
        );
        assert!(!req.to_lowercase().contains("authorization"));

        let e = register(&m.base, tls.clone(), &key, "h", "v")
            .await
            .unwrap_err();
        assert!(matches!(e, ChannelError::ConnectKeyUsed), "{e}");
        assert!(!e.to_string().contains("ck-live-1"));
        let e = register(&m.base, tls, &key, "h", "v").await.unwrap_err();
        assert!(matches!(e, ChannelError::NoChannel { .. }), "{e}");
        assert!(e.to_string().contains("base_url"), "{e}");
    }

    #[test]
    fn the_hostname_is_found() {
        let h = local_hostname().unwrap();
        assert!(!h.is_empty() && !h.contains('\0'));
    }
}

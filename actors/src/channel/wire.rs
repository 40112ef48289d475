//! The agent channel's JSON (tests/jcemu/AGENT-CHANNEL.md): change pages, events, reports and the
//! registration answer. Parsing is strict about what the engine relies on (`seq`, `at`, `id`, the
//! page's cursors) and lenient about the rest: unknown kinds and ops are kept as `Unknown`, optional
//! fields may be absent or `null`, unknown fields are ignored.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ChannelError;

/// This agent's role for its AD instance, as the server decided on this poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Receives the events and acknowledges them.
    Primary,
    /// Gets no events; polls again about once a second to take over when the primary goes silent.
    Standby,
}

/// One answer of `GET /changes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangePage {
    pub role: Role,
    /// The AD instance's primary agent (this agent's id when `role` is `Primary`).
    pub primary_agent: Option<String>,
    /// Every event with `seq <= acked` is acknowledged for this AD instance.
    pub acked: u64,
    /// The newest `seq` in the organisation's event log (0 when empty).
    pub head: u64,
    /// Oldest first; empty for a standby or when the long poll timed out.
    pub events: Vec<ChannelEvent>,
}

/// What an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    User,
    UserGroup,
    Membership,
    Association,
    Password,
    /// A kind this version does not know (kept so the caller can skip and still acknowledge it).
    Unknown(String),
}

impl EventKind {
    fn parse(s: &str) -> Self {
        match s {
            "user" => EventKind::User,
            "user_group" => EventKind::UserGroup,
            "membership" => EventKind::Membership,
            "association" => EventKind::Association,
            "password" => EventKind::Password,
            other => EventKind::Unknown(other.to_owned()),
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventOp {
    Create,
    Update,
    Delete,
    Add,
    Remove,
    Unknown(String),
}

impl EventOp {
    fn parse(s: &str) -> Self {
        match s {
            "create" => EventOp::Create,
            "update" => EventOp::Update,
            "delete" => EventOp::Delete,
            "add" => EventOp::Add,
            "remove" => EventOp::Remove,
            other => EventOp::Unknown(other.to_owned()),
        }
    }
}

/// One change in the organisation. `Debug` shows whether a password payload is present, never the
/// payload itself; [`super::AgentChannel::open_password`] decrypts it.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelEvent {
    /// Organisation-wide, starting at 1, one per event, never reused.
    pub seq: u64,
    /// When the change happened (server clock), milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub kind: EventKind,
    pub op: EventOp,
    /// The user or group the event is about (membership: the user; association: the bound object).
    pub id: String,
    /// Membership events: the group.
    pub group_id: Option<String>,
    /// Association events: `"user"` or `"user_group"`.
    pub target_type: Option<String>,
    /// Association events: the AD instance concerned.
    pub activedirectory_id: Option<String>,
    /// Password events: hex(nonce ‖ ciphertext ‖ tag) for this agent, or `None` when the user is not in
    /// this agent's scope.
    pub(super) payload: Option<String>,
}

impl ChannelEvent {
    /// An event without optional fields and without payload (for tests and fakes).
    pub fn new(seq: u64, at_ms: i64, kind: EventKind, op: EventOp, id: impl Into<String>) -> Self {
        ChannelEvent {
            seq,
            at_ms,
            kind,
            op,
            id: id.into(),
            group_id: None,
            target_type: None,
            activedirectory_id: None,
            payload: None,
        }
    }

    /// The same event carrying `payload` (hex, as on the wire).
    pub fn with_payload(mut self, payload: Option<String>) -> Self {
        self.payload = payload;
        self
    }

    /// Whether the event carries an encrypted password for this agent.
    pub fn has_payload(&self) -> bool {
        self.payload.is_some()
    }

    pub(super) fn payload(&self) -> Option<&str> {
        self.payload.as_deref()
    }
}

impl fmt::Debug for ChannelEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelEvent")
            .field("seq", &self.seq)
            .field("at_ms", &self.at_ms)
            .field("kind", &self.kind)
            .field("op", &self.op)
            .field("id", &self.id)
            .field("group_id", &self.group_id)
            .field("target_type", &self.target_type)
            .field("activedirectory_id", &self.activedirectory_id)
            .field(
                "payload",
                &if self.payload.is_some() {
                    "<encrypted>"
                } else {
                    "none"
                },
            )
            .finish()
    }
}

/// What a report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    Password,
    User,
    UserGroup,
}

impl ReportKind {
    /// The object-kind label of the change metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            ReportKind::Password => "password",
            ReportKind::User => "user",
            ReportKind::UserGroup => "group",
        }
    }
}

/// How applying an event to AD went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportCode {
    Ok,
    /// AD refused the change (policy, constraint): retrying the same change will not help.
    Rejected,
    /// Something failed on the way (connection, timeout).
    Error,
}

/// One status report back to JumpCloud. `message` is shown to admins: never put a password in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub kind: ReportKind,
    /// The JumpCloud id of the user or group.
    pub id: String,
    /// The event the report answers.
    pub seq: u64,
    pub code: ReportCode,
    pub message: String,
}

#[derive(Serialize)]
pub(super) struct ReportsBody<'a> {
    pub reports: &'a [Report],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RegisterBody<'a> {
    pub connect_key: &'a str,
    pub hostname: &'a str,
    pub version: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageWire {
    role: String,
    #[serde(default)]
    primary_agent: Option<String>,
    acked: u64,
    head: u64,
    #[serde(default)]
    events: Option<Vec<EventWire>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventWire {
    seq: u64,
    at: String,
    kind: String,
    op: String,
    id: String,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    target_type: Option<String>,
    #[serde(default)]
    activedirectory_id: Option<String>,
    #[serde(default)]
    payload: Option<String>,
}

fn malformed(what: &str, detail: impl Into<String>) -> ChannelError {
    ChannelError::Malformed {
        what: what.to_owned(),
        detail: detail.into(),
    }
}

/// Parses a `GET /changes` body (public for the fuzz targets in tests/fuzz).
pub fn parse_change_page(body: &[u8]) -> Result<ChangePage, ChannelError> {
    const WHAT: &str = "change page";
    let wire: PageWire =
        serde_json::from_slice(body).map_err(|e| malformed(WHAT, e.to_string()))?;
    let role = match wire.role.as_str() {
        "primary" => Role::Primary,
        "standby" => Role::Standby,
        other => return Err(malformed(WHAT, format!("unknown role {other:?}"))),
    };
    let mut events = Vec::new();
    for e in wire.events.unwrap_or_default() {
        let at_ms = parse_rfc3339_ms(&e.at).ok_or_else(|| {
            malformed(
                WHAT,
                format!(
                    "event {}: at {:?} is not an RFC 3339 date-time",
                    e.seq, e.at
                ),
            )
        })?;
        if e.id.is_empty() {
            return Err(malformed(WHAT, format!("event {}: id is empty", e.seq)));
        }
        events.push(ChannelEvent {
            seq: e.seq,
            at_ms,
            kind: EventKind::parse(&e.kind),
            op: EventOp::parse(&e.op),
            id: e.id,
            group_id: e.group_id,
            target_type: e.target_type,
            activedirectory_id: e.activedirectory_id,
            payload: e.payload,
        });
    }
    Ok(ChangePage {
        role,
        primary_agent: wire.primary_agent,
        acked: wire.acked,
        head: wire.head,
        events,
    })
}

/// What `POST /register` answered. Secrets are extracted field by field so no parser message can
/// quote them.
pub struct RegistrationWire {
    pub agent_id: String,
    pub activedirectory_id: String,
    pub domain: String,
    pub agent_secret: crate::secret::Secret,
    pub payload_key: zeroize::Zeroizing<[u8; 32]>,
    pub primary: bool,
}

/// Parses a `POST /register` answer (public for the fuzz targets in tests/fuzz).
pub fn parse_registration(body: &[u8]) -> Result<RegistrationWire, ChannelError> {
    const WHAT: &str = "registration answer";
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| malformed(WHAT, "the body is not JSON"))?;
    let text = |v: &serde_json::Value, key: &str| -> Result<String, ChannelError> {
        match v.get(key) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(malformed(
                WHAT,
                format!("{key} is missing or not a non-empty string"),
            )),
        }
    };
    let agent_id = text(&v, "agentId")?;
    let activedirectory_id = text(&v, "activedirectoryId")?;
    let domain = match v.get("domain") {
        Some(serde_json::Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let primary = match v.get("primary") {
        Some(serde_json::Value::Bool(b)) => *b,
        _ => return Err(malformed(WHAT, "primary is missing or not a boolean")),
    };
    let agent_secret = text(&v, "agentSecret")?;
    let agent_secret = crate::secret::Secret::new(agent_secret);
    if !is_header_safe(agent_secret.expose()) || !is_header_safe(&agent_id) {
        return Err(malformed(
            WHAT,
            "agentId or agentSecret holds characters not allowed in a header",
        ));
    }
    let key_hex = zeroize::Zeroizing::new(text(&v, "payloadKey")?);
    let payload_key = decode_key(&key_hex)
        .ok_or_else(|| malformed(WHAT, "payloadKey is not 64 hex digits (32 bytes)"))?;
    // Wipe the parsed copies of the secrets.
    for key in ["agentSecret", "payloadKey"] {
        if let Some(serde_json::Value::String(s)) = v.get_mut(key) {
            zeroize::Zeroize::zeroize(s);
        }
    }
    Ok(RegistrationWire {
        agent_id,
        activedirectory_id,
        domain,
        agent_secret,
        payload_key,
        primary,
    })
}

/// 64 hex digits → 32 bytes, in a zeroized buffer.
pub(super) fn decode_key(hex: &str) -> Option<zeroize::Zeroizing<[u8; 32]>> {
    let bytes = zeroize::Zeroizing::new(crate::sealed::hex_decode(hex)?);
    if bytes.len() != 32 {
        return None;
    }
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&bytes);
    Some(key)
}

/// Printable ASCII without spaces: safe in an `Authorization` header and in a JSON string.
pub(super) fn is_header_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Milliseconds since the Unix epoch of an RFC 3339 date-time (`2026-11-26T07:00:00.123Z`,
/// `…+02:00`, any number of fraction digits, `t`/`z` in either case); `None` when it is not one.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let year = num(0, 4)?;
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    let hour = num(11, 2)?;
    let minute = num(14, 2)?;
    let second = num(17, 2)?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let h = num(i + 1, 2)?;
            let m = num(i + 4, 2)?;
            if h > 23 || m > 59 {
                return None;
            }
            let total = h * 60 + m;
            if *sign == b'+' {
                total
            } else {
                -total
            }
        }
        _ => return None,
    };
    // A leap second counts as the last second of its minute.
    let second = second.min(59);
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(secs * 1_000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disposition::{Classified, Disposition};

    #[test]
    fn a_primary_page_parses_every_field() {
        let body = br#"{"role":"primary","primaryAgent":"a1","acked":16,"head":20,"events":[
            {"seq":17,"at":"2026-11-26T07:00:00.123Z","kind":"user","op":"create","id":"u1"},
            {"seq":18,"at":"2026-11-26T07:00:01Z","kind":"membership","op":"add","id":"u1","groupId":"g1"},
            {"seq":19,"at":"2026-11-26T07:00:02.5Z","kind":"association","op":"remove","id":"g1",
             "targetType":"user_group","activedirectoryId":"ad1","payload":null},
            {"seq":20,"at":"2026-11-26T07:00:03.000Z","kind":"password","op":"update","id":"u1","payload":"00ff"}
        ]}"#;
        let page = parse_change_page(body).unwrap();
        assert_eq!(page.role, Role::Primary);
        assert_eq!(page.primary_agent.as_deref(), Some("a1"));
        assert_eq!((page.acked, page.head), (16, 20));
        assert_eq!(page.events.len(), 4);
        let e = &page.events;
        assert_eq!(e[0].kind, EventKind::User);
        assert_eq!(e[0].op, EventOp::Create);
        assert_eq!(e[0].at_ms, 1_795_676_400_123);
        assert_eq!(e[1].kind, EventKind::Membership);
        assert_eq!(e[1].group_id.as_deref(), Some("g1"));
        assert_eq!(e[2].target_type.as_deref(), Some("user_group"));
        assert_eq!(e[2].activedirectory_id.as_deref(), Some("ad1"));
        assert_eq!(e[2].at_ms, 1_795_676_402_500);
        assert!(!e[2].has_payload());
        assert_eq!(e[3].kind, EventKind::Password);
        assert!(e[3].has_payload());
        assert!(
            !format!("{:?}", e[3]).contains("00ff"),
            "Debug shows the payload"
        );
        assert!(format!("{:?}", e[3]).contains("<encrypted>"));
    }

    #[test]
    fn a_standby_page_and_unknown_kinds_and_missing_optionals_parse() {
        let page = parse_change_page(
            br#"{"role":"standby","primaryAgent":"a0","acked":3,"head":9,"events":[],"extra":1}"#,
        )
        .unwrap();
        assert_eq!(page.role, Role::Standby);
        assert!(page.events.is_empty());

        let page = parse_change_page(br#"{"role":"primary","acked":0,"head":1,"events":[
            {"seq":1,"at":"2026-01-01T00:00:00+01:00","kind":"device","op":"rename","id":"d1","new":"x"}]}"#)
        .unwrap();
        assert_eq!(page.primary_agent, None);
        let e = &page.events[0];
        assert_eq!(e.kind, EventKind::Unknown("device".into()));
        assert_eq!(e.op, EventOp::Unknown("rename".into()));
        assert_eq!(e.group_id, None);
        assert_eq!(e.at_ms, parse_rfc3339_ms("2025-12-31T23:00:00Z").unwrap());

        // `events` absent or null: an empty page.
        let page = parse_change_page(br#"{"role":"primary","acked":0,"head":0}"#).unwrap();
        assert!(page.events.is_empty());
        let page =
            parse_change_page(br#"{"role":"primary","acked":0,"head":0,"events":null}"#).unwrap();
        assert!(page.events.is_empty());
    }

    #[test]
    fn malformed_pages_are_bad_input_naming_what() {
        for (body, needle) in [
            (&b"not json"[..], "change page"),
            (br#"{"role":"primary","acked":0}"#, "head"),
            (br#"{"role":"leader","acked":0,"head":0}"#, "leader"),
            (br#"{"role":"primary","acked":-1,"head":0}"#, "change page"),
            (
                br#"{"role":"primary","acked":0,"head":1,"events":[{"seq":1,"at":"yesterday","kind":"user","op":"create","id":"u"}]}"#,
                "yesterday",
            ),
            (
                br#"{"role":"primary","acked":0,"head":1,"events":[{"seq":1,"at":"2026-01-01T00:00:00Z","kind":"user","op":"create"}]}"#,
                "id",
            ),
            (
                br#"{"role":"primary","acked":0,"head":1,"events":[{"seq":"1","at":"2026-01-01T00:00:00Z","kind":"user","op":"create","id":"u"}]}"#,
                "change page",
            ),
            (
                br#"{"role":"primary","acked":0,"head":1,"events":[{"seq":1,"at":"2026-01-01T00:00:00Z","kind":"user","op":"create","id":""}]}"#,
                "id is empty",
            ),
        ] {
            let err = parse_change_page(body).unwrap_err();
            assert_eq!(err.disposition(), Disposition::BadInput, "{err}");
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn registration_answers_parse_and_never_quote_secrets() {
        let secret = "ab".repeat(32);
        let key = "0f".repeat(32);
        let body = format!(
            r#"{{"agentId":"a1","activedirectoryId":"ad1","domain":"DC=alpha;DC=test","agentSecret":"{secret}","payloadKey":"{key}","primary":true}}"#
        );
        let r = parse_registration(body.as_bytes()).unwrap();
        assert_eq!(r.agent_id, "a1");
        assert_eq!(r.activedirectory_id, "ad1");
        assert_eq!(r.domain, "DC=alpha;DC=test");
        assert_eq!(r.agent_secret.expose(), secret);
        assert_eq!(&r.payload_key[..], &[0x0f; 32][..]);
        assert!(r.primary);

        for bad in [
            body.replace(&key, "0f0f"),
            body.replace(&key, &"zz".repeat(32)),
            body.replace(r#""primary":true"#, r#""primary":"yes""#),
            body.replace(r#""agentId":"a1","#, ""),
            body.replace(&secret, "has space"),
            body.replace(&format!(r#""{secret}""#), "12345"),
            "[]".to_owned(),
            "{".to_owned(),
        ] {
            let Err(err) = parse_registration(bad.as_bytes()) else {
                panic!("a malformed registration answer was accepted");
            };
            let text = err.to_string();
            assert_eq!(err.disposition(), Disposition::BadInput);
            assert!(text.contains("registration answer"), "{text}");
            assert!(!text.contains(&secret) && !text.contains(&key) && !text.contains("12345"));
        }
    }

    #[test]
    fn reports_serialize_as_the_contract_says() {
        let reports = [Report {
            kind: ReportKind::UserGroup,
            id: "g1".into(),
            seq: 7,
            code: ReportCode::Rejected,
            message: "name taken".into(),
        }];
        let v = serde_json::to_value(ReportsBody { reports: &reports }).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"reports": [{"kind": "user_group", "id": "g1", "seq": 7, "code": "rejected", "message": "name taken"}]})
        );
        let k = |k| serde_json::to_value(k).unwrap();
        assert_eq!(k(ReportKind::Password), "password");
        assert_eq!(k(ReportKind::User), "user");
        let c = |c| serde_json::to_value(c).unwrap();
        assert_eq!(c(ReportCode::Ok), "ok");
        assert_eq!(c(ReportCode::Error), "error");
    }

    #[test]
    fn rfc3339_dates_parse_to_epoch_millis() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.001Z"), Some(1));
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(
            parse_rfc3339_ms("2000-02-29t12:00:00.123456789z"),
            Some(951_825_600_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T09:00:00.5+02:00"),
            parse_rfc3339_ms("2026-11-26T07:00:00.500Z")
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T02:30:00-04:30"),
            parse_rfc3339_ms("2026-11-26T07:00:00Z")
        );
        assert_eq!(
            parse_rfc3339_ms("2016-12-31T23:59:60Z"),
            parse_rfc3339_ms("2016-12-31T23:59:59Z")
        );
        for bad in [
            "",
            "2026-11-26",
            "2026-11-26T07:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T07:00:00.Z",
            "2026-11-26T07:00:00Zjunk",
            "2026-11-26T07:00:00+0200",
            "2026/11/26T07:00:00Z",
            "2026-11-26T07:00:00+25:00",
            "２026-11-26T07:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}

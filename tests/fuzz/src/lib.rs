//! Fuzz targets for the parsers of untrusted bytes (issue #8). One function per target; each must
//! return normally on every input (a panic is a finding). Where a decode succeeds, the target also
//! checks a round trip or an invariant, so a wrong answer is a finding too, not only a crash.
//!
//! - [`config`]: the configuration file (`Config::parse` and the capture hook's `HookConfig::parse`).
//! - [`dn_and_filter`]: LDAP filter and RDN escaping, DN parents and normalisation, attribute
//!   descriptions with `range=`, SIDs, GUIDs, the ownership marker.
//! - [`ber_controls`]: the DirSync and paged-results response controls and search result entries
//!   (`decode_entry`, `search_entry`), as BER from the DC.
//! - [`hook_and_channel`]: the capture hook's socket frame and message, the encrypted spool/in-memory
//!   seal, sealed config values (`fs1:`), the agent channel's change pages, registration answer,
//!   password payloads and dates, and the admin socket's request line.
//!
//! The short form (`tests/short.rs`, part of `cargo test --workspace`) runs every seed and a fixed
//! number of deterministic mutations; the long form is libFuzzer via cargo-fuzz (`deploy/fuzz-long`).

use std::path::{Component, Path};
use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

use forestsync::admin::parse_request;
use forestsync::config::{Config, HookConfig};
use forestsync_actors::channel::{
    open_payload, parse_change_page, parse_registration, parse_rfc3339_ms, AgentCredentials,
    ChannelEvent, EventKind, EventOp, PayloadKey,
};
use forestsync_actors::coordinator::to_ad::parent_of;
use forestsync_actors::directory::dirsync::DIRSYNC_OID;
use forestsync_actors::directory::entry::{paged_cookie, sid_string, PAGED_RESULTS_OID};
use forestsync_actors::directory::read::{
    decode_entry, parse_attr_desc, search_entry, sid_rid, RangeOption, RawEntry,
};
use forestsync_actors::directory::{DirSyncRequest, DirSyncResponse};
use forestsync_actors::model::snapshot::normalize_dn;
use forestsync_actors::model::ObjectGuid;
use forestsync_actors::password::spool::CaptureKey;
use forestsync_actors::password::{decode_message, encode_frame, encode_message, MAX_FRAME};
use forestsync_actors::plan::to_ad::{
    escape_filter_value, escape_rdn_value, marker_filter, marker_value, parse_marker, Marker,
};
use forestsync_actors::sealed::{hex_decode, is_sealed, SealKey};
use forestsync_actors::secret::Secret;
use ldap3::asn1::{
    parse_tag, write, ASNTag, OctetString, Sequence, Set, StructureTag, Tag, TagClass,
};
use ldap3::controls::{PagedResults, RawControl};

/// A fuzz target: returns normally on every input.
pub type Target = fn(&[u8]);

/// The targets by name (the names of tests/fuzz/seeds/<target>/ and of the cargo-fuzz binaries).
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("dn_and_filter", dn_and_filter),
    ("ber_controls", ber_controls),
    ("hook_and_channel", hook_and_channel),
];

// ---------------------------------------------------------------------------------------------
// config

/// Where the fuzzed config file pretends to live: relative paths in it resolve under a directory
/// that does not exist, so no `*_file` key ever reads a real file.
const CONFIG_PATH: &str = "/nonexistent-forestsync-fuzz/forestsync.toml";

/// The config file as the agent (`Config::parse`) and the capture hook (`HookConfig::parse`) read it.
/// Invariant: a file the agent accepts is accepted by the hook, with the same `[passwords]` and the
/// same domain names (the hook must never refuse to run where the agent runs).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !reads_no_real_file(text) {
        return;
    }
    let path = Path::new(CONFIG_PATH);
    let agent = Config::parse(path, text);
    let hook = HookConfig::parse(path, text);
    if let Ok(c) = &agent {
        let hook = match &hook {
            Ok(h) => h,
            Err(e) => panic!("the agent accepts this config but the hook refuses it: {e}"),
        };
        assert_eq!(
            format!("{:?}", hook.passwords),
            format!("{:?}", c.passwords)
        );
        let names: Vec<String> = c.domains.iter().map(|d| d.name.clone()).collect();
        assert_eq!(hook.domains, names);
        assert!(!c.domains.is_empty(), "accepted without a domain");
        for d in &c.domains {
            assert!(!d.name.trim().is_empty(), "accepted an empty domain name");
            assert!(!d.dcs.is_empty(), "accepted a domain without DCs");
        }
        assert!(c.jumpcloud.rate_limit_per_minute >= 1 && c.jumpcloud.burst >= 1);
        assert!(c.safety.max_removal_percent <= 100);
        assert!(!c.passwords.confirm_window.is_zero());
    }
}

/// True when every key naming a file (`*file*`) holds a relative path without `..`, which resolves
/// under [`CONFIG_PATH`]'s missing directory: the config parser reads secret files, and a fuzzer must
/// not make it read `/dev/zero` or a FIFO. Input that is not TOML is fine (it never gets that far).
fn reads_no_real_file(text: &str) -> bool {
    fn walk(v: &toml::Value) -> bool {
        match v {
            toml::Value::Table(t) => t.iter().all(|(k, v)| {
                let names_file = k.to_ascii_lowercase().contains("file");
                (!names_file || is_contained_relative(v)) && walk(v)
            }),
            toml::Value::Array(a) => a.iter().all(walk),
            _ => true,
        }
    }
    fn is_contained_relative(v: &toml::Value) -> bool {
        match v {
            toml::Value::String(s) => Path::new(s)
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
            _ => true, // not a path: the parser rejects the type
        }
    }
    match toml::from_str::<toml::Table>(text) {
        Ok(t) => walk(&toml::Value::Table(t)),
        Err(_) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// DN and filter

/// DN, filter and attribute-description handling. The input is read as text (lossily) and, for the
/// binary helpers (SID, GUID), as bytes.
pub fn dn_and_filter(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let s: &str = &text;

    // RFC 4515: no unescaped special character survives, and unescaping gives the value back.
    let escaped = escape_filter_value(s);
    assert_filter_value_is_escaped(&escaped);
    assert_eq!(
        unescape_hex_pairs(&escaped),
        s.as_bytes(),
        "filter escaping is lossy"
    );
    let filter = marker_filter(s);
    assert_balanced_parentheses(&filter);

    // RFC 4514: an escaped value is one RDN (its commas do not split the DN) and unescapes to itself.
    let rdn = escape_rdn_value(s);
    let parent = "OU=Fuzz,DC=example,DC=com";
    assert_eq!(
        parent_of(&format!("CN={rdn},{parent}")),
        parent,
        "escaped RDN {rdn:?} splits the DN"
    );
    assert!(!rdn.starts_with('#') && !rdn.starts_with(' '), "{rdn:?}");
    assert!(!rdn.ends_with(' ') || rdn.ends_with("\\ "), "{rdn:?}");
    assert_eq!(unescape_rdn(&rdn), s.as_bytes(), "RDN escaping is lossy");

    // The parent of any DN is a suffix of it (and parsing never splits a character).
    let p = parent_of(s);
    assert!(s.ends_with(p));
    let n = normalize_dn(s);
    assert_eq!(normalize_dn(&n), n, "normalize_dn is not idempotent");

    // `member;range=0-1499`: the base name is lower case, a range is ordered, and writing it back reads the same.
    let (base, range) = parse_attr_desc(s);
    assert!(!base.bytes().any(|b| b.is_ascii_uppercase()));
    let rewritten = match range {
        RangeOption::Range { low, high } => {
            if let Some(high) = high {
                assert!(high >= low);
            }
            let high = high.map_or_else(|| "*".to_owned(), |h| h.to_string());
            Some(format!("{base};range={low}-{high}"))
        }
        RangeOption::Absent => Some(base.clone()),
        RangeOption::Malformed => None,
    };
    if let Some(rewritten) = rewritten {
        // `base` is trimmed already; a trailing option-less `;` cannot occur in it.
        assert_eq!(parse_attr_desc(&rewritten), (base.clone(), range));
    }

    // The ownership marker round-trips for any id that does not itself hold the separator.
    if !s.is_empty() && !s.contains(";pw=") {
        let seq = data.first().map(|b| u64::from(*b) * 1_000_003);
        for password_seq in [None, seq] {
            assert_eq!(
                parse_marker(&marker_value(s, password_seq)),
                Some(Marker {
                    id: s.to_owned(),
                    password_seq
                })
            );
        }
    }

    // SIDs: the RID is the last sub-authority of the string form.
    match (sid_rid(data), sid_string(data)) {
        (Some(rid), Some(text)) => assert!(text.ends_with(&format!("-{rid}")), "{text} vs {rid}"),
        (Some(rid), None) => panic!("RID {rid} of a SID that has no string form"),
        _ => {}
    }

    // GUIDs: wire bytes → text → wire bytes, and text that parses prints back as a GUID.
    if let Some(bytes) = data.get(..16) {
        let guid = ObjectGuid::from_bytes(bytes).expect("16 bytes are a GUID");
        assert_eq!(guid.to_string().parse::<ObjectGuid>().ok(), Some(guid));
        let value = guid.ldap_filter_value();
        assert_eq!(value.len(), 48);
        assert_eq!(unescape_hex_pairs(&value), bytes);
    }
    if let Ok(guid) = s.parse::<ObjectGuid>() {
        assert_eq!(guid.to_string().parse::<ObjectGuid>().ok(), Some(guid));
        assert_eq!(
            guid.to_string().replace('-', ""),
            s.replace('-', "").to_ascii_lowercase()
        );
    }
}

fn assert_filter_value_is_escaped(v: &str) {
    assert!(
        !v.contains(['*', '(', ')', '\0']),
        "unescaped filter character in {v:?}"
    );
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let pair = b
                .get(i + 1..i + 3)
                .expect("a backslash ends the filter value");
            assert!(
                pair.iter().all(u8::is_ascii_hexdigit),
                "backslash without two hex digits in {v:?}"
            );
            i += 3;
        } else {
            i += 1;
        }
    }
}

fn assert_balanced_parentheses(filter: &str) {
    let mut depth = 0i64;
    for c in filter.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        assert!(depth >= 0, "unbalanced filter {filter:?}");
    }
    assert_eq!(depth, 0, "unbalanced filter {filter:?}");
}

/// `\xx` → the byte xx; anything else as is.
fn unescape_hex_pairs(v: &str) -> Vec<u8> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3).and_then(hex_pair)) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// RFC 4514 unescaping: `\` + two hex digits is that byte, `\` + another character is the character.
fn unescape_rdn(v: &str) -> Vec<u8> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(byte) = b.get(i + 1..i + 3).and_then(hex_pair) {
                out.push(byte);
                i += 3;
                continue;
            }
            i += 1; // the escaped character itself follows
            if i == b.len() {
                break;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hex_pair(pair: &[u8]) -> Option<u8> {
    let s = std::str::from_utf8(pair).ok()?;
    if s.len() != 2 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(s, 16).ok()
}

// ---------------------------------------------------------------------------------------------
// BER controls and entries

/// The BER the DC sends: DirSync and paged-results response controls, and SearchResultEntry
/// messages. What decodes is encoded again and must decode to the same value.
pub fn ber_controls(data: &[u8]) {
    // DirSync response control.
    let dirsync = RawControl {
        ctype: DIRSYNC_OID.to_owned(),
        crit: false,
        val: Some(data.to_vec()),
    };
    if let Some(r) = DirSyncResponse::from_control(&dirsync) {
        // The request has the response's shape (SEQUENCE { INTEGER, INTEGER, OCTET STRING }).
        let again = DirSyncRequest {
            flags: u32::from(r.more_results),
            max_bytes: 0,
            cookie: r.cookie.clone(),
        }
        .to_control();
        assert_eq!(DirSyncResponse::from_control(&again), Some(r));
    }
    // Another control's OID is never read as DirSync.
    let other = RawControl {
        ctype: PAGED_RESULTS_OID.to_owned(),
        ..dirsync.clone()
    };
    assert_eq!(DirSyncResponse::from_control(&other), None);

    // Paged-results response control.
    if let Some(cookie) = paged_cookie(&other) {
        let again: RawControl = PagedResults {
            size: 0,
            cookie: cookie.clone(),
        }
        .into();
        assert_eq!(paged_cookie(&again), Some(cookie));
    }
    assert_eq!(paged_cookie(&dirsync), None);

    // A request built from the input's bytes decodes with the response parser to the same cookie.
    if let Some((head, cookie)) = data.split_first_chunk::<8>() {
        let flags = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let max_bytes = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let request = DirSyncRequest {
            flags,
            max_bytes,
            cookie: cookie.to_vec(),
        }
        .to_control();
        assert_eq!(
            DirSyncResponse::from_control(&request),
            Some(DirSyncResponse {
                more_results: flags != 0,
                cookie: cookie.to_vec()
            })
        );
    }

    // SearchResultEntry, as the engine's reads (decode_entry) and the session's searches
    // (search_entry, which replaced ldap3's panicking SearchEntry::construct) decode it.
    if let Ok((_, tag)) = parse_tag(data) {
        let filed = search_entry(tag.clone());
        assert_eq!(filed.is_ok(), decode_entry(tag.clone()).is_ok());
        if let Ok(filed) = &filed {
            let raw = decode_entry(tag.clone()).expect("decoded just above");
            assert_eq!(filed.dn, raw.dn);
            for (desc, _) in &raw.attrs {
                assert!(
                    filed.attrs.contains_key(desc) != filed.bin_attrs.contains_key(desc),
                    "{desc:?} filed in neither or both maps"
                );
            }
            assert!(
                filed.bin_attrs.values().flatten().count() + filed.attrs.values().flatten().count()
                    == raw.attrs.iter().map(|(_, v)| v.len()).sum::<usize>()
            );
        }
        if let Ok(entry) = decode_entry(tag) {
            for (desc, values) in &entry.attrs {
                let _ = parse_attr_desc(desc);
                if desc.eq_ignore_ascii_case("objectSid") {
                    values.iter().for_each(|v| {
                        let _ = (sid_string(v), sid_rid(v));
                    });
                }
                if desc.eq_ignore_ascii_case("objectGUID") {
                    values.iter().for_each(|v| {
                        let _ = ObjectGuid::from_bytes(v);
                    });
                }
            }
            let again = decode_entry(encode_entry(&entry)).expect("a re-encoded entry decodes");
            assert_eq!(again, entry);
        }
    }
}

/// A SearchResultEntry as the wire has it, parsed back into a tag.
fn encode_entry(entry: &RawEntry) -> StructureTag {
    let octets = |bytes: &[u8]| {
        Tag::OctetString(OctetString {
            inner: bytes.to_vec(),
            ..Default::default()
        })
    };
    let tag = Tag::Sequence(Sequence {
        class: TagClass::Application,
        id: 4,
        inner: vec![
            octets(entry.dn.as_bytes()),
            Tag::Sequence(Sequence {
                inner: entry
                    .attrs
                    .iter()
                    .map(|(name, values)| {
                        Tag::Sequence(Sequence {
                            inner: vec![
                                octets(name.as_bytes()),
                                Tag::Set(Set {
                                    inner: values.iter().map(|v| octets(v)).collect(),
                                    ..Default::default()
                                }),
                            ],
                            ..Default::default()
                        })
                    })
                    .collect(),
                ..Default::default()
            }),
        ],
    })
    .into_structure();
    let mut buf = bytes::BytesMut::new();
    write::encode_into(&mut buf, tag).expect("encoding into a growable buffer");
    parse_tag(&buf).expect("what was just encoded parses").1
}

// ---------------------------------------------------------------------------------------------
// Hook and agent channel

/// The capture hook's socket frame and message, the spool seal, and the agent channel's and admin
/// socket's JSON.
pub fn hook_and_channel(data: &[u8]) {
    // The hook's frame as the agent's inbox reads it: 4-byte big-endian length, then the JSON.
    if let Some((len, body)) = data.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        if len != 0 && len <= MAX_FRAME && len <= body.len() {
            capture_message(&body[..len]);
        }
    }
    capture_message(data);

    // The spool / in-memory seal: a forged file never opens; what is sealed opens to itself.
    let key = capture_key();
    let id = b"0123456789abcdef0123456789abcdef";
    assert!(key.open(id, data).is_none(), "a forged spool file opened");
    if data.len() <= 4096 {
        let sealed = key.seal(b"aad", data).expect("sealing");
        assert_eq!(
            key.open(b"aad", &sealed).as_deref().map(Vec::as_slice),
            Some(data)
        );
        assert!(key.open(b"other", &sealed).is_none());
    }

    // The agent channel: a change page, its password payloads and dates; the registration answer.
    if let Ok(page) = parse_change_page(data) {
        for event in &page.events {
            assert!(!event.id.is_empty());
            assert_rfc3339_round_trip(event.at_ms);
            let _ = open_payload(agent_credentials(), event);
        }
    }
    if let Ok(r) = parse_registration(data) {
        assert!(!r.agent_id.is_empty() && !r.activedirectory_id.is_empty());
        assert!(r.agent_id.bytes().all(|b| b.is_ascii_graphic()));
        assert!(r
            .agent_secret
            .expose()
            .bytes()
            .all(|b| b.is_ascii_graphic()));
    }
    let text = String::from_utf8_lossy(data);
    if let Some(ms) = parse_rfc3339_ms(&text) {
        assert_rfc3339_round_trip(ms);
    }
    // A sealed config value (`fs1:…`): a forged one never opens; what is sealed opens to itself.
    let seal_key = SealKey::from_bytes([9; 32]);
    assert!(
        seal_key.unseal("fuzz", &text).is_err(),
        "a forged fs1: value opened"
    );
    if text.len() <= 256 {
        let sealed = seal_key
            .seal("fuzz", text.as_bytes())
            .expect("the OS gives random bytes");
        assert!(is_sealed(&sealed));
        let opened = seal_key
            .unseal("fuzz", &sealed)
            .expect("a sealed value opens");
        assert_eq!(opened.as_slice(), text.as_bytes());
        assert!(seal_key.unseal("other", &sealed).is_err());
    }
    if let Some(bytes) = hex_decode(&text) {
        assert_eq!(bytes.len() * 2, text.len());
        assert_eq!(hex(&bytes), text.to_ascii_lowercase());
    }
    let event = ChannelEvent::new(7, 0, EventKind::Password, EventOp::Update, "u1")
        .with_payload(Some(text.into_owned()));
    let _ = open_payload(agent_credentials(), &event);

    // The admin socket's request line: what parses serializes and parses back the same.
    if let Ok(request) = parse_request(data) {
        let line = serde_json::to_vec(&request).expect("serializing a request");
        assert_eq!(parse_request(&line).ok(), Some(request));
    }
}

/// A capture message; what decodes encodes (as spool message and as socket frame) to the same.
fn capture_message(json: &[u8]) {
    let Ok(m) = decode_message(json) else {
        return;
    };
    assert!(m.captured_at >= UNIX_EPOCH);
    let again = decode_message(&encode_message(&m)).expect("an encoded message decodes");
    let frame = encode_frame(&m);
    let (len, body) = frame
        .split_first_chunk::<4>()
        .expect("a frame has a length");
    assert_eq!(u32::from_be_bytes(*len) as usize, body.len());
    let framed = decode_message(body).expect("an encoded frame decodes");
    for x in [&again, &framed] {
        assert_eq!(
            (&x.id, &x.domain, &x.account, &x.upn, x.captured_at),
            (&m.id, &m.domain, &m.account, &m.upn, m.captured_at)
        );
        assert_eq!(x.password.expose(), m.password.expose());
    }
}

fn capture_key() -> &'static CaptureKey {
    static KEY: OnceLock<CaptureKey> = OnceLock::new();
    KEY.get_or_init(|| CaptureKey::ephemeral().expect("a random key"))
}

fn agent_credentials() -> &'static AgentCredentials {
    static CREDS: OnceLock<AgentCredentials> = OnceLock::new();
    CREDS.get_or_init(|| AgentCredentials {
        agent_id: "agent-1".into(),
        activedirectory_id: "5f0c1b2a3d4e5f6a7b8c9d0e".into(),
        domain: "alpha.test".into(),
        agent_secret: Secret::new("s3cret"),
        payload_key: PayloadKey::from_bytes([7; 32]),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds → `YYYY-MM-DDTHH:MM:SS.mmmZ` → the same milliseconds (years 0000–9999).
fn assert_rfc3339_round_trip(ms: i64) {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return; // an offset moved it out of the four-digit years
    }
    let text = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    );
    assert_eq!(parse_rfc3339_ms(&text), Some(ms), "{text}");
}

/// Howard Hinnant's civil_from_days: days since 1970-01-01 → (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

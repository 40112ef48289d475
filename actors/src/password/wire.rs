//! The capture message: JSON, length-prefixed on the socket, encrypted in the spool.
//!
//! Buffers holding a clear password are `Zeroizing` and allocated once with room for the worst case
//! (every byte escaped), so they never reallocate and leave copies behind.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SecureRandom;
use serde::{Deserialize, Deserializer, Serialize};
use zeroize::Zeroizing;

use super::{CapturedPassword, PasswordError};
use crate::secret::Secret;

/// The largest message either side accepts (AD passwords are at most 256 characters).
pub const MAX_FRAME: usize = 64 * 1024;

const VERSION: u8 = 1;

#[derive(Serialize)]
struct WireOut<'a> {
    v: u8,
    id: &'a str,
    domain: &'a str,
    account: &'a str,
    upn: Option<&'a str>,
    captured_at_ms: u64,
    password: &'a str,
}

#[derive(Deserialize)]
struct WireIn {
    v: u8,
    id: String,
    domain: String,
    account: String,
    upn: Option<String>,
    captured_at_ms: u64,
    #[serde(deserialize_with = "secret_from_string")]
    password: Secret,
}

fn secret_from_string<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    String::deserialize(d).map(Secret::new)
}

/// A fresh capture id: 16 random bytes as 32 lower-case hex characters.
pub fn new_capture_id() -> Result<String, PasswordError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PasswordError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn is_valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The message as JSON (no length prefix), with `reserve_after` spare bytes of capacity so a caller
/// can append (e.g. an AEAD tag) without reallocating.
pub(crate) fn encode_json(
    msg: &CapturedPassword,
    prefix: usize,
    reserve_after: usize,
) -> Zeroizing<Vec<u8>> {
    let out = WireOut {
        v: VERSION,
        id: &msg.id,
        domain: &msg.domain,
        account: &msg.account,
        upn: msg.upn.as_deref(),
        captured_at_ms: millis(msg.captured_at),
        password: msg.password.expose(),
    };
    let variable = msg.id.len()
        + msg.domain.len()
        + msg.account.len()
        + msg.upn.as_deref().map_or(0, str::len)
        + msg.password.expose().len();
    let capacity = prefix + 160 + 6 * variable + reserve_after;
    let mut buf = Zeroizing::new(Vec::with_capacity(capacity));
    let start = buf.as_ptr();
    buf.resize(prefix, 0);
    serde_json::to_writer(&mut *buf, &out).expect("serializing strings and numbers cannot fail");
    debug_assert_eq!(start, buf.as_ptr(), "the buffer reallocated");
    buf
}

/// The message as JSON, as stored (encrypted) in a spool file.
pub fn encode_message(msg: &CapturedPassword) -> Zeroizing<Vec<u8>> {
    encode_json(msg, 0, 0)
}

/// The message as one socket frame: 4-byte big-endian length, then the JSON.
pub fn encode_frame(msg: &CapturedPassword) -> Zeroizing<Vec<u8>> {
    let mut buf = encode_json(msg, 4, 0);
    // infallible: the fields are a hook's password (8 KiB at most) and names from its argv/env,
    // far below 4 GiB (the reader refuses frames over MAX_FRAME anyway).
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf
}

/// Parses and checks one message (the JSON, without the length prefix).
pub fn decode_message(json: &[u8]) -> Result<CapturedPassword, PasswordError> {
    let malformed = |detail: String| PasswordError::Malformed { detail };
    if json.len() > MAX_FRAME {
        return Err(malformed(format!(
            "{} bytes, more than {MAX_FRAME}",
            json.len()
        )));
    }
    // serde_json's own message may quote a value: report only its category and position.
    let w: WireIn = serde_json::from_slice(json).map_err(|e| {
        malformed(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if w.v != VERSION {
        return Err(malformed(format!("version {} (expected {VERSION})", w.v)));
    }
    if !is_valid_id(&w.id) {
        return Err(malformed("id is not 32 lower-case hex characters".into()));
    }
    for (name, value) in [("domain", &w.domain), ("account", &w.account)] {
        if value.trim().is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
            return Err(malformed(format!(
                "{name} is empty, too long or has control characters"
            )));
        }
    }
    Ok(CapturedPassword {
        id: w.id,
        domain: w.domain,
        account: w.account,
        upn: w.upn.filter(|u| !u.is_empty()),
        captured_at: UNIX_EPOCH + Duration::from_millis(w.captured_at_ms),
        password: w.password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(password: &str) -> CapturedPassword {
        CapturedPassword {
            id: new_capture_id().unwrap(),
            domain: "alpha".into(),
            account: "jdoe".into(),
            upn: Some("jdoe@alpha.test".into()),
            captured_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            password: Secret::new(password),
        }
    }

    #[test]
    fn frames_round_trip_including_awkward_characters() {
        for pw in [
            "Plain-Passw0rd!",
            "quote\"back\\slash",
            "ctl\u{1}\u{7f}",
            "密码Ünï😀",
        ] {
            let msg = sample(pw);
            let frame = encode_frame(&msg);
            let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len, frame.len() - 4);
            let back = decode_message(&frame[4..]).unwrap();
            assert_eq!(back.password.expose(), pw);
            assert_eq!(back.id, msg.id);
            assert_eq!(back.account, "jdoe");
            assert_eq!(back.upn.as_deref(), Some("jdoe@alpha.test"));
            assert_eq!(back.captured_at, msg.captured_at);
        }
    }

    #[test]
    fn bad_messages_are_refused_without_echoing_content() {
        let mut msg = sample("Secret-Pw1!");
        msg.id = "../../etc/passwd".into();
        let e = decode_message(&encode_message(&msg)).unwrap_err();
        assert!(e.to_string().contains("id is not"), "{e}");
        let e = decode_message(b"{\"v\":1,\"password\":\"Secret-Pw1!\"").unwrap_err();
        assert!(!e.to_string().contains("Secret-Pw1"), "{e}");
        msg = sample("x");
        msg.account = String::new();
        assert!(decode_message(&encode_message(&msg)).is_err());
    }

    #[test]
    fn ids_are_unique_hex() {
        let a = new_capture_id().unwrap();
        let b = new_capture_id().unwrap();
        assert!(is_valid_id(&a) && is_valid_id(&b) && a != b);
    }
}

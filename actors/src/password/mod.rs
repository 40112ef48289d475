//! Password capture: from the DC's `check password script` hook to the agent, and the rule that
//! decides when a captured password may be forwarded.
//!
//! The path of one password:
//! 1. Samba runs `forestsync capture-password` (the hook, `src/capture.rs`) **before** it commits a
//!    new password. The hook checks [`policy`] (AD complexity, which the hook replaces, and optionally
//!    JumpCloud's policy), then hands the password to the agent over a root-only unix socket
//!    ([`client::deliver`]) or, when the agent does not answer within ~300 ms, writes it encrypted to
//!    the spool directory ([`spool`]). Delivery is fail-open: the password change never fails
//!    because the agent is down.
//! 2. The agent's [`PasswordInbox`] yields [`CapturedPassword`]s from the socket and the spool. Every
//!    capture is kept in the spool (encrypted) until the consumer calls [`PasswordInbox::ack`], so a
//!    crash before forwarding does not lose it.
//! 3. A capture is only a candidate: Samba may still reject the password (history). [`PendingPasswords`]
//!    holds candidates until the user's `pwdLastSet` shows AD committed the change, or drops them
//!    when the confirmation window passes.
//!
//! Wire format (socket): a 4-byte big-endian length, then that many bytes of JSON
//! `{"v":1,"id","domain","account","upn","captured_at_ms","password"}`; the agent answers one byte
//! [`ACK`] once the capture is stored. Spool file: `<id>.spool`, see [`spool`].
//!
//! Clear passwords only ever live in [`Secret`] or zeroized buffers; nothing here logs a password.

pub mod client;
mod inbox;
mod pending;
pub mod policy;
pub mod spool;
mod wire;

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

pub use inbox::PasswordInbox;
pub use pending::{
    filetime_to_system_time, system_time_to_filetime, PendingPasswords, DEFAULT_CONFIRM_WINDOW,
    DEFAULT_STAMP_LEAD,
};
pub use wire::{decode_message, encode_frame, encode_message, new_capture_id, MAX_FRAME};

use crate::disposition::{Classified, Disposition};
use crate::secret::Secret;

/// The byte the agent answers once it has stored a capture.
pub const ACK: u8 = 0x06;

/// One password as captured on a DC. `Debug` shows everything but the password.
#[derive(Clone)]
pub struct CapturedPassword {
    /// Unique per capture (32 hex characters, chosen by the hook); also the spool file's stem.
    pub id: String,
    /// The forestsync domain name (`[[domain]] name`) the capturing DC belongs to.
    pub domain: String,
    /// sAMAccountName, as Samba passed it (`SAMBA_CPS_ACCOUNT_NAME`).
    pub account: String,
    /// userPrincipalName, when the user has one.
    pub upn: Option<String>,
    /// When the hook ran (the DC's clock), before AD committed the change.
    pub captured_at: SystemTime,
    pub password: Secret,
}

impl fmt::Debug for CapturedPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapturedPassword")
            .field("id", &self.id)
            .field("domain", &self.domain)
            .field("account", &self.account)
            .field("upn", &self.upn)
            .field("captured_at", &self.captured_at)
            .field("password", &self.password)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: refusing to use it: {reason}")]
    Insecure { path: PathBuf, reason: String },
    #[error("{path}: another agent is already listening on this socket")]
    AlreadyListening { path: PathBuf },
    #[error("{path}: cannot decrypt (wrong key, or the file was altered)")]
    Decrypt { path: PathBuf },
    #[error("malformed capture message: {detail}")]
    Malformed { detail: String },
    #[error("{path}: the agent did not answer within {millis} ms")]
    Timeout { path: PathBuf, millis: u128 },
    #[error("cannot get random bytes from the operating system")]
    Random,
}

impl Classified for PasswordError {
    fn disposition(&self) -> Disposition {
        match self {
            PasswordError::Io { .. } | PasswordError::Timeout { .. } => Disposition::Retry,
            PasswordError::Insecure { .. }
            | PasswordError::AlreadyListening { .. }
            | PasswordError::Random => Disposition::Fatal,
            PasswordError::Decrypt { .. } | PasswordError::Malformed { .. } => {
                Disposition::BadInput
            }
        }
    }
}

pub(crate) fn io_error(
    path: impl Into<PathBuf>,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> PasswordError {
    let path = path.into();
    move |source| PasswordError::Io {
        path,
        action,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_password() {
        let c = CapturedPassword {
            id: "00".repeat(16),
            domain: "alpha".into(),
            account: "jdoe".into(),
            upn: Some("jdoe@alpha.test".into()),
            captured_at: SystemTime::UNIX_EPOCH,
            password: Secret::new("Sup3r-Secret!"),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("Sup3r"), "{shown}");
        assert!(shown.contains("jdoe@alpha.test"), "{shown}");
    }
}

//! The directory module's error type and its classification.

use ldap3::LdapError;

use crate::disposition::{Classified, Disposition};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("DC URL {url:?} is not usable: {reason}; fix: write it as ldaps://host[:636] or ldap://host[:389] (StartTLS)")]
    BadUrl { url: String, reason: String },
    #[error("{url}: cannot connect: {detail}; fix: check that the DC runs, the address and port, and any firewall")]
    Unreachable { url: String, detail: String },
    #[error("{url}: {operation} got no answer in time (DC down or hung)")]
    Timeout {
        url: String,
        operation: &'static str,
    },
    #[error("{url}: TLS certificate not trusted: {detail}; fix: set ca_file to the CA that issued the DC's certificate, and make sure the certificate names the host in the URL (subjectAltName)")]
    Tls { url: String, detail: String },
    #[error("{url}: TLS certificate name mismatch: the DC's certificate does not name {host:?} ({detail}); fix: put a name the certificate lists in its subjectAltName (e.g. the DC's DNS name) in the URL, or reissue the certificate with {host:?} in its subjectAltName")]
    TlsName {
        url: String,
        host: String,
        detail: String,
    },
    /// `ldap://` is only ever used with StartTLS; a DC that refuses or drops it is never sent a bind.
    #[error("{url}: StartTLS is required on ldap:// URLs and {detail}; nothing was sent in clear (no bind); fix: enable TLS on the DC (install a certificate for LDAP), or use ldaps://host:636")]
    StartTls {
        url: String,
        detail: String,
        /// The DC answered the StartTLS request with an error (a configuration problem), rather
        /// than dropping the connection.
        refused: bool,
    },
    #[error("{url}: bind as {dn} rejected: {reason}")]
    BindRejected {
        url: String,
        dn: String,
        reason: String,
    },
    #[error("{url}: {operation} on {target} refused with LDAP result {rc} ({name}): {text}{hint}")]
    Refused {
        url: String,
        operation: &'static str,
        target: String,
        rc: u32,
        name: &'static str,
        text: String,
        hint: &'static str,
    },
    #[error("{url}: connection lost during {operation}: {detail}")]
    ConnectionLost {
        url: String,
        operation: &'static str,
        detail: String,
    },
    #[error("{url}: unexpected LDAP data: {detail}")]
    Malformed { url: String, detail: String },
}

impl Classified for DirectoryError {
    fn disposition(&self) -> Disposition {
        match self {
            DirectoryError::BadUrl { .. } | DirectoryError::Malformed { .. } => {
                Disposition::BadInput
            }
            DirectoryError::Unreachable { .. }
            | DirectoryError::Timeout { .. }
            | DirectoryError::ConnectionLost { .. } => Disposition::FailOver,
            DirectoryError::Tls { .. }
            | DirectoryError::TlsName { .. }
            | DirectoryError::BindRejected { .. } => Disposition::Fatal,
            DirectoryError::StartTls { refused: true, .. } => Disposition::Fatal,
            DirectoryError::StartTls { refused: false, .. } => Disposition::FailOver,
            DirectoryError::Refused {
                rc,
                operation,
                text,
                ..
            } => refused_disposition(*rc, operation, text),
        }
    }
}

/// The disposition of an LDAP result code, for reads and writes alike.
fn refused_disposition(rc: u32, operation: &str, text: &str) -> Disposition {
    match rc {
        // busy, unavailable, other (DC-side trouble), referral (a read-only DC was asked to write):
        // another DC may serve us
        10 | 51 | 52 | 80 => Disposition::FailOver,
        // this object's (or this value's) problem: noSuchAttribute, constraintViolation (password
        // policy included), attributeOrValueExists, invalidAttributeSyntax, noSuchObject,
        // invalidDNSyntax, namingViolation, objectClassViolation, notAllowedOnNonLeaf,
        // notAllowedOnRDN, entryAlreadyExists, objectClassModsProhibited
        16 | 19 | 20 | 21 | 32 | 34 | 64 | 65 | 66 | 67 | 68 | 69 => Disposition::BadInput,
        // unwillingToPerform: a password policy refusal (older Windows answer 53 with 0000052D), or
        // a member value the group cannot take or drop (e.g. a DN that names no object)
        53 if is_password_policy_text(text) || operation == MEMBER_CHANGE => Disposition::BadInput,
        // rights, strong auth, unwilling, unknown critical control: configuration
        _ => Disposition::Fatal,
    }
}

/// The operation names `change_members` and `set_password` report (`entry.rs`); the disposition and
/// the rights hint depend on them.
pub(super) const MEMBER_CHANGE: &str = "member change";
pub(super) const PASSWORD_RESET: &str = "password reset";

/// AD's password-policy refusals carry the Win32 code ERROR_PASSWORD_RESTRICTION (`0000052D`) first,
/// on Samba and Windows alike (Samba names the rule after it, Windows does not).
fn is_password_policy_text(text: &str) -> bool {
    text.trim_start()
        .get(..8)
        .is_some_and(|code| code.eq_ignore_ascii_case("0000052D"))
}

impl DirectoryError {
    /// The DC's own diagnostic text for a refused operation (e.g. `0000052D: Constraint violation -
    /// check_password_restrictions: the password does not meet the complexity criteria!`), verbatim
    /// (trailing NULs and blanks removed), for per-object records; `None` for other errors or an
    /// empty text.
    pub fn ad_reason(&self) -> Option<&str> {
        match self {
            DirectoryError::Refused { text, .. } if !text.is_empty() => Some(text),
            _ => None,
        }
    }

    /// The LDAP result code of a refused operation.
    pub fn result_code(&self) -> Option<u32> {
        match self {
            DirectoryError::Refused { rc, .. } => Some(*rc),
            _ => None,
        }
    }

    /// A password refused by the domain's policy (complexity or the password filter, length,
    /// history, minimum age): result 19 or 53 with `0000052D` (ERROR_PASSWORD_RESTRICTION).
    pub fn is_password_policy(&self) -> bool {
        matches!(self, DirectoryError::Refused { rc: 19 | 53, text, .. } if is_password_policy_text(text))
    }

    /// A failed connect (TCP, StartTLS, TLS handshake). `host` is the name the certificate must
    /// carry; `starttls` tells whether a StartTLS exchange preceded the handshake.
    pub(super) fn from_connect(url: &str, host: &str, starttls: bool, e: LdapError) -> Self {
        let tls = |tls: &rustls::Error| DirectoryError::from_tls(url, host, tls);
        let dropped = |detail: String| DirectoryError::StartTls {
            url: url.to_owned(),
            detail: format!("the DC did not complete StartTLS: {detail}"),
            refused: false,
        };
        match e {
            // The TCP connection was already open: the DC did not answer StartTLS (ldap3 also waits
            // here when the DC closes the connection instead of answering).
            LdapError::Timeout { .. } if starttls => dropped(
                "no answer to the StartTLS request, or no TLS handshake after it, in time".into(),
            ),
            LdapError::Timeout { .. } => DirectoryError::Timeout {
                url: url.to_owned(),
                operation: "TLS handshake",
            },
            LdapError::Io { source } => {
                if let Some(t) = source
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                {
                    return tls(t);
                }
                match source.kind() {
                    std::io::ErrorKind::TimedOut => DirectoryError::Timeout {
                        url: url.to_owned(),
                        operation: "connect and TLS handshake",
                    },
                    std::io::ErrorKind::InvalidData => DirectoryError::Tls {
                        url: url.to_owned(),
                        detail: source.to_string(),
                    },
                    std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                        if starttls =>
                    {
                        dropped(format!("the connection was closed ({source})"))
                    }
                    _ => DirectoryError::Unreachable {
                        url: url.to_owned(),
                        detail: source.to_string(),
                    },
                }
            }
            LdapError::Rustls { source } => tls(&source),
            LdapError::DNSName { source } => DirectoryError::BadUrl {
                url: url.to_owned(),
                reason: source.to_string(),
            },
            LdapError::LdapResult { result } if starttls => DirectoryError::StartTls {
                url: url.to_owned(),
                detail: format!(
                    "the DC refused StartTLS with LDAP result {} ({}): {}",
                    result.rc,
                    result_name(result.rc),
                    result.text.trim_end_matches('\0').trim()
                ),
                refused: true,
            },
            LdapError::LdapResult { result } => {
                DirectoryError::from_result(url, "connect", "", result.rc, &result.text)
            }
            e @ (LdapError::EndOfStream
            | LdapError::OpSend { .. }
            | LdapError::ResultRecv { .. }
            | LdapError::MiscSend { .. })
                if starttls =>
            {
                dropped(format!("the connection was closed ({e})"))
            }
            other => DirectoryError::Unreachable {
                url: url.to_owned(),
                detail: other.to_string(),
            },
        }
    }

    /// A TLS failure: a certificate that does not name the host is told apart from one that is not
    /// trusted, because the fixes differ.
    fn from_tls(url: &str, host: &str, e: &rustls::Error) -> Self {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) => DirectoryError::TlsName {
                url: url.to_owned(),
                host: host.to_owned(),
                detail: e.to_string(),
            },
            _ => DirectoryError::Tls {
                url: url.to_owned(),
                detail: e.to_string(),
            },
        }
    }

    pub(super) fn from_ldap(url: &str, operation: &'static str, e: LdapError) -> Self {
        match e {
            LdapError::Timeout { .. } => DirectoryError::Timeout {
                url: url.to_owned(),
                operation,
            },
            LdapError::LdapResult { result } => {
                DirectoryError::from_result(url, operation, "", result.rc, &result.text)
            }
            other => DirectoryError::ConnectionLost {
                url: url.to_owned(),
                operation,
                detail: other.to_string(),
            },
        }
    }

    pub(super) fn from_result(
        url: &str,
        operation: &'static str,
        target: &str,
        rc: u32,
        text: &str,
    ) -> Self {
        if rc == 49 {
            return DirectoryError::BindRejected {
                url: url.to_owned(),
                dn: target.to_owned(),
                reason: bind_reason(text),
            };
        }
        let name = result_name(rc);
        let hint = match rc {
            8 => "; fix: use ldaps:// or ldap:// with StartTLS (the agent never binds in clear)",
            32 if is_write(operation) => "; the object (or a DN in the request) does not exist: deleted or moved since it was read",
            32 => "; fix: check the DN in the configuration",
            50 => rights_hint(operation),
            12 if operation == PASSWORD_RESET => "; the DC knows neither LDAP_SERVER_POLICY_HINTS control (1.2.840.113556.1.4.2239, …2066), so it cannot enforce the password history on a reset (Samba 4.17 is such a DC); nothing was written",
            _ => "",
        };
        DirectoryError::Refused {
            url: url.to_owned(),
            operation,
            target: target.to_owned(),
            rc,
            name,
            text: text.trim_end_matches('\0').trim().to_owned(),
            hint,
        }
    }
}

/// The RFC 4511 name of an LDAP result code.
fn result_name(rc: u32) -> &'static str {
    match rc {
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        67 => "notAllowedOnRDN",
        68 => "entryAlreadyExists",
        69 => "objectClassModsProhibited",
        80 => "other",
        _ => "error",
    }
}

fn is_write(operation: &str) -> bool {
    matches!(
        operation,
        "add" | "modify" | "rename" | "delete" | MEMBER_CHANGE | PASSWORD_RESET
    )
}

/// Which right the service account lacks, by operation (the target DN is in the message already;
/// Samba's own text does not name the right).
fn rights_hint(operation: &str) -> &'static str {
    match operation {
        "add" => "; fix: grant the service account Create Child for this object class (user or group) on the parent container of the DN named here (e.g. on the target OU, inherited to sub-OUs)",
        "delete" => "; fix: grant the service account Delete Child for this object class on the parent container of the DN named here (or Delete on the object)",
        "rename" => "; fix: grant the service account Write Property on the name of the object named here, and for a move Delete Child on the old parent and Create Child on the new one",
        "modify" => "; fix: grant the service account Write Property on the modified attributes of the object named here (e.g. write all properties of users and groups below the target OU); protected objects (adminCount=1) refuse writes by design",
        PASSWORD_RESET => "; fix: grant the service account the Reset Password extended right (00299570-246d-11d0-a768-00aa006e0529) on the user named here (e.g. inherited from the target OU); protected accounts (adminCount=1) refuse it by design",
        MEMBER_CHANGE => "; fix: grant the service account Write Property on `member` of the group named here (e.g. write all properties of groups below the target OU)",
        _ => "; fix: grant the service account the right named in the README (e.g. Replicating Directory Changes on the domain root for change tracking)",
    }
}

/// Turns AD's bind sub-code (`data 52e` …) into the reason and the fix an operator needs.
fn bind_reason(text: &str) -> String {
    let code = text
        .split("data ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c == ',' || c.is_whitespace()).next())
        .unwrap_or("");
    let meaning = match code {
        "525" => "no such user; fix: check bind_dn",
        "52e" => "wrong password; fix: update the bind password",
        "530" | "531" => "logon not permitted at this time or from this workstation",
        "532" => "password expired; fix: reset the service account's password",
        "533" => "account disabled; fix: enable the service account",
        "701" => "account expired",
        "773" => "password must be changed; fix: set a new password for the service account",
        "775" => "account locked out",
        _ => "invalid credentials; fix: check bind_dn and the bind password",
    };
    format!(
        "{meaning} (server said: {})",
        text.trim_end_matches('\0').trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_sub_codes_are_explained() {
        let e = DirectoryError::from_result(
            "ldaps://dc",
            "bind",
            "CN=svc",
            49,
            "80090308: LdapErr: DSID-0C09030B, comment: AcceptSecurityContext error, data 52e, v893",
        );
        assert!(e.to_string().contains("wrong password"), "{e}");
        assert_eq!(e.disposition(), Disposition::Fatal);
        let disabled = DirectoryError::from_result(
            "ldaps://dc",
            "bind",
            "CN=svc",
            49,
            "AcceptSecurityContext error, data 533, v893",
        );
        assert!(disabled.to_string().contains("disabled"), "{disabled}");
    }

    #[test]
    fn connect_failures_say_which_tls_problem_and_its_fix() {
        use ldap3::result::LdapResult;
        let refused = DirectoryError::from_connect(
            "ldap://dc",
            "dc",
            true,
            LdapError::LdapResult {
                result: LdapResult {
                    rc: 52,
                    matched: String::new(),
                    text: "no TLS\0".into(),
                    refs: vec![],
                    ctrls: vec![],
                },
            },
        );
        assert!(matches!(
            refused,
            DirectoryError::StartTls { refused: true, .. }
        ));
        assert_eq!(refused.disposition(), Disposition::Fatal);
        let text = refused.to_string();
        assert!(
            text.contains("StartTLS is required")
                && text.contains("unavailable")
                && text.contains("nothing was sent in clear")
                && text.contains("fix:"),
            "{text}"
        );
        let dropped = DirectoryError::from_connect("ldap://dc", "dc", true, LdapError::EndOfStream);
        assert!(matches!(
            dropped,
            DirectoryError::StartTls { refused: false, .. }
        ));
        assert_eq!(dropped.disposition(), Disposition::FailOver);
        // Over LDAPS an end of stream is not a StartTLS problem.
        assert!(!matches!(
            DirectoryError::from_connect("ldaps://dc", "dc", false, LdapError::EndOfStream),
            DirectoryError::StartTls { .. }
        ));

        let name = DirectoryError::from_connect(
            "ldaps://10.0.0.1",
            "10.0.0.1",
            false,
            LdapError::Rustls {
                source: rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ),
            },
        );
        assert!(matches!(name, DirectoryError::TlsName { .. }), "{name}");
        assert!(
            name.to_string().contains("\"10.0.0.1\"")
                && name.to_string().contains("subjectAltName")
        );
        let issuer = DirectoryError::from_connect(
            "ldaps://dc",
            "dc",
            false,
            LdapError::Rustls {
                source: rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            },
        );
        assert!(matches!(issuer, DirectoryError::Tls { .. }), "{issuer}");
        assert!(issuer.to_string().contains("set ca_file"));
    }

    #[test]
    fn result_codes_are_classified() {
        let busy = DirectoryError::from_result("u", "search", "b", 51, "");
        assert_eq!(busy.disposition(), Disposition::FailOver);
        let rights = DirectoryError::from_result("u", "search", "b", 50, "");
        assert_eq!(rights.disposition(), Disposition::Fatal);
        assert!(rights.to_string().contains("insufficientAccessRights"));
        assert_eq!(
            DirectoryError::from_result("u", "add", "b", 68, "").disposition(),
            Disposition::BadInput
        );
    }

    #[test]
    fn password_policy_refusals_are_bad_input_with_the_dcs_reason_kept() {
        for text in [
            "0000052D: Constraint violation - check_password_restrictions: the password does not meet the complexity criteria!",
            "0000052D: Constraint violation - check_password_restrictions: the password is too short. It should be equal or longer than 7 characters!",
            "0000052D: Constraint violation - check_password_restrictions: the password was already used (in history)!",
            "0000052D: Constraint violation - check_password_restrictions: password is too young to change!",
            "0000052D: AtrErr: DSID-03191083, #1:\n\t0: 0000052D: DSID-03191083, problem 1005 (CONSTRAINT_ATT_TYPE), data 0, Att 9005a (unicodePwd)\n\0",
        ] {
            let e = DirectoryError::from_result("u", PASSWORD_RESET, "CN=u", 19, text);
            assert_eq!(e.disposition(), Disposition::BadInput, "{text}");
            assert!(e.is_password_policy());
            assert_eq!(e.ad_reason(), Some(text.trim_end_matches('\0').trim()));
            assert!(e.to_string().contains(text.trim_end_matches('\0').trim()));
        }
        // Older Windows: unwillingToPerform with the password-restriction code.
        let w = DirectoryError::from_result(
            "u",
            PASSWORD_RESET,
            "CN=u",
            53,
            "0000052D: SvcErr: DSID-031A120C, problem 5003 (WILL_NOT_PERFORM), data 0",
        );
        assert_eq!(w.disposition(), Disposition::BadInput);
        assert!(w.is_password_policy());
        // Unwilling for another reason (e.g. a password write over a clear connection): configuration.
        let clear = DirectoryError::from_result(
            "u",
            PASSWORD_RESET,
            "CN=u",
            53,
            "0000001F: SvcErr: DSID-031A12D2, problem 5003 (WILL_NOT_PERFORM), data 0",
        );
        assert_eq!(clear.disposition(), Disposition::Fatal);
        assert!(!clear.is_password_policy());
        assert_eq!(
            DirectoryError::from_result("u", "add", "b", 19, "").ad_reason(),
            None
        );
    }

    #[test]
    fn write_refusals_are_classified_and_rights_refusals_name_the_right() {
        for rc in [16, 20, 21, 32, 34, 64, 65, 66, 67, 68, 69] {
            let e = DirectoryError::from_result("u", "add", "CN=x", rc, "t");
            assert_eq!(e.disposition(), Disposition::BadInput, "rc {rc}");
            assert_eq!(e.result_code(), Some(rc));
        }
        let stale_member = DirectoryError::from_result(
            "u",
            MEMBER_CHANGE,
            "CN=g",
            53,
            "00002035: Unable to find GUID for DN CN=x",
        );
        assert_eq!(stale_member.disposition(), Disposition::BadInput);
        assert_eq!(
            DirectoryError::from_result("u", "modify", "CN=g", 53, "").disposition(),
            Disposition::Fatal
        );
        assert_eq!(
            DirectoryError::from_result("u", "add", "CN=g", 10, "").disposition(),
            Disposition::FailOver
        );
        assert_eq!(
            DirectoryError::from_result("u", "search", "b", 12, "").disposition(),
            Disposition::Fatal
        );
        let no_hints = DirectoryError::from_result("u", PASSWORD_RESET, "CN=u", 12, "");
        assert_eq!(no_hints.disposition(), Disposition::Fatal);
        assert!(
            no_hints
                .to_string()
                .contains("cannot enforce the password history"),
            "{no_hints}"
        );
        let cases = [
            ("add", "Create Child"),
            ("delete", "Delete Child"),
            ("rename", "Write Property on the name"),
            ("modify", "Write Property on the modified attributes"),
            (PASSWORD_RESET, "Reset Password"),
            (MEMBER_CHANGE, "Write Property on `member`"),
            ("DirSync search", "Replicating Directory Changes"),
        ];
        for (operation, right) in cases {
            let e = DirectoryError::from_result(
                "ldaps://dc",
                operation,
                "CN=u,OU=ForestSync,DC=alpha,DC=test",
                50,
                "acl: unable to get access to CN=u,OU=ForestSync,DC=alpha,DC=test",
            );
            assert_eq!(e.disposition(), Disposition::Fatal);
            let text = e.to_string();
            assert!(text.contains(right), "{operation}: {text}");
            assert!(text.contains(operation), "{text}");
            assert!(
                text.contains("on CN=u,OU=ForestSync,DC=alpha,DC=test"),
                "{text}"
            );
        }
        let gone =
            DirectoryError::from_result("u", "modify", "CN=x", 32, "00002030: No such Base DN");
        assert!(gone.to_string().contains("deleted or moved"), "{gone}");
    }
}

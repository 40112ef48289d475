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
            DirectoryError::Tls { .. } | DirectoryError::BindRejected { .. } => Disposition::Fatal,
            DirectoryError::Refused { rc, .. } => match rc {
                // busy, unavailable, other (DC-side trouble): another DC may serve us
                51 | 52 | 80 => Disposition::FailOver,
                // noSuchObject, constraint violation, object class violation, entry exists: this object's problem
                19 | 32 | 65 | 68 => Disposition::BadInput,
                // rights, strong auth, unwilling: configuration
                _ => Disposition::Fatal,
            },
        }
    }
}

impl DirectoryError {
    pub(super) fn from_connect(url: &str, e: LdapError) -> Self {
        match e {
            LdapError::Timeout { .. } => DirectoryError::Timeout {
                url: url.to_owned(),
                operation: "connect and TLS handshake",
            },
            LdapError::Io { source } => {
                if let Some(tls) = source
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                {
                    return DirectoryError::Tls {
                        url: url.to_owned(),
                        detail: tls.to_string(),
                    };
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
                    _ => DirectoryError::Unreachable {
                        url: url.to_owned(),
                        detail: source.to_string(),
                    },
                }
            }
            LdapError::Rustls { source } => DirectoryError::Tls {
                url: url.to_owned(),
                detail: source.to_string(),
            },
            LdapError::DNSName { source } => DirectoryError::BadUrl {
                url: url.to_owned(),
                reason: source.to_string(),
            },
            LdapError::LdapResult { result } => {
                // A StartTLS refusal arrives as an LDAP result.
                DirectoryError::from_result(url, "StartTLS", "", result.rc, &result.text)
            }
            other => DirectoryError::Unreachable {
                url: url.to_owned(),
                detail: other.to_string(),
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
        let (name, hint) = match rc {
            8 => ("strongerAuthRequired", "; fix: use ldaps:// or ldap:// with StartTLS (the agent never binds in clear)"),
            32 => ("noSuchObject", "; fix: check the DN in the configuration"),
            50 => ("insufficientAccessRights", "; fix: grant the service account the right named in the README (e.g. Replicating Directory Changes on the domain root for change tracking)"),
            51 => ("busy", ""),
            52 => ("unavailable", ""),
            53 => ("unwillingToPerform", ""),
            19 => ("constraintViolation", ""),
            _ => ("error", ""),
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
}

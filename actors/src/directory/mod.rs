//! Active Directory over LDAP: connect (LDAPS or StartTLS, always verified), bind, read the rootDSE,
//! probe the rights change tracking needs, look objects up, and the writes of the
//! JumpCloud-authoritative mode (`entry`: paged whole-entry searches, password resets, chunked
//! member changes; `failover`: one domain's DCs behind one handle).
//!
//! Owns the LDAP wire details (URLs, controls, result codes). Decides nothing about sync: the DC and
//! domain actors call it. Every operation carries a timeout, because ldap3 never notices a hung peer.

pub mod dirsync;
pub mod entry;
mod error;
pub mod failover;
pub mod read;
pub mod rights;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};

pub use ldap3::Mod as LdapMod;
use rustls::ClientConfig;
use tokio::net::TcpStream;

pub use dirsync::{DirSyncRequest, DirSyncResponse};
pub use entry::{AdEntry, FindScope};
pub use error::DirectoryError;
pub use failover::DomainDirectory;
pub use read::{changes_since, full_read, invocation_id, read_members, ReadSpec};

use crate::secret::Secret;

/// Where and how to reach one domain controller.
#[derive(Clone, Debug)]
pub struct DcEndpoint {
    /// As configured: `ldaps://host[:636]` or `ldap://host[:389]` (the latter always upgraded with StartTLS).
    pub url: String,
    pub host: String,
    pub port: u16,
    pub starttls: bool,
}

impl DcEndpoint {
    /// Parses a DC URL. Plain `ldap://` is accepted only because it is always upgraded with StartTLS;
    /// there is no way to configure an unencrypted connection.
    pub fn parse(url: &str) -> Result<Self, DirectoryError> {
        let parsed = url::Url::parse(url).map_err(|e| DirectoryError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let (starttls, default_port) = match parsed.scheme() {
            "ldaps" => (false, 636),
            "ldap" => (true, 389),
            other => {
                return Err(DirectoryError::BadUrl {
                    url: url.to_owned(),
                    reason: format!("scheme {other:?} is not ldaps or ldap (ldap:// is always upgraded with StartTLS)"),
                })
            }
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| DirectoryError::BadUrl {
                url: url.to_owned(),
                reason: "no host".into(),
            })?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if parsed.path() != "" && parsed.path() != "/" {
            return Err(DirectoryError::BadUrl {
                url: url.to_owned(),
                reason: "a DC URL has no path; put the base DN in base_dn".into(),
            });
        }
        Ok(DcEndpoint {
            url: url.to_owned(),
            host,
            port: parsed.port().unwrap_or(default_port),
            starttls,
        })
    }
}

/// Timeouts applied to every connection and operation.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// TCP connect plus the TLS (or StartTLS) handshake.
    pub connect: Duration,
    /// Each LDAP operation; a DC that does not answer within it is treated as hung.
    pub operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            operation: Duration::from_secs(10),
        }
    }
}

/// What the rootDSE says about a DC.
#[derive(Clone, Debug, Default)]
pub struct RootDse {
    pub dns_host_name: Option<String>,
    pub default_naming_context: Option<String>,
    pub highest_committed_usn: Option<u64>,
    /// DN of the DC's NTDS Settings object; its objectGUID is the DSA GUID.
    pub ds_service_name: Option<String>,
}

/// Checks that a TCP connection to the DC can be opened (the first thing `check` reports).
pub async fn tcp_reachable(endpoint: &DcEndpoint, timeout: Duration) -> Result<(), DirectoryError> {
    let addr = (endpoint.host.as_str(), endpoint.port);
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(source)) => Err(DirectoryError::Unreachable {
            url: endpoint.url.clone(),
            detail: source.to_string(),
        }),
        Err(_) => Err(DirectoryError::Timeout {
            url: endpoint.url.clone(),
            operation: "TCP connect",
        }),
    }
}

/// One LDAP connection to one DC. The connection driver runs in its own task; when it ends (socket
/// closed) every later operation fails fast and the owner reconnects.
pub struct DcSession {
    ldap: Ldap,
    endpoint: DcEndpoint,
    timeouts: Timeouts,
}

impl DcSession {
    /// Opens the connection and completes the TLS handshake (certificate verified against `tls`).
    pub async fn connect(
        endpoint: &DcEndpoint,
        tls: Arc<ClientConfig>,
        timeouts: Timeouts,
    ) -> Result<Self, DirectoryError> {
        // The TCP connection is opened here, so that a later failure or hang is known to be the
        // DC's answer to StartTLS (or the TLS handshake), never an unreachable host.
        let addr = (endpoint.host.as_str(), endpoint.port);
        let tcp = match tokio::time::timeout(timeouts.connect, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => {
                return Err(DirectoryError::Unreachable {
                    url: endpoint.url.clone(),
                    detail: source.to_string(),
                })
            }
            Err(_) => {
                return Err(DirectoryError::Timeout {
                    url: endpoint.url.clone(),
                    operation: "TCP connect",
                })
            }
        };
        let tcp = tcp
            .into_std()
            .map_err(|source| DirectoryError::Unreachable {
                url: endpoint.url.clone(),
                detail: source.to_string(),
            })?;
        let settings = LdapConnSettings::new()
            .set_conn_timeout(timeouts.connect)
            .set_config(tls)
            .set_starttls(endpoint.starttls)
            .set_std_stream(ldap3::StdStream::Tcp(tcp));
        // ldap3 wants the scheme it understands; the host is used for SNI and certificate matching.
        let url = format!(
            "{}://{}:{}",
            if endpoint.starttls { "ldap" } else { "ldaps" },
            bracket_ipv6(&endpoint.host),
            endpoint.port
        );
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &url)
            .await
            .map_err(|e| {
                DirectoryError::from_connect(&endpoint.url, &endpoint.host, endpoint.starttls, e)
            })?;
        let url_for_log = endpoint.url.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(dc = %url_for_log, error = %e, "LDAP connection driver ended");
            }
        });
        Ok(DcSession {
            ldap,
            endpoint: endpoint.clone(),
            timeouts,
        })
    }

    /// Changes the per-operation timeout (a full read of a large domain needs far longer than a probe).
    pub fn set_operation_timeout(&mut self, timeout: Duration) {
        self.timeouts.operation = timeout;
    }

    pub fn endpoint(&self) -> &DcEndpoint {
        &self.endpoint
    }

    /// Simple bind (over the already encrypted connection).
    pub async fn bind(&mut self, bind_dn: &str, password: &Secret) -> Result<(), DirectoryError> {
        let res = self
            .ldap
            .with_timeout(self.timeouts.operation)
            .simple_bind(bind_dn, password.expose())
            .await
            .map_err(|e| DirectoryError::from_ldap(&self.endpoint.url, "bind", e))?;
        if res.rc != 0 {
            return Err(DirectoryError::from_result(
                &self.endpoint.url,
                "bind",
                bind_dn,
                res.rc,
                &res.text,
            ));
        }
        Ok(())
    }

    /// Reads the rootDSE: the health probe (Samba has no WhoAmI) and the source of the USN watermark.
    pub async fn root_dse(&mut self) -> Result<RootDse, DirectoryError> {
        let attrs = [
            "dnsHostName",
            "defaultNamingContext",
            "highestCommittedUSN",
            "dsServiceName",
        ];
        let entries = self
            .search("", Scope::Base, "(objectClass=*)", &attrs, "rootDSE read")
            .await?;
        let entry = entries
            .into_iter()
            .next()
            .ok_or_else(|| DirectoryError::Malformed {
                url: self.endpoint.url.clone(),
                detail: "the rootDSE search returned no entry".into(),
            })?;
        let first = |name: &str| entry.attrs.get(name).and_then(|v| v.first()).cloned();
        let highest_committed_usn = match first("highestCommittedUSN") {
            Some(v) => Some(v.parse::<u64>().map_err(|_| DirectoryError::Malformed {
                url: self.endpoint.url.clone(),
                detail: format!("highestCommittedUSN {v:?} is not a number"),
            })?),
            None => None,
        };
        Ok(RootDse {
            dns_host_name: first("dnsHostName"),
            default_naming_context: first("defaultNamingContext"),
            highest_committed_usn,
            ds_service_name: first("dsServiceName"),
        })
    }

    /// Reads one object by DN; `Ok(None)` when it does not exist.
    pub async fn read_entry(
        &mut self,
        dn: &str,
        attrs: &[&str],
    ) -> Result<Option<SearchEntry>, DirectoryError> {
        match self
            .search(dn, Scope::Base, "(objectClass=*)", attrs, "read")
            .await
        {
            Ok(entries) => Ok(entries.into_iter().next()),
            Err(DirectoryError::Refused { rc: 32, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A search with the operation timeout; continuation references are skipped, not treated as errors.
    pub async fn search(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        what: &'static str,
    ) -> Result<Vec<SearchEntry>, DirectoryError> {
        let result = self
            .ldap
            .with_timeout(self.timeouts.operation)
            .search(base, scope, filter, attrs.to_vec())
            .await
            .map_err(|e| DirectoryError::from_ldap(&self.endpoint.url, what, e))?;
        let (entries, res) = (result.0, result.1);
        if res.rc != 0 {
            return Err(DirectoryError::from_result(
                &self.endpoint.url,
                what,
                base,
                res.rc,
                &res.text,
            ));
        }
        Ok(decode_entries(&self.endpoint.url, what, entries))
    }

    /// Runs one DirSync round (no more-data loop here; the caller decides).
    pub async fn dirsync(
        &mut self,
        base: &str,
        filter: &str,
        attrs: &[&str],
        request: &DirSyncRequest,
    ) -> Result<(Vec<SearchEntry>, Option<DirSyncResponse>), DirectoryError> {
        let result = self
            .ldap
            .with_timeout(self.timeouts.operation)
            .with_controls(request.to_control())
            .search(base, Scope::Subtree, filter, attrs.to_vec())
            .await
            .map_err(|e| DirectoryError::from_ldap(&self.endpoint.url, "DirSync search", e))?;
        let (entries, res) = (result.0, result.1);
        if res.rc != 0 {
            return Err(DirectoryError::from_result(
                &self.endpoint.url,
                "DirSync search",
                base,
                res.rc,
                &res.text,
            ));
        }
        let response = res
            .ctrls
            .iter()
            .find_map(|c| DirSyncResponse::from_control(&c.1));
        Ok((
            decode_entries(&self.endpoint.url, "DirSync search", entries),
            response,
        ))
    }

    /// Confirms the bound account may run DirSync on `base` (Replicating Directory Changes), the
    /// right change tracking needs. Runs one DirSync round whose filter matches nothing.
    pub async fn probe_change_tracking_rights(&mut self, base: &str) -> Result<(), DirectoryError> {
        let filter = "(&(objectClass=user)(sAMAccountName=forestsync-rights-probe-none))";
        self.dirsync(base, filter, &["objectGUID"], &DirSyncRequest::default())
            .await
            .map(|_| ())
    }

    /// Whether the bound account can read `CN=Deleted Objects` (Show Deleted control): Samba, like a
    /// locked-down Windows domain, hides tombstones from DirSync without it, and deletions would be missed.
    pub async fn can_read_deleted_objects(&mut self, base: &str) -> Result<bool, DirectoryError> {
        let show_deleted = ldap3::controls::RawControl {
            ctype: "1.2.840.113556.1.4.417".into(),
            crit: true,
            val: None,
        };
        let dn = format!("CN=Deleted Objects,{base}");
        let result = self
            .ldap
            .with_timeout(self.timeouts.operation)
            .with_controls(show_deleted)
            .search(&dn, Scope::Base, "(objectClass=*)", vec!["objectGUID"])
            .await
            .map_err(|e| {
                DirectoryError::from_ldap(&self.endpoint.url, "Deleted Objects read", e)
            })?;
        match result.1.rc {
            // Without Read Property the entry may still be listed, but with no attributes.
            0 => Ok(
                decode_entries(&self.endpoint.url, "Deleted Objects read", result.0)
                    .into_iter()
                    .any(|e| {
                        e.attrs.contains_key("objectGUID") || e.bin_attrs.contains_key("objectGUID")
                    }),
            ),
            32 | 50 => Ok(false),
            rc => Err(DirectoryError::from_result(
                &self.endpoint.url,
                "Deleted Objects read",
                &dn,
                rc,
                &result.1.text,
            )),
        }
    }

    /// Adds an object. Attribute values are bytes so binary values (unicodePwd) go through unchanged.
    pub async fn add(
        &mut self,
        dn: &str,
        attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)>,
    ) -> Result<(), DirectoryError> {
        let res = self
            .ldap
            .with_timeout(self.timeouts.operation)
            .add(dn, attrs)
            .await
            .map_err(|e| DirectoryError::from_ldap(&self.endpoint.url, "add", e))?;
        self.expect_success("add", dn, res)
    }

    /// Modifies an object; all modifications apply together or not at all (one LDAP modify).
    pub async fn modify(
        &mut self,
        dn: &str,
        mods: Vec<Mod<Vec<u8>>>,
    ) -> Result<(), DirectoryError> {
        let res = self
            .ldap
            .with_timeout(self.timeouts.operation)
            .modify(dn, mods)
            .await
            .map_err(|e| DirectoryError::from_ldap(&self.endpoint.url, "modify", e))?;
        self.expect_success("modify", dn, res)
    }

    /// Renames or moves an object (modifyDN); `new_superior` moves it under another parent.
    pub async fn rename(
        &mut self,
        dn: &str,
        new_rdn: &str,
        new_superior: Option<&str>,
    ) -> Result<(), DirectoryError> {
        let res = self
            .ldap
            .with_timeout(self.timeouts.operation)
            .modifydn(dn, new_rdn, true, new_superior)
            .await
            .map_err(|e| DirectoryError::from_ldap(&self.endpoint.url, "rename", e))?;
        self.expect_success("rename", dn, res)
    }

    pub async fn delete(&mut self, dn: &str) -> Result<(), DirectoryError> {
        let res = self
            .ldap
            .with_timeout(self.timeouts.operation)
            .delete(dn)
            .await
            .map_err(|e| DirectoryError::from_ldap(&self.endpoint.url, "delete", e))?;
        self.expect_success("delete", dn, res)
    }

    fn expect_success(
        &self,
        operation: &'static str,
        dn: &str,
        res: ldap3::LdapResult,
    ) -> Result<(), DirectoryError> {
        if res.rc == 0 {
            Ok(())
        } else {
            Err(DirectoryError::from_result(
                &self.endpoint.url,
                operation,
                dn,
                res.rc,
                &res.text,
            ))
        }
    }

    pub async fn unbind(mut self) {
        let _ = self.ldap.unbind().await;
    }
}

/// The search result entries of an answer, continuation references skipped. Decoded with
/// [`read::search_entry`], not ldap3's `SearchEntry::construct`, which panics on malformed BER: an
/// entry that does not decode is logged and skipped.
fn decode_entries(
    url: &str,
    what: &'static str,
    entries: Vec<ldap3::ResultEntry>,
) -> Vec<SearchEntry> {
    entries
        .into_iter()
        .filter(|e| !is_reference(e))
        .filter_map(|e| match read::search_entry(e.0) {
            Ok(entry) => Some(entry),
            Err(why) => {
                tracing::warn!(dc = %url, operation = what, reason = why, "undecodable search entry skipped");
                None
            }
        })
        .collect()
}

fn is_reference(entry: &ldap3::ResultEntry) -> bool {
    // A search result reference (continuation referral) has protocol op tag 19.
    entry.0.id == 19
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dc_urls_parse_with_defaults_and_reject_plain_or_pathful_urls() {
        let ldaps = DcEndpoint::parse("ldaps://127.0.0.2").unwrap();
        assert_eq!(
            (ldaps.host.as_str(), ldaps.port, ldaps.starttls),
            ("127.0.0.2", 636, false)
        );
        let ldap = DcEndpoint::parse("ldap://dc1.alpha.test").unwrap();
        assert_eq!((ldap.port, ldap.starttls), (389, true));
        assert!(DcEndpoint::parse("http://127.0.0.2").is_err());
        assert!(DcEndpoint::parse("ldaps://127.0.0.2/DC=alpha,DC=test").is_err());
        assert!(DcEndpoint::parse("not a url").is_err());
    }
}

//! `forestsync check`: validates the configuration and tests every DC and the JumpCloud API key,
//! printing one line per item (with the fix when it is broken).

use std::fmt::Write as _;
use std::time::Duration;

use forestsync_actors::cloud::{CloudClient, CloudEndpoint};
use forestsync_actors::directory::rights::{self, Token};
use forestsync_actors::directory::{self, DcEndpoint, DcSession, Timeouts};
use forestsync_actors::trust;

use crate::config::{Config, DomainConfig};

/// The outcome of one checked item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok(String),
    Fail(String),
    /// Not tried because an earlier step for the same target failed.
    Skipped(&'static str),
}

#[derive(Debug, Clone)]
pub struct Line {
    pub scope: String,
    pub target: String,
    pub item: &'static str,
    pub verdict: Verdict,
}

#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<Line>,
}

impl Report {
    fn push(&mut self, scope: &str, target: &str, item: &'static str, verdict: Verdict) {
        self.lines.push(Line {
            scope: scope.into(),
            target: target.into(),
            item,
            verdict,
        });
    }

    pub fn failed(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| matches!(l.verdict, Verdict::Fail(_)))
            .count()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            let (tag, text) = match &l.verdict {
                Verdict::Ok(t) => ("ok  ", t.as_str()),
                Verdict::Fail(t) => ("FAIL", t.as_str()),
                Verdict::Skipped(t) => ("skip", *t),
            };
            let _ = writeln!(
                out,
                "{tag}  {:<10} {:<28} {:<22} {text}",
                l.scope, l.target, l.item
            );
        }
        out
    }
}

pub async fn run(config: &Config) -> Report {
    let mut report = Report::default();
    report.push(
        "config",
        &config.path.display().to_string(),
        "parse and validate",
        Verdict::Ok(format!(
            "mode {}, {} domain(s)",
            config.mode,
            config.domains.len()
        )),
    );
    for domain in &config.domains {
        check_domain(domain, &mut report).await;
    }
    check_jumpcloud(config, &mut report).await;
    for domain in &config.domains {
        if let Some(t) = &domain.to_ad {
            let verdict = match crate::wiring::agent_credentials(config, domain, t) {
                Ok(c) => Verdict::Ok(format!(
                    "registered as agent {} of AD instance {}",
                    c.agent_id, c.activedirectory_id
                )),
                Err(e) => Verdict::Fail(e.to_string()),
            };
            report.push(&domain.name, "agent", "registration", verdict);
        }
    }
    report
}

async fn check_domain(domain: &DomainConfig, report: &mut Report) {
    let tls = match trust::client_config(domain.ca_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            report.push(
                &domain.name,
                "ca_file",
                "load CA",
                Verdict::Fail(e.to_string()),
            );
            return;
        }
    };
    let timeouts = Timeouts {
        connect: Duration::from_secs(3),
        operation: Duration::from_secs(5),
    };
    for url in &domain.dcs {
        let Ok(endpoint) = DcEndpoint::parse(url) else {
            continue;
        };
        let name = domain.name.as_str();
        if let Err(e) = directory::tcp_reachable(&endpoint, timeouts.connect).await {
            report.push(name, url, "tcp", Verdict::Fail(e.to_string()));
            report.push(name, url, "tls", Verdict::Skipped("tcp failed"));
            continue;
        }
        report.push(
            name,
            url,
            "tcp",
            Verdict::Ok(format!("{}:{} reachable", endpoint.host, endpoint.port)),
        );

        let mut session = match DcSession::connect(&endpoint, tls.clone(), timeouts).await {
            Ok(s) => {
                let how = if endpoint.starttls {
                    "StartTLS"
                } else {
                    "LDAPS"
                };
                report.push(
                    name,
                    url,
                    "tls",
                    Verdict::Ok(format!("{how}, certificate verified")),
                );
                s
            }
            Err(e) => {
                report.push(name, url, "tls", Verdict::Fail(e.to_string()));
                report.push(name, url, "bind", Verdict::Skipped("tls failed"));
                continue;
            }
        };
        if let Err(e) = session.bind(&domain.bind_dn, &domain.bind_password).await {
            report.push(name, url, "bind", Verdict::Fail(e.to_string()));
            report.push(name, url, "rights", Verdict::Skipped("bind failed"));
            continue;
        }
        report.push(
            name,
            url,
            "bind",
            Verdict::Ok(format!("as {}", domain.bind_dn)),
        );
        // The account's SIDs, for naming missing rights and the grants that fix them.
        let token = session.token(&domain.bind_dn).await.ok();

        match session.root_dse().await {
            Ok(dse) => {
                let nc = dse.default_naming_context.unwrap_or_default();
                if nc.eq_ignore_ascii_case(&domain.base_dn) {
                    report.push(
                        name,
                        url,
                        "rootDSE",
                        Verdict::Ok(format!(
                            "{} serves {nc}, highestCommittedUSN {}",
                            dse.dns_host_name.unwrap_or_default(),
                            dse.highest_committed_usn
                                .map(|u| u.to_string())
                                .unwrap_or_else(|| "?".into())
                        )),
                    );
                } else {
                    report.push(
                        name,
                        url,
                        "rootDSE",
                        Verdict::Fail(format!(
                            "the DC serves {nc:?}, not base_dn {:?}; fix: list only this domain's DCs, or correct base_dn",
                            domain.base_dn
                        )),
                    );
                }
            }
            Err(e) => report.push(name, url, "rootDSE", Verdict::Fail(e.to_string())),
        }

        // Change tracking matters only where AD is read for changes (not in jumpcloud-authoritative).
        if !domain.root_group_dn.is_empty() {
            match session.probe_change_tracking_rights(&domain.base_dn).await {
                Ok(()) => report.push(
                    name,
                    url,
                    "change tracking",
                    Verdict::Ok("DirSync allowed (Replicating Directory Changes)".into()),
                ),
                Err(e) if e.result_code() == Some(50) => report.push(
                    name,
                    url,
                    "change tracking",
                    Verdict::Fail(missing_replication_right(domain, url, token.as_ref(), &e)),
                ),
                Err(e) => report.push(name, url, "change tracking", Verdict::Fail(e.to_string())),
            }

            match session.can_read_deleted_objects(&domain.base_dn).await {
                Ok(true) => report.push(name, url, "deletions visible", Verdict::Ok("CN=Deleted Objects readable: DirSync reports deletions".into())),
                Ok(false) => report.push(
                    name,
                    url,
                    "deletions visible",
                    Verdict::Fail(format!(
                        "{} cannot read CN=Deleted Objects (List Contents, Read Property), so deletions would be missed; fix: on Windows `dsacls \"CN=Deleted Objects,{}\" /takeownership`, then `dsacls \"CN=Deleted Objects,{}\" /G \"{}:LCRP\" /I:T` (inherited, so tombstones replicated from other DCs are readable too); on Samba (where not even Administrator may change that container over LDAP) add the inheritable ACE (A;CI;LCRPRC;;;{}) to it in each DC's sam.ldb as root, with the show_deleted control (deploy/lab/labctl.py grant-deleted-objects does this)",
                        domain.bind_dn,
                        domain.base_dn,
                        domain.base_dn,
                        token.as_ref().map(Token::trustee).unwrap_or_else(|| "<DOMAIN>\\<service account>".into()),
                        token.as_ref().map(|t| t.sid.as_str()).unwrap_or("<service account SID>"),
                    )),
                ),
                Err(e) => report.push(name, url, "deletions visible", Verdict::Fail(e.to_string())),
            }
        }
        if !domain.root_group_dn.is_empty() {
            match session.read_entry(&domain.root_group_dn, &["objectClass", "groupType", "member"]).await {
                Ok(Some(entry)) => {
                    let is_group = entry
                        .attrs
                        .get("objectClass")
                        .is_some_and(|v| v.iter().any(|c| c.eq_ignore_ascii_case("group")));
                    if is_group {
                        report.push(name, url, "root group", Verdict::Ok(format!("{} found", domain.root_group_dn)));
                    } else {
                        report.push(name, url, "root group", Verdict::Fail(format!("{} exists but is not a group", domain.root_group_dn)));
                    }
                }
                Ok(None) => report.push(
                    name,
                    url,
                    "root group",
                    Verdict::Fail(format!(
                        "{} not found; fix: create the ADI security group (e.g. CN=JumpCloud,OU=ADI,...) or correct root_group_dn",
                        domain.root_group_dn
                    )),
                ),
                Err(e) => report.push(name, url, "root group", Verdict::Fail(e.to_string())),
            }
        }
        if let Some(t) = &domain.to_ad {
            match session.read_entry(&t.target_ou, &["objectClass"]).await {
                Ok(Some(entry)) => {
                    let is_container = entry.attrs.get("objectClass").is_some_and(|v| {
                        v.iter().any(|c| c.eq_ignore_ascii_case("organizationalUnit") || c.eq_ignore_ascii_case("container"))
                    });
                    if is_container {
                        report.push(name, url, "target OU", Verdict::Ok(format!("{} found", t.target_ou)));
                        check_target_ou_rights(&mut session, domain, &t.target_ou, url, token.as_ref(), report).await;
                    } else {
                        report.push(name, url, "target OU", Verdict::Fail(format!("{} exists but is not an OU or container", t.target_ou)));
                    }
                }
                Ok(None) => report.push(
                    name,
                    url,
                    "target OU",
                    Verdict::Fail(format!(
                        "{} not found; fix: create the OU JumpCloud users and groups are written to, and delegate to {} there: create/delete user and group objects, write all properties, reset password",
                        t.target_ou, domain.bind_dn
                    )),
                ),
                Err(e) => report.push(name, url, "target OU", Verdict::Fail(e.to_string())),
            }
        }
        session.unbind().await;
    }
}

/// The grant commands for one right: dsacls (Windows) and samba-tool (Samba).
fn grant_fix(object: &str, dsacls: &str, sddl: &str, token: Option<&Token>, url: &str) -> String {
    let (trustee, sid) = match token {
        Some(t) => (t.trustee(), t.sid.clone()),
        None => (
            "<DOMAIN>\\<service account>".to_owned(),
            "<service account SID>".to_owned(),
        ),
    };
    let dsacls = dsacls.replace("{trustee}", &trustee);
    let sddl = sddl.replace("{sid}", &sid);
    // samba-tool signs and seals its own LDAP session; over ldaps:// Samba 4.17 refuses that.
    let host = DcEndpoint::parse(url)
        .map(|e| e.host)
        .unwrap_or_else(|_| "<dc>".into());
    format!(
        "fix: on Windows `dsacls \"{object}\" {dsacls}`; on Samba `samba-tool dsacl set -H ldap://{host} -U Administrator --objectdn=\"{object}\" --sddl=\"{sddl}\"`"
    )
}

fn missing_replication_right(
    domain: &DomainConfig,
    url: &str,
    token: Option<&Token>,
    e: &forestsync_actors::directory::DirectoryError,
) -> String {
    format!(
        "{} lacks \"Replicating Directory Changes\" (extended right {}) on the domain head {}, so DirSync is refused ({}); {}",
        domain.bind_dn,
        rights::GUID_REPL_GET_CHANGES,
        domain.base_dn,
        e.ad_reason().unwrap_or("insufficientAccessRights"),
        grant_fix(
            &domain.base_dn,
            "/G \"{trustee}:CA;Replicating Directory Changes\"",
            &format!("(OA;;CR;{};;{{sid}})", rights::GUID_REPL_GET_CHANGES),
            token,
            url,
        )
    )
}

/// One right `check` looks for in the target OU, and the grants that give it.
struct NeededRight<'a> {
    item: &'static str,
    on: rights::On<'a>,
    right: u32,
    object_type: Option<&'a str>,
    what: &'static str,
    sddl: String,
    dsacls: &'static str,
}

/// One line per right forestsync needs in the target OU (JumpCloud → AD writes), read from the OU's
/// DACL for the bound account's token: create and delete users and groups there, write their
/// properties, reset users' passwords.
async fn check_target_ou_rights(
    session: &mut DcSession,
    domain: &DomainConfig,
    ou: &str,
    url: &str,
    token: Option<&Token>,
    report: &mut Report,
) {
    let name = domain.name.as_str();
    let Some(token) = token else {
        report.push(
            name,
            url,
            "target OU rights",
            Verdict::Fail(format!(
                "cannot read the objectSid of {}, so the rights in {ou} cannot be checked; fix: check bind_dn",
                domain.bind_dn
            )),
        );
        return;
    };
    let dacl = match session.dacl(ou).await {
        Ok(d) => d,
        Err(e) => {
            report.push(name, url, "target OU rights", Verdict::Fail(e.to_string()));
            return;
        }
    };
    use rights::{On, CONTROL_ACCESS, CREATE_CHILD, DELETE_CHILD, WRITE_PROPERTY};
    use rights::{GUID_CLASS_GROUP as GROUP, GUID_CLASS_USER as USER};
    let needed = [
        NeededRight {
            item: "create users",
            on: On::ThisObject,
            right: CREATE_CHILD,
            object_type: Some(USER),
            what: "Create Child (user objects)",
            sddl: format!("(OA;CI;CC;{USER};;{{sid}})"),
            dsacls: "/I:T /G \"{trustee}:CC;user\"",
        },
        NeededRight {
            item: "delete users",
            on: On::ThisObject,
            right: DELETE_CHILD,
            object_type: Some(USER),
            what: "Delete Child (user objects)",
            sddl: format!("(OA;CI;DC;{USER};;{{sid}})"),
            dsacls: "/I:T /G \"{trustee}:DC;user\"",
        },
        NeededRight {
            item: "create groups",
            on: On::ThisObject,
            right: CREATE_CHILD,
            object_type: Some(GROUP),
            what: "Create Child (group objects)",
            sddl: format!("(OA;CI;CC;{GROUP};;{{sid}})"),
            dsacls: "/I:T /G \"{trustee}:CC;group\"",
        },
        NeededRight {
            item: "delete groups",
            on: On::ThisObject,
            right: DELETE_CHILD,
            object_type: Some(GROUP),
            what: "Delete Child (group objects)",
            sddl: format!("(OA;CI;DC;{GROUP};;{{sid}})"),
            dsacls: "/I:T /G \"{trustee}:DC;group\"",
        },
        NeededRight {
            item: "write user properties",
            on: On::NewChild(USER),
            right: WRITE_PROPERTY,
            object_type: None,
            what: "Write all properties, inherited by user objects",
            sddl: format!("(OA;CIIO;WP;;{USER};{{sid}})"),
            dsacls: "/I:S /G \"{trustee}:WP;;user\"",
        },
        NeededRight {
            item: "write group properties",
            on: On::NewChild(GROUP),
            right: WRITE_PROPERTY,
            object_type: None,
            what: "Write all properties, inherited by group objects",
            sddl: format!("(OA;CIIO;WP;;{GROUP};{{sid}})"),
            dsacls: "/I:S /G \"{trustee}:WP;;group\"",
        },
        NeededRight {
            item: "reset user passwords",
            on: On::NewChild(USER),
            right: CONTROL_ACCESS,
            object_type: Some(rights::GUID_RESET_PASSWORD),
            what: "the Reset Password extended right, inherited by user objects",
            sddl: format!(
                "(OA;CIIO;CR;{};{USER};{{sid}})",
                rights::GUID_RESET_PASSWORD
            ),
            dsacls: "/I:S /G \"{trustee}:CA;Reset Password;user\"",
        },
    ];
    for NeededRight {
        item,
        on,
        right,
        object_type,
        what,
        sddl,
        dsacls,
    } in needed
    {
        let verdict = if rights::granted(&dacl, token, on, right, object_type) {
            Verdict::Ok(format!("{what} granted on {ou}"))
        } else {
            Verdict::Fail(format!(
                "{} may not {item} in {ou}: no ACE grants it {what}{}; {}",
                domain.bind_dn,
                if token.groups_known {
                    ""
                } else {
                    " (its groups could not be read; only its own SID and Domain Users were checked)"
                },
                grant_fix(ou, dsacls, &sddl, Some(token), url)
            ))
        };
        report.push(name, url, item, verdict);
    }
}

async fn check_jumpcloud(config: &Config, report: &mut Report) {
    let jc = &config.jumpcloud;
    let target = jc.base_url.as_str();
    let tls = match trust::client_config(jc.ca_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            report.push("jumpcloud", target, "load CA", Verdict::Fail(e.to_string()));
            return;
        }
    };
    let endpoint = CloudEndpoint {
        base_url: jc.base_url.clone(),
        api_key: jc.api_key.clone(),
        org_id: jc.org_id.clone(),
        timeout: jc.timeout.min(Duration::from_secs(10)),
    };
    let client = match CloudClient::new(endpoint, tls) {
        Ok(c) => c,
        Err(e) => {
            report.push("jumpcloud", target, "client", Verdict::Fail(e.to_string()));
            return;
        }
    };
    match client.probe_key().await {
        Ok(probe) => report.push(
            "jumpcloud",
            target,
            "tls + api key",
            Verdict::Ok(format!(
                "key accepted; the organisation has {} user(s)",
                probe.user_count
            )),
        ),
        Err(e) => report.push(
            "jumpcloud",
            target,
            "tls + api key",
            Verdict::Fail(e.to_string()),
        ),
    }
}

//! `forestsync explain USER`: why one user is, or is not, in JumpCloud (or AD) as it is — like
//! Entra's single-object sync report. Everything comes from the store: the domain's AD snapshot (scope
//! path through nested groups from the root group, or why not), the link (JumpCloud id, what was last
//! applied), queued and quarantined operations, JumpCloud → AD meta and two-way records.
//!
//! USER may be a sAMAccountName, a userPrincipalName, a JumpCloud username, a JumpCloud id or a DN.
//! [`explain`] builds the report (on the agent over the admin socket, or in the CLI from the store);
//! [`render`] is the one renderer. No match anywhere = an empty `matches`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;

use forestsync_actors::model::{
    normalize_dn, AdObject, Anchor, DomainSnapshot, Link, ObjectGuid, ObjectKind, Op,
};
use forestsync_actors::plan::{desired_user, resolve_scope};
use forestsync_actors::store::{Store, StoreError};
use forestsync_actors::two_way::{self, PASSWORD_AUTHORITY_ATTRIBUTE};
use serde::{Deserialize, Serialize};

use crate::config::{Config, DomainConfig, Mode};
use crate::status::utc;
use crate::wiring::mapping_rules;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("cannot read the state store in {dir}: {source}")]
    Store {
        dir: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainReport {
    pub query: String,
    pub mode: String,
    /// Every object the query names (the same sAMAccountName may exist in two domains).
    pub matches: Vec<Explanation>,
}

/// One user in one domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub domain: String,
    pub dn: Option<String>,
    pub object_guid: Option<String>,
    pub sam_account_name: Option<String>,
    pub user_principal_name: Option<String>,
    /// What matched the query (`sAMAccountName`, `DN`, `JumpCloud username` …).
    pub matched_by: String,
    pub in_scope: bool,
    /// Root group → … → the user (empty when the user is not reached from the root group).
    pub scope_path: Vec<PathStep>,
    /// Why it is in scope, or why not, one reason a line.
    pub scope: Vec<String>,
    /// Enabled/disabled in AD and what that means in JumpCloud.
    pub state: Option<String>,
    pub authority: Vec<String>,
    pub jumpcloud_id: Option<String>,
    /// What forestsync last applied (from the link), one fact a line.
    pub last_applied: Vec<String>,
    /// JumpCloud groups the link records this user in.
    pub jumpcloud_groups: Vec<String>,
    pub last_change_seen: Vec<String>,
    pub pending: Vec<String>,
    pub quarantined: Vec<String>,
    /// JumpCloud → AD meta for the user's JumpCloud id (`error`, `managed`, `base`, passwords).
    pub to_ad: Vec<String>,
    pub two_way_records: Vec<String>,
}

/// One object on the membership path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStep {
    /// sAMAccountName (or name, or the DN when neither is stored).
    pub name: String,
    pub dn: String,
    /// A member of the previous step by primaryGroupID (AD does not list it in `member`).
    pub primary_group: bool,
}

/// Builds the report for `query` from the store.
pub fn explain(config: &Config, store: &Store, query: &str) -> Result<ExplainReport, ExplainError> {
    let err = |source| ExplainError::Store {
        dir: config.state_dir.display().to_string(),
        source,
    };
    let query = query.trim();
    let links: HashMap<Anchor, Link> = store
        .links()
        .map_err(err)?
        .into_iter()
        .map(|l| (l.anchor.clone(), l))
        .collect();
    let mut outbox = Vec::new();
    let mut after = None;
    loop {
        let page = store.pending_ops(after, 1_000).map_err(err)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        let full = page.len() == 1_000;
        outbox.extend(page);
        if !full {
            break;
        }
    }
    let quarantine = store.quarantined().map_err(err)?;
    let mut matches = Vec::new();
    for d in &config.domains {
        let (objects, watermark) = store.load_domain(&d.name).map_err(err)?;
        let snap = DomainSnapshot::from_objects(objects);
        let to_ad = to_ad_meta(store, &d.name).map_err(err)?;
        let records = two_way::records(store, &d.name).map_err(err)?;
        let mut seen_ids = Vec::new();
        let mut users: Vec<&AdObject> = snap
            .objects()
            .filter(|o| o.kind == ObjectKind::User)
            .collect();
        users.sort_by(|a, b| a.dn.cmp(&b.dn));
        for o in users {
            let anchor = Anchor {
                domain: d.name.clone(),
                guid: o.guid,
            };
            let link = links.get(&anchor);
            let Some(matched_by) = matches_ad(o, link, query) else {
                continue;
            };
            let mut e = Explanation {
                domain: d.name.clone(),
                dn: Some(o.dn.clone()),
                object_guid: Some(o.guid.to_string()),
                sam_account_name: o.first("samaccountname").map(str::to_owned),
                user_principal_name: o.first("userprincipalname").map(str::to_owned),
                matched_by: matched_by.to_owned(),
                in_scope: false,
                scope_path: vec![],
                scope: vec![],
                state: Some(if o.is_disabled() {
                    "disabled in AD (userAccountControl bit 0x2): suspended in JumpCloud when in scope"
                        .to_owned()
                } else {
                    "enabled in AD".to_owned()
                }),
                authority: vec![],
                jumpcloud_id: None,
                last_applied: vec![],
                jumpcloud_groups: vec![],
                last_change_seen: vec![],
                pending: vec![],
                quarantined: vec![],
                to_ad: vec![],
                two_way_records: vec![],
            };
            scope_of(config, d, &snap, o, &mut e);
            let marker_id = o.jumpcloud_id();
            e.authority = authority(config, e.in_scope, marker_id.as_deref());
            if let Some(l) = link {
                e.jumpcloud_id = Some(l.jumpcloud_id.clone());
                if let Some(u) = &l.applied_user {
                    e.last_applied = vec![
                        format!("username {}", u.username),
                        format!("email {}", u.email),
                        format!("name {} {}", u.firstname, u.lastname),
                        format!("suspended {}", u.suspended),
                        format!("external DN {}", u.external_dn),
                    ];
                    e.last_applied
                        .extend(u.extra.iter().map(|(k, v)| format!("{k} {v}")));
                }
            } else if marker_id.is_some() {
                e.jumpcloud_id = marker_id.clone();
            } else if e.in_scope {
                e.last_applied =
                    vec!["not linked yet: no JumpCloud user created or adopted so far".into()];
            }
            let mut groups: Vec<String> = links
                .values()
                .filter(|l| l.kind == ObjectKind::Group && l.applied_members.contains(&anchor))
                .map(|l| {
                    format!(
                        "{} ({})",
                        l.applied_group_name.as_deref().unwrap_or("?"),
                        l.jumpcloud_id
                    )
                })
                .collect();
            groups.sort();
            e.jumpcloud_groups = groups;
            e.last_change_seen = last_change(o, watermark.as_ref().map(|w| w.taken_unix));
            let name = |a: &Anchor| -> String {
                snap.get(&a.guid)
                    .map(|o| o.first("samaccountname").unwrap_or(&o.dn).to_owned())
                    .unwrap_or_else(|| a.to_string())
            };
            e.pending = outbox
                .iter()
                .filter(|(_, op)| concerns(op, &anchor))
                .map(|(seq, op)| format!("#{seq} {}", describe(op, &name)))
                .collect();
            e.quarantined = quarantine
                .iter()
                .filter(|(_, op, _)| concerns(op, &anchor))
                .map(|(seq, op, error)| format!("#{seq} {}: {error}", describe(op, &name)))
                .collect();
            if let Some(id) = e.jumpcloud_id.clone() {
                e.to_ad = to_ad_lines(&to_ad, &id);
                e.two_way_records = record_lines(&records, &id);
                seen_ids.push(id);
            }
            matches.push(e);
        }
        // JumpCloud-owned users written into AD that the snapshot does not hold
        // (jumpcloud-authoritative reads no AD snapshot): what the JumpCloud → AD meta knows.
        for (id, facts) in &to_ad {
            if seen_ids.contains(id) {
                continue;
            }
            let Some(matched_by) = matches_to_ad(id, facts, query) else {
                continue;
            };
            let dn = facts.get("managed").cloned();
            let base: BTreeMap<String, String> = facts
                .get("base")
                .and_then(|b| serde_json::from_str(b).ok())
                .unwrap_or_default();
            matches.push(Explanation {
                domain: d.name.clone(),
                dn: dn.clone(),
                object_guid: None,
                sam_account_name: base.get("samaccountname").cloned(),
                user_principal_name: base.get("userprincipalname").cloned(),
                matched_by: matched_by.to_owned(),
                in_scope: dn.is_some(),
                scope_path: vec![],
                scope: vec![format!(
                    "a JumpCloud user bound to the domain's AD instance, written into AD by forestsync{}",
                    match &d.to_ad {
                        Some(t) => format!(" (target OU {})", t.target_ou),
                        None => String::new(),
                    }
                )],
                state: None,
                authority: authority(config, false, Some(id)),
                jumpcloud_id: Some(id.clone()),
                last_applied: vec![],
                jumpcloud_groups: vec![],
                last_change_seen: vec![],
                pending: vec![],
                quarantined: vec![],
                to_ad: to_ad_lines(&to_ad, id),
                two_way_records: record_lines(&records, id),
            });
        }
    }
    Ok(ExplainReport {
        query: query.to_owned(),
        mode: config.mode.to_string(),
        matches,
    })
}

/// Which identifier of AD user `o` names `query`.
fn matches_ad(o: &AdObject, link: Option<&Link>, q: &str) -> Option<&'static str> {
    let eq = |v: Option<&str>| v.is_some_and(|v| v.eq_ignore_ascii_case(q));
    if q.is_empty() {
        return None;
    }
    if eq(o.first("samaccountname")) {
        Some("sAMAccountName")
    } else if eq(o.first("userprincipalname")) {
        Some("userPrincipalName")
    } else if normalize_dn(&o.dn) == normalize_dn(q) {
        Some("DN")
    } else if eq(link
        .and_then(|l| l.applied_user.as_ref())
        .map(|u| u.username.as_str()))
    {
        Some("JumpCloud username")
    } else if link.is_some_and(|l| l.jumpcloud_id == q) || o.jumpcloud_id().as_deref() == Some(q) {
        Some("JumpCloud id")
    } else if o.guid.to_string().eq_ignore_ascii_case(q) {
        Some("objectGUID")
    } else {
        None
    }
}

/// Which identifier of a JumpCloud → AD user (its meta facts) names `query`.
fn matches_to_ad(id: &str, facts: &BTreeMap<String, String>, q: &str) -> Option<&'static str> {
    if q.is_empty() {
        return None;
    }
    if id == q {
        return Some("JumpCloud id");
    }
    if let Some(dn) = facts.get("managed") {
        if normalize_dn(dn) == normalize_dn(q) {
            return Some("DN");
        }
        let cn = dn.split_once(',').map(|(rdn, _)| rdn).unwrap_or(dn).trim();
        if cn
            .strip_prefix("CN=")
            .or_else(|| cn.strip_prefix("cn="))
            .is_some_and(|v| v.replace('\\', "").eq_ignore_ascii_case(q))
        {
            return Some("AD name (CN) = JumpCloud username");
        }
    }
    let base: BTreeMap<String, String> = facts
        .get("base")
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or_default();
    for (attr, label) in [
        ("samaccountname", "sAMAccountName"),
        ("userprincipalname", "userPrincipalName"),
    ] {
        if base.get(attr).is_some_and(|v| v.eq_ignore_ascii_case(q)) {
            return Some(label);
        }
    }
    None
}

/// Fills the scope verdict, path and reasons.
fn scope_of(
    config: &Config,
    d: &DomainConfig,
    snap: &DomainSnapshot,
    o: &AdObject,
    e: &mut Explanation,
) {
    if config.mode == Mode::JumpcloudAuthoritative || d.root_group_dn.is_empty() {
        e.scope
            .push("mode jumpcloud-authoritative: AD users are not imported into JumpCloud".into());
        return;
    }
    let scope = match resolve_scope(snap, &d.root_group_dn) {
        Ok(s) => s,
        Err(err) => {
            e.scope
                .push(format!("the domain's scope cannot be resolved: {err}"));
            return;
        }
    };
    let root = snap.by_dn(&d.root_group_dn).map(|r| r.guid);
    let path = root.and_then(|r| path_to(snap, r, o.guid));
    if let Some(p) = &path {
        e.scope_path = p.clone();
    }
    if scope.users.contains(&o.guid) {
        e.in_scope = true;
        e.scope.push(format!(
            "in scope: reached from the root group {} through {} step(s)",
            d.root_group_dn,
            e.scope_path.len().saturating_sub(1)
        ));
        match desired_user(&d.name, o, &mapping_rules(d)) {
            Ok(u) => e
                .scope
                .push(format!("maps to JumpCloud username {}", u.username)),
            Err(p) => e
                .scope
                .push(format!("in scope but not synced: {}", p.message)),
        }
        return;
    }
    if let Some((_, _, why)) = scope.excluded.iter().find(|(g, _, _)| *g == o.guid) {
        e.scope.push(format!("not in scope: {why}"));
        if o.is_protected() {
            e.scope.push("the user has adminCount=1".into());
        }
        for g in snap
            .objects()
            .filter(|g| g.kind == ObjectKind::Group && g.is_protected())
        {
            if let Some(p) = path_to(snap, g.guid, o.guid) {
                e.scope.push(format!(
                    "member of the protected group {} [{}]: {}",
                    short_name(g),
                    g.dn,
                    path_text(&p)
                ));
            }
        }
        return;
    }
    if let Some(id) = o.jumpcloud_id() {
        e.scope.push(format!(
            "not imported: marked as JumpCloud-owned (adminDescription forestsync:jc={id}); it was created from JumpCloud"
        ));
    }
    if path.is_none() {
        e.scope.push(format!(
            "not in scope: not a member of the root group {} (directly, through nested groups, or by primary group)",
            d.root_group_dn
        ));
    }
}

/// The shortest membership path `from` (a group) → … → `to`, as display names.
fn path_to(snap: &DomainSnapshot, from: ObjectGuid, to: ObjectGuid) -> Option<Vec<PathStep>> {
    let primary = snap.users_by_primary_group();
    let mut parent: HashMap<ObjectGuid, (ObjectGuid, bool)> = HashMap::new();
    let mut queue = VecDeque::from([from]);
    let mut seen = std::collections::HashSet::from([from]);
    while let Some(g) = queue.pop_front() {
        let Some(group) = snap.get(&g) else { continue };
        if group.kind != ObjectKind::Group {
            continue;
        }
        let by_primary = group
            .rid
            .and_then(|rid| primary.get(&rid))
            .into_iter()
            .flatten()
            .map(|u| (*u, true));
        let direct = group.members.iter().map(|m| (*m, false));
        for (m, via_primary) in direct.chain(by_primary) {
            if seen.insert(m) {
                parent.insert(m, (g, via_primary));
                if m == to {
                    let mut out = Vec::new();
                    let mut at = to;
                    loop {
                        let o = snap.get(&at);
                        out.push(PathStep {
                            name: o
                                .map(|o| short_name(o).to_owned())
                                .unwrap_or_else(|| at.to_string()),
                            dn: o.map(|o| o.dn.clone()).unwrap_or_default(),
                            primary_group: matches!(parent.get(&at), Some((_, true))),
                        });
                        match parent.get(&at) {
                            Some((p, _)) => at = *p,
                            None => break,
                        }
                    }
                    out.reverse();
                    return Some(out);
                }
                if snap.get(&m).is_some_and(|o| o.kind == ObjectKind::Group) {
                    queue.push_back(m);
                }
            }
        }
    }
    None
}

fn short_name(o: &AdObject) -> &str {
    o.first("samaccountname")
        .or_else(|| o.first("name"))
        .unwrap_or(&o.dn)
}

/// `a → b → c (primary group)`.
fn path_text(path: &[PathStep]) -> String {
    path.iter()
        .map(|p| {
            if p.primary_group {
                format!("{} (primary group)", p.name)
            } else {
                p.name.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

fn authority(config: &Config, in_scope: bool, marker_id: Option<&str>) -> Vec<String> {
    match config.mode {
        Mode::AdAuthoritative if in_scope => vec![
            "mode ad-authoritative: AD owns the user; forestsync writes it to JumpCloud".into(),
            "password: from AD (captured on the DCs), never from JumpCloud".into(),
        ],
        Mode::AdAuthoritative => vec![
            "mode ad-authoritative: AD owns the user, but it is out of scope: forestsync does not write it to JumpCloud (a linked JumpCloud user gets the domain's leave-scope action)".into(),
        ],
        Mode::JumpcloudAuthoritative => vec![
            "mode jumpcloud-authoritative: JumpCloud owns the user; forestsync writes it into AD"
                .into(),
            "password: from JumpCloud (set in AD by forestsync)".into(),
        ],
        Mode::TwoWay => {
            let owner = match (marker_id, in_scope) {
                (Some(id), _) => format!(
                    "owner: JumpCloud (created there; the AD object carries forestsync:jc={id}); AD edits are non-owner changes"
                ),
                (None, true) => "owner: AD (in the root group's scope, unmarked); JumpCloud edits are non-owner changes".into(),
                (None, false) => "owner: none here (neither in the root group's scope nor JumpCloud-owned): neither direction writes it".into(),
            };
            vec![
                "mode two-way".into(),
                owner,
                format!(
                    "password authority: the user's JumpCloud attribute {PASSWORD_AUTHORITY_ATTRIBUTE} when set (not held in the store), else the configured default {}",
                    config.two_way.password_authority.name()
                ),
            ]
        }
    }
}

fn last_change(o: &AdObject, watermark_unix: Option<u64>) -> Vec<String> {
    let mut out = Vec::new();
    match watermark_unix {
        Some(0) => {
            out.push("as of the domain's watermark (committed before its time was recorded)".into())
        }
        Some(t) => out.push(format!(
            "the store's copy is current as of the domain's watermark, committed {}",
            utc(t)
        )),
        None => out.push("the domain has no committed watermark".into()),
    }
    if let Some(p) = o.pwd_last_set() {
        out.push(format!("pwdLastSet {p}"));
    }
    for attr in ["usnchanged", "whenchanged"] {
        if let Some(v) = o.first(attr) {
            out.push(format!("{attr} {v}"));
        }
    }
    out
}

fn concerns(op: &Op, anchor: &Anchor) -> bool {
    op.subject() == anchor
        || matches!(op, Op::AddMember { user, .. } | Op::RemoveMember { user, .. } if user == anchor)
}

fn describe(op: &Op, name: &dyn Fn(&Anchor) -> String) -> String {
    match op {
        Op::AddMember { group, .. } => format!("add member to group {}", name(group)),
        Op::RemoveMember { group, .. } => format!("remove member from group {}", name(group)),
        other => other.kind().to_owned(),
    }
}

/// `to_ad/<domain>/<kind>/<id>` → id → kind → value.
fn to_ad_meta(
    store: &Store,
    domain: &str,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, StoreError> {
    let prefix = format!("to_ad/{domain}/");
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (k, v) in store.meta_with_prefix(&prefix)? {
        let Some((kind, id)) = k.strip_prefix(&prefix).and_then(|r| r.split_once('/')) else {
            continue;
        };
        out.entry(id.to_owned())
            .or_default()
            .insert(kind.to_owned(), v);
    }
    Ok(out)
}

fn to_ad_lines(meta: &BTreeMap<String, BTreeMap<String, String>>, id: &str) -> Vec<String> {
    let Some(facts) = meta.get(id) else {
        return vec![];
    };
    facts
        .iter()
        .map(|(kind, v)| match kind.as_str() {
            "error" => format!("not written to AD: {v}"),
            "managed" => format!("created in AD by forestsync at {v}"),
            "base" => format!("last written to AD (two-way base): {v}"),
            "password_written" => format!("last password event written to AD: {v}"),
            "password_rejected" => format!(
                "password AD rejected: {}",
                v.split_once('\t').map(|(_, r)| r).unwrap_or(v)
            ),
            other => format!("{other}: {v}"),
        })
        .collect()
}

fn record_lines(records: &[two_way::Record], id: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.object == id)
        .map(|r| {
            let kind = match r.kind {
                two_way::RecordKind::Conflict => "conflict",
                two_way::RecordKind::NonOwnerChange => "non-owner change",
            };
            format!("{} {kind} {}: {}", utc(r.at_unix), r.what, r.detail)
        })
        .collect()
}

/// The one renderer.
pub fn render(r: &ExplainReport, out: &mut dyn Write) -> Result<(), ExplainError> {
    if r.matches.is_empty() {
        writeln!(
            out,
            "{}: not found in any domain's store (not an AD user forestsync has read, nor a JumpCloud user it linked or wrote into AD)",
            r.query
        )?;
        return Ok(());
    }
    for (i, e) in r.matches.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(
            out,
            "user {} (matched by {}), mode {}",
            r.query, e.matched_by, r.mode
        )?;
        writeln!(out, "  domain: {}", e.domain)?;
        writeln!(out, "  DN: {}", e.dn.as_deref().unwrap_or("unknown"))?;
        writeln!(
            out,
            "  objectGUID: {}",
            e.object_guid.as_deref().unwrap_or("unknown")
        )?;
        if let Some(s) = &e.sam_account_name {
            writeln!(out, "  sAMAccountName: {s}")?;
        }
        if let Some(u) = &e.user_principal_name {
            writeln!(out, "  userPrincipalName: {u}")?;
        }
        writeln!(out, "  in scope: {}", if e.in_scope { "yes" } else { "no" })?;
        if !e.scope_path.is_empty() {
            writeln!(out, "  path: {}", path_text(&e.scope_path))?;
            for step in &e.scope_path {
                writeln!(out, "    {}: {}", step.name, step.dn)?;
            }
        }
        for s in &e.scope {
            writeln!(out, "    {s}")?;
        }
        if let Some(s) = &e.state {
            writeln!(out, "  state: {s}")?;
        }
        writeln!(out, "  authority:")?;
        for a in &e.authority {
            writeln!(out, "    {a}")?;
        }
        writeln!(
            out,
            "  JumpCloud id: {}",
            e.jumpcloud_id.as_deref().unwrap_or("none (not linked)")
        )?;
        section(out, "last applied to JumpCloud", &e.last_applied)?;
        section(out, "JumpCloud groups (as applied)", &e.jumpcloud_groups)?;
        section(out, "last change seen", &e.last_change_seen)?;
        section(out, "pending operations", &e.pending)?;
        section(out, "quarantined operations", &e.quarantined)?;
        section(out, "JumpCloud → AD", &e.to_ad)?;
        section(out, "two-way records", &e.two_way_records)?;
    }
    Ok(())
}

fn section(out: &mut dyn Write, label: &str, lines: &[String]) -> std::io::Result<()> {
    if lines.is_empty() {
        return writeln!(out, "  {label}: none");
    }
    writeln!(out, "  {label}:")?;
    for l in lines {
        writeln!(out, "    {l}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use forestsync_actors::model::{
        AdObject, Anchor, DesiredUser, Link, LinkEffect, ObjectGuid, ObjectKind, Op, Watermark,
    };
    use forestsync_actors::store::Store;

    use super::*;

    const SEC: &str = "-2147483646";

    fn guid(n: u8) -> ObjectGuid {
        ObjectGuid::from_bytes(&[n; 16]).unwrap()
    }

    fn object(
        n: u8,
        kind: ObjectKind,
        cn: &str,
        attrs: &[(&str, &str)],
        members: &[u8],
    ) -> AdObject {
        let mut map: BTreeMap<String, Vec<String>> = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
            .collect();
        map.entry("samaccountname".into())
            .or_insert(vec![cn.into()]);
        AdObject {
            guid: guid(n),
            kind,
            dn: format!("CN={cn},OU=ADI,DC=alpha,DC=test"),
            attrs: map,
            members: members.iter().map(|m| guid(*m)).collect(),
            unresolved_members: BTreeSet::new(),
            rid: Some(1000 + u32::from(n)),
        }
    }

    fn config(dir: &Path, mode: &str) -> Config {
        let text = format!(
            r#"mode = "{mode}"
state_dir = "{state}"
[jumpcloud]
base_url = "https://127.0.0.1:8443"
api_key = "k-123"
[[domain]]
name = "alpha"
dcs = ["ldaps://127.0.0.2"]
bind_dn = "CN=svc,DC=alpha,DC=test"
bind_password = "s3cret-Pw"
base_dn = "DC=alpha,DC=test"
{extra}
"#,
            state = dir.display(),
            extra = if mode == "jumpcloud-authoritative" {
                "ad_instance_id = \"5f0000000000000000000001\"\ntarget_ou = \"OU=JC,DC=alpha,DC=test\""
            } else {
                "root_group_dn = \"CN=Root,OU=ADI,DC=alpha,DC=test\""
            }
        );
        Config::parse(&dir.join("c.toml"), &text).unwrap()
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "forestsync-explain-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Root ⊃ L1 ⊃ L2; `ann` in L1, `pat` in L2 by primary group only, `adm` (adminCount=1) and the
    /// protected group DA (⊃ `dan`) in Root, `jcu` (JumpCloud marker) in Root, `out` nowhere.
    fn world(store: &Store) {
        let user = ObjectKind::User;
        let group = ObjectKind::Group;
        let objects = vec![
            object(1, group, "Root", &[("grouptype", SEC)], &[2, 20, 5, 7]),
            object(2, group, "L1", &[("grouptype", SEC)], &[3, 10]),
            object(3, group, "L2", &[("grouptype", SEC)], &[]),
            object(
                20,
                group,
                "DA",
                &[("grouptype", SEC), ("admincount", "1")],
                &[21],
            ),
            object(
                10,
                user,
                "ann",
                &[
                    ("userprincipalname", "ann@alpha.test"),
                    ("mail", "ann@x.test"),
                    ("givenname", "Ann"),
                    ("sn", "A"),
                ],
                &[],
            ),
            // L2's rid is 1003.
            object(
                11,
                user,
                "pat",
                &[
                    ("primarygroupid", "1003"),
                    ("useraccountcontrol", "546"),
                    ("mail", "pat@x.test"),
                    ("givenname", "Pat"),
                    ("sn", "P"),
                ],
                &[],
            ),
            object(5, user, "adm", &[("admincount", "1")], &[]),
            object(21, user, "dan", &[], &[]),
            object(
                7,
                user,
                "jcu",
                &[("admindescription", "forestsync:jc=jc-777")],
                &[],
            ),
            object(8, user, "out", &[], &[]),
        ];
        let wm = Watermark {
            taken_unix: 1_795_689_075,
            ..Watermark::default()
        };
        let anchor = |n| Anchor {
            domain: "alpha".into(),
            guid: guid(n),
        };
        let ann = DesiredUser {
            anchor: anchor(10),
            username: "ann.jc".into(),
            email: "ann@x.test".into(),
            firstname: "Ann".into(),
            lastname: "A".into(),
            extra: BTreeMap::new(),
            suspended: false,
            external_dn: "CN=ann,OU=ADI,DC=alpha,DC=test".into(),
        };
        let ops = vec![
            Op::CreateUser { user: ann.clone() },
            Op::AddMember {
                group: anchor(2),
                user: anchor(10),
            },
            Op::UpdateUser { user: ann.clone() },
        ];
        let seqs = store
            .commit_batch("alpha", None, &wm, &objects, &[], &ops)
            .unwrap();
        store
            .complete_op(
                seqs[0],
                &LinkEffect::Upsert(Link {
                    anchor: anchor(10),
                    kind: ObjectKind::User,
                    jumpcloud_id: "jc-ann".into(),
                    applied_user: Some(ann),
                    applied_group_name: None,
                    applied_members: BTreeSet::new(),
                }),
            )
            .unwrap();
        store.quarantine_op(seqs[2], "400 email taken").unwrap();
        store
            .set_meta(
                "to_ad/alpha/error/jc-777",
                "AD refused: constraint violation",
            )
            .unwrap();
    }

    #[test]
    fn explains_scope_paths_exclusions_links_and_queues() {
        let dir = temp_dir("x");
        let config = config(&dir, "ad-authoritative");
        let store = Store::open(&dir).unwrap();
        world(&store);
        let one = |q: &str| {
            let r = explain(&config, &store, q).unwrap();
            assert_eq!(r.matches.len(), 1, "{q}: {r:?}");
            r.matches.into_iter().next().unwrap()
        };

        // By sAMAccountName, UPN, JumpCloud username, JumpCloud id and DN: the same user.
        for q in [
            "ann",
            "ANN@alpha.test",
            "ann.jc",
            "jc-ann",
            "cn=ann,ou=adi,dc=alpha,dc=test",
        ] {
            assert_eq!(one(q).object_guid, Some(guid(10).to_string()), "{q}");
        }
        let ann = one("ann");
        assert!(ann.in_scope);
        let names: Vec<_> = ann.scope_path.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Root", "L1", "ann"]);
        assert_eq!(ann.jumpcloud_id.as_deref(), Some("jc-ann"));
        assert!(
            ann.last_applied.contains(&"username ann.jc".to_owned()),
            "{ann:?}"
        );
        assert_eq!(ann.pending.len(), 1, "{ann:?}");
        assert!(ann.pending[0].contains("add member to group L1"), "{ann:?}");
        assert_eq!(ann.quarantined.len(), 1, "{ann:?}");
        assert!(ann.quarantined[0].contains("400 email taken"), "{ann:?}");

        // Primary group membership counts, and is marked; disabled is shown.
        let pat = one("pat");
        assert!(pat.in_scope);
        assert_eq!(pat.scope_path.len(), 4);
        assert!(pat.scope_path[3].primary_group && !pat.scope_path[2].primary_group);
        assert!(pat
            .state
            .as_deref()
            .unwrap_or_default()
            .contains("disabled"));

        let adm = one("adm");
        assert!(!adm.in_scope);
        assert!(
            adm.scope.iter().any(|s| s.contains("privileged")),
            "{adm:?}"
        );

        let dan = one("dan");
        assert!(!dan.in_scope);
        assert!(
            dan.scope.iter().any(|s| s.contains("protected group DA")),
            "{dan:?}"
        );

        let jcu = one("jcu");
        assert!(!jcu.in_scope);
        assert_eq!(jcu.jumpcloud_id.as_deref(), Some("jc-777"));
        assert!(jcu.scope.iter().any(|s| s.contains("JumpCloud")), "{jcu:?}");
        assert!(
            jcu.to_ad.iter().any(|s| s.contains("constraint violation")),
            "{jcu:?}"
        );

        let out = one("out");
        assert!(!out.in_scope && out.scope_path.is_empty());
        assert!(
            out.scope
                .iter()
                .any(|s| s.contains("not a member of the root group")),
            "{out:?}"
        );

        assert!(explain(&config, &store, "nobody")
            .unwrap()
            .matches
            .is_empty());
        assert!(explain(&config, &store, "  ").unwrap().matches.is_empty());
        let mut text = Vec::new();
        render(&explain(&config, &store, "pat").unwrap(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("path: Root → L1 → L2 → pat (primary group)"),
            "{text}"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_jumpcloud_user_written_into_ad_is_explained_from_the_to_ad_meta() {
        let dir = temp_dir("jc");
        let config = config(&dir, "jumpcloud-authoritative");
        let store = Store::open(&dir).unwrap();
        store
            .set_meta("to_ad/alpha/managed/jc-1", "CN=zoe,OU=JC,DC=alpha,DC=test")
            .unwrap();
        store
            .set_meta("to_ad/alpha/password_rejected/jc-1", "4\ttoo short")
            .unwrap();
        for q in ["zoe", "jc-1", "CN=zoe,OU=JC,DC=alpha,DC=test"] {
            let r = explain(&config, &store, q).unwrap();
            assert_eq!(r.matches.len(), 1, "{q}");
            let m = &r.matches[0];
            assert_eq!(m.jumpcloud_id.as_deref(), Some("jc-1"));
            assert!(m.to_ad.iter().any(|s| s.contains("too short")), "{m:?}");
            assert!(
                m.authority.iter().any(|s| s.contains("JumpCloud owns")),
                "{m:?}"
            );
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

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
    /// Root group → … → the user (display names; ` (primary group)` marks primaryGroupID membership).
    pub scope_path: Vec<String>,
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
                    "member of the protected group {} ({})",
                    display(g),
                    p.join(" → ")
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
fn path_to(snap: &DomainSnapshot, from: ObjectGuid, to: ObjectGuid) -> Option<Vec<String>> {
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
                        let mut name = o.map(display).unwrap_or_else(|| at.to_string());
                        if let Some((_, true)) = parent.get(&at) {
                            name.push_str(" (primary group)");
                        }
                        out.push(name);
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

fn display(o: &AdObject) -> String {
    let name = o.first("samaccountname").or_else(|| o.first("name"));
    match name {
        Some(n) => format!("{n} [{}]", o.dn),
        None => o.dn.clone(),
    }
}

fn authority(config: &Config, in_scope: bool, marker_id: Option<&str>) -> Vec<String> {
    match config.mode {
        Mode::AdAuthoritative => vec![
            "mode ad-authoritative: AD owns the user; forestsync writes it to JumpCloud".into(),
            "password: from AD (captured on the DCs), never from JumpCloud".into(),
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
            writeln!(out, "  path: {}", e.scope_path.join(" → "))?;
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

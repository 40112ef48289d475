//! Planning for the JumpCloud → AD direction (jumpcloud-authoritative, and JumpCloud-owned objects in
//! two-way): one JumpCloud user or group + what AD holds for it → the AD writes. Pure: no I/O, no clock.
//!
//! Ownership is explicit and lives in AD itself: every object forestsync creates (or takes over) carries
//! [`MARKER_ATTRIBUTE`] = `forestsync:jc=<JumpCloud id>` (plus `;pw=<seq>` once a JumpCloud password was
//! written, in the same LDAP modify as the password). An AD object without that marker is never
//! modified, renamed, disabled or deleted; a privileged one (adminCount=1, critical system object) is
//! never touched at all, not even taken over.
//!
//! Naming: users are created as `CN=<username>,<target OU>` (usernames are unique in JumpCloud, display
//! names are not), `sAMAccountName` = username, `userPrincipalName` = `username@<upn suffix>`. Groups are
//! `CN=<name>,<target OU>`, global security groups, `sAMAccountName` = name.

use std::collections::{BTreeMap, BTreeSet};

use crate::cloud::{JcGroup, JcProfile};

/// The AD attribute that records which JumpCloud object an AD object is managed for.
pub const MARKER_ATTRIBUTE: &str = "adminDescription";
const MARKER_PREFIX: &str = "forestsync:jc=";

/// userAccountControl flags.
pub const UAC_ACCOUNTDISABLE: u32 = 0x2;
pub const UAC_NORMAL_ACCOUNT: u32 = 0x200;
/// A global security group.
pub const GROUP_TYPE_GLOBAL_SECURITY: i32 = -2147483646;

/// The longest sAMAccountName AD accepts for a user (the pre-Windows 2000 logon name).
const SAM_USER_MAX: usize = 20;
const SAM_GROUP_MAX: usize = 64;
const SAM_FORBIDDEN: &[char] = &[
    '"', '/', '\\', '[', ']', ':', ';', '|', '=', ',', '+', '*', '?', '<', '>', '@',
];

/// The marker value for JumpCloud object `id` (with the last password event written, if any).
pub fn marker_value(id: &str, password_seq: Option<u64>) -> String {
    match password_seq {
        Some(seq) => format!("{MARKER_PREFIX}{id};pw={seq}"),
        None => format!("{MARKER_PREFIX}{id}"),
    }
}

/// The LDAP filter that finds every managed object.
pub fn any_marker_filter() -> String {
    format!("({MARKER_ATTRIBUTE}={MARKER_PREFIX}*)")
}

/// The LDAP filter that finds the object managed for JumpCloud id `id` (ids are hex: no escaping needed).
pub fn marker_filter(id: &str) -> String {
    format!(
        "(|({MARKER_ATTRIBUTE}={MARKER_PREFIX}{}) ({MARKER_ATTRIBUTE}={MARKER_PREFIX}{};pw=*))",
        escape_filter_value(id),
        escape_filter_value(id)
    )
    .replace(") (", ")(")
}

/// What a marker says: the JumpCloud id and the last password event written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub id: String,
    pub password_seq: Option<u64>,
}

pub fn parse_marker(value: &str) -> Option<Marker> {
    let rest = value.strip_prefix(MARKER_PREFIX)?;
    let (id, pw) = match rest.split_once(";pw=") {
        Some((id, seq)) => (id, seq.parse().ok()),
        None => (rest, None),
    };
    (!id.is_empty()).then(|| Marker {
        id: id.to_owned(),
        password_seq: pw,
    })
}

/// RFC 4515 escaping of a filter value.
pub fn escape_filter_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// RFC 4514 escaping of an RDN value.
pub fn escape_rdn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 4);
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// Where removals go and how names are built (from the domain's config).
#[derive(Clone, Debug)]
pub struct ToAdRules {
    pub target_ou: String,
    pub upn_suffix: String,
    /// (JumpCloud field, AD attribute), e.g. ("firstname", "givenName"). `displayname` falls back to
    /// "first last" when JumpCloud has none.
    pub attributes: Vec<(String, String)>,
    pub on_removal: RemovalAction,
    pub adopt_existing: bool,
}

impl ToAdRules {
    /// The standard mapping (first and last name, email, display name) plus `extra` (JumpCloud field →
    /// AD attribute).
    pub fn standard_attributes(
        firstname: &str,
        lastname: &str,
        email: &str,
        extra: &BTreeMap<String, String>,
    ) -> Vec<(String, String)> {
        let mut v = vec![
            ("firstname".to_owned(), firstname.to_owned()),
            ("lastname".to_owned(), lastname.to_owned()),
            ("email".to_owned(), email.to_owned()),
            ("displayname".to_owned(), "displayName".to_owned()),
        ];
        for (jc, ad) in extra {
            if !v.iter().any(|(_, a)| a.eq_ignore_ascii_case(ad)) {
                v.push((jc.clone(), ad.clone()));
            }
        }
        v
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalAction {
    Disable,
    Delete,
    Leave,
}

/// An AD user as the planner needs it (attribute names lower-case, first values only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdUser {
    pub dn: String,
    pub uac: u32,
    pub privileged: bool,
    pub marker: Option<Marker>,
    pub attrs: BTreeMap<String, String>,
}

/// An AD group as the planner needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdGroup {
    pub dn: String,
    pub privileged: bool,
    pub marker: Option<Marker>,
    pub attrs: BTreeMap<String, String>,
    pub members: Vec<String>,
}

/// One attribute write: `None` clears the attribute.
pub type AttrWrite = (String, Option<String>);

/// What to do with one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserPlan {
    Nothing,
    /// Create it with the marker and an unknown random password, enabled when `enable` (one LDAP
    /// add: no half-made account is left behind).
    Create {
        dn: String,
        attrs: Vec<(String, String)>,
        enable: bool,
    },
    /// Bring a managed (or taken-over: `adopt`) user in line. `rename_to` is the new RDN (`CN=…`).
    Update {
        dn: String,
        writes: Vec<AttrWrite>,
        uac: Option<u32>,
        rename_to: Option<String>,
        adopt: bool,
    },
    /// The user left the scope (unbound, deleted in JumpCloud): disable or delete (guarded).
    Remove {
        dn: String,
        action: RemovalAction,
    },
    /// Not synced, with the reason (recorded on the user; the rest goes on).
    Refuse {
        reason: String,
    },
}

impl UserPlan {
    pub fn is_removal(&self) -> bool {
        matches!(self, UserPlan::Remove { .. })
    }
}

/// What to do with one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupPlan {
    Nothing,
    Create {
        dn: String,
        attrs: Vec<(String, String)>,
        members: Vec<String>,
    },
    Update {
        dn: String,
        writes: Vec<AttrWrite>,
        rename_to: Option<String>,
        add: Vec<String>,
        remove: Vec<String>,
        adopt: bool,
    },
    /// Delete it, or (`Disable`) empty it.
    Remove {
        dn: String,
        action: RemovalAction,
        members: Vec<String>,
    },
    Refuse {
        reason: String,
    },
}

impl GroupPlan {
    pub fn is_removal(&self) -> bool {
        matches!(self, GroupPlan::Remove { .. })
    }
}

fn user_sam_problem(username: &str) -> Option<String> {
    if username.chars().count() > SAM_USER_MAX {
        return Some(format!(
            "username {username:?} is longer than {SAM_USER_MAX} characters, the limit of AD's sAMAccountName; fix: shorten it in JumpCloud"
        ));
    }
    if let Some(c) = username
        .chars()
        .find(|c| SAM_FORBIDDEN.contains(c) || c.is_control())
    {
        return Some(format!(
            "username {username:?} contains {c:?}, which AD does not allow in sAMAccountName; fix: rename it in JumpCloud"
        ));
    }
    if username.ends_with('.') {
        return Some(format!(
            "username {username:?} ends with a dot, which AD does not allow in sAMAccountName"
        ));
    }
    None
}

/// The AD attribute values JumpCloud wants for `p` (empty values are absent).
pub fn desired_user_attributes(p: &JcProfile, rules: &ToAdRules) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (jc, ad) in &rules.attributes {
        let value = match jc.as_str() {
            "firstname" => p.firstname.clone(),
            "lastname" => p.lastname.clone(),
            "email" => p.email.clone(),
            "displayname" if p.displayname.is_empty() => {
                format!("{} {}", p.firstname, p.lastname).trim().to_owned()
            }
            "displayname" => p.displayname.clone(),
            other => p.field(other).to_owned(),
        };
        if !value.trim().is_empty() {
            out.insert(ad.to_lowercase(), value);
        }
    }
    out.insert("samaccountname".into(), p.username.clone());
    out.insert(
        "userprincipalname".into(),
        format!("{}@{}", p.username, rules.upn_suffix),
    );
    out
}

/// The AD spelling of a lower-cased attribute name from `rules` (LDAP names are case-insensitive; AD
/// stores what it was given on create, so use the configured spelling).
fn spelled<'a>(rules: &'a ToAdRules, lower: &'a str) -> &'a str {
    match lower {
        "samaccountname" => "sAMAccountName",
        "userprincipalname" => "userPrincipalName",
        _ => rules
            .attributes
            .iter()
            .find(|(_, a)| a.eq_ignore_ascii_case(lower))
            .map(|(_, a)| a.as_str())
            .unwrap_or(lower),
    }
}

fn wants_enabled(p: &JcProfile) -> bool {
    p.state == "ACTIVATED"
}

/// Plans one JumpCloud user against AD.
///
/// - `jc`: the JumpCloud user (`None`: deleted) and whether it is bound to this AD instance.
/// - `managed`: the AD user carrying this id's marker, if any.
/// - `same_name`: an AD user with the same sAMAccountName and no marker for this id (only looked up
///   when `managed` is `None`).
pub fn plan_user(
    jc: Option<(&JcProfile, bool)>,
    managed: Option<&AdUser>,
    same_name: Option<&AdUser>,
    rules: &ToAdRules,
) -> UserPlan {
    let in_scope = jc.filter(|(_, bound)| *bound).map(|(p, _)| p);
    match (in_scope, managed) {
        (None, None) => UserPlan::Nothing,
        (None, Some(ad)) => {
            if ad.privileged {
                return UserPlan::Refuse {
                    reason: format!(
                        "{} is privileged (adminCount=1): never disabled or deleted by forestsync",
                        ad.dn
                    ),
                };
            }
            let disabled = ad.uac & UAC_ACCOUNTDISABLE != 0;
            match rules.on_removal {
                RemovalAction::Leave => UserPlan::Nothing,
                RemovalAction::Disable if disabled => UserPlan::Nothing,
                action => UserPlan::Remove {
                    dn: ad.dn.clone(),
                    action,
                },
            }
        }
        (Some(p), Some(ad)) => update_user(p, ad, rules, false),
        (Some(p), None) => {
            if let Some(problem) = user_sam_problem(&p.username) {
                return UserPlan::Refuse { reason: problem };
            }
            if p.firstname.trim().is_empty() || p.lastname.trim().is_empty() {
                return UserPlan::Refuse {
                    reason: format!("JumpCloud user {} ({}) has no first or last name; fix: fill both in JumpCloud", p.username, p.id),
                };
            }
            if let Some(other) =
                same_name.filter(|o| !o.privileged && marks(o.marker.as_ref(), &p.id))
            {
                // Ours already (the index came from a DC that did not have it yet).
                return update_user(p, other, rules, false);
            }
            if let Some(other) = same_name {
                if other.privileged {
                    return UserPlan::Refuse {
                        reason: format!(
                            "AD account {} has the same name and is privileged (adminCount=1 or a critical system object): forestsync never manages privileged accounts",
                            other.dn
                        ),
                    };
                }
                if let Some(m) = &other.marker {
                    return UserPlan::Refuse {
                        reason: format!(
                            "AD account {} with the same name is managed for another JumpCloud user ({})",
                            other.dn, m.id
                        ),
                    };
                }
                if !rules.adopt_existing {
                    return UserPlan::Refuse {
                        reason: format!(
                            "AD account {} already has sAMAccountName {:?} and was not created by forestsync; fix: rename one of them, or set adopt_existing = true to take it over",
                            other.dn, p.username
                        ),
                    };
                }
                return update_user(p, other, rules, true);
            }
            let mut attrs: Vec<(String, String)> = desired_user_attributes(p, rules)
                .into_iter()
                .map(|(k, v)| (spelled(rules, &k).to_owned(), v))
                .collect();
            attrs.push((MARKER_ATTRIBUTE.to_owned(), marker_value(&p.id, None)));
            UserPlan::Create {
                dn: format!("CN={},{}", escape_rdn_value(&p.username), rules.target_ou),
                attrs,
                enable: wants_enabled(p),
            }
        }
    }
}

fn update_user(p: &JcProfile, ad: &AdUser, rules: &ToAdRules, adopt: bool) -> UserPlan {
    if ad.privileged {
        return UserPlan::Refuse {
            reason: format!(
                "{} is privileged (adminCount=1): never modified by forestsync",
                ad.dn
            ),
        };
    }
    if let Some(problem) = user_sam_problem(&p.username) {
        return UserPlan::Refuse { reason: problem };
    }
    let desired = desired_user_attributes(p, rules);
    let mut writes: Vec<AttrWrite> = Vec::new();
    for (attr, value) in &desired {
        if ad.attrs.get(attr) != Some(value) {
            writes.push((spelled(rules, attr).to_owned(), Some(value.clone())));
        }
    }
    // Mapped attributes JumpCloud has emptied are cleared (never the naming attributes).
    for (_, ad_attr) in &rules.attributes {
        let lower = ad_attr.to_lowercase();
        if !desired.contains_key(&lower) && ad.attrs.contains_key(&lower) {
            writes.push((ad_attr.clone(), None));
        }
    }
    if adopt {
        writes.push((MARKER_ATTRIBUTE.to_owned(), Some(marker_value(&p.id, None))));
    }
    let enabled = ad.uac & UAC_ACCOUNTDISABLE == 0;
    let uac = match (wants_enabled(p), enabled) {
        (true, false) => Some(ad.uac & !UAC_ACCOUNTDISABLE),
        (false, true) => Some(ad.uac | UAC_ACCOUNTDISABLE),
        _ => None,
    };
    let rdn = format!("CN={}", escape_rdn_value(&p.username));
    let current_rdn = ad.dn.split(',').next().unwrap_or_default();
    let rename_to = (!rdn_eq(current_rdn, &rdn)).then_some(rdn);
    if writes.is_empty() && uac.is_none() && rename_to.is_none() {
        return UserPlan::Nothing;
    }
    UserPlan::Update {
        dn: ad.dn.clone(),
        writes,
        uac,
        rename_to,
        adopt,
    }
}

fn marks(marker: Option<&Marker>, id: &str) -> bool {
    marker.is_some_and(|m| m.id == id)
}

fn rdn_eq(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

fn group_name_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        return Some("the JumpCloud group has no name".into());
    }
    if name.chars().count() > SAM_GROUP_MAX {
        return Some(format!(
            "group name {name:?} is longer than {SAM_GROUP_MAX} characters; fix: shorten it in JumpCloud"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| SAM_FORBIDDEN.contains(c) || c.is_control())
    {
        return Some(format!(
            "group name {name:?} contains {c:?}, which AD does not allow in sAMAccountName; fix: rename it in JumpCloud"
        ));
    }
    None
}

/// Plans one JumpCloud group against AD. `members` are the DNs of the managed AD users for the group's
/// JumpCloud members (members forestsync does not manage are not JumpCloud's to keep: membership is
/// kept equal to JumpCloud's).
pub fn plan_group(
    jc: Option<(&JcGroup, bool)>,
    members: &[String],
    managed: Option<&AdGroup>,
    same_name: Option<&AdGroup>,
    rules: &ToAdRules,
) -> GroupPlan {
    let in_scope = jc.filter(|(_, bound)| *bound).map(|(g, _)| g);
    match (in_scope, managed) {
        (None, None) => GroupPlan::Nothing,
        (None, Some(ad)) => {
            if ad.privileged {
                return GroupPlan::Refuse {
                    reason: format!("{} is privileged: never changed by forestsync", ad.dn),
                };
            }
            match rules.on_removal {
                RemovalAction::Leave => GroupPlan::Nothing,
                RemovalAction::Disable if ad.members.is_empty() => GroupPlan::Nothing,
                action => GroupPlan::Remove {
                    dn: ad.dn.clone(),
                    action,
                    members: ad.members.clone(),
                },
            }
        }
        (Some(g), Some(ad)) => update_group(g, members, ad, false),
        (Some(g), None) => {
            if let Some(problem) = group_name_problem(&g.name) {
                return GroupPlan::Refuse { reason: problem };
            }
            if let Some(other) =
                same_name.filter(|o| !o.privileged && marks(o.marker.as_ref(), &g.id))
            {
                // Ours already (the index came from a DC that did not have it yet).
                return update_group(g, members, other, false);
            }
            if let Some(other) = same_name {
                if other.privileged {
                    return GroupPlan::Refuse {
                        reason: format!("AD group {} has the same name and is privileged (a protected group): never managed by forestsync", other.dn),
                    };
                }
                if other.marker.is_some() || !rules.adopt_existing {
                    return GroupPlan::Refuse {
                        reason: format!(
                            "AD group {} already has the name {:?} and is not managed for this JumpCloud group; fix: rename one of them, or set adopt_existing = true",
                            other.dn, g.name
                        ),
                    };
                }
                return update_group(g, members, other, true);
            }
            let mut attrs = vec![
                ("objectClass".to_owned(), "group".to_owned()),
                ("sAMAccountName".to_owned(), g.name.clone()),
                (
                    "groupType".to_owned(),
                    GROUP_TYPE_GLOBAL_SECURITY.to_string(),
                ),
                (MARKER_ATTRIBUTE.to_owned(), marker_value(&g.id, None)),
            ];
            if !g.description.trim().is_empty() {
                attrs.push(("description".to_owned(), g.description.clone()));
            }
            GroupPlan::Create {
                dn: format!("CN={},{}", escape_rdn_value(&g.name), rules.target_ou),
                attrs,
                members: dedup_dns(members),
            }
        }
    }
}

fn update_group(g: &JcGroup, members: &[String], ad: &AdGroup, adopt: bool) -> GroupPlan {
    if ad.privileged {
        return GroupPlan::Refuse {
            reason: format!("{} is privileged: never changed by forestsync", ad.dn),
        };
    }
    if let Some(problem) = group_name_problem(&g.name) {
        return GroupPlan::Refuse { reason: problem };
    }
    let mut writes: Vec<AttrWrite> = Vec::new();
    if ad.attrs.get("samaccountname") != Some(&g.name) {
        writes.push(("sAMAccountName".into(), Some(g.name.clone())));
    }
    let description = g.description.trim();
    match (ad.attrs.get("description"), description.is_empty()) {
        (Some(d), false) if d == description => {}
        (None, true) => {}
        (_, false) => writes.push(("description".into(), Some(description.to_owned()))),
        (Some(_), true) => writes.push(("description".into(), None)),
    }
    if adopt {
        writes.push((MARKER_ATTRIBUTE.to_owned(), Some(marker_value(&g.id, None))));
    }
    let rdn = format!("CN={}", escape_rdn_value(&g.name));
    let current_rdn = ad.dn.split(',').next().unwrap_or_default();
    let rename_to = (!rdn_eq(current_rdn, &rdn)).then_some(rdn);
    let want: BTreeSet<String> = members.iter().map(|m| m.to_lowercase()).collect();
    let have: BTreeSet<String> = ad.members.iter().map(|m| m.to_lowercase()).collect();
    let add: Vec<String> = dedup_dns(members)
        .into_iter()
        .filter(|m| !have.contains(&m.to_lowercase()))
        .collect();
    let remove: Vec<String> = ad
        .members
        .iter()
        .filter(|m| !want.contains(&m.to_lowercase()))
        .cloned()
        .collect();
    if writes.is_empty() && rename_to.is_none() && add.is_empty() && remove.is_empty() {
        return GroupPlan::Nothing;
    }
    GroupPlan::Update {
        dn: ad.dn.clone(),
        writes,
        rename_to,
        add,
        remove,
        adopt,
    }
}

fn dedup_dns(dns: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    dns.iter()
        .filter(|d| seen.insert(d.to_lowercase()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    fn rules() -> ToAdRules {
        ToAdRules {
            target_ou: "OU=FS,DC=a,DC=test".into(),
            upn_suffix: "a.test".into(),
            attributes: ToAdRules::standard_attributes(
                "givenName",
                "sn",
                "mail",
                &[("jobTitle".to_owned(), "title".to_owned())]
                    .into_iter()
                    .collect(),
            ),
            on_removal: RemovalAction::Disable,
            adopt_existing: false,
        }
    }

    fn profile(id: &str, username: &str, state: &str) -> JcProfile {
        let mut fields = Map::new();
        fields.insert("jobTitle".into(), Value::String("Ops".into()));
        JcProfile {
            id: id.into(),
            username: username.into(),
            email: format!("{username}@x.test"),
            firstname: "Jane".into(),
            lastname: "Doe".into(),
            displayname: String::new(),
            state: state.into(),
            fields,
        }
    }

    fn ad_user_for(p: &JcProfile, r: &ToAdRules, uac: u32) -> AdUser {
        AdUser {
            dn: format!("CN={},{}", p.username, r.target_ou),
            uac,
            privileged: false,
            marker: Some(Marker {
                id: p.id.clone(),
                password_seq: None,
            }),
            attrs: desired_user_attributes(p, r),
        }
    }

    #[test]
    fn a_new_bound_user_is_created_disabled_then_enabled_with_marker_and_upn() {
        let r = rules();
        let p = profile("a1", "jdoe", "ACTIVATED");
        let UserPlan::Create { dn, attrs, enable } = plan_user(Some((&p, true)), None, None, &r)
        else {
            panic!("expected a create")
        };
        assert_eq!(dn, "CN=jdoe,OU=FS,DC=a,DC=test");
        assert!(enable);
        let get = |k: &str| attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        assert_eq!(get("userPrincipalName"), Some("jdoe@a.test"));
        assert_eq!(get("displayName"), Some("Jane Doe"));
        assert_eq!(get("title"), Some("Ops"));
        assert_eq!(get(MARKER_ATTRIBUTE), Some("forestsync:jc=a1"));
        let staged = profile("a2", "staged", "STAGED");
        assert!(matches!(
            plan_user(Some((&staged, true)), None, None, &r),
            UserPlan::Create { enable: false, .. }
        ));
    }

    #[test]
    fn unbound_users_and_users_without_names_are_not_created() {
        let r = rules();
        let p = profile("a1", "jdoe", "ACTIVATED");
        assert_eq!(
            plan_user(Some((&p, false)), None, None, &r),
            UserPlan::Nothing
        );
        let mut nameless = p.clone();
        nameless.lastname.clear();
        assert!(matches!(
            plan_user(Some((&nameless, true)), None, None, &r),
            UserPlan::Refuse { .. }
        ));
        let long = profile("a3", "a-very-long-username-x", "ACTIVATED");
        assert!(matches!(
            plan_user(Some((&long, true)), None, None, &r),
            UserPlan::Refuse { reason } if reason.contains("20 characters")
        ));
    }

    #[test]
    fn a_managed_user_in_line_needs_nothing_and_drift_is_corrected() {
        let r = rules();
        let p = profile("a1", "jdoe", "ACTIVATED");
        let ad = ad_user_for(&p, &r, UAC_NORMAL_ACCOUNT);
        assert_eq!(
            plan_user(Some((&p, true)), Some(&ad), None, &r),
            UserPlan::Nothing
        );
        let mut changed = p.clone();
        changed.lastname = "Smith".into();
        changed.state = "SUSPENDED".into();
        changed.fields.remove("jobTitle");
        let UserPlan::Update {
            writes,
            uac,
            rename_to,
            ..
        } = plan_user(Some((&changed, true)), Some(&ad), None, &r)
        else {
            panic!()
        };
        assert!(writes.contains(&("sn".into(), Some("Smith".into()))));
        assert!(writes.contains(&("displayName".into(), Some("Jane Smith".into()))));
        assert!(writes.contains(&("title".into(), None)), "{writes:?}");
        assert_eq!(uac, Some(UAC_NORMAL_ACCOUNT | UAC_ACCOUNTDISABLE));
        assert_eq!(rename_to, None);
        let mut renamed = p.clone();
        renamed.username = "jsmith".into();
        let UserPlan::Update {
            writes, rename_to, ..
        } = plan_user(Some((&renamed, true)), Some(&ad), None, &r)
        else {
            panic!()
        };
        assert_eq!(rename_to.as_deref(), Some("CN=jsmith"));
        assert!(writes.contains(&("sAMAccountName".into(), Some("jsmith".into()))));
        assert!(writes.contains(&("userPrincipalName".into(), Some("jsmith@a.test".into()))));
    }

    #[test]
    fn leaving_scope_follows_the_removal_action_and_spares_privileged_accounts() {
        let mut r = rules();
        let p = profile("a1", "jdoe", "ACTIVATED");
        let ad = ad_user_for(&p, &r, UAC_NORMAL_ACCOUNT);
        for (bound, jc) in [(false, Some((&p, false))), (true, None)] {
            let _ = bound;
            assert_eq!(
                plan_user(jc, Some(&ad), None, &r),
                UserPlan::Remove {
                    dn: ad.dn.clone(),
                    action: RemovalAction::Disable
                }
            );
        }
        let disabled = ad_user_for(&p, &r, UAC_NORMAL_ACCOUNT | UAC_ACCOUNTDISABLE);
        assert_eq!(
            plan_user(None, Some(&disabled), None, &r),
            UserPlan::Nothing
        );
        r.on_removal = RemovalAction::Leave;
        assert_eq!(plan_user(None, Some(&ad), None, &r), UserPlan::Nothing);
        r.on_removal = RemovalAction::Delete;
        assert!(plan_user(None, Some(&disabled), None, &r).is_removal());
        let mut privileged = ad.clone();
        privileged.privileged = true;
        assert!(matches!(
            plan_user(None, Some(&privileged), None, &r),
            UserPlan::Refuse { .. }
        ));
    }

    #[test]
    fn same_name_accounts_are_reported_or_adopted_never_privileged_ones() {
        let mut r = rules();
        let p = profile("a1", "admin2", "ACTIVATED");
        let other = AdUser {
            dn: "CN=admin2,CN=Users,DC=a,DC=test".into(),
            uac: UAC_NORMAL_ACCOUNT,
            privileged: false,
            marker: None,
            attrs: BTreeMap::new(),
        };
        assert!(matches!(
            plan_user(Some((&p, true)), None, Some(&other), &r),
            UserPlan::Refuse { reason } if reason.contains("adopt_existing")
        ));
        r.adopt_existing = true;
        let UserPlan::Update { adopt, writes, .. } =
            plan_user(Some((&p, true)), None, Some(&other), &r)
        else {
            panic!()
        };
        assert!(adopt);
        assert!(writes.contains(&(MARKER_ATTRIBUTE.into(), Some("forestsync:jc=a1".into()))));
        let privileged = AdUser {
            privileged: true,
            ..other
        };
        assert!(matches!(
            plan_user(Some((&p, true)), None, Some(&privileged), &r),
            UserPlan::Refuse { reason } if reason.contains("privileged")
        ));
    }

    #[test]
    fn a_same_name_object_carrying_our_own_marker_is_ours_not_a_stranger() {
        let r = rules();
        let p = profile("a1", "jdoe", "ACTIVATED");
        let ours = ad_user_for(&p, &r, UAC_NORMAL_ACCOUNT);
        assert_eq!(
            plan_user(Some((&p, true)), None, Some(&ours), &r),
            UserPlan::Nothing
        );
        let g = group("g1", "Sales");
        let ad = AdGroup {
            dn: "CN=Sales,OU=FS,DC=a,DC=test".into(),
            privileged: false,
            marker: parse_marker("forestsync:jc=g1"),
            attrs: [
                ("samaccountname".to_owned(), "Sales".to_owned()),
                ("description".to_owned(), "d".to_owned()),
            ]
            .into_iter()
            .collect(),
            members: vec![],
        };
        assert_eq!(
            plan_group(Some((&g, true)), &[], None, Some(&ad), &r),
            GroupPlan::Nothing
        );
    }

    fn group(id: &str, name: &str) -> JcGroup {
        JcGroup {
            id: id.into(),
            name: name.into(),
            description: "d".into(),
            anchor: None,
            membership_method: None,
            writable: Map::new(),
        }
    }

    #[test]
    fn groups_are_created_renamed_and_kept_equal() {
        let r = rules();
        let g = group("g1", "Sales");
        let members = vec![
            "CN=a,OU=FS,DC=a,DC=test".to_owned(),
            "cn=A,ou=fs,dc=a,dc=test".to_owned(),
        ];
        let GroupPlan::Create {
            dn,
            members: m,
            attrs,
        } = plan_group(Some((&g, true)), &members, None, None, &r)
        else {
            panic!()
        };
        assert_eq!(dn, "CN=Sales,OU=FS,DC=a,DC=test");
        assert_eq!(m.len(), 1, "case-insensitive duplicates collapse");
        assert!(attrs.contains(&("groupType".into(), "-2147483646".into())));
        let ad = AdGroup {
            dn: dn.clone(),
            privileged: false,
            marker: parse_marker("forestsync:jc=g1"),
            attrs: [
                ("samaccountname".to_owned(), "Sales".to_owned()),
                ("description".to_owned(), "d".to_owned()),
            ]
            .into_iter()
            .collect(),
            members: vec!["CN=b,OU=FS,DC=a,DC=test".into()],
        };
        let mut renamed = g.clone();
        renamed.name = "Sales EU".into();
        let GroupPlan::Update {
            rename_to,
            add,
            remove,
            writes,
            ..
        } = plan_group(Some((&renamed, true)), &members, Some(&ad), None, &r)
        else {
            panic!()
        };
        assert_eq!(rename_to.as_deref(), Some("CN=Sales EU"));
        assert_eq!(
            writes,
            vec![("sAMAccountName".into(), Some("Sales EU".into()))]
        );
        assert_eq!(add, vec!["CN=a,OU=FS,DC=a,DC=test".to_owned()]);
        assert_eq!(remove, vec!["CN=b,OU=FS,DC=a,DC=test".to_owned()]);
        assert!(matches!(
            plan_group(None, &[], Some(&ad), None, &r),
            GroupPlan::Remove {
                action: RemovalAction::Disable,
                ..
            }
        ));
    }

    #[test]
    fn markers_and_escaping_round_trip() {
        assert_eq!(
            parse_marker(&marker_value("abc", Some(42))),
            Some(Marker {
                id: "abc".into(),
                password_seq: Some(42)
            })
        );
        assert_eq!(parse_marker("something else"), None);
        assert_eq!(escape_rdn_value("a,b"), "a\\,b");
        assert_eq!(escape_rdn_value(" #x "), "\\ #x\\ ");
        assert_eq!(escape_filter_value("a*(b)"), "a\\2a\\28b\\29");
        assert_eq!(
            marker_filter("ab12"),
            "(|(adminDescription=forestsync:jc=ab12)(adminDescription=forestsync:jc=ab12;pw=*))"
        );
        let _ = json!(null);
    }
}

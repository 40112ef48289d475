//! AD object → the JumpCloud user or group forestsync wants. Pure; a missing required attribute is a
//! per-object problem, never a reason to stop the batch.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{AdObject, Anchor, DesiredGroup, DesiredUser};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsernameFrom {
    SamAccountName,
    /// The part of userPrincipalName before the `@`.
    UserPrincipalName,
}

#[derive(Clone, Debug)]
pub struct MappingRules {
    pub username: UsernameFrom,
    pub firstname: String,
    pub lastname: String,
    pub email: String,
    /// JumpCloud field → AD attribute.
    pub extra: BTreeMap<String, String>,
}

impl Default for MappingRules {
    fn default() -> Self {
        MappingRules {
            username: UsernameFrom::SamAccountName,
            firstname: "givenName".into(),
            lastname: "sn".into(),
            email: "mail".into(),
            extra: BTreeMap::new(),
        }
    }
}

impl MappingRules {
    /// Every AD attribute the mapping reads (DirSync only reports changes to requested attributes).
    pub fn ad_attributes(&self) -> Vec<String> {
        let mut attrs: Vec<String> = [&self.firstname, &self.lastname, &self.email]
            .into_iter()
            .chain(self.extra.values())
            .map(|a| a.to_lowercase())
            .collect();
        attrs.sort();
        attrs.dedup();
        attrs
    }
}

/// The longest value JumpCloud accepts in a user's profile fields (`systemuserputpost`: 1024
/// characters), and the fields with a lower limit.
pub const JUMPCLOUD_FIELD_MAX: usize = 1024;
const JUMPCLOUD_FIELD_LIMITS: &[(&str, usize)] = &[("employeeIdentifier", 256)];

fn field_limit(field: &str) -> usize {
    JUMPCLOUD_FIELD_LIMITS
        .iter()
        .find(|(f, _)| *f == field)
        .map_or(JUMPCLOUD_FIELD_MAX, |(_, n)| *n)
}

/// A per-object problem: reported with the object's DN, the object is skipped, others proceed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub anchor: Anchor,
    pub dn: String,
    pub message: String,
}

pub fn desired_user(
    domain: &str,
    user: &AdObject,
    rules: &MappingRules,
) -> Result<DesiredUser, Problem> {
    let anchor = Anchor {
        domain: domain.into(),
        guid: user.guid,
    };
    let problem = |message: String| Problem {
        anchor: anchor.clone(),
        dn: user.dn.clone(),
        message,
    };
    let get = |attr: &str| {
        user.first(&attr.to_lowercase())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let username = match rules.username {
        UsernameFrom::SamAccountName => get("sAMAccountName"),
        UsernameFrom::UserPrincipalName => {
            get("userPrincipalName").and_then(|upn| upn.split('@').next().map(str::to_owned))
        }
    };
    let mut missing = Vec::new();
    let mut need = |value: Option<String>, what: &str, attr: &str| {
        if value.is_none() {
            missing.push(format!("{what} ({attr})"));
        }
        value.unwrap_or_default()
    };
    let source = match rules.username {
        UsernameFrom::SamAccountName => "sAMAccountName",
        UsernameFrom::UserPrincipalName => "userPrincipalName",
    };
    let username = need(username, "username", source);
    let firstname = need(get(&rules.firstname), "first name", &rules.firstname);
    let lastname = need(get(&rules.lastname), "last name", &rules.lastname);
    let email = need(get(&rules.email), "email", &rules.email);
    if !missing.is_empty() {
        return Err(problem(format!(
            "not synced: missing {}; JumpCloud requires first name, last name, username and email — fill them in AD",
            missing.join(", ")
        )));
    }
    let extra: BTreeMap<String, String> = rules
        .extra
        .iter()
        .filter_map(|(field, attr)| get(attr).map(|v| (field.clone(), v)))
        .collect();
    // JumpCloud refuses over-long values (400 for the whole user): say which one, and the fix.
    let too_long: Vec<String> = [
        ("username", source, &username),
        ("firstname", rules.firstname.as_str(), &firstname),
        ("lastname", rules.lastname.as_str(), &lastname),
        ("email", rules.email.as_str(), &email),
    ]
    .into_iter()
    .chain(
        extra
            .iter()
            .map(|(field, v)| (field.as_str(), rules.extra[field].as_str(), v)),
    )
    .filter_map(|(field, attr, v)| {
        let (n, max) = (v.chars().count(), field_limit(field));
        (n > max).then(|| format!("{field} ({attr}) has {n} characters, JumpCloud accepts {max}"))
    })
    .collect();
    if !too_long.is_empty() {
        return Err(problem(format!(
            "not synced: {}; fix: shorten it in AD",
            too_long.join(", ")
        )));
    }
    Ok(DesiredUser {
        anchor,
        username: username.to_lowercase(),
        email,
        firstname,
        lastname,
        extra,
        suspended: user.is_disabled(),
        external_dn: user.dn.clone(),
    })
}

pub fn desired_group(
    domain: &str,
    group: &AdObject,
    members: BTreeSet<Anchor>,
) -> Result<DesiredGroup, Problem> {
    let anchor = Anchor {
        domain: domain.into(),
        guid: group.guid,
    };
    let name = group
        .first("samaccountname")
        .or_else(|| group.first("name"))
        .map(str::to_owned)
        .ok_or_else(|| Problem {
            anchor: anchor.clone(),
            dn: group.dn.clone(),
            message: "not synced: the group has no sAMAccountName or name".into(),
        })?;
    Ok(DesiredGroup {
        anchor,
        name,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectGuid, ObjectKind};

    fn obj(attrs: &[(&str, &str)]) -> AdObject {
        AdObject {
            guid: ObjectGuid([7; 16]),
            kind: ObjectKind::User,
            dn: "CN=José Müller,OU=ADI,DC=alpha,DC=test".into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
            members: Default::default(),
            unresolved_members: Default::default(),
            rid: None,
        }
    }

    #[test]
    fn maps_names_unicode_state_and_extras() {
        let rules = MappingRules {
            extra: BTreeMap::from([("jobTitle".into(), "title".into())]),
            ..Default::default()
        };
        let u = desired_user(
            "alpha",
            &obj(&[
                ("samaccountname", "JMueller"),
                ("givenname", "José"),
                ("sn", "Müller"),
                ("mail", "jose@alpha.test"),
                ("title", "Engineer"),
                ("useraccountcontrol", "514"),
            ]),
            &rules,
        )
        .unwrap();
        assert_eq!(
            (
                u.username.as_str(),
                u.firstname.as_str(),
                u.lastname.as_str()
            ),
            ("jmueller", "José", "Müller")
        );
        assert!(u.suspended);
        assert_eq!(u.extra["jobTitle"], "Engineer");
        assert_eq!(u.external_dn, "CN=José Müller,OU=ADI,DC=alpha,DC=test");
    }

    #[test]
    fn a_missing_last_name_is_a_problem_naming_the_attribute() {
        let p = desired_user(
            "alpha",
            &obj(&[("samaccountname", "x"), ("givenname", "X"), ("mail", "x@a")]),
            &MappingRules::default(),
        )
        .unwrap_err();
        assert!(p.message.contains("last name (sn)"), "{}", p.message);
        assert!(p.dn.starts_with("CN=José"));
    }

    #[test]
    fn an_over_long_value_is_a_problem_naming_the_field_and_attribute() {
        let rules = MappingRules {
            extra: BTreeMap::from([
                ("description".into(), "description".into()),
                ("employeeIdentifier".into(), "employeeID".into()),
            ]),
            ..Default::default()
        };
        let at_limit = "é".repeat(1024);
        let base = [
            ("samaccountname", "x"),
            ("givenname", "X"),
            ("sn", "Y"),
            ("mail", "x@a"),
        ];
        let mut attrs = base.to_vec();
        attrs.push(("description", &at_limit));
        let u = desired_user("alpha", &obj(&attrs), &rules).unwrap();
        assert_eq!(u.extra["description"].chars().count(), 1024);

        let over = "é".repeat(1025);
        let id = "1".repeat(257);
        for (attr, value, says) in [
            (
                "description",
                over.as_str(),
                "description (description) has 1025 characters",
            ),
            (
                "givenname",
                over.as_str(),
                "firstname (givenName) has 1025 characters",
            ),
            (
                "employeeid",
                id.as_str(),
                "employeeIdentifier (employeeID) has 257 characters, JumpCloud accepts 256",
            ),
        ] {
            let mut attrs: Vec<(&str, &str)> =
                base.iter().copied().filter(|(k, _)| *k != attr).collect();
            attrs.push((attr, value));
            let p = desired_user("alpha", &obj(&attrs), &rules).unwrap_err();
            assert!(
                p.message.contains(says) && p.message.contains("fix:"),
                "{}",
                p.message
            );
            assert!(!p.message.contains(&over[..20]), "the value is not quoted");
        }
    }

    #[test]
    fn username_from_upn_takes_the_local_part() {
        let rules = MappingRules {
            username: UsernameFrom::UserPrincipalName,
            ..Default::default()
        };
        let u = desired_user(
            "alpha",
            &obj(&[
                ("userprincipalname", "Yamada@alpha.test"),
                ("givenname", "太郎"),
                ("sn", "山田"),
                ("mail", "t@a"),
            ]),
            &rules,
        )
        .unwrap();
        assert_eq!(u.username, "yamada");
        assert_eq!(u.lastname, "山田");
    }
}

//! v1 `/api/systemusers`: look-ups, listing, create, partial update, state, delete, password.
//!
//! forestsync marks every user it creates or takes over with the custom attribute
//! [`ANCHOR_ATTRIBUTE`] = the AD anchor (`domain/objectGUID`): a back-link that lets an interrupted
//! create be recognised (and adopted) instead of duplicated.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::wire::seg;
use super::{CloudClient, CloudError};
use crate::model::DesiredUser;
use crate::secret::Secret;

/// Name of the custom user attribute holding the AD anchor forestsync manages the user for.
pub const ANCHOR_ATTRIBUTE: &str = "forestsync_anchor";
/// `external_source_type` written on managed users.
pub const EXTERNAL_SOURCE_TYPE: &str = "ActiveDirectory";
/// The page size used for every list (JumpCloud's documented maximum).
pub const PAGE_LIMIT: usize = 100;

/// v1 projection: what forestsync reads of a user.
const USER_FIELDS: &str = "_id username email state suspended external_dn attributes";

/// Keys of `DesiredUser::extra` that would overwrite a field forestsync sets itself (or one that is
/// not a plain profile string); they are never sent from `extra`.
const RESERVED: &[&str] = &[
    "_id",
    "id",
    "username",
    "email",
    "firstname",
    "lastname",
    "state",
    "suspended",
    "activated",
    "password",
    "attributes",
    "external_dn",
    "external_source_type",
    "externally_managed",
    "restrictedFields",
    "organization",
];

/// One custom attribute (`attributes: [{name, value}]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JcAttribute {
    pub name: String,
    pub value: String,
}

/// A JumpCloud user as forestsync reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JcUser {
    pub id: String,
    pub username: String,
    pub email: String,
    /// `ACTIVATED`, `SUSPENDED` or `STAGED` (derived from the legacy `suspended` when `state` is absent).
    pub state: String,
    pub external_dn: Option<String>,
    /// The value of the [`ANCHOR_ATTRIBUTE`] custom attribute.
    pub anchor: Option<String>,
    /// Every custom attribute (kept so a take-over can add the anchor without dropping the others).
    pub attributes: Vec<JcAttribute>,
}

impl JcUser {
    pub fn is_suspended(&self) -> bool {
        self.state == "SUSPENDED"
    }
}

#[derive(Deserialize)]
struct RawUser {
    #[serde(rename = "_id")]
    underscore_id: Option<String>,
    id: Option<String>,
    username: Option<String>,
    email: Option<String>,
    state: Option<String>,
    suspended: Option<bool>,
    external_dn: Option<String>,
    attributes: Option<Vec<RawAttribute>>,
}

#[derive(Deserialize)]
struct RawAttribute {
    name: Option<String>,
    value: Option<Value>,
}

impl RawUser {
    fn into_user(self, url: &str) -> Result<JcUser, CloudError> {
        let id = self
            .underscore_id
            .or(self.id)
            .ok_or_else(|| CloudError::BadResponse {
                url: url.to_owned(),
                detail: "a user without _id".into(),
            })?;
        let attributes: Vec<JcAttribute> = self
            .attributes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|a| {
                let value = match a.value? {
                    Value::String(s) => s,
                    Value::Null => return None,
                    other => other.to_string(),
                };
                Some(JcAttribute {
                    name: a.name?,
                    value,
                })
            })
            .collect();
        let anchor = attributes
            .iter()
            .find(|a| a.name == ANCHOR_ATTRIBUTE)
            .map(|a| a.value.clone());
        let state = self.state.unwrap_or_else(|| {
            if self.suspended == Some(true) {
                "SUSPENDED".into()
            } else {
                "ACTIVATED".into()
            }
        });
        Ok(JcUser {
            id,
            username: self.username.unwrap_or_default(),
            email: self.email.unwrap_or_default(),
            state,
            external_dn: self.external_dn.filter(|s| !s.is_empty()),
            anchor,
            attributes,
        })
    }
}

#[derive(Deserialize)]
struct UserPage {
    #[serde(rename = "totalCount")]
    total_count: Option<u64>,
    #[serde(default)]
    results: Vec<RawUser>,
}

/// A partial update (`PUT /systemusers/{id}` only changes the fields it carries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserUpdate {
    pub username: Option<String>,
    pub email: Option<String>,
    pub firstname: Option<String>,
    pub lastname: Option<String>,
    /// Extra profile fields: `Some(v)` sets, `None` clears (sent as `null`).
    pub extra: BTreeMap<String, Option<String>>,
    pub suspended: Option<bool>,
    /// Sets `external_dn` and `external_source_type: "ActiveDirectory"`.
    pub external_dn: Option<String>,
    /// Replaces the whole custom-attribute list.
    pub attributes: Option<Vec<JcAttribute>>,
}

impl UserUpdate {
    /// Every field of `user` (used when nothing is known about the JumpCloud side).
    pub fn full(user: &DesiredUser) -> UserUpdate {
        UserUpdate {
            username: Some(user.username.clone()),
            email: Some(user.email.clone()),
            firstname: Some(user.firstname.clone()),
            lastname: Some(user.lastname.clone()),
            extra: user
                .extra
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            suspended: Some(user.suspended),
            external_dn: Some(user.external_dn.clone()),
            attributes: None,
        }
    }

    /// Only what differs between what was last applied (`old`) and what is wanted (`new`).
    pub fn diff(old: &DesiredUser, new: &DesiredUser) -> UserUpdate {
        fn changed(a: &str, b: &str) -> Option<String> {
            (a != b).then(|| b.to_owned())
        }
        let mut extra = BTreeMap::new();
        for (k, v) in &new.extra {
            if old.extra.get(k) != Some(v) {
                extra.insert(k.clone(), Some(v.clone()));
            }
        }
        for k in old.extra.keys() {
            if !new.extra.contains_key(k) {
                extra.insert(k.clone(), None);
            }
        }
        UserUpdate {
            username: changed(&old.username, &new.username),
            email: changed(&old.email, &new.email),
            firstname: changed(&old.firstname, &new.firstname),
            lastname: changed(&old.lastname, &new.lastname),
            extra,
            suspended: (old.suspended != new.suspended).then_some(new.suspended),
            external_dn: changed(&old.external_dn, &new.external_dn),
            attributes: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self == &UserUpdate::default()
    }

    /// The JumpCloud fields this update writes (for logs; never their values).
    pub fn field_names(&self) -> Vec<&str> {
        let set = [
            ("username", self.username.is_some()),
            ("email", self.email.is_some()),
            ("firstname", self.firstname.is_some()),
            ("lastname", self.lastname.is_some()),
            ("external_dn", self.external_dn.is_some()),
            ("state", self.suspended.is_some()),
            ("attributes", self.attributes.is_some()),
        ];
        set.into_iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| name)
            .chain(self.extra.keys().map(String::as_str))
            .collect()
    }

    fn to_json(&self) -> Map<String, Value> {
        let mut body = Map::new();
        for (k, v) in &self.extra {
            if !RESERVED.contains(&k.as_str()) {
                body.insert(k.clone(), v.clone().map_or(Value::Null, Value::String));
            }
        }
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                body.insert(k.into(), Value::String(v.clone()));
            }
        };
        put("username", &self.username);
        put("email", &self.email);
        put("firstname", &self.firstname);
        put("lastname", &self.lastname);
        if let Some(dn) = &self.external_dn {
            body.insert("external_dn".into(), Value::String(dn.clone()));
            body.insert(
                "external_source_type".into(),
                Value::String(EXTERNAL_SOURCE_TYPE.into()),
            );
        }
        if let Some(s) = self.suspended {
            body.insert("state".into(), Value::String(state_name(s).into()));
        }
        if let Some(attrs) = &self.attributes {
            body.insert(
                "attributes".into(),
                serde_json::to_value(attrs).unwrap_or(Value::Array(Vec::new())),
            );
        }
        body
    }
}

/// JumpCloud's `state` for a suspension flag.
pub(crate) fn state_name(suspended: bool) -> &'static str {
    if suspended {
        "SUSPENDED"
    } else {
        "ACTIVATED"
    }
}

/// `attributes` with [`ANCHOR_ATTRIBUTE`] set to `anchor` (replacing an earlier value, keeping the rest).
pub fn with_anchor_attribute(attributes: &[JcAttribute], anchor: &str) -> Vec<JcAttribute> {
    let mut out: Vec<JcAttribute> = attributes
        .iter()
        .filter(|a| a.name != ANCHOR_ATTRIBUTE)
        .cloned()
        .collect();
    out.push(JcAttribute {
        name: ANCHOR_ATTRIBUTE.into(),
        value: anchor.into(),
    });
    out
}

#[derive(Serialize)]
struct PasswordBody<'a> {
    password: &'a str,
}

impl CloudClient {
    /// `GET /api/systemusers/{id}`; `None` on 404.
    pub async fn get_user(&self, id: &str) -> Result<Option<JcUser>, CloudError> {
        let url = self.url_with(
            &format!("/api/systemusers/{}", seg(id)),
            &[("fields", USER_FIELDS)],
        );
        match self.send::<()>(Method::GET, &url, None).await {
            Ok(r) => {
                let raw: RawUser = Self::read_json(&url, r).await?;
                raw.into_user(&url).map(Some)
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The user whose `username` equals `username` exactly (v1 filters are case-sensitive).
    pub async fn find_user_by_username(
        &self,
        username: &str,
    ) -> Result<Option<JcUser>, CloudError> {
        let filter = format!("username:$eq:{username}");
        let url = self.url_with(
            "/api/systemusers",
            &[
                ("filter", filter.as_str()),
                ("limit", "2"),
                ("fields", USER_FIELDS),
            ],
        );
        let users = self.user_page_at(&url).await?.0;
        Ok(users.into_iter().find(|u| u.username == username))
    }

    /// The user whose `username` equals `username` ignoring case (JumpCloud's uniqueness is
    /// case-insensitive, its filters are not): `POST /api/search/systemusers` with a search term,
    /// compared client-side.
    pub async fn find_user_by_username_ci(
        &self,
        username: &str,
    ) -> Result<Option<JcUser>, CloudError> {
        let url = self.url_with("/api/search/systemusers", &[("limit", "100")]);
        let body = serde_json::json!({
            "searchFilter": {"searchTerm": username, "fields": ["username"]},
            "fields": USER_FIELDS,
        });
        let r = self.send(Method::POST, &url, Some(&body)).await?;
        let page: UserPage = Self::read_json(&url, r).await?;
        let wanted = username.to_lowercase();
        for raw in page.results {
            let u = raw.into_user(&url)?;
            if u.username.to_lowercase() == wanted {
                return Ok(Some(u));
            }
        }
        Ok(None)
    }

    /// One page of `GET /api/systemusers` (sorted by `_id`, [`PAGE_LIMIT`] per page) and `totalCount`.
    pub async fn list_users_page(
        &self,
        skip: usize,
    ) -> Result<(Vec<JcUser>, Option<u64>), CloudError> {
        let skip = skip.to_string();
        let limit = PAGE_LIMIT.to_string();
        let url = self.url_with(
            "/api/systemusers",
            &[
                ("limit", limit.as_str()),
                ("skip", skip.as_str()),
                ("sort", "_id"),
                ("fields", USER_FIELDS),
            ],
        );
        self.user_page_at(&url).await
    }

    /// Every user, page by page (`skip += page length` while pages are full), de-duplicated by id.
    /// One request per page; callers that rate-limit page through [`CloudClient::list_users_page`].
    pub async fn list_users(&self) -> Result<Vec<JcUser>, CloudError> {
        let mut out: Vec<JcUser> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut skip = 0;
        loop {
            let (page, _) = self.list_users_page(skip).await?;
            let n = page.len();
            skip += n;
            out.extend(page.into_iter().filter(|u| seen.insert(u.id.clone())));
            if n < PAGE_LIMIT {
                return Ok(out);
            }
        }
    }

    async fn user_page_at(&self, url: &str) -> Result<(Vec<JcUser>, Option<u64>), CloudError> {
        let r = self.send::<()>(Method::GET, url, None).await?;
        let page: UserPage = Self::read_json(url, r).await?;
        let users = page
            .results
            .into_iter()
            .map(|raw| raw.into_user(url))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((users, page.total_count))
    }

    /// `POST /api/systemusers` (200): the user with its profile, state, `external_dn`,
    /// `external_source_type: "ActiveDirectory"` and the anchor attribute. Not idempotent: callers look
    /// the username up before retrying.
    pub async fn create_user(
        &self,
        user: &DesiredUser,
        anchor_marker: &str,
    ) -> Result<JcUser, CloudError> {
        let mut update = UserUpdate::full(user);
        update.attributes = Some(with_anchor_attribute(&[], anchor_marker));
        let body = Value::Object(update.to_json());
        let url = self.url("/api/systemusers");
        let r = self.send(Method::POST, &url, Some(&body)).await?;
        let raw: RawUser = Self::read_json(&url, r).await?;
        raw.into_user(&url)
    }

    /// `PUT /api/systemusers/{id}` with every field of `user` (JumpCloud's PUT is partial: fields not
    /// sent keep their value).
    pub async fn update_user(&self, id: &str, user: &DesiredUser) -> Result<JcUser, CloudError> {
        self.update_user_fields(id, &UserUpdate::full(user)).await
    }

    /// `PUT /api/systemusers/{id}` with only the fields in `update`.
    pub async fn update_user_fields(
        &self,
        id: &str,
        update: &UserUpdate,
    ) -> Result<JcUser, CloudError> {
        let body = Value::Object(update.to_json());
        let url = self.url(&format!("/api/systemusers/{}", seg(id)));
        let r = self.send(Method::PUT, &url, Some(&body)).await?;
        let raw: RawUser = Self::read_json(&url, r).await?;
        raw.into_user(&url)
    }

    /// `PUT /api/systemusers/{id}` `{"state": "SUSPENDED" | "ACTIVATED"}`.
    pub async fn set_user_state(&self, id: &str, suspended: bool) -> Result<JcUser, CloudError> {
        let body = serde_json::json!({ "state": state_name(suspended) });
        let url = self.url(&format!("/api/systemusers/{}", seg(id)));
        let r = self.send(Method::PUT, &url, Some(&body)).await?;
        let raw: RawUser = Self::read_json(&url, r).await?;
        raw.into_user(&url)
    }

    /// `DELETE /api/systemusers/{id}` (200). A 404 comes back as an error ([`CloudError::is_not_found`]).
    pub async fn delete_user(&self, id: &str) -> Result<(), CloudError> {
        let url = self.url(&format!("/api/systemusers/{}", seg(id)));
        self.send::<()>(Method::DELETE, &url, None).await?;
        Ok(())
    }

    /// `POST /api/systemusers/{id}/password?fullValidationDetails=password` (200, no body). A policy
    /// violation is `Rejected` (400) naming the violated rules; the password is never in an error.
    pub async fn set_password(&self, id: &str, password: &Secret) -> Result<(), CloudError> {
        let url = self.url_with(
            &format!("/api/systemusers/{}/password", seg(id)),
            &[("fullValidationDetails", "password")],
        );
        let body = PasswordBody {
            password: password.expose(),
        };
        let r = self.send_raw(Method::POST, &url, Some(&body)).await?;
        if r.status().as_u16() == 400 {
            let text = r.text().await.unwrap_or_default();
            return Err(CloudError::Rejected {
                url,
                status: 400,
                message: password_violations(&text),
            });
        }
        CloudError::check_status(&url, r).await?;
        Ok(())
    }
}

/// `"Password validation fail: specialCharacter, passwordHistory"` from an `ErrorDetails` body
/// (`details[].fieldViolationsList[].description`), or the plain message.
fn password_violations(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let message = v
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("password rejected")
        .to_owned();
    let rules: Vec<String> = v
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("fieldViolationsList").and_then(Value::as_array))
        .flatten()
        .filter_map(|f| f.get("description").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    if rules.is_empty() {
        message
    } else {
        format!("{message}: {}", rules.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Anchor, ObjectGuid};

    fn user() -> DesiredUser {
        DesiredUser {
            anchor: Anchor {
                domain: "alpha".into(),
                guid: ObjectGuid::from_bytes(&[7; 16]).unwrap(),
            },
            username: "jdoe".into(),
            email: "jdoe@example.test".into(),
            firstname: "J".into(),
            lastname: "Doe".into(),
            extra: BTreeMap::from([
                ("jobTitle".into(), "Eng".into()),
                ("username".into(), "evil".into()),
            ]),
            suspended: true,
            external_dn: "CN=jdoe,DC=alpha,DC=test".into(),
        }
    }

    #[test]
    fn a_full_body_carries_state_source_and_anchor_and_ignores_reserved_extras() {
        let mut u = UserUpdate::full(&user());
        u.attributes = Some(with_anchor_attribute(&[], "alpha/x"));
        let body = Value::Object(u.to_json());
        assert_eq!(body["username"], "jdoe");
        assert_eq!(body["state"], "SUSPENDED");
        assert_eq!(body["jobTitle"], "Eng");
        assert_eq!(body["external_source_type"], "ActiveDirectory");
        assert_eq!(
            body["attributes"],
            serde_json::json!([{"name": "forestsync_anchor", "value": "alpha/x"}])
        );
    }

    #[test]
    fn a_diff_sends_only_what_changed_and_clears_dropped_extras() {
        let old = user();
        let mut new = user();
        assert!(UserUpdate::diff(&old, &new).is_empty());
        new.email = "john.doe@example.test".into();
        new.suspended = false;
        new.extra.remove("jobTitle");
        new.extra.insert("department".into(), "R&D".into());
        let body = Value::Object(UserUpdate::diff(&old, &new).to_json());
        assert_eq!(
            body,
            serde_json::json!({
                "email": "john.doe@example.test",
                "state": "ACTIVATED",
                "jobTitle": null,
                "department": "R&D",
            })
        );
    }

    #[test]
    fn users_are_read_leniently() {
        let raw: RawUser = serde_json::from_value(serde_json::json!({
            "_id": "671000000000000000000001", "username": "a", "suspended": true,
            "attributes": [{"name": "forestsync_anchor", "value": "alpha/g"}, {"name": "x", "value": 3}, {"value": "y"}],
            "unknown": {"field": 1}
        }))
        .unwrap();
        let u = raw.into_user("u").unwrap();
        assert_eq!(u.state, "SUSPENDED");
        assert_eq!(u.anchor.as_deref(), Some("alpha/g"));
        assert_eq!(u.attributes.len(), 2);
        assert_eq!(u.email, "");
    }

    #[test]
    fn password_rule_violations_are_named() {
        let body = r#"{"code":400,"message":"Password validation fail","status":"INVALID_ARGUMENT","details":[{"fieldViolationsList":[{"field":"password","description":"specialCharacter"},{"field":"password","description":"passwordHistory"}],"@type":"type.googleapis.com/google.rpc.BadRequest"}]}"#;
        assert_eq!(
            password_violations(body),
            "Password validation fail: specialCharacter, passwordHistory"
        );
        assert_eq!(password_violations(""), "password rejected");
    }
}

//! What JumpCloud has bound to an Active Directory instance, read through the public API for the
//! JumpCloud → AD direction: the instance's user and group scope (graph traversals), full user
//! profiles (v1), a group's direct members (v2). Read-only: nothing here writes to JumpCloud.

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::users::PAGE_LIMIT;
use super::wire::{seg, string_field};
use super::{CloudClient, CloudError};

/// A JumpCloud user's profile as the JumpCloud → AD direction needs it: every field, so a configured
/// extra (`jobTitle`, `department`, …) can be mapped to AD.
#[derive(Clone, Debug, PartialEq)]
pub struct JcProfile {
    pub id: String,
    pub username: String,
    pub email: String,
    pub firstname: String,
    pub lastname: String,
    pub displayname: String,
    /// `ACTIVATED`, `SUSPENDED` or `STAGED`.
    pub state: String,
    /// Every other top-level string field (for configured extras).
    pub fields: Map<String, Value>,
}

impl JcProfile {
    fn from_json(url: &str, v: Value) -> Result<JcProfile, CloudError> {
        let Value::Object(m) = v else {
            return Err(CloudError::BadResponse {
                url: url.to_owned(),
                detail: "a user that is not an object".into(),
            });
        };
        // Known fields of the wrong type are errors, never read as empty.
        let s = |k: &str| string_field(url, "user", &m, k).map(Option::unwrap_or_default);
        let id = [s("_id")?, s("id")?]
            .into_iter()
            .find(|v| !v.is_empty())
            .ok_or_else(|| CloudError::BadResponse {
                url: url.to_owned(),
                detail: "a user without _id".into(),
            })?;
        let username = s("username")?;
        if username.is_empty() {
            return Err(CloudError::BadResponse {
                url: url.to_owned(),
                detail: format!("user {id} has no username"),
            });
        }
        if let Some(v) = m
            .get("suspended")
            .filter(|v| !v.is_null() && !v.is_boolean())
        {
            return Err(CloudError::BadResponse {
                url: url.to_owned(),
                detail: format!(
                    "user field `suspended`: invalid type: {}, expected a boolean",
                    super::wire::json_type(v)
                ),
            });
        }
        let state = match string_field(url, "user", &m, "state")?.as_deref() {
            Some(st) => st.to_owned(),
            None if m.get("suspended").and_then(Value::as_bool) == Some(true) => "SUSPENDED".into(),
            None => "ACTIVATED".into(),
        };
        Ok(JcProfile {
            username,
            email: s("email")?,
            firstname: s("firstname")?,
            lastname: s("lastname")?,
            displayname: s("displayname")?,
            state,
            id,
            fields: m,
        })
    }

    pub fn is_suspended(&self) -> bool {
        self.state == "SUSPENDED"
    }

    /// A top-level string field (`jobTitle`, `department`, …); empty when absent or not a string.
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

#[derive(Deserialize)]
struct GraphEntry {
    id: Option<String>,
    to: Option<GraphTo>,
}

#[derive(Deserialize)]
struct GraphTo {
    id: Option<String>,
}

#[derive(Deserialize)]
struct UsersPage {
    results: Option<Vec<Value>>,
}

impl CloudClient {
    /// `GET /api/systemusers/{id}` with every field; `None` on 404.
    pub async fn get_profile(&self, id: &str) -> Result<Option<JcProfile>, CloudError> {
        let url = self.url(&format!("/api/systemusers/{}", seg(id)));
        match self.send::<()>(Method::GET, &url, None).await {
            Ok(r) => {
                let v: Value = Self::read_json(&url, r).await?;
                JcProfile::from_json(&url, v).map(Some)
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of `GET /api/systemusers?filter=_id:$in:…`: the profiles of up to 100 ids.
    pub async fn get_profiles(&self, ids: &[String]) -> Result<Vec<JcProfile>, CloudError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let filter = format!("_id:$in:{}", ids.join("|"));
        let limit = PAGE_LIMIT.to_string();
        let url = self.url_with(
            "/api/systemusers",
            &[("filter", filter.as_str()), ("limit", limit.as_str())],
        );
        let r = self.send::<()>(Method::GET, &url, None).await?;
        let page: UsersPage = Self::read_json(&url, r).await?;
        page.results
            .unwrap_or_default()
            .into_iter()
            .map(|v| JcProfile::from_json(&url, v))
            .collect()
    }

    /// One page (`skip`) of the ids of the users bound to the AD instance, directly or through a bound
    /// group (`GET /api/v2/activedirectories/{ad}/users`).
    pub async fn bound_user_ids(&self, ad: &str, skip: usize) -> Result<Vec<String>, CloudError> {
        self.graph_ids(
            &format!("/api/v2/activedirectories/{}/users", seg(ad)),
            skip,
        )
        .await
    }

    /// One page of the ids of the user groups bound to the AD instance.
    pub async fn bound_group_ids(&self, ad: &str, skip: usize) -> Result<Vec<String>, CloudError> {
        self.graph_ids(
            &format!("/api/v2/activedirectories/{}/usergroups", seg(ad)),
            skip,
        )
        .await
    }

    /// One page of a group's direct member ids (`GET /api/v2/usergroups/{id}/members`).
    pub async fn member_ids(&self, group: &str, skip: usize) -> Result<Vec<String>, CloudError> {
        self.graph_ids(&format!("/api/v2/usergroups/{}/members", seg(group)), skip)
            .await
    }

    /// The AD instances a user is bound to, directly or through a group
    /// (`GET /api/v2/users/{id}/activedirectories`); empty for an unknown user.
    pub async fn user_ad_ids(&self, user: &str) -> Result<Vec<String>, CloudError> {
        match self
            .graph_ids(&format!("/api/v2/users/{}/activedirectories", seg(user)), 0)
            .await
        {
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            other => other,
        }
    }

    async fn graph_ids(&self, path: &str, skip: usize) -> Result<Vec<String>, CloudError> {
        let (limit, skip) = (PAGE_LIMIT.to_string(), skip.to_string());
        let url = self.url_with(path, &[("limit", limit.as_str()), ("skip", skip.as_str())]);
        let r = self.send::<()>(Method::GET, &url, None).await?;
        let items: Vec<GraphEntry> = Self::read_json(&url, r).await?;
        items
            .into_iter()
            .map(|i| {
                i.to.and_then(|t| t.id)
                    .or(i.id)
                    .ok_or_else(|| CloudError::BadResponse {
                        url: url.clone(),
                        detail: "a graph entry without id".into(),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_keep_every_field_and_derive_state() {
        let p = JcProfile::from_json(
            "u",
            serde_json::json!({"_id": "a1", "username": "jdoe", "firstname": "J", "suspended": true,
                               "jobTitle": "Ops", "department": 7}),
        )
        .unwrap();
        assert_eq!((p.id.as_str(), p.state.as_str()), ("a1", "SUSPENDED"));
        assert_eq!(p.field("jobTitle"), "Ops");
        assert_eq!(p.field("department"), "", "a number is not a string");
        assert!(JcProfile::from_json("u", serde_json::json!({"_id": "a"})).is_err());
        // A known field of the wrong type is an error naming it, never read as empty.
        for (field, value) in [
            ("firstname", serde_json::json!(12345)),
            ("email", serde_json::json!(["x"])),
            ("username", serde_json::json!(true)),
            ("_id", serde_json::json!({"x": 1})),
            ("state", serde_json::json!(1)),
            ("suspended", serde_json::json!("yes")),
        ] {
            let mut v = serde_json::json!({"_id": "a1", "username": "jdoe", "firstname": "J"});
            v[field] = value;
            let e = JcProfile::from_json("u", v).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
        }
        assert!(JcProfile::from_json("u", serde_json::json!([])).is_err());
    }
}

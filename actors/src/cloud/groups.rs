//! v2 user groups, their members, and associations with the Active Directory instance.
//!
//! A group forestsync creates carries its AD anchor in `description` as `forestsync_anchor=<anchor>`
//! (v2 group `attributes` only hold JumpCloud's own settings), so an interrupted create is recognised.
//! Graph edits (`…/members`, `…/associations`) answer 204; re-adding an edge or removing an absent one
//! may answer 409/404: the caller decides after [`CloudClient::is_member`] / [`CloudClient::is_associated`].

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::users::PAGE_LIMIT;
use super::wire::{seg, string_field};
use super::{CloudClient, CloudError};

/// Prefix of the anchor marker in a managed group's `description`.
pub const GROUP_ANCHOR_PREFIX: &str = "forestsync_anchor=";

/// Group fields a full `PUT` must send back to keep them (everything else is read-only or defaulted).
const WRITABLE_GROUP_FIELDS: &[&str] = &[
    "description",
    "email",
    "attributes",
    "membershipMethod",
    "memberQuery",
    "memberQueryExemptions",
    "memberSuggestionsNotify",
];

/// A JumpCloud user group as forestsync reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct JcGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    /// The anchor from the description marker.
    pub anchor: Option<String>,
    /// `NOTSET`, `STATIC`, `DYNAMIC_*` (forestsync leaves dynamic groups alone).
    pub membership_method: Option<String>,
    /// The writable fields as read, sent back unchanged on a rename (JumpCloud's PUT is a full update).
    pub writable: Map<String, Value>,
}

impl JcGroup {
    fn from_json(url: &str, v: Value) -> Result<JcGroup, CloudError> {
        let Value::Object(m) = v else {
            return Err(CloudError::BadResponse {
                url: url.to_owned(),
                detail: "a user group that is not an object".into(),
            });
        };
        // Known fields of the wrong type are errors, never read as empty.
        let s = |k: &str| string_field(url, "user group", &m, k);
        let id = s("id")?
            .or(s("_id")?)
            .ok_or_else(|| CloudError::BadResponse {
                url: url.to_owned(),
                detail: "a user group without id".into(),
            })?;
        let description = s("description")?.unwrap_or_default();
        // The writable fields go back in a rename's PUT: one of the wrong type is an error here,
        // not a 400 there.
        for (key, ok) in [
            ("email", Value::is_string as fn(&Value) -> bool),
            ("attributes", Value::is_object),
            ("memberQuery", Value::is_object),
            ("memberQueryExemptions", Value::is_array),
            ("memberSuggestionsNotify", Value::is_boolean),
        ] {
            if let Some(v) = m.get(key).filter(|v| !v.is_null() && !ok(v)) {
                return Err(CloudError::BadResponse {
                    url: url.to_owned(),
                    detail: format!(
                        "user group field `{key}`: invalid type: {}",
                        super::wire::json_type(v)
                    ),
                });
            }
        }
        let writable = WRITABLE_GROUP_FIELDS
            .iter()
            .filter_map(|k| {
                m.get(*k)
                    .filter(|v| !v.is_null())
                    .map(|v| ((*k).to_owned(), v.clone()))
            })
            .collect();
        Ok(JcGroup {
            id,
            name: s("name")?.unwrap_or_default(),
            anchor: group_marker(&description),
            description,
            membership_method: s("membershipMethod")?,
            writable,
        })
    }
}

/// The description marker for `anchor`.
pub fn group_description(anchor: &str) -> String {
    format!("{GROUP_ANCHOR_PREFIX}{anchor}")
}

/// The anchor named by a `forestsync_anchor=<anchor>` token in `description`.
pub fn group_marker(description: &str) -> Option<String> {
    description
        .split_whitespace()
        .find_map(|t| t.strip_prefix(GROUP_ANCHOR_PREFIX))
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
}

/// What an Active Directory association binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssocTarget {
    User,
    UserGroup,
}

impl AssocTarget {
    fn wire(self) -> &'static str {
        match self {
            AssocTarget::User => "user",
            AssocTarget::UserGroup => "user_group",
        }
    }
}

/// `op` of a graph edit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphOp {
    Add,
    Remove,
}

impl GraphOp {
    fn wire(self) -> &'static str {
        match self {
            GraphOp::Add => "add",
            GraphOp::Remove => "remove",
        }
    }
}

#[derive(Deserialize)]
struct GraphItem {
    id: Option<String>,
    to: Option<GraphObject>,
}

#[derive(Deserialize)]
struct GraphObject {
    id: Option<String>,
}

impl CloudClient {
    /// `GET /api/v2/usergroups/{id}`; `None` on 404.
    pub async fn get_group(&self, id: &str) -> Result<Option<JcGroup>, CloudError> {
        let url = self.url(&format!("/api/v2/usergroups/{}", seg(id)));
        match self.send::<()>(Method::GET, &url, None).await {
            Ok(r) => {
                let v: Value = Self::read_json(&url, r).await?;
                JcGroup::from_json(&url, v).map(Some)
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The group named exactly `name` (`filter=name:eq:<name>`, compared again client-side because v2
    /// filters accept wildcards).
    pub async fn find_group_by_name(&self, name: &str) -> Result<Option<JcGroup>, CloudError> {
        let filter = format!("name:eq:{name}");
        let groups = self.groups_matching(&filter).await?;
        Ok(groups.into_iter().find(|g| g.name == name))
    }

    /// The group whose name equals `name` ignoring case (JumpCloud refuses a second group whose name
    /// differs only in case): `filter=name:search:<name>`, compared client-side.
    pub async fn find_group_by_name_ci(&self, name: &str) -> Result<Option<JcGroup>, CloudError> {
        let filter = format!("name:search:{name}");
        let wanted = name.to_lowercase();
        let groups = self.groups_matching(&filter).await?;
        Ok(groups.into_iter().find(|g| g.name.to_lowercase() == wanted))
    }

    async fn groups_matching(&self, filter: &str) -> Result<Vec<JcGroup>, CloudError> {
        let limit = PAGE_LIMIT.to_string();
        let url = self.url_with(
            "/api/v2/usergroups",
            &[
                ("filter", filter),
                ("limit", limit.as_str()),
                ("sort", "id"),
            ],
        );
        let r = self.send::<()>(Method::GET, &url, None).await?;
        let items: Vec<Value> = Self::read_json(&url, r).await?;
        items
            .into_iter()
            .map(|v| JcGroup::from_json(&url, v))
            .collect()
    }

    /// `POST /api/v2/usergroups` (201) with the anchor marker in the description.
    pub async fn create_group(
        &self,
        name: &str,
        anchor_marker: &str,
    ) -> Result<JcGroup, CloudError> {
        let body = serde_json::json!({
            "name": name,
            "description": group_description(anchor_marker),
        });
        let url = self.url("/api/v2/usergroups");
        let r = self.send(Method::POST, &url, Some(&body)).await?;
        let v: Value = Self::read_json(&url, r).await?;
        JcGroup::from_json(&url, v)
    }

    /// `PUT /api/v2/usergroups/{id}` with the new name and `current`'s writable fields (a full update:
    /// what is not sent returns to its default).
    pub async fn rename_group(
        &self,
        id: &str,
        name: &str,
        current: &JcGroup,
    ) -> Result<JcGroup, CloudError> {
        let mut body = current.writable.clone();
        body.insert("name".into(), Value::String(name.to_owned()));
        let url = self.url(&format!("/api/v2/usergroups/{}", seg(id)));
        let r = self
            .send(Method::PUT, &url, Some(&Value::Object(body)))
            .await?;
        let v: Value = Self::read_json(&url, r).await?;
        JcGroup::from_json(&url, v)
    }

    /// `DELETE /api/v2/usergroups/{id}` (204, or 200 with the group). A 404 comes back as an error.
    pub async fn delete_group(&self, id: &str) -> Result<(), CloudError> {
        let url = self.url(&format!("/api/v2/usergroups/{}", seg(id)));
        self.send::<()>(Method::DELETE, &url, None).await?;
        Ok(())
    }

    /// `POST /api/v2/usergroups/{group_id}/members` `{"op": "add", "type": "user", "id": user_id}` (204).
    pub async fn add_member(&self, group_id: &str, user_id: &str) -> Result<(), CloudError> {
        self.member_edit(group_id, user_id, GraphOp::Add).await
    }

    /// `POST /api/v2/usergroups/{group_id}/members` `{"op": "remove", …}` (204).
    pub async fn remove_member(&self, group_id: &str, user_id: &str) -> Result<(), CloudError> {
        self.member_edit(group_id, user_id, GraphOp::Remove).await
    }

    async fn member_edit(
        &self,
        group_id: &str,
        user_id: &str,
        op: GraphOp,
    ) -> Result<(), CloudError> {
        let body = serde_json::json!({"op": op.wire(), "type": "user", "id": user_id});
        let url = self.url(&format!("/api/v2/usergroups/{}/members", seg(group_id)));
        self.send(Method::POST, &url, Some(&body)).await?;
        Ok(())
    }

    /// Whether `user_id` is a member of `group_id`
    /// (`GET /api/v2/usergroups/{group_id}/membership?filter=object_id:eq:<user_id>`). An unknown group is
    /// an error (404).
    pub async fn is_member(&self, group_id: &str, user_id: &str) -> Result<bool, CloudError> {
        let filter = format!("object_id:eq:{user_id}");
        let url = self.url_with(
            &format!("/api/v2/usergroups/{}/membership", seg(group_id)),
            &[("filter", filter.as_str()), ("limit", "10")],
        );
        let r = self.send::<()>(Method::GET, &url, None).await?;
        let items: Vec<GraphItem> = Self::read_json(&url, r).await?;
        Ok(items.iter().any(|i| {
            i.id.as_deref() == Some(user_id)
                || i.to.as_ref().and_then(|t| t.id.as_deref()) == Some(user_id)
        }))
    }

    /// `POST /api/v2/activedirectories/{ad_id}/associations` `{"op", "type": "user"|"user_group", "id"}` (204).
    pub async fn associate(
        &self,
        ad_instance_id: &str,
        target: AssocTarget,
        id: &str,
        op: GraphOp,
    ) -> Result<(), CloudError> {
        let body = serde_json::json!({"op": op.wire(), "type": target.wire(), "id": id});
        let url = self.url(&format!(
            "/api/v2/activedirectories/{}/associations",
            seg(ad_instance_id)
        ));
        self.send(Method::POST, &url, Some(&body)).await?;
        Ok(())
    }

    /// Whether the user or group `id` is bound to the AD instance
    /// (`GET /api/v2/users/{id}/associations?targets=active_directory`, or `…/usergroups/{id}/…`). An
    /// unknown object is an error (404).
    pub async fn is_associated(
        &self,
        ad_instance_id: &str,
        target: AssocTarget,
        id: &str,
    ) -> Result<bool, CloudError> {
        let kind = match target {
            AssocTarget::User => "users",
            AssocTarget::UserGroup => "usergroups",
        };
        let limit = PAGE_LIMIT.to_string();
        let url = self.url_with(
            &format!("/api/v2/{kind}/{}/associations", seg(id)),
            &[("targets", "active_directory"), ("limit", limit.as_str())],
        );
        let r = self.send::<()>(Method::GET, &url, None).await?;
        let items: Vec<GraphItem> = Self::read_json(&url, r).await?;
        Ok(items
            .iter()
            .any(|i| i.to.as_ref().and_then(|t| t.id.as_deref()) == Some(ad_instance_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_fields_of_the_wrong_type_are_named_errors() {
        let good = serde_json::json!({"id": "g1", "name": "Eng", "description": "d", "email": "",
                                      "attributes": {}, "futureField": [1]});
        assert_eq!(JcGroup::from_json("u", good.clone()).unwrap().name, "Eng");
        for (field, value) in [
            ("id", serde_json::json!(7)),
            ("name", serde_json::json!(7)),
            ("description", serde_json::json!(false)),
            ("email", serde_json::json!(12345)),
            ("attributes", serde_json::json!([1])),
            ("memberQuery", serde_json::json!("q")),
        ] {
            let mut v = good.clone();
            v[field] = value;
            let e = JcGroup::from_json("u", v).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
        }
    }

    #[test]
    fn the_group_marker_round_trips_inside_other_text() {
        assert_eq!(
            group_marker(&group_description("alpha/1234")).as_deref(),
            Some("alpha/1234")
        );
        assert_eq!(
            group_marker("Synced. forestsync_anchor=beta/9 (do not edit)").as_deref(),
            Some("beta/9")
        );
        assert_eq!(group_marker("forestsync_anchor="), None);
        assert_eq!(group_marker(""), None);
    }

    #[test]
    fn a_rename_keeps_the_writable_fields() {
        let g = JcGroup::from_json(
            "u",
            serde_json::json!({"id": "g1", "name": "old", "description": "forestsync_anchor=a/b",
                "attributes": {"sudo": {"enabled": true}}, "type": "user_group", "memberQuery": null}),
        )
        .unwrap();
        assert_eq!(g.anchor.as_deref(), Some("a/b"));
        assert!(g.writable.contains_key("attributes") && g.writable.contains_key("description"));
        assert!(!g.writable.contains_key("type") && !g.writable.contains_key("memberQuery"));
    }
}

//! v2 user groups and their members.

use serde_json::{json, Map, Value};

use super::{hop, with_paths, GraphOp, Store};
use crate::http::ApiError;

const MEMBERSHIP_METHODS: &[&str] = &[
    "NOTSET",
    "STATIC",
    "DYNAMIC_REVIEW_REQUIRED",
    "DYNAMIC_AUTOMATED",
];

fn group_fields(body: Option<&Value>) -> Result<Map<String, Value>, ApiError> {
    let m = body.and_then(Value::as_object).ok_or_else(|| {
        ApiError::coded(
            400,
            "request body must be a JSON object with a name",
            "nullName",
        )
    })?;
    let mut out = Map::new();
    match m.get("name") {
        None | Some(Value::Null) => {
            return Err(ApiError::coded(400, "name is required", "nullName"))
        }
        Some(Value::String(s)) if !s.trim().is_empty() => {
            out.insert("name".into(), json!(s));
        }
        Some(_) => {
            return Err(ApiError::coded(
                400,
                "name must be a non-empty string",
                "invalidName",
            ))
        }
    }
    for k in ["description", "email"] {
        match m.get(k) {
            None | Some(Value::Null) => {}
            Some(v @ Value::String(_)) => {
                out.insert(k.into(), v.clone());
            }
            Some(_) => {
                return Err(ApiError::coded(
                    400,
                    format!("{k} must be a string"),
                    &format!("invalid{}", capitalize(k)),
                ))
            }
        }
    }
    match m.get("membershipMethod") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if MEMBERSHIP_METHODS.contains(&s.as_str()) => {
            out.insert("membershipMethod".into(), json!(s));
        }
        Some(_) => {
            return Err(ApiError::coded(
                400,
                format!(
                    "membershipMethod must be one of {}",
                    MEMBERSHIP_METHODS.join(", ")
                ),
                "invalidMembershipMethod",
            ))
        }
    }
    match m.get("memberSuggestionsNotify") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Bool(_)) => {
            out.insert("memberSuggestionsNotify".into(), v.clone());
        }
        Some(_) => {
            return Err(ApiError::coded(
                400,
                "memberSuggestionsNotify must be a boolean",
                "invalidMemberSuggestionsNotify",
            ))
        }
    }
    for k in ["attributes", "memberQuery"] {
        match m.get(k) {
            None => {}
            Some(v @ (Value::Object(_) | Value::Null)) => {
                out.insert(k.into(), v.clone());
            }
            Some(_) => {
                return Err(ApiError::coded(
                    400,
                    format!("{k} must be an object"),
                    &format!("invalid{}", capitalize(k)),
                ))
            }
        }
    }
    match m.get("memberQueryExemptions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            let ok = a.iter().all(|e| {
                e.get("id").is_some_and(Value::is_string)
                    && e.get("type").is_some_and(Value::is_string)
            });
            if !ok {
                return Err(ApiError::coded(
                    400,
                    "memberQueryExemptions items need string id and type",
                    "invalidMemberQueryExemptions",
                ));
            }
            out.insert("memberQueryExemptions".into(), Value::Array(a.clone()));
        }
        Some(_) => {
            return Err(ApiError::coded(
                400,
                "memberQueryExemptions must be a list",
                "invalidMemberQueryExemptions",
            ))
        }
    }
    Ok(out)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn group_doc(id: &str, org_id: &str, fields: Map<String, Value>) -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert("id".into(), json!(id));
    doc.insert("type".into(), json!("user_group"));
    doc.insert("description".into(), json!(""));
    doc.insert("email".into(), json!(""));
    doc.insert("membershipMethod".into(), json!("NOTSET"));
    doc.insert("memberQueryExemptions".into(), json!([]));
    doc.insert("memberSuggestionsNotify".into(), json!(false));
    doc.insert(
        "suggestionCounts".into(),
        json!({"add": 0, "remove": 0, "total": 0}),
    );
    doc.insert("organizationObjectId".into(), json!(org_id));
    for (k, v) in fields {
        doc.insert(k, v);
    }
    doc
}

impl Store {
    fn group_name_taken(&self, name: &str, except: Option<&str>) -> bool {
        self.group_by_name
            .get(&name.to_lowercase())
            .is_some_and(|g| Some(g.as_str()) != except)
    }

    /// `POST /usergroups`: name required; a duplicate name (case-insensitive) is 409.
    pub fn create_group(
        &mut self,
        body: Option<&Value>,
        org_id: &str,
    ) -> Result<Map<String, Value>, ApiError> {
        let fields = group_fields(body)?;
        let name = fields
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if self.group_name_taken(&name, None) {
            return Err(ApiError::conflict(format!(
                "a user group named '{name}' already exists"
            )));
        }
        let id = self.new_id();
        let doc = group_doc(&id, org_id, fields);
        self.group_by_name.insert(name.to_lowercase(), id.clone());
        self.groups.insert(id, doc.clone());
        Ok(doc)
    }

    /// `PUT /usergroups/{id}`: full update (fields not given return to their defaults).
    pub fn put_group(
        &mut self,
        id: &str,
        body: Option<&Value>,
        org_id: &str,
    ) -> Result<Map<String, Value>, ApiError> {
        let Some(old) = self.groups.get(id) else {
            return Err(ApiError::not_found("user group not found"));
        };
        let old_name = old
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_lowercase();
        let fields = group_fields(body)?;
        let name = fields
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if self.group_name_taken(&name, Some(id)) {
            return Err(ApiError::conflict(format!(
                "a user group named '{name}' already exists"
            )));
        }
        let mut doc = group_doc(id, org_id, fields);
        if let Some(sc) = old.get("suggestionCounts") {
            doc.insert("suggestionCounts".into(), sc.clone());
        }
        self.group_by_name.remove(&old_name);
        self.group_by_name
            .insert(name.to_lowercase(), id.to_string());
        self.groups.insert(id.to_string(), doc.clone());
        Ok(doc)
    }

    /// `DELETE /usergroups/{id}`: also drops its memberships and associations.
    pub fn delete_group(&mut self, id: &str) -> Result<Map<String, Value>, ApiError> {
        let Some(doc) = self.groups.remove(id) else {
            return Err(ApiError::not_found("user group not found"));
        };
        if let Some(name) = doc.get("name").and_then(Value::as_str) {
            self.group_by_name.remove(&name.to_lowercase());
        }
        if let Some(members) = self.members.remove(id) {
            for u in members.keys() {
                if let Some(gs) = self.memberof.get_mut(u) {
                    gs.remove(id);
                }
            }
        }
        self.remove_target(id);
        Ok(doc)
    }

    /// `POST /usergroups/{group_id}/members`. `Ok(true)` when a member was really added or removed.
    pub fn member_op(
        &mut self,
        group_id: &str,
        op: GraphOp,
        idempotent: bool,
    ) -> Result<bool, ApiError> {
        if !self.groups.contains_key(group_id) {
            return Err(ApiError::not_found("user group not found"));
        }
        if !self.users.contains_key(&op.id) {
            return Err(ApiError::not_found(format!("user {} not found", op.id)));
        }
        let members = self.members.entry(group_id.to_string()).or_default();
        let present = members.contains_key(&op.id);
        let mut changed = false;
        match op.op.as_str() {
            "add" if present => {
                if !idempotent {
                    return Err(ApiError::conflict("already exists"));
                }
            }
            "add" => {
                members.insert(op.id.clone(), op.attributes);
                self.memberof
                    .entry(op.id)
                    .or_default()
                    .insert(group_id.to_string());
                changed = true;
            }
            "update" if present => {
                members.insert(op.id, op.attributes);
            }
            "update" => return Err(ApiError::not_found("user is not a member of the group")),
            _ if present => {
                members.remove(&op.id);
                if let Some(gs) = self.memberof.get_mut(&op.id) {
                    gs.remove(group_id);
                }
                changed = true;
            }
            _ => {
                if !idempotent {
                    return Err(ApiError::not_found("user is not a member of the group"));
                }
            }
        }
        Ok(changed)
    }

    /// `GET /usergroups/{group_id}/members`: direct members as `GraphConnection`s.
    pub fn group_members(&self, group_id: &str) -> Result<Vec<Map<String, Value>>, ApiError> {
        if !self.groups.contains_key(group_id) {
            return Err(ApiError::not_found("user group not found"));
        }
        Ok(self
            .members
            .get(group_id)
            .map(|m| {
                m.iter()
                    .filter_map(|(u, a)| match hop(u, "user", a.as_ref()) {
                        Value::Object(o) => Some(o),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `GET /usergroups/{group_id}/membership`: all users of the group as `GraphObjectWithPaths`.
    pub fn group_membership(&self, group_id: &str) -> Result<Vec<Map<String, Value>>, ApiError> {
        if !self.groups.contains_key(group_id) {
            return Err(ApiError::not_found("user group not found"));
        }
        Ok(self
            .members
            .get(group_id)
            .map(|m| {
                m.iter()
                    .map(|(u, a)| with_paths(u, "user", vec![vec![hop(u, "user", a.as_ref())]]))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `GET /users/{user_id}/memberof`: the user's groups as `GraphObjectWithPaths`.
    pub fn user_memberof(&self, user_id: &str) -> Result<Vec<Map<String, Value>>, ApiError> {
        if !self.users.contains_key(user_id) {
            return Err(ApiError::not_found("user not found"));
        }
        Ok(self
            .memberof
            .get(user_id)
            .map(|gs| {
                gs.iter()
                    .map(|g| {
                        let attrs = self
                            .members
                            .get(g)
                            .and_then(|m| m.get(user_id))
                            .and_then(Option::as_ref);
                        with_paths(g, "user_group", vec![vec![hop(g, "user_group", attrs)]])
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

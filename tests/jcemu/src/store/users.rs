//! v1 system users.

use serde_json::{json, Map, Value};

use super::{Store, UserRec};
use crate::clock::{format_ms, parse_rfc3339_ms};
use crate::config::{is_object_id, PasswordPolicy};
use crate::http::ApiError;
use crate::password::{self, PwHash};

/// Keep at most this many password hashes per user (the history rule looks at the last `history`).
const MAX_HISTORY: usize = 24;

const STRING_FIELDS: &[&str] = &[
    "alternateEmail",
    "company",
    "costCenter",
    "department",
    "description",
    "displayname",
    "email",
    "employeeType",
    "external_dn",
    "external_source_type",
    "firstname",
    "jobTitle",
    "lastname",
    "location",
    "middlename",
    "public_key",
    "username",
    "managedAppleId",
];
const BOOL_FIELDS: &[&str] = &[
    "account_locked",
    "allow_public_key",
    "disableDeviceMaxLoginAttempts",
    "enable_managed_uid",
    "enable_user_portal_multifactor",
    "externally_managed",
    "ldap_binding_user",
    "password_never_expires",
    "samba_service_user",
    "sudo",
];
const POST_ONLY_BOOL_FIELDS: &[&str] = &["activated", "passwordless_sudo"];
const RESTRICTED_FIELDS: &[&str] = &[
    "addresses",
    "company",
    "costCenter",
    "department",
    "description",
    "displayname",
    "email",
    "employeeIdentifier",
    "employeeType",
    "firstname",
    "jobTitle",
    "lastname",
    "location",
    "middlename",
    "password",
    "phoneNumbers",
    "sudo",
    "username",
];
const RESTRICTED_TYPES: &[&str] = &["active_directory", "federated_identity_provider", "scim"];
const ADDRESS_FIELDS: &[&str] = &[
    "country",
    "extendedAddress",
    "locality",
    "poBox",
    "postalCode",
    "region",
    "streetAddress",
    "type",
];

/// Per-request inputs of user writes.
pub struct UserCtx<'a> {
    pub now_ms: i64,
    pub org_id: &'a str,
    pub default_state: &'a str,
    pub policy: &'a PasswordPolicy,
    /// `fullValidationDetails=password`
    pub full_details: bool,
    pub salt: [u8; 16],
}

/// A validated POST/PUT body: the fields to store plus password and state, handled separately.
struct UserChanges {
    fields: Map<String, Value>,
    password: Option<String>,
    state: Option<String>,
    suspended: Option<bool>,
}

fn bad(field: &str, what: &str) -> ApiError {
    ApiError::bad_request(format!("{field}: {what}"))
}

fn string_of<'v>(field: &str, v: &'v Value, max: usize) -> Result<&'v str, ApiError> {
    let s = v.as_str().ok_or_else(|| bad(field, "must be a string"))?;
    if s.chars().count() > max {
        return Err(bad(field, &format!("must be at most {max} characters")));
    }
    Ok(s)
}

fn list_of_objects<'v>(field: &str, v: &'v Value) -> Result<&'v Vec<Value>, ApiError> {
    let a = v.as_array().ok_or_else(|| bad(field, "must be a list"))?;
    if a.iter().any(|i| !i.is_object()) {
        return Err(bad(field, "must be a list of objects"));
    }
    Ok(a)
}

/// Only the given keys, each a string of at most 1024 characters.
fn string_object(field: &str, item: &Value, keys: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    if let Some(m) = item.as_object() {
        for k in keys {
            match m.get(*k) {
                None | Some(Value::Null) => {}
                Some(v) => {
                    string_of(&format!("{field}.{k}"), v, 1024)?;
                    out.insert((*k).to_string(), v.clone());
                }
            }
        }
    }
    Ok(out)
}

impl Store {
    fn next_unix_id(&mut self) -> u64 {
        self.next_uid += 1;
        self.next_uid
    }

    /// Validates one writable field and returns the value to store (`None`: ignore the field).
    fn user_field(
        &mut self,
        field: &str,
        v: &Value,
        post: bool,
        now_ms: i64,
    ) -> Result<Option<Value>, ApiError> {
        if STRING_FIELDS.contains(&field) {
            string_of(field, v, 1024)?;
            return Ok(Some(v.clone()));
        }
        if BOOL_FIELDS.contains(&field) || (post && POST_ONLY_BOOL_FIELDS.contains(&field)) {
            return match v {
                Value::Bool(_) => Ok(Some(v.clone())),
                _ => Err(bad(field, "must be a boolean")),
            };
        }
        let out = match field {
            "employeeIdentifier" => {
                string_of(field, v, 256)?;
                v.clone()
            }
            "manager" => {
                let s = string_of(field, v, 1024)?;
                let known = is_object_id(s) && self.users.contains_key(s);
                if !s.is_empty() && !known {
                    return Err(bad(field, &format!("no user with id '{s}'")));
                }
                v.clone()
            }
            "external_password_expiration_date" => {
                let s = string_of(field, v, 1024)?;
                if !s.is_empty() && parse_rfc3339_ms(s).is_none() {
                    return Err(bad(field, "must be an RFC 3339 date-time"));
                }
                v.clone()
            }
            "unix_uid" | "unix_guid" => match v.as_u64() {
                Some(n) if n >= 1 => v.clone(),
                _ => return Err(bad(field, "must be an integer >= 1")),
            },
            "tags" => {
                let a = v
                    .as_array()
                    .ok_or_else(|| bad(field, "must be a list of strings"))?;
                if a.iter().any(|t| !t.is_string()) {
                    return Err(bad(field, "must be a list of strings"));
                }
                v.clone()
            }
            "addresses" => {
                let mut out = Vec::new();
                for item in list_of_objects(field, v)? {
                    let mut m = string_object(field, item, ADDRESS_FIELDS)?;
                    m.insert("id".into(), Value::String(self.new_id()));
                    out.push(Value::Object(m));
                }
                Value::Array(out)
            }
            "phoneNumbers" => {
                let mut out = Vec::new();
                for item in list_of_objects(field, v)? {
                    let mut m = string_object(field, item, &["number", "type"])?;
                    m.insert("id".into(), Value::String(self.new_id()));
                    out.push(Value::Object(m));
                }
                Value::Array(out)
            }
            "attributes" => Value::Array(
                list_of_objects(field, v)?
                    .iter()
                    .map(|i| string_object(field, i, &["name", "value"]).map(Value::Object))
                    .collect::<Result<_, _>>()?,
            ),
            "relationships" => Value::Array(
                list_of_objects(field, v)?
                    .iter()
                    .map(|i| string_object(field, i, &["type", "value"]).map(Value::Object))
                    .collect::<Result<_, _>>()?,
            ),
            "restrictedFields" => {
                let mut out = Vec::new();
                for item in list_of_objects(field, v)? {
                    let m = string_object(field, item, &["field", "type", "id"])?;
                    let f = m.get("field").and_then(Value::as_str).unwrap_or("");
                    if !RESTRICTED_FIELDS.contains(&f) {
                        return Err(bad(field, &format!("unknown field '{f}'")));
                    }
                    let t = m.get("type").and_then(Value::as_str).unwrap_or("");
                    if !RESTRICTED_TYPES.contains(&t) {
                        return Err(bad(field, &format!("unknown type '{t}'")));
                    }
                    if m.get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|i| i.len() > 24)
                    {
                        return Err(bad(field, "id must be at most 24 characters"));
                    }
                    out.push(Value::Object(m));
                }
                Value::Array(out)
            }
            "ssh_keys" if !post => {
                let mut out = Vec::new();
                for item in list_of_objects(field, v)? {
                    let mut m = string_object(field, item, &["name", "public_key"])?;
                    m.insert("_id".into(), Value::String(self.new_id()));
                    m.insert("create_date".into(), Value::String(format_ms(now_ms)));
                    out.push(Value::Object(m));
                }
                Value::Array(out)
            }
            "mfa" => {
                let m = v
                    .as_object()
                    .ok_or_else(|| bad(field, "must be an object"))?;
                let mut out = Map::new();
                for (k, val) in m {
                    let ok = match k.as_str() {
                        "configured" | "exclusion" => val.is_boolean(),
                        "exclusionUntil" => {
                            val.as_str().is_some_and(|s| parse_rfc3339_ms(s).is_some())
                        }
                        "exclusionDays" => val.as_u64().is_some_and(|n| n >= 1),
                        _ => continue,
                    };
                    if !ok {
                        return Err(bad(&format!("mfa.{k}"), "has the wrong type"));
                    }
                    out.insert(k.clone(), val.clone());
                }
                Value::Object(out)
            }
            "recoveryEmail" if post => Value::Object(string_object(field, v, &["address"])?),
            "delegatedAuthority" => match v {
                Value::Null => Value::Null,
                Value::Object(m) => {
                    if m.get("name").and_then(Value::as_str) != Some("ActiveDirectory") {
                        return Err(bad(field, "name must be 'ActiveDirectory'"));
                    }
                    let mut out = Map::new();
                    out.insert("name".into(), json!("ActiveDirectory"));
                    if let Some(id) = m.get("id") {
                        string_of("delegatedAuthority.id", id, 1024)?;
                        out.insert("id".into(), id.clone());
                    }
                    Value::Object(out)
                }
                _ => return Err(bad(field, "must be an object or null")),
            },
            _ => return Ok(None),
        };
        Ok(Some(out))
    }

    fn find_dup(&self, field: &str, value: &str, except: Option<&str>) -> bool {
        let idx = match field {
            "username" => &self.by_username,
            "email" => &self.by_email,
            _ => &self.by_employee_id,
        };
        idx.get(&value.to_lowercase())
            .is_some_and(|id| Some(id.as_str()) != except)
    }

    /// The id of the user whose `field` (username, email, employeeIdentifier) is exactly `value`.
    pub fn user_id_by(&self, field: &str, value: &str) -> Option<String> {
        let idx = match field {
            "username" => &self.by_username,
            "email" => &self.by_email,
            "employeeIdentifier" => &self.by_employee_id,
            _ => return None,
        };
        let id = idx.get(&value.to_lowercase())?;
        let exact = self.users.get(id)?.doc.get(field).and_then(Value::as_str) == Some(value);
        exact.then(|| id.clone())
    }

    fn dup_error(field: &str) -> ApiError {
        ApiError::details(
            400,
            "User already exists",
            "Bad Request",
            vec![ApiError::field_violations(field, &["alreadyExists"])],
        )
    }

    fn password_error(viol: &[&str], full: bool, policy: &PasswordPolicy) -> ApiError {
        if full {
            ApiError::details(
                400,
                "Password validation fail",
                "INVALID_ARGUMENT",
                vec![ApiError::field_violations("password", viol)],
            )
        } else {
            ApiError::bad_request(password::describe(
                viol.first().copied().unwrap_or(""),
                policy,
            ))
        }
    }

    fn index_user(&mut self, id: &str, doc: &Map<String, Value>) {
        if let Some(u) = doc.get("username").and_then(Value::as_str) {
            self.by_username.insert(u.to_lowercase(), id.to_string());
        }
        if let Some(e) = doc.get("email").and_then(Value::as_str) {
            self.by_email.insert(e.to_lowercase(), id.to_string());
        }
        if let Some(e) = doc
            .get("employeeIdentifier")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            self.by_employee_id.insert(e.to_lowercase(), id.to_string());
        }
    }

    fn unindex_user(&mut self, doc: &Map<String, Value>) {
        if let Some(u) = doc.get("username").and_then(Value::as_str) {
            self.by_username.remove(&u.to_lowercase());
        }
        if let Some(e) = doc.get("email").and_then(Value::as_str) {
            self.by_email.remove(&e.to_lowercase());
        }
        if let Some(e) = doc.get("employeeIdentifier").and_then(Value::as_str) {
            self.by_employee_id.remove(&e.to_lowercase());
        }
    }

    /// Validated writable fields of a POST/PUT body (password and state are returned separately).
    fn user_changes(
        &mut self,
        body: Option<&Value>,
        post: bool,
        now_ms: i64,
    ) -> Result<UserChanges, ApiError> {
        let empty = Map::new();
        let m = match body {
            None => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => return Err(ApiError::bad_request("request body must be a JSON object")),
        };
        let mut changes = Map::new();
        let mut password = None;
        let mut state = None;
        let mut suspended = None;
        for (k, v) in m {
            match k.as_str() {
                "password" => match v {
                    Value::Null => {}
                    Value::String(s) => password = Some(s.clone()),
                    _ => return Err(bad(k, "must be a string")),
                },
                "state" => {
                    let s = v.as_str().ok_or_else(|| bad(k, "must be a string"))?;
                    let allowed: &[&str] = if post {
                        &["STAGED", "ACTIVATED", "SUSPENDED"]
                    } else {
                        &["ACTIVATED", "SUSPENDED"]
                    };
                    if !allowed.contains(&s) {
                        return Err(bad(k, &format!("must be one of {}", allowed.join(", "))));
                    }
                    state = Some(s.to_string());
                }
                "suspended" => {
                    suspended = Some(v.as_bool().ok_or_else(|| bad(k, "must be a boolean"))?)
                }
                _ => {
                    if v.is_null() && k != "delegatedAuthority" {
                        // null clears an optional string field; elsewhere it is ignored
                        if (STRING_FIELDS.contains(&k.as_str()) && k != "username" && k != "email")
                            || [
                                "employeeIdentifier",
                                "manager",
                                "external_password_expiration_date",
                            ]
                            .contains(&k.as_str())
                        {
                            changes.insert(k.clone(), Value::Null);
                        }
                        continue;
                    }
                    if let Some(val) = self.user_field(k, v, post, now_ms)? {
                        changes.insert(k.clone(), val);
                    }
                }
            }
        }
        if let (Some(s), Some(b)) = (&state, suspended) {
            if (s == "SUSPENDED") != b {
                return Err(ApiError::bad_request(format!(
                    "state '{s}' and suspended={b} disagree"
                )));
            }
        }
        Ok(UserChanges {
            fields: changes,
            password,
            state,
            suspended,
        })
    }

    /// `POST /systemusers`.
    pub fn create_user(
        &mut self,
        body: Option<&Value>,
        ctx: &UserCtx,
    ) -> Result<Map<String, Value>, ApiError> {
        let UserChanges {
            fields: changes,
            password,
            state,
            suspended,
        } = self.user_changes(body, true, ctx.now_ms)?;
        let username = changes
            .get("username")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let email = changes
            .get("email")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if username.is_empty() {
            return Err(ApiError::details(
                400,
                "username is required",
                "Bad Request",
                vec![ApiError::field_violations("username", &["required"])],
            ));
        }
        if email.is_empty() {
            return Err(ApiError::details(
                400,
                "email is required",
                "Bad Request",
                vec![ApiError::field_violations("email", &["required"])],
            ));
        }
        if !email.contains('@') || email.chars().any(char::is_whitespace) {
            return Err(ApiError::details(
                400,
                "email is invalid",
                "Bad Request",
                vec![ApiError::field_violations("email", &["invalid"])],
            ));
        }
        for f in ["username", "email", "employeeIdentifier"] {
            if let Some(v) = changes
                .get(f)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                if self.find_dup(f, v, None) {
                    return Err(Self::dup_error(f));
                }
            }
        }
        let state = match (state, suspended) {
            (Some(s), _) => s,
            (None, Some(true)) => "SUSPENDED".to_string(),
            (None, _) => ctx.default_state.to_string(),
        };
        let mut pw = Vec::new();
        if let Some(p) = &password {
            let viol = password::violations(ctx.policy, p, &username, &[]);
            if !viol.is_empty() {
                return Err(Self::password_error(&viol, ctx.full_details, ctx.policy));
            }
            pw.push(PwHash::new(p, ctx.salt));
        }
        let id = self.new_id();
        let uid = self.next_unix_id();
        let now = format_ms(ctx.now_ms);
        let mut doc = Map::new();
        doc.insert("_id".into(), json!(id));
        doc.insert("account_locked".into(), json!(false));
        doc.insert("account_locked_date".into(), Value::Null);
        doc.insert("activated".into(), json!(state == "ACTIVATED"));
        doc.insert("addresses".into(), json!([]));
        doc.insert("allow_public_key".into(), json!(true));
        doc.insert("attributes".into(), json!([]));
        doc.insert("badLoginAttempts".into(), json!(0));
        doc.insert("created".into(), json!(now));
        doc.insert("enable_managed_uid".into(), json!(false));
        doc.insert("enable_user_portal_multifactor".into(), json!(false));
        doc.insert("externally_managed".into(), json!(false));
        doc.insert("ldap_binding_user".into(), json!(false));
        doc.insert(
            "mfa".into(),
            json!({"configured": false, "exclusion": false}),
        );
        doc.insert("organization".into(), json!(ctx.org_id));
        doc.insert(
            "password_date".into(),
            if pw.is_empty() {
                Value::Null
            } else {
                json!(now)
            },
        );
        doc.insert("password_expiration_date".into(), Value::Null);
        doc.insert("password_expired".into(), json!(false));
        doc.insert("password_never_expires".into(), json!(false));
        doc.insert("passwordless_sudo".into(), json!(false));
        doc.insert("phoneNumbers".into(), json!([]));
        doc.insert("relationships".into(), json!([]));
        doc.insert("restrictedFields".into(), json!([]));
        doc.insert("samba_service_user".into(), json!(false));
        doc.insert("ssh_keys".into(), json!([]));
        doc.insert("sudo".into(), json!(false));
        doc.insert("totp_enabled".into(), json!(false));
        doc.insert("unix_guid".into(), json!(uid));
        doc.insert("unix_uid".into(), json!(uid));
        for (k, v) in changes {
            if v.is_null() && k != "delegatedAuthority" {
                doc.remove(&k);
            } else {
                doc.insert(k, v);
            }
        }
        doc.insert("state".into(), json!(state));
        doc.insert("suspended".into(), json!(state == "SUSPENDED"));
        self.index_user(&id, &doc);
        self.users.insert(id, UserRec::new(doc.clone(), pw));
        Ok(doc)
    }

    /// `PUT /systemusers/{id}` (partial update).
    pub fn update_user(
        &mut self,
        id: &str,
        body: Option<&Value>,
        ctx: &UserCtx,
    ) -> Result<Map<String, Value>, ApiError> {
        if !self.users.contains_key(id) {
            return Err(ApiError::not_found("user not found"));
        }
        let UserChanges {
            fields: changes,
            password,
            state,
            suspended,
        } = self.user_changes(body, false, ctx.now_ms)?;
        if changes.get("manager").and_then(Value::as_str) == Some(id) {
            return Err(bad("manager", "a user cannot be their own manager"));
        }
        for f in ["username", "email"] {
            if let Some(v) = changes.get(f) {
                match v.as_str() {
                    Some(s) if !s.is_empty() => {}
                    _ => return Err(bad(f, "must not be empty")),
                }
            }
        }
        if let Some(e) = changes.get("email").and_then(Value::as_str) {
            if !e.contains('@') || e.chars().any(char::is_whitespace) {
                return Err(ApiError::details(
                    400,
                    "email is invalid",
                    "Bad Request",
                    vec![ApiError::field_violations("email", &["invalid"])],
                ));
            }
        }
        for f in ["username", "email", "employeeIdentifier"] {
            if let Some(v) = changes
                .get(f)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                if self.find_dup(f, v, Some(id)) {
                    return Err(Self::dup_error(f));
                }
            }
        }
        let Some(rec) = self.users.get(id) else {
            return Err(ApiError::not_found("user not found"));
        };
        let username = changes
            .get("username")
            .or_else(|| rec.doc.get("username"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(p) = &password {
            let viol = password::violations(ctx.policy, p, &username, &rec.pw);
            if !viol.is_empty() {
                return Err(Self::password_error(&viol, ctx.full_details, ctx.policy));
            }
        }
        let old = rec.doc.clone();
        self.unindex_user(&old);
        let Some(rec) = self.users.get_mut(id) else {
            return Err(ApiError::not_found("user not found"));
        };
        for (k, v) in changes {
            if v.is_null() && k != "delegatedAuthority" {
                rec.doc.remove(&k);
            } else {
                rec.doc.insert(k, v);
            }
        }
        let cur = rec
            .doc
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or("ACTIVATED")
            .to_string();
        let new_state = match (state, suspended) {
            (Some(s), _) => s,
            (None, Some(true)) => "SUSPENDED".to_string(),
            (None, Some(false)) if cur == "SUSPENDED" => "ACTIVATED".to_string(),
            (None, _) => cur,
        };
        if new_state == "ACTIVATED" {
            rec.doc.insert("activated".into(), json!(true));
        }
        rec.doc
            .insert("suspended".into(), json!(new_state == "SUSPENDED"));
        rec.doc.insert("state".into(), json!(new_state));
        if let Some(p) = &password {
            rec.pw.push(PwHash::new(p, ctx.salt));
            trim_history(&mut rec.pw);
            rec.doc
                .insert("password_date".into(), json!(format_ms(ctx.now_ms)));
            rec.doc.insert("password_expired".into(), json!(false));
        }
        rec.refresh();
        let doc = rec.doc.clone();
        self.index_user(id, &doc);
        Ok(doc)
    }

    /// `DELETE /systemusers/{id}`: 409 when the user manages others unless `cascade_manager=null`.
    pub fn delete_user(
        &mut self,
        id: &str,
        cascade_manager: bool,
    ) -> Result<Map<String, Value>, ApiError> {
        if !self.users.contains_key(id) {
            return Err(ApiError::not_found("user not found"));
        }
        let reports: Vec<String> = self
            .users
            .iter()
            .filter(|(_, u)| u.doc.get("manager").and_then(Value::as_str) == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        if !reports.is_empty() && !cascade_manager {
            return Err(ApiError::conflict(format!(
                "user is the manager of {} user(s); delete with cascade_manager=null to clear it",
                reports.len()
            )));
        }
        for r in &reports {
            if let Some(u) = self.users.get_mut(r) {
                u.doc.remove("manager");
                u.refresh();
            }
        }
        let Some(rec) = self.users.remove(id) else {
            return Err(ApiError::not_found("user not found"));
        };
        self.unindex_user(&rec.doc);
        if let Some(groups) = self.memberof.remove(id) {
            for g in groups {
                if let Some(m) = self.members.get_mut(&g) {
                    m.remove(id);
                }
            }
        }
        self.remove_target(id);
        Ok(rec.doc)
    }

    /// `POST /systemusers/{id}/password`.
    pub fn set_password(
        &mut self,
        id: &str,
        password: &str,
        ctx: &UserCtx,
    ) -> Result<(), ApiError> {
        let Some(rec) = self.users.get_mut(id) else {
            return Err(ApiError::not_found("user not found"));
        };
        let username = rec
            .doc
            .get("username")
            .and_then(Value::as_str)
            .unwrap_or("");
        let viol = password::violations(ctx.policy, password, username, &rec.pw);
        if !viol.is_empty() {
            return Err(Self::password_error(&viol, ctx.full_details, ctx.policy));
        }
        rec.pw.push(PwHash::new(password, ctx.salt));
        trim_history(&mut rec.pw);
        rec.doc
            .insert("password_date".into(), json!(format_ms(ctx.now_ms)));
        rec.doc.insert("password_expired".into(), json!(false));
        rec.refresh();
        Ok(())
    }

    /// `POST /systemusers/{id}/state/activate`: STAGED → ACTIVATED; any other state → 409.
    pub fn activate_user(&mut self, id: &str) -> Result<(), ApiError> {
        let Some(rec) = self.users.get_mut(id) else {
            return Err(ApiError::not_found("user not found"));
        };
        let cur = rec.doc.get("state").and_then(Value::as_str).unwrap_or("");
        if cur != "STAGED" {
            return Err(ApiError::conflict(format!(
                "user is {cur}, only STAGED users can be activated"
            )));
        }
        rec.doc.insert("state".into(), json!("ACTIVATED"));
        rec.doc.insert("suspended".into(), json!(false));
        rec.doc.insert("activated".into(), json!(true));
        rec.refresh();
        Ok(())
    }

    /// `POST /systemusers/{id}/state/suspend`: any state → SUSPENDED (idempotent).
    pub fn suspend_user(&mut self, id: &str) -> Result<(), ApiError> {
        let Some(rec) = self.users.get_mut(id) else {
            return Err(ApiError::not_found("user not found"));
        };
        rec.doc.insert("state".into(), json!("SUSPENDED"));
        rec.doc.insert("suspended".into(), json!(true));
        rec.refresh();
        Ok(())
    }
}

fn trim_history(pw: &mut Vec<PwHash>) {
    if pw.len() > MAX_HISTORY {
        let excess = pw.len() - MAX_HISTORY;
        pw.drain(..excess);
    }
}

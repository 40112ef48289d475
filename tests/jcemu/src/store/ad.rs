//! v2 Active Directory instances, their agents (connect keys) and associations, and graph traversals.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{hop, with_paths, AgentRec, GraphOp, Store, Target};
use crate::clock::format_ms;
use crate::http::ApiError;

const USE_CASES: &[&str] = &["UNSET", "TWOWAYSYNC", "JCASAUTHORITY", "ADASAUTHORITY"];
const DELEGATION_STATES: &[&str] = &["ENABLED", "PENDING", "DISABLED"];
pub const CONNECT_KEY_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;

/// Outcome of redeeming a connect key (`POST /__emulator/agents/connect`).
pub enum ConnectError {
    Unknown,
    Used,
    Expired,
}

/// Writable AD fields; camelCase and snake_case spellings accepted (the spec's samples use snake_case).
fn ad_fields(body: Option<&Value>, require_domain: bool) -> Result<Map<String, Value>, ApiError> {
    let m = body
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("request body must be a JSON object"))?;
    let get = |camel: &str, snake: &str| {
        m.get(camel)
            .or_else(|| m.get(snake))
            .filter(|v| !v.is_null())
    };
    let mut out = Map::new();
    match get("domain", "domain") {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            out.insert("domain".into(), json!(s));
        }
        None if !require_domain => {}
        None => return Err(ApiError::coded(400, "domain is required", "nullDomain")),
        Some(_) => {
            return Err(ApiError::coded(
                400,
                "domain must be a non-empty string",
                "invalidDomain",
            ))
        }
    }
    for (camel, snake, allowed, code) in [
        ("useCase", "use_case", USE_CASES, "invalidUseCase"),
        (
            "delegationState",
            "delegation_state",
            DELEGATION_STATES,
            "invalidDelegationState",
        ),
    ] {
        match get(camel, snake) {
            None => {}
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => {
                out.insert(camel.into(), json!(s));
            }
            Some(_) => {
                return Err(ApiError::coded(
                    400,
                    format!("{camel} must be one of {}", allowed.join(", ")),
                    code,
                ));
            }
        }
    }
    match get("groupsEnabled", "groups_enabled") {
        None => {}
        Some(v @ Value::Bool(_)) => {
            out.insert("groupsEnabled".into(), v.clone());
        }
        Some(_) => {
            return Err(ApiError::coded(
                400,
                "groupsEnabled must be a boolean",
                "invalidGroupsEnabled",
            ))
        }
    }
    Ok(out)
}

impl AgentRec {
    /// `active-directory-agent-list`.
    pub fn list_json(&self) -> Value {
        json!({
            "id": self.id,
            "agentType": self.agent_type,
            "state": self.state,
            "hostname": self.hostname,
            "hostType": self.host_type,
            "version": self.version,
            "source_ip": self.source_ip,
            "contactAt": self.contact_at_ms.map(format_ms),
            "passwordUpdatedAt": Value::Null,
            "idSourceId": Value::Null,
        })
    }

    /// `active-directory-agent-get` (only the create response carries `connectKey`).
    pub fn created_json(&self) -> Value {
        json!({
            "id": self.id,
            "connectKey": self.connect_key,
            "state": self.state,
            "hostname": self.hostname,
            "hostType": self.host_type,
            "version": self.version,
            "source_ip": self.source_ip,
            "contactAt": self.contact_at_ms.map(format_ms),
            "passwordUpdatedAt": Value::Null,
        })
    }
}

impl Store {
    fn domain_taken(&self, domain: &str, except: Option<&str>) -> bool {
        self.ads.iter().any(|(id, a)| {
            Some(id.as_str()) != except
                && a.get("domain")
                    .and_then(Value::as_str)
                    .is_some_and(|d| d.eq_ignore_ascii_case(domain))
        })
    }

    /// `POST /activedirectories` (and the admin shortcut): domain required and unique (409).
    pub fn create_ad(
        &mut self,
        body: Option<&Value>,
        org_id: &str,
        now_ms: i64,
    ) -> Result<Map<String, Value>, ApiError> {
        let fields = ad_fields(body, true)?;
        let domain = fields
            .get("domain")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if self.domain_taken(&domain, None) {
            return Err(ApiError::conflict(format!(
                "an Active Directory instance for '{domain}' already exists"
            )));
        }
        let id = self.new_id();
        let mut doc = Map::new();
        doc.insert("id".into(), json!(id));
        doc.insert("domain".into(), json!(domain));
        doc.insert("useCase".into(), json!("UNSET"));
        doc.insert("groupsEnabled".into(), json!(false));
        doc.insert("delegationState".into(), json!("DISABLED"));
        doc.insert("updatedAt".into(), json!(format_ms(now_ms)));
        doc.insert("permission".into(), json!("PERMISSION_OWNER"));
        doc.insert("organizationId".into(), json!(org_id));
        for (k, v) in fields {
            doc.insert(k, v);
        }
        self.ads.insert(id, doc.clone());
        Ok(doc)
    }

    /// `PATCH /activedirectories/{id}`.
    pub fn patch_ad(
        &mut self,
        id: &str,
        body: Option<&Value>,
        now_ms: i64,
    ) -> Result<Map<String, Value>, ApiError> {
        if !self.ads.contains_key(id) {
            return Err(ApiError::not_found("Active Directory instance not found"));
        }
        let fields = ad_fields(body, false)?;
        if let Some(d) = fields.get("domain").and_then(Value::as_str) {
            if self.domain_taken(d, Some(id)) {
                return Err(ApiError::conflict(format!(
                    "an Active Directory instance for '{d}' already exists"
                )));
            }
        }
        let Some(doc) = self.ads.get_mut(id) else {
            return Err(ApiError::not_found("Active Directory instance not found"));
        };
        for (k, v) in fields {
            doc.insert(k, v);
        }
        doc.insert("updatedAt".into(), json!(format_ms(now_ms)));
        Ok(doc.clone())
    }

    /// `DELETE /activedirectories/{id}`: also drops its agents and associations.
    pub fn delete_ad(&mut self, id: &str) -> Result<Map<String, Value>, ApiError> {
        let Some(doc) = self.ads.remove(id) else {
            return Err(ApiError::not_found("Active Directory instance not found"));
        };
        let agent_ids: Vec<String> = self
            .agents
            .values()
            .filter(|a| a.ad_id == id)
            .map(|a| a.id.clone())
            .collect();
        for a in agent_ids {
            if let Some(rec) = self.agents.remove(&a) {
                self.connect_keys.remove(&rec.connect_key);
            }
        }
        if let Some(targets) = self.ad_assoc.remove(id) {
            for (_, t) in targets.keys() {
                if let Some(ads) = self.assoc_rev.get_mut(t) {
                    ads.remove(id);
                }
            }
        }
        self.channel_forget_ad(id);
        Ok(doc)
    }

    pub fn ad_exists(&self, id: &str) -> Result<(), ApiError> {
        if self.ads.contains_key(id) {
            Ok(())
        } else {
            Err(ApiError::not_found("Active Directory instance not found"))
        }
    }

    /// `POST /activedirectories/{id}/agents`: `agentType` (or `agent_type`) SYNC|IMPORT, default SYNC.
    pub fn create_agent(
        &mut self,
        ad_id: &str,
        body: Option<&Value>,
        connect_key: String,
        now_ms: i64,
    ) -> Result<Value, ApiError> {
        self.ad_exists(ad_id)?;
        let m = match body {
            None => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => return Err(ApiError::bad_request("request body must be a JSON object")),
        };
        let t = m
            .and_then(|m| m.get("agentType").or_else(|| m.get("agent_type")))
            .filter(|v| !v.is_null());
        let agent_type = match t {
            None => "SYNC".to_string(),
            Some(Value::String(s)) if s == "SYNC" || s == "IMPORT" => s.clone(),
            Some(_) => {
                return Err(ApiError::coded(
                    400,
                    "agentType must be SYNC or IMPORT",
                    "invalidAgentType",
                ))
            }
        };
        let id = self.new_id();
        let rec = AgentRec {
            id: id.clone(),
            ad_id: ad_id.to_string(),
            agent_type,
            state: "unsealed".into(),
            connect_key: connect_key.clone(),
            key_used: false,
            key_expires_ms: now_ms.saturating_add(CONNECT_KEY_LIFETIME_MS),
            created_ms: now_ms,
            hostname: None,
            host_type: None,
            version: None,
            source_ip: None,
            contact_at_ms: None,
            secret: None,
            payload_key: None,
            waiting: 0,
        };
        let out = rec.created_json();
        self.connect_keys.insert(connect_key, id.clone());
        self.agents.insert(id, rec);
        Ok(out)
    }

    pub fn agent(&self, ad_id: &str, agent_id: &str) -> Result<&AgentRec, ApiError> {
        self.ad_exists(ad_id)?;
        self.agents
            .get(agent_id)
            .filter(|a| a.ad_id == ad_id)
            .ok_or_else(|| ApiError::not_found("agent not found"))
    }

    pub fn agents_of(&self, ad_id: &str) -> Result<Vec<Map<String, Value>>, ApiError> {
        self.ad_exists(ad_id)?;
        Ok(self
            .agents
            .values()
            .filter(|a| a.ad_id == ad_id)
            .filter_map(|a| match a.list_json() {
                Value::Object(o) => Some(o),
                _ => None,
            })
            .collect())
    }

    pub fn delete_agent(&mut self, ad_id: &str, agent_id: &str) -> Result<(), ApiError> {
        self.agent(ad_id, agent_id)?;
        if let Some(rec) = self.agents.remove(agent_id) {
            self.connect_keys.remove(&rec.connect_key);
        }
        self.recompute_primary(ad_id);
        Ok(())
    }

    /// Redeems a connect key: the agent becomes `active` and the key can never be used again.
    pub fn connect_agent(
        &mut self,
        key: &str,
        info: &Map<String, Value>,
        now_ms: i64,
    ) -> Result<Value, ConnectError> {
        let agent_id = self
            .connect_keys
            .get(key)
            .cloned()
            .ok_or(ConnectError::Unknown)?;
        let rec = self
            .agents
            .get_mut(&agent_id)
            .ok_or(ConnectError::Unknown)?;
        if rec.key_used {
            return Err(ConnectError::Used);
        }
        if now_ms >= rec.key_expires_ms {
            return Err(ConnectError::Expired);
        }
        rec.key_used = true;
        rec.state = "active".into();
        rec.contact_at_ms = Some(now_ms);
        let s = |k: &str| info.get(k).and_then(Value::as_str).map(str::to_string);
        rec.hostname = s("hostname").or(rec.hostname.take());
        rec.host_type = s("hostType").or(rec.host_type.take());
        rec.version = s("version").or(rec.version.take());
        rec.source_ip = s("source_ip").or(rec.source_ip.take());
        let ad_id = rec.ad_id.clone();
        self.recompute_primary(&ad_id);
        Ok(json!({"agentId": agent_id, "activedirectoryId": ad_id}))
    }

    /// Emulator-only: set an agent's state (active|inactive) to test primary-agent failover.
    pub fn set_agent_state(
        &mut self,
        agent_id: &str,
        state: &str,
        now_ms: i64,
    ) -> Result<Value, ApiError> {
        if state != "active" && state != "inactive" {
            return Err(ApiError::bad_request("state must be active or inactive"));
        }
        let rec = self
            .agents
            .get_mut(agent_id)
            .ok_or_else(|| ApiError::not_found("agent not found"))?;
        if !rec.key_used {
            return Err(ApiError::conflict(
                "agent has not redeemed its connect key yet",
            ));
        }
        rec.state = state.to_string();
        if state == "active" {
            rec.contact_at_ms = Some(now_ms);
        }
        let ad_id = rec.ad_id.clone();
        let out = rec.list_json();
        self.recompute_primary(&ad_id);
        Ok(out)
    }

    /// Keeps `primaryAgent` / `primaryImportAgent` on an active agent of that type (lowest id wins), or unset.
    fn recompute_primary(&mut self, ad_id: &str) {
        for (agent_type, field) in [("SYNC", "primaryAgent"), ("IMPORT", "primaryImportAgent")] {
            let active = |id: &str| {
                self.agents.get(id).is_some_and(|a| {
                    a.ad_id == ad_id && a.agent_type == agent_type && a.state == "active"
                })
            };
            let current = self
                .ads
                .get(ad_id)
                .and_then(|d| d.get(field))
                .and_then(Value::as_str)
                .map(str::to_string);
            if current.as_deref().is_some_and(active) {
                continue;
            }
            let next = self
                .agents
                .values()
                .find(|a| a.ad_id == ad_id && a.agent_type == agent_type && a.state == "active")
                .map(|a| a.id.clone());
            if let Some(doc) = self.ads.get_mut(ad_id) {
                match next {
                    Some(n) => doc.insert(field.into(), json!(n)),
                    None => doc.remove(field),
                };
            }
        }
    }

    fn target_exists(&self, kind: &str, id: &str) -> bool {
        match kind {
            "user" => self.users.contains_key(id),
            "user_group" => self.groups.contains_key(id),
            _ => false,
        }
    }

    /// Adds/removes/updates the edge AD ↔ (kind, id). `Ok(true)` when an edge was really added or removed.
    pub fn ad_assoc_op(
        &mut self,
        ad_id: &str,
        kind: &str,
        id: &str,
        op: &str,
        attributes: Option<Value>,
        idempotent: bool,
    ) -> Result<bool, ApiError> {
        self.ad_exists(ad_id)?;
        if !self.target_exists(kind, id) {
            return Err(ApiError::not_found(format!("{kind} {id} not found")));
        }
        let key: Target = (kind.to_string(), id.to_string());
        let edges = self.ad_assoc.entry(ad_id.to_string()).or_default();
        let present = edges.contains_key(&key);
        let mut changed = false;
        match op {
            "add" if present => {
                if !idempotent {
                    return Err(ApiError::conflict("already exists"));
                }
            }
            "add" => {
                edges.insert(key, attributes);
                self.assoc_rev
                    .entry(id.to_string())
                    .or_default()
                    .insert(ad_id.to_string());
                changed = true;
            }
            "update" if present => {
                edges.insert(key, attributes);
            }
            "update" => return Err(ApiError::not_found("association not found")),
            _ if present => {
                edges.remove(&key);
                if let Some(ads) = self.assoc_rev.get_mut(id) {
                    ads.remove(ad_id);
                }
                changed = true;
            }
            _ => {
                if !idempotent {
                    return Err(ApiError::not_found("association not found"));
                }
            }
        }
        Ok(changed)
    }

    /// `POST /users/{id}/associations` and `POST /usergroups/{id}/associations`: only `active_directory`
    /// targets exist in the emulator (other target types are 404: no such object).
    pub fn object_assoc_op(
        &mut self,
        kind: &str,
        id: &str,
        op: GraphOp,
        idempotent: bool,
    ) -> Result<bool, ApiError> {
        if !self.target_exists(kind, id) {
            return Err(ApiError::not_found(format!("{kind} not found")));
        }
        if op.kind != "active_directory" {
            return Err(ApiError::not_found(format!(
                "{} {} not found (jcemu models only active_directory)",
                op.kind, op.id
            )));
        }
        if !self.ads.contains_key(&op.id) {
            return Err(ApiError::not_found(format!(
                "active_directory {} not found",
                op.id
            )));
        }
        self.ad_assoc_op(&op.id, kind, id, &op.op, op.attributes, idempotent)
    }

    /// Removes every AD edge to a deleted user or group.
    pub fn remove_target(&mut self, id: &str) {
        if let Some(ads) = self.assoc_rev.remove(id) {
            for ad in ads {
                if let Some(edges) = self.ad_assoc.get_mut(&ad) {
                    edges.retain(|(_, t), _| t != id);
                }
            }
        }
    }

    fn edges(&self, ad_id: &str) -> impl Iterator<Item = (&Target, &Option<Value>)> {
        self.ad_assoc.get(ad_id).into_iter().flat_map(|m| m.iter())
    }

    /// `GET /activedirectories/{id}/associations?targets=…`.
    pub fn ad_associations(
        &self,
        ad_id: &str,
        targets: &[String],
    ) -> Result<Vec<Map<String, Value>>, ApiError> {
        self.ad_exists(ad_id)?;
        Ok(self
            .edges(ad_id)
            .filter(|((k, _), _)| targets.iter().any(|t| t == k))
            .filter_map(|((k, id), a)| match hop(id, k, a.as_ref()) {
                Value::Object(o) => Some(o),
                _ => None,
            })
            .collect())
    }

    /// `GET /users/{id}/associations` and `GET /usergroups/{id}/associations`.
    pub fn object_associations(
        &self,
        kind: &str,
        id: &str,
        targets: &[String],
    ) -> Result<Vec<Map<String, Value>>, ApiError> {
        if !self.target_exists(kind, id) {
            return Err(ApiError::not_found(format!("{kind} not found")));
        }
        if !targets.iter().any(|t| t == "active_directory") {
            return Ok(Vec::new());
        }
        let key: Target = (kind.to_string(), id.to_string());
        Ok(self
            .assoc_rev
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|ad| {
                let attrs = self
                    .ad_assoc
                    .get(ad)
                    .and_then(|e| e.get(&key))
                    .and_then(Option::as_ref);
                match hop(ad, "active_directory", attrs) {
                    Value::Object(o) => Some(o),
                    _ => None,
                }
            })
            .collect())
    }

    /// `GET /activedirectories/{id}/users`: users bound directly or through a bound user group.
    pub fn ad_users(&self, ad_id: &str) -> Result<Vec<Map<String, Value>>, ApiError> {
        self.ad_exists(ad_id)?;
        let mut paths: BTreeMap<String, Vec<Vec<Value>>> = BTreeMap::new();
        for ((kind, id), attrs) in self.edges(ad_id) {
            match kind.as_str() {
                "user" => {
                    paths
                        .entry(id.clone())
                        .or_default()
                        .push(vec![hop(id, "user", attrs.as_ref())])
                }
                _ => {
                    for (u, ma) in self.members.get(id).into_iter().flatten() {
                        paths.entry(u.clone()).or_default().push(vec![
                            hop(id, "user_group", attrs.as_ref()),
                            hop(u, "user", ma.as_ref()),
                        ]);
                    }
                }
            }
        }
        Ok(paths
            .into_iter()
            .map(|(u, p)| with_paths(&u, "user", p))
            .collect())
    }

    /// `GET /activedirectories/{id}/usergroups`.
    pub fn ad_groups(&self, ad_id: &str) -> Result<Vec<Map<String, Value>>, ApiError> {
        self.ad_exists(ad_id)?;
        Ok(self
            .edges(ad_id)
            .filter(|((k, _), _)| k == "user_group")
            .map(|((_, g), a)| {
                with_paths(
                    g,
                    "user_group",
                    vec![vec![hop(g, "user_group", a.as_ref())]],
                )
            })
            .collect())
    }

    /// `GET /users/{id}/activedirectories`: bound directly or through one of the user's groups.
    pub fn user_ads(&self, user_id: &str) -> Result<Vec<Map<String, Value>>, ApiError> {
        if !self.users.contains_key(user_id) {
            return Err(ApiError::not_found("user not found"));
        }
        let mut paths: BTreeMap<String, Vec<Vec<Value>>> = BTreeMap::new();
        let user_key: Target = ("user".into(), user_id.to_string());
        for ad in self.assoc_rev.get(user_id).into_iter().flatten() {
            let attrs = self
                .ad_assoc
                .get(ad)
                .and_then(|e| e.get(&user_key))
                .and_then(Option::as_ref);
            paths
                .entry(ad.clone())
                .or_default()
                .push(vec![hop(ad, "active_directory", attrs)]);
        }
        for g in self.memberof.get(user_id).into_iter().flatten() {
            let ma = self
                .members
                .get(g)
                .and_then(|m| m.get(user_id))
                .and_then(Option::as_ref);
            let gkey: Target = ("user_group".into(), g.clone());
            for ad in self.assoc_rev.get(g).into_iter().flatten() {
                let attrs = self
                    .ad_assoc
                    .get(ad)
                    .and_then(|e| e.get(&gkey))
                    .and_then(Option::as_ref);
                paths.entry(ad.clone()).or_default().push(vec![
                    hop(g, "user_group", ma),
                    hop(ad, "active_directory", attrs),
                ]);
            }
        }
        Ok(paths
            .into_iter()
            .map(|(ad, p)| with_paths(&ad, "active_directory", p))
            .collect())
    }

    /// `GET /usergroups/{id}/activedirectories`.
    pub fn group_ads(&self, group_id: &str) -> Result<Vec<Map<String, Value>>, ApiError> {
        if !self.groups.contains_key(group_id) {
            return Err(ApiError::not_found("user group not found"));
        }
        let key: Target = ("user_group".into(), group_id.to_string());
        Ok(self
            .assoc_rev
            .get(group_id)
            .into_iter()
            .flatten()
            .map(|ad| {
                let attrs = self
                    .ad_assoc
                    .get(ad)
                    .and_then(|e| e.get(&key))
                    .and_then(Option::as_ref);
                with_paths(
                    ad,
                    "active_directory",
                    vec![vec![hop(ad, "active_directory", attrs)]],
                )
            })
            .collect())
    }
}

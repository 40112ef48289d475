//! The emulator's whole state: users, user groups, memberships, AD instances, associations and agents.
//! One `Store` lives behind an `RwLock`; every operation is synchronous and short.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Map, Value};

use crate::clock::format_ms;
use crate::http::ApiError;
use crate::password::PwHash;

pub mod ad;
pub mod channel;
pub mod groups;
pub mod users;

/// First 8 hex digits of every generated id (looks like an ObjectId timestamp; ids sort in creation order).
const ID_PREFIX: u32 = 0x6710_0000;

pub struct UserRec {
    pub doc: Map<String, Value>,
    pub pw: Vec<PwHash>,
    /// `doc` serialised, kept in step by `refresh` (list pages are concatenations of these).
    pub json: Vec<u8>,
}

impl UserRec {
    pub fn new(doc: Map<String, Value>, pw: Vec<PwHash>) -> UserRec {
        let mut u = UserRec {
            doc,
            pw,
            json: Vec::new(),
        };
        u.refresh();
        u
    }

    /// Call after every change of `doc`.
    pub fn refresh(&mut self) {
        self.json = serde_json::to_vec(&self.doc).unwrap_or_default();
    }
}

pub struct AgentRec {
    pub id: String,
    pub ad_id: String,
    pub agent_type: String,
    pub state: String,
    pub connect_key: String,
    pub key_used: bool,
    pub key_expires_ms: i64,
    pub created_ms: i64,
    pub hostname: Option<String>,
    pub host_type: Option<String>,
    pub version: Option<String>,
    pub source_ip: Option<String>,
    pub contact_at_ms: Option<i64>,
    /// Agent channel credentials (set by `POST /__agent-channel/v1/register`; never shown or logged).
    pub secret: Option<String>,
    pub payload_key: Option<[u8; 32]>,
    /// Long polls of this agent in progress (they count as contact for the primary election).
    pub waiting: u32,
}

/// A target of an AD association: ("user" | "user_group", id).
pub type Target = (String, String);

#[derive(Default)]
pub struct Store {
    next_id: u64,
    next_uid: u64,
    pub users: BTreeMap<String, UserRec>,
    by_username: HashMap<String, String>,
    by_email: HashMap<String, String>,
    by_employee_id: HashMap<String, String>,
    pub groups: BTreeMap<String, Map<String, Value>>,
    group_by_name: HashMap<String, String>,
    /// group id → user id → edge attributes
    pub members: BTreeMap<String, BTreeMap<String, Option<Value>>>,
    /// user id → group ids
    pub memberof: HashMap<String, BTreeSet<String>>,
    pub ads: BTreeMap<String, Map<String, Value>>,
    /// AD id → target → edge attributes
    pub ad_assoc: BTreeMap<String, BTreeMap<Target, Option<Value>>>,
    /// target id → AD ids
    pub assoc_rev: HashMap<String, BTreeSet<String>>,
    pub agents: BTreeMap<String, AgentRec>,
    connect_keys: HashMap<String, String>,
    /// The agent channel: event log, cursors, reports (AGENT-CHANNEL.md).
    channel: channel::Channel,
}

impl Store {
    pub fn new() -> Store {
        Store {
            next_uid: 5000,
            ..Store::default()
        }
    }

    /// Next 24-hex id (a counter; never reused, not even after a reset).
    pub fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{ID_PREFIX:08x}{:016x}", self.next_id)
    }

    /// Empties everything except the id counters and the agent channel's sequence.
    pub fn reset(&mut self) {
        let (next_id, next_uid) = (self.next_id, self.next_uid);
        let channel = std::mem::take(&mut self.channel).after_reset();
        *self = Store::default();
        self.next_id = next_id;
        self.next_uid = next_uid;
        self.channel = channel;
    }

    /// The state document of `GET /__emulator/state`.
    pub fn state_document(&self, now_ms: i64) -> Value {
        let users: Vec<Value> = self
            .users
            .values()
            .map(|u| Value::Object(u.doc.clone()))
            .collect();
        let groups: Vec<Value> = self
            .groups
            .values()
            .map(|g| Value::Object(g.clone()))
            .collect();
        let memberships: Vec<Value> = self
            .members
            .iter()
            .flat_map(|(g, us)| us.keys().map(move |u| json!({"group_id": g, "user_id": u})))
            .collect();
        let ads: Vec<Value> = self
            .ads
            .values()
            .map(|a| Value::Object(a.clone()))
            .collect();
        let associations: Vec<Value> = self
            .ad_assoc
            .iter()
            .flat_map(|(ad, ts)| {
                ts.keys()
                    .map(move |(t, id)| json!({"activedirectory_id": ad, "type": t, "id": id}))
            })
            .collect();
        let agents: Vec<Value> = self
            .agents
            .values()
            .map(|a| {
                json!({
                    "activedirectory_id": a.ad_id,
                    "id": a.id,
                    "agentType": a.agent_type,
                    "state": a.state,
                    "connectKeyUsed": a.key_used,
                    "connectKeyExpiresAt": format_ms(a.key_expires_ms),
                    "hostname": a.hostname,
                    "createdAt": format_ms(a.created_ms),
                    "contactAt": a.contact_at_ms.map(format_ms),
                    "primary": self.is_primary(&a.id),
                })
            })
            .collect();
        let passwords: Vec<Value> = self
            .users
            .iter()
            .filter(|(_, u)| !u.pw.is_empty())
            .map(|(id, u)| json!({"user_id": id, "password_date": u.doc.get("password_date").cloned().unwrap_or(Value::Null)}))
            .collect();
        let (agent_channel, agent_reports) = self.channel_state();
        json!({
            "now": format_ms(now_ms),
            "users": users,
            "usergroups": groups,
            "memberships": memberships,
            "activedirectories": ads,
            "associations": associations,
            "agents": agents,
            "passwords": passwords,
            "agentChannel": agent_channel,
            "agentReports": agent_reports,
        })
    }
}

/// A graph operation body `{op, type, id, attributes?}`.
pub struct GraphOp {
    pub op: String,
    pub kind: String,
    pub id: String,
    pub attributes: Option<Value>,
}

impl GraphOp {
    /// Parses and validates `op` (add|remove|update), `type` (one of `types`) and `id`.
    pub fn parse(body: Option<&Value>, types: &[&str]) -> Result<GraphOp, ApiError> {
        let m = body.and_then(Value::as_object).ok_or_else(|| {
            ApiError::bad_request("request body must be a JSON object with op, type and id")
        })?;
        let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
        let op = s("op").ok_or_else(|| {
            ApiError::coded(400, "op is required (add, remove or update)", "nullOp")
        })?;
        if !["add", "remove", "update"].contains(&op.as_str()) {
            return Err(ApiError::coded(
                400,
                format!("invalid op '{op}' (add, remove or update)"),
                "invalidOp",
            ));
        }
        let kind = s("type").ok_or_else(|| ApiError::coded(400, "type is required", "nullType"))?;
        if !types.contains(&kind.as_str()) {
            return Err(ApiError::coded(
                400,
                format!("invalid type '{kind}' (expected {})", types.join(" or ")),
                "invalidType",
            ));
        }
        let id = s("id")
            .filter(|i| !i.is_empty())
            .ok_or_else(|| ApiError::coded(400, "id is required", "nullId"))?;
        let attributes = match m.get("attributes") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => {
                return Err(ApiError::coded(
                    400,
                    "attributes must be an object",
                    "invalidAttributes",
                ))
            }
        };
        Ok(GraphOp {
            op,
            kind,
            id,
            attributes,
        })
    }
}

/// One graph hop `{"to": {"id", "type"}}` (plus edge attributes when set).
pub fn hop(id: &str, kind: &str, attributes: Option<&Value>) -> Value {
    let mut m = Map::new();
    if let Some(a) = attributes {
        m.insert("attributes".into(), a.clone());
    }
    m.insert("to".into(), json!({"id": id, "type": kind}));
    Value::Object(m)
}

/// `GraphObjectWithPaths`.
pub fn with_paths(id: &str, kind: &str, paths: Vec<Vec<Value>>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), Value::String(id.to_string()));
    m.insert("type".into(), Value::String(kind.to_string()));
    m.insert(
        "paths".into(),
        Value::Array(paths.into_iter().map(Value::Array).collect()),
    );
    m
}

//! The agent channel's state (AGENT-CHANNEL.md): the organisation-wide event log, the acked cursor of every
//! (AD instance, agent type), primary election with heartbeats, password payload encryption at delivery, and the
//! agents' reports. The HTTP side is `crate::channel`.

use std::collections::{BTreeMap, VecDeque};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::Store;
use crate::clock::format_ms;

/// The event log keeps at most this many events; the oldest are dropped first. An agent whose acked cursor
/// fell behind the oldest kept event sees a gap (the first `seq` it gets is above `acked + 1`).
pub const EVENT_LOG_CAP: usize = 200_000;

/// One change of the organisation. Deliberately not `Debug`: a password event holds the plaintext.
pub struct Event {
    pub seq: u64,
    pub at_ms: i64,
    pub kind: &'static str,
    pub op: &'static str,
    pub id: String,
    pub group_id: Option<String>,
    pub target_type: Option<String>,
    pub ad_id: Option<String>,
    /// `password` events only: kept in memory, encrypted per agent at delivery, never logged or shown.
    password: Option<String>,
}

/// The newest report of one object in one AD instance.
pub struct Report {
    pub agent_id: String,
    pub kind: String,
    pub seq: u64,
    pub code: String,
    pub message: String,
    pub at_ms: i64,
}

/// A validated report as posted by an agent.
pub struct NewReport {
    pub kind: String,
    pub id: String,
    pub seq: u64,
    pub code: String,
    pub message: String,
}

pub struct Channel {
    /// The last `seq` handed out (0 before the first event); survives `reset`.
    last_seq: u64,
    events: VecDeque<Event>,
    /// (AD instance id, agent type) → acked cursor.
    acked: BTreeMap<(String, String), u64>,
    /// (AD instance id, object id) → newest report.
    reports: BTreeMap<(String, String), Report>,
    /// Carries `last_seq`; long polls wait on it.
    notify: watch::Sender<u64>,
}

impl Default for Channel {
    fn default() -> Self {
        Channel {
            last_seq: 0,
            events: VecDeque::new(),
            acked: BTreeMap::new(),
            reports: BTreeMap::new(),
            notify: watch::channel(0).0,
        }
    }
}

impl Channel {
    /// After `/__emulator/reset`: events, cursors and reports go (they describe objects that no longer exist);
    /// the sequence goes on, so a `seq` is never reused.
    pub fn after_reset(self) -> Channel {
        Channel {
            last_seq: self.last_seq,
            notify: self.notify,
            ..Channel::default()
        }
    }

    pub fn head(&self) -> u64 {
        self.last_seq
    }

    /// A receiver whose value changes whenever an event is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    fn push(&mut self, mut e: Event) {
        self.last_seq += 1;
        e.seq = self.last_seq;
        self.events.push_back(e);
        while self.events.len() > EVENT_LOG_CAP {
            self.events.pop_front();
        }
        self.notify.send_replace(self.last_seq);
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    fn after(&self, after: u64, limit: usize) -> impl Iterator<Item = &Event> {
        // seqs in the deque are consecutive: index = seq - first seq
        let first = self.events.front().map_or(0, |e| e.seq);
        let skip = if after >= first {
            usize::try_from(after - first + 1).unwrap_or(usize::MAX)
        } else {
            0
        };
        self.events.iter().skip(skip).take(limit)
    }
}

/// Why a channel call fails.
pub enum ChannelError {
    /// unknown or deleted agent, or one that did not register through the channel
    Unauthorized,
}

/// What `GET /__agent-channel/v1/changes` answers (`events` only for the primary).
pub struct PollReply {
    pub primary: bool,
    pub primary_agent: Option<String>,
    pub acked: u64,
    pub head: u64,
    pub events: Vec<Value>,
}

impl PollReply {
    pub fn to_json(&self) -> Value {
        json!({
            "role": if self.primary { "primary" } else { "standby" },
            "primaryAgent": self.primary_agent,
            "acked": self.acked,
            "head": self.head,
            "events": self.events,
        })
    }
}

/// `primaryAgent` for SYNC agents, `primaryImportAgent` for IMPORT agents (as on the AD instance).
pub fn primary_field(agent_type: &str) -> &'static str {
    if agent_type == "IMPORT" {
        "primaryImportAgent"
    } else {
        "primaryAgent"
    }
}

fn graph_op(op: &str) -> &'static str {
    if op == "add" {
        "add"
    } else {
        "remove"
    }
}

/// The delivered form of a password: `hex(nonce ‖ ciphertext ‖ tag)`, AAD `"<agentId>|<userId>|<seq>"`.
fn encrypt_payload(
    key: &[u8; 32],
    agent_id: &str,
    user_id: &str,
    seq: u64,
    password: &str,
) -> Option<String> {
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).ok()?;
    let key = LessSafeKey::new(unbound);
    let nonce_bytes: [u8; NONCE_LEN] = crate::channel::random_bytes()?;
    let aad = format!("{agent_id}|{user_id}|{seq}");
    let mut buf = password.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce_bytes),
        Aad::from(aad.as_bytes()),
        &mut buf,
    )
    .ok()?;
    let mut out = String::with_capacity((NONCE_LEN + buf.len()) * 2);
    for b in nonce_bytes.iter().chain(buf.iter()) {
        out.push_str(&format!("{b:02x}"));
    }
    Some(out)
}

/// `ok` → 200, `rejected` → 422, `error` → 500 (`SyncStatus.code` is an integer).
fn status_code(code: &str) -> u16 {
    match code {
        "ok" => 200,
        "rejected" => 422,
        _ => 500,
    }
}

impl Store {
    fn push_event(
        &mut self,
        at_ms: i64,
        kind: &'static str,
        op: &'static str,
        id: &str,
        extra: (Option<&str>, Option<&str>, Option<&str>),
        password: Option<&str>,
    ) {
        let (group_id, target_type, ad_id) = extra;
        self.channel.push(Event {
            seq: 0,
            at_ms,
            kind,
            op,
            id: id.to_string(),
            group_id: group_id.map(str::to_string),
            target_type: target_type.map(str::to_string),
            ad_id: ad_id.map(str::to_string),
            password: password.map(str::to_string),
        });
    }

    /// `user` create / update / delete.
    pub fn event_user(&mut self, at_ms: i64, op: &'static str, id: &str) {
        self.push_event(at_ms, "user", op, id, (None, None, None), None);
    }

    /// `password` update (the plaintext stays in memory with the event).
    pub fn event_password(&mut self, at_ms: i64, user_id: &str, password: &str) {
        self.push_event(
            at_ms,
            "password",
            "update",
            user_id,
            (None, None, None),
            Some(password),
        );
    }

    /// `user_group` create / update / delete.
    pub fn event_group(&mut self, at_ms: i64, op: &'static str, id: &str) {
        self.push_event(at_ms, "user_group", op, id, (None, None, None), None);
    }

    /// `membership` add / remove (`op` as in the graph operation).
    pub fn event_member(&mut self, at_ms: i64, op: &str, group_id: &str, user_id: &str) {
        self.push_event(
            at_ms,
            "membership",
            graph_op(op),
            user_id,
            (Some(group_id), None, None),
            None,
        );
    }

    /// `association` add / remove between an AD instance and a user or user group.
    pub fn event_association(
        &mut self,
        at_ms: i64,
        op: &str,
        ad_id: &str,
        target_type: &str,
        id: &str,
    ) {
        self.push_event(
            at_ms,
            "association",
            graph_op(op),
            id,
            (None, Some(target_type), Some(ad_id)),
            None,
        );
    }

    pub fn channel_subscribe(&self) -> watch::Receiver<u64> {
        self.channel.subscribe()
    }

    /// After a successful connect-key redemption: the agent's channel credentials.
    pub fn set_channel_credentials(
        &mut self,
        agent_id: &str,
        secret: String,
        payload_key: [u8; 32],
    ) {
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.secret = Some(secret);
            a.payload_key = Some(payload_key);
        }
    }

    /// Whether the agent is the primary of its type on its AD instance.
    pub fn is_primary(&self, agent_id: &str) -> bool {
        self.primary_of(agent_id).as_deref() == Some(agent_id)
    }

    fn primary_of(&self, agent_id: &str) -> Option<String> {
        let a = self.agents.get(agent_id)?;
        self.ads
            .get(&a.ad_id)?
            .get(primary_field(&a.agent_type))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// The agent whose bearer token is `<agent_id>.<secret>` (compared in constant time).
    pub fn channel_auth(&self, agent_id: &str, secret: &str) -> Result<(), ChannelError> {
        let a = self
            .agents
            .get(agent_id)
            .ok_or(ChannelError::Unauthorized)?;
        let stored = a.secret.as_deref().ok_or(ChannelError::Unauthorized)?;
        let (x, y) = (stored.as_bytes(), secret.as_bytes());
        let diff = x
            .iter()
            .zip(y.iter())
            .fold(u8::from(x.len() != y.len()), |acc, (p, q)| acc | (p ^ q));
        if diff == 0 {
            Ok(())
        } else {
            Err(ChannelError::Unauthorized)
        }
    }

    /// A long poll in progress counts as contact (the primary is not replaced while it waits).
    pub fn channel_waiting(&mut self, agent_id: &str, delta: i32) {
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.waiting = a.waiting.saturating_add_signed(delta);
        }
    }

    /// The heartbeat and election part of a poll: the caller becomes `active` with `contactAt = now`; if its
    /// AD instance has no primary of its type, or the primary is inactive or has not been in contact for more
    /// than `timeout_ms` (and is not in a long poll), the old primary becomes `inactive` and the caller primary.
    fn heartbeat(
        &mut self,
        agent_id: &str,
        now_ms: i64,
        timeout_ms: u64,
    ) -> Result<bool, ChannelError> {
        let me = self
            .agents
            .get_mut(agent_id)
            .ok_or(ChannelError::Unauthorized)?;
        if me.secret.is_none() {
            return Err(ChannelError::Unauthorized);
        }
        me.contact_at_ms = Some(now_ms);
        me.state = "active".into();
        let ad_id = me.ad_id.clone();
        let field = primary_field(&me.agent_type);
        let current = self
            .ads
            .get(&ad_id)
            .and_then(|d| d.get(field))
            .and_then(Value::as_str)
            .map(str::to_string);
        if current.as_deref() == Some(agent_id) {
            return Ok(true);
        }
        let timeout = i64::try_from(timeout_ms).unwrap_or(i64::MAX);
        let replace = match current.as_deref().and_then(|c| self.agents.get(c)) {
            None => true,
            Some(p) => {
                p.state != "active"
                    || (p.waiting == 0
                        && p.contact_at_ms
                            .is_none_or(|c| now_ms.saturating_sub(c) > timeout))
            }
        };
        if !replace {
            return Ok(false);
        }
        if let Some(old) = current.as_deref().and_then(|c| self.agents.get_mut(c)) {
            old.state = "inactive".into();
        }
        if let Some(doc) = self.ads.get_mut(&ad_id) {
            doc.insert(field.into(), json!(agent_id));
        }
        Ok(true)
    }

    /// Bound directly or through a bound user group.
    pub fn user_in_scope(&self, ad_id: &str, user_id: &str) -> bool {
        let Some(edges) = self.ad_assoc.get(ad_id) else {
            return false;
        };
        if edges.contains_key(&("user".to_string(), user_id.to_string())) {
            return true;
        }
        self.memberof.get(user_id).is_some_and(|gs| {
            gs.iter()
                .any(|g| edges.contains_key(&("user_group".to_string(), g.clone())))
        })
    }

    fn event_json(&self, e: &Event, agent_id: &str, ad_id: &str, key: Option<&[u8; 32]>) -> Value {
        let mut m = Map::new();
        m.insert("seq".into(), json!(e.seq));
        m.insert("at".into(), json!(format_ms(e.at_ms)));
        m.insert("kind".into(), json!(e.kind));
        m.insert("op".into(), json!(e.op));
        m.insert("id".into(), json!(e.id));
        if let Some(g) = &e.group_id {
            m.insert("groupId".into(), json!(g));
        }
        if let Some(t) = &e.target_type {
            m.insert("targetType".into(), json!(t));
        }
        if let Some(a) = &e.ad_id {
            m.insert("activedirectoryId".into(), json!(a));
        }
        if e.kind == "password" {
            let payload = match (&e.password, key) {
                (Some(p), Some(k)) if self.user_in_scope(ad_id, &e.id) => {
                    encrypt_payload(k, agent_id, &e.id, e.seq, p)
                }
                _ => None,
            };
            m.insert("payload".into(), json!(payload));
        }
        Value::Object(m)
    }

    /// One pass of `GET /__agent-channel/v1/changes` (heartbeat, election, acknowledgement, events).
    pub fn channel_poll(
        &mut self,
        agent_id: &str,
        after: u64,
        limit: usize,
        now_ms: i64,
        timeout_ms: u64,
    ) -> Result<PollReply, ChannelError> {
        let primary = self.heartbeat(agent_id, now_ms, timeout_ms)?;
        let (ad_id, agent_type, key) = match self.agents.get(agent_id) {
            Some(a) => (a.ad_id.clone(), a.agent_type.clone(), a.payload_key),
            None => return Err(ChannelError::Unauthorized),
        };
        let head = self.channel.head();
        let cursor = self
            .channel
            .acked
            .entry((ad_id.clone(), agent_type))
            .or_insert(0);
        if primary {
            *cursor = (*cursor).max(after.min(head));
        }
        let acked = *cursor;
        let events = if primary {
            self.channel
                .after(acked, limit)
                .map(|e| self.event_json(e, agent_id, &ad_id, key.as_ref()))
                .collect()
        } else {
            Vec::new()
        };
        Ok(PollReply {
            primary,
            primary_agent: self.primary_of(agent_id),
            acked,
            head,
            events,
        })
    }

    /// `POST /__agent-channel/v1/reports`: keeps the newest report (highest `seq`; the later one on a tie) per
    /// (AD instance, object).
    pub fn channel_reports(
        &mut self,
        agent_id: &str,
        reports: Vec<NewReport>,
        now_ms: i64,
    ) -> Result<(), ChannelError> {
        let ad_id = match self.agents.get(agent_id) {
            Some(a) if a.secret.is_some() => a.ad_id.clone(),
            _ => return Err(ChannelError::Unauthorized),
        };
        for r in reports {
            let key = (ad_id.clone(), r.id);
            if self
                .channel
                .reports
                .get(&key)
                .is_some_and(|old| old.seq > r.seq)
            {
                continue;
            }
            self.channel.reports.insert(
                key,
                Report {
                    agent_id: agent_id.to_string(),
                    kind: r.kind,
                    seq: r.seq,
                    code: r.code,
                    message: r.message,
                    at_ms: now_ms,
                },
            );
        }
        Ok(())
    }

    /// `SyncStatus` of an object in an AD instance (`GET /activedirectories/{id}/users?syncStatus=true`):
    /// `syncedAt` = when the report arrived, `code` = 200 ok | 422 rejected | 500 error, `message` = the report's
    /// message (or its code when empty), `details` = `[{"agentId", "kind", "seq", "result"}]`.
    pub fn sync_status(&self, ad_id: &str, object_id: &str) -> Option<Value> {
        let r = self
            .channel
            .reports
            .get(&(ad_id.to_string(), object_id.to_string()))?;
        let message = if r.message.is_empty() {
            r.code.clone()
        } else {
            r.message.clone()
        };
        Some(json!({
            "syncedAt": format_ms(r.at_ms),
            "code": status_code(&r.code),
            "message": message,
            "details": [{"agentId": r.agent_id, "kind": r.kind, "seq": r.seq, "result": r.code}],
        }))
    }

    /// Drops the cursors and reports of a deleted AD instance.
    pub fn channel_forget_ad(&mut self, ad_id: &str) {
        self.channel.acked.retain(|(a, _), _| a != ad_id);
        self.channel.reports.retain(|(a, _), _| a != ad_id);
    }

    /// `agentChannel` and `agentReports` of the state document (no secrets, keys or passwords).
    pub fn channel_state(&self) -> (Value, Value) {
        let cursors: Vec<Value> = self
            .channel
            .acked
            .iter()
            .map(|((ad, t), acked)| {
                let primary = self
                    .ads
                    .get(ad)
                    .and_then(|d| d.get(primary_field(t)))
                    .cloned()
                    .unwrap_or(Value::Null);
                json!({"activedirectoryId": ad, "agentType": t, "acked": acked, "primaryAgent": primary})
            })
            .collect();
        let agents: Vec<Value> = self
            .agents
            .values()
            .filter(|a| a.secret.is_some())
            .map(|a| {
                json!({
                    "id": a.id,
                    "activedirectoryId": a.ad_id,
                    "agentType": a.agent_type,
                    "state": a.state,
                    "contactAt": a.contact_at_ms.map(format_ms),
                    "primary": self.is_primary(&a.id),
                    "polling": a.waiting > 0,
                })
            })
            .collect();
        let channel = json!({
            "head": self.channel.head(),
            "oldestSeq": self.channel.events.front().map(|e| e.seq),
            "events": self.channel.events.len(),
            "eventLogCap": EVENT_LOG_CAP,
            "cursors": cursors,
            "agents": agents,
        });
        let reports: Vec<Value> = self
            .channel
            .reports
            .iter()
            .map(|((ad, id), r)| {
                json!({
                    "activedirectoryId": ad,
                    "id": id,
                    "kind": r.kind,
                    "seq": r.seq,
                    "code": r.code,
                    "message": r.message,
                    "agentId": r.agent_id,
                    "receivedAt": format_ms(r.at_ms),
                })
            })
            .collect();
        (channel, Value::Array(reports))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_bounded_and_seq_survives_reset() {
        let mut c = Channel::default();
        for i in 0..(EVENT_LOG_CAP + 5) {
            c.push(Event {
                seq: 0,
                at_ms: 0,
                kind: "user",
                op: "create",
                id: format!("{i}"),
                group_id: None,
                target_type: None,
                ad_id: None,
                password: None,
            });
        }
        assert_eq!(c.events.len(), EVENT_LOG_CAP);
        assert_eq!(c.events.front().map(|e| e.seq), Some(6));
        assert_eq!(c.after(0, 1).next().map(|e| e.seq), Some(6));
        assert_eq!(
            c.after(10, 2).map(|e| e.seq).collect::<Vec<_>>(),
            vec![11, 12]
        );
        assert_eq!(c.after(c.head(), 10).count(), 0);
        let head = c.head();
        let c = c.after_reset();
        assert_eq!(c.head(), head);
        assert!(c.events.is_empty());
    }

    #[test]
    fn payload_round_trip() {
        let key = [7u8; 32];
        let hex = encrypt_payload(&key, "a", "u", 3, "S3cret!").expect("encrypts");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect();
        assert_eq!(bytes.len(), NONCE_LEN + 7 + 16);
        let (n, ct) = bytes.split_at(NONCE_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(n);
        let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("key"));
        let mut buf = ct.to_vec();
        let plain = k
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(b"a|u|3"),
                &mut buf,
            )
            .map(|p| p.to_vec())
            .expect("decrypts");
        assert_eq!(plain, b"S3cret!");
    }
}

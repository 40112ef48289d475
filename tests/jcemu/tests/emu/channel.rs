//! The agent channel stand-in (AGENT-CHANNEL.md): register, auth, the event log, acknowledgement and primary
//! failover, long polls, password payloads, reports as `syncStatus`, and spec conformance with the channel in use.

use std::time::{Duration, Instant};

use reqwest::Method;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde_json::{json, Value};

use crate::common::*;

const CH: &str = "/__agent-channel/v1";

struct Agent {
    id: String,
    token: String,
    key: [u8; 32],
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `POST /api/v2/activedirectories/{ad}/agents` → (agent id, connect key).
async fn new_agent(e: &Emu, ad: &str) -> (String, String) {
    let r = e
        .post(
            &format!("/api/v2/activedirectories/{ad}/agents"),
            &json!({"agentType": "SYNC"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let key = r.json["connectKey"]
        .as_str()
        .expect("connectKey")
        .to_string();
    (r.id(), key)
}

async fn register(e: &Emu, key: &str) -> Resp {
    e.raw(
        Method::POST,
        &format!("{CH}/register"),
        Some(&json!({"connectKey": key, "hostname": "dc1.alpha.test", "version": "1.0", "hostType": "DOMAIN_CONTROLLER"})),
        &[],
    )
    .await
}

/// A new agent of `ad`, registered on the channel.
async fn join(e: &Emu, ad: &str) -> Agent {
    let (id, key) = new_agent(e, ad).await;
    let r = register(e, &key).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let secret = r.json["agentSecret"].as_str().expect("secret");
    let key_hex = r.json["payloadKey"].as_str().expect("payloadKey");
    let mut key = [0u8; 32];
    key.copy_from_slice(&unhex(key_hex));
    Agent {
        token: format!("{id}.{secret}"),
        id,
        key,
    }
}

async fn poll(e: &Emu, a: &Agent, query: &str) -> Resp {
    let auth = format!("Bearer {}", a.token);
    e.raw(
        Method::GET,
        &format!("{CH}/changes?{query}"),
        None,
        &[("authorization", &auth)],
    )
    .await
}

async fn report(e: &Emu, a: &Agent, body: &Value) -> Resp {
    let auth = format!("Bearer {}", a.token);
    e.raw(
        Method::POST,
        &format!("{CH}/reports"),
        Some(body),
        &[("authorization", &auth)],
    )
    .await
}

fn events(r: &Resp) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["events"].as_array().cloned().unwrap_or_default()
}

fn seqs(evs: &[Value]) -> Vec<u64> {
    evs.iter().filter_map(|e| e["seq"].as_u64()).collect()
}

/// (kind, op, id) of each event.
fn summary(evs: &[Value]) -> Vec<(String, String, String)> {
    evs.iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("kind"), s("op"), s("id"))
        })
        .collect()
}

fn ev(kind: &str, op: &str, id: &str) -> (String, String, String) {
    (kind.into(), op.into(), id.into())
}

fn decrypt(a: &Agent, user: &str, seq: u64, payload: &str) -> Option<String> {
    let bytes = unhex(payload);
    let (n, ct) = bytes.split_at(NONCE_LEN);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(n);
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &a.key).expect("key"));
    let aad = format!("{}|{user}|{seq}", a.id);
    let mut buf = ct.to_vec();
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut buf,
        )
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

async fn assoc(e: &Emu, path: &str, op: &str, kind: &str, id: &str) -> u16 {
    e.post(path, &json!({"op": op, "type": kind, "id": id}))
        .await
        .status
}

async fn settings(e: &Emu, body: &Value) {
    let r = e.admin(Method::PUT, "/settings", Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn register_reuse_expiry_unknown() {
    let e = default().await;
    let ad = e.create_ad("DC=alpha;DC=test").await;
    let (agent, key) = new_agent(&e, &ad).await;
    let r = register(&e, &key).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["agentId"], agent.as_str());
    assert_eq!(r.json["activedirectoryId"], ad.as_str());
    assert_eq!(r.json["domain"], "DC=alpha;DC=test");
    assert_eq!(r.json["primary"], true);
    let secret = r.json["agentSecret"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let payload_key = r.json["payloadKey"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(is_hex(&secret, 64), "{secret}");
    assert!(is_hex(&payload_key, 64), "{payload_key}");
    let g = e
        .get(&format!("/api/v2/activedirectories/{ad}/agents/{agent}"))
        .await;
    assert_eq!(g.json["state"], "active");
    assert_eq!(g.json["hostname"], "dc1.alpha.test");
    assert_eq!(g.json["hostType"], "DOMAIN_CONTROLLER");
    assert_eq!(
        e.get(&format!("/api/v2/activedirectories/{ad}")).await.json["primaryAgent"],
        agent.as_str()
    );

    let again = register(&e, &key).await;
    assert_eq!(again.status, 410);
    assert_eq!(again.json["code"], "connect_key_used");
    let unknown = register(&e, "0000000000000000000000000000000000000000").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json["code"], "connect_key_unknown");
    for body in [
        json!({}),
        json!({"connectKey": ""}),
        json!({"connectKey": 5}),
        json!({"connectKey": key, "hostType": "LAPTOP"}),
        json!([1]),
    ] {
        let r = e
            .raw(Method::POST, &format!("{CH}/register"), Some(&body), &[])
            .await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert_eq!(r.json["code"], "bad_request");
    }
    let r = e
        .raw(Method::POST, &format!("{CH}/register"), None, &[])
        .await;
    assert_eq!(r.status, 400);

    // a second agent is registered as standby
    let (_, key2) = new_agent(&e, &ad).await;
    let r = register(&e, &key2).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json["primary"], false);

    // a key redeemed through /__emulator/agents/connect is used for the channel too
    let (_, key3) = new_agent(&e, &ad).await;
    let c = e
        .admin(
            Method::POST,
            "/agents/connect",
            Some(&json!({"connectKey": key3, "hostname": "dc3"})),
        )
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(register(&e, &key3).await.json["code"], "connect_key_used");

    // expiry by the emulator clock
    let (_, key4) = new_agent(&e, &ad).await;
    e.admin(
        Method::POST,
        "/clock",
        Some(&json!({"advance_seconds": 7 * 24 * 3600})),
    )
    .await;
    let r = register(&e, &key4).await;
    assert_eq!(r.status, 410);
    assert_eq!(r.json["code"], "connect_key_expired");

    // secrets never reach the state document
    let st = e.admin(Method::GET, "/state", None).await.text;
    assert!(!st.contains(&secret) && !st.contains(&payload_key) && !st.contains(&key));
    e.emu.shutdown().await;
}

#[tokio::test]
async fn auth() {
    let e = default().await;
    let ad = e.create_ad("DC=auth;DC=test").await;
    let a = join(&e, &ad).await;
    let b = join(&e, &ad).await;
    assert_eq!(poll(&e, &a, "").await.status, 200);
    let bad_tokens = [
        String::new(),
        format!("Basic {}", a.token),
        format!("Bearer {}", a.id),
        format!("Bearer {}.{}", a.id, "0".repeat(64)),
        format!("Bearer {}.", a.id),
        // b's secret with a's id
        format!(
            "Bearer {}.{}",
            a.id,
            b.token.split_once('.').map(|x| x.1).unwrap_or_default()
        ),
        format!("Bearer ffffffffffffffffffffffff.{}", "0".repeat(64)),
    ];
    for t in &bad_tokens {
        let mut headers = vec![];
        if !t.is_empty() {
            headers.push(("authorization", t.as_str()));
        }
        for (method, path) in [(Method::GET, "changes"), (Method::POST, "reports")] {
            let body = json!({"reports": []});
            let r = e
                .raw(
                    method.clone(),
                    &format!("{CH}/{path}"),
                    (method == Method::POST).then_some(&body),
                    &headers,
                )
                .await;
            assert_eq!(r.status, 401, "{t}: {}", r.text);
            assert_eq!(r.json["code"], "unauthorized");
        }
    }
    // an agent connected through /__emulator/agents/connect has no channel secret
    let (plain, key) = new_agent(&e, &ad).await;
    e.admin(
        Method::POST,
        "/agents/connect",
        Some(&json!({"connectKey": key})),
    )
    .await;
    let r = e
        .raw(
            Method::GET,
            &format!("{CH}/changes"),
            None,
            &[("authorization", &format!("Bearer {plain}."))],
        )
        .await;
    assert_eq!(r.status, 401);

    // a deleted agent
    assert_eq!(
        e.delete(&format!("/api/v2/activedirectories/{ad}/agents/{}", a.id))
            .await
            .status,
        204
    );
    let r = poll(&e, &a, "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json["code"], "unauthorized");
    assert_eq!(poll(&e, &b, "").await.status, 200);

    // bad parameters are 400
    for q in [
        "after=abc",
        "after=-1",
        "wait_ms=30001",
        "limit=0",
        "limit=1001",
    ] {
        let r = poll(&e, &b, q).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert_eq!(r.json["code"], "bad_request");
    }
    e.emu.shutdown().await;
}

#[tokio::test]
async fn events_for_each_row_of_the_table() {
    let e = default().await;
    e.admin(
        Method::POST,
        "/clock",
        Some(&json!({"now": "2030-01-02T03:04:05Z"})),
    )
    .await;
    let ad = e.create_ad("DC=events;DC=test").await;
    let a = join(&e, &ad).await;
    let first = poll(&e, &a, "").await;
    assert_eq!(
        first.json["head"], 0,
        "AD instances and agents make no events"
    );
    assert_eq!(first.json["role"], "primary");
    assert_eq!(first.json["primaryAgent"], a.id.as_str());

    let mut want = Vec::new();
    // users (with passwords), state changes
    let r = e
        .post(
            "/api/systemusers",
            &json!({"username": "ev1", "email": "ev1@x.test", "password": "Str0ng!Pass"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let u1 = r.id();
    want.push(ev("user", "create", &u1));
    want.push(ev("password", "update", &u1));
    let r = e
        .post(
            "/api/systemusers",
            &json!({"username": "ev2", "email": "ev2@x.test", "state": "STAGED"}),
        )
        .await;
    let u2 = r.id();
    want.push(ev("user", "create", &u2));
    let users = format!("/api/systemusers/{u1}");
    assert_eq!(e.put(&users, &json!({"jobTitle": "Dev"})).await.status, 200);
    want.push(ev("user", "update", &u1));
    assert_eq!(
        e.put(&users, &json!({"password": "An0ther!Pass"}))
            .await
            .status,
        200
    );
    want.push(ev("user", "update", &u1));
    want.push(ev("password", "update", &u1));
    assert_eq!(
        e.post(
            &format!("{users}/password"),
            &json!({"password": "Th1rd!Pass"})
        )
        .await
        .status,
        200
    );
    want.push(ev("password", "update", &u1));
    let s = e
        .call(Method::POST, &format!("{users}/state/suspend"), None)
        .await;
    assert_eq!(s.status, 200, "{}", s.text);
    want.push(ev("user", "update", &u1));
    let act = format!("/api/systemusers/{u2}/state/activate");
    assert_eq!(e.post(&act, &json!({})).await.status, 200);
    want.push(ev("user", "update", &u2));
    // failures make no events
    assert_eq!(e.post(&act, &json!({})).await.status, 409);
    assert_eq!(e.put(&users, &json!({"state": "STAGED"})).await.status, 400);
    assert_eq!(
        e.post(&format!("{users}/password"), &json!({"password": "weak"}))
            .await
            .status,
        400
    );
    assert_eq!(
        e.post(
            "/api/systemusers",
            &json!({"username": "ev1", "email": "dup@x.test"})
        )
        .await
        .status,
        400
    );

    // groups and members
    let g = e.create_group("Events").await;
    want.push(ev("user_group", "create", &g));
    assert_eq!(
        e.put(
            &format!("/api/v2/usergroups/{g}"),
            &json!({"name": "Events2"})
        )
        .await
        .status,
        200
    );
    want.push(ev("user_group", "update", &g));
    let members = format!("/api/v2/usergroups/{g}/members");
    assert_eq!(assoc(&e, &members, "add", "user", &u1).await, 204);
    want.push(ev("membership", "add", &u1));
    assert_eq!(assoc(&e, &members, "add", "user", &u1).await, 409);
    assert_eq!(assoc(&e, &members, "update", "user", &u1).await, 204);
    assert_eq!(assoc(&e, &members, "remove", "user", &u1).await, 204);
    want.push(ev("membership", "remove", &u1));
    assert_eq!(assoc(&e, &members, "remove", "user", &u1).await, 404);
    // idempotent mode: a no-op add/remove answers 204 but is no change
    settings(&e, &json!({"graph_idempotent": true})).await;
    assert_eq!(assoc(&e, &members, "remove", "user", &u1).await, 204);
    settings(&e, &json!({"graph_idempotent": false})).await;

    // associations from the AD side, the user side and the group side
    let ad_assoc = format!("/api/v2/activedirectories/{ad}/associations");
    assert_eq!(assoc(&e, &ad_assoc, "add", "user", &u1).await, 204);
    want.push(ev("association", "add", &u1));
    assert_eq!(assoc(&e, &ad_assoc, "add", "user", &u1).await, 409);
    assert_eq!(
        assoc(
            &e,
            &format!("/api/v2/users/{u1}/associations"),
            "remove",
            "active_directory",
            &ad
        )
        .await,
        204
    );
    want.push(ev("association", "remove", &u1));
    assert_eq!(
        assoc(
            &e,
            &format!("/api/v2/usergroups/{g}/associations"),
            "add",
            "active_directory",
            &ad
        )
        .await,
        204
    );
    want.push(ev("association", "add", &g));
    assert_eq!(assoc(&e, &ad_assoc, "remove", "user_group", &g).await, 204);
    want.push(ev("association", "remove", &g));

    // deletes
    assert_eq!(
        e.delete(&format!("/api/v2/usergroups/{g}")).await.status,
        204
    );
    want.push(ev("user_group", "delete", &g));
    assert_eq!(
        e.delete(&format!("/api/systemusers/{u2}")).await.status,
        200
    );
    want.push(ev("user", "delete", &u2));
    assert_eq!(e.delete(&users).await.status, 200);
    want.push(ev("user", "delete", &u1));

    let r = poll(&e, &a, "after=0&limit=1000").await;
    let evs = events(&r);
    assert_eq!(summary(&evs), want);
    let n = want.len() as u64;
    assert_eq!(seqs(&evs), (1..=n).collect::<Vec<_>>());
    assert_eq!(r.json["head"], n);
    assert_eq!(r.json["acked"], 0);
    for x in &evs {
        let at = x["at"].as_str().unwrap_or_default();
        assert!(
            at.len() == 24
                && at.starts_with("2030-01-02T03:0")
                && at.ends_with('Z')
                && &at[19..20] == ".",
            "{at}"
        );
        let keys: Vec<&str> = x
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        match x["kind"].as_str() {
            Some("membership") => {
                assert_eq!(x["groupId"], g.as_str());
                assert!(x.get("targetType").is_none() && x.get("payload").is_none());
            }
            Some("association") => {
                assert_eq!(x["activedirectoryId"], ad.as_str());
                let t = if x["id"] == g.as_str() {
                    "user_group"
                } else {
                    "user"
                };
                assert_eq!(x["targetType"], t);
                assert!(x.get("groupId").is_none());
            }
            Some("password") => {
                // u1 was never in the AD instance's scope when delivered (it is deleted now)
                assert_eq!(x["payload"], Value::Null);
            }
            _ => assert_eq!(keys.len(), 5, "{x}"),
        }
    }
    // limit
    let r = poll(&e, &a, "after=0&limit=2").await;
    assert_eq!(seqs(&events(&r)), vec![1, 2]);
    e.emu.shutdown().await;
}

#[tokio::test]
async fn ack_failover_and_standby() {
    let e = default().await;
    settings(&e, &json!({"agentHeartbeatTimeoutMs": 5000})).await;
    assert_eq!(
        e.admin(Method::GET, "/settings", None).await.json["agentHeartbeatTimeoutMs"],
        5000
    );
    let r = e
        .admin(
            Method::PUT,
            "/settings",
            Some(&json!({"agentHeartbeatTimeoutMs": 0})),
        )
        .await;
    assert_eq!(r.status, 400);
    let ad = e.create_ad("DC=fail;DC=test").await;
    let a = join(&e, &ad).await;
    let b = join(&e, &ad).await;
    for i in 0..5 {
        e.create_user(&format!("ack{i}")).await;
    }
    let r = poll(&e, &a, "after=0").await;
    assert_eq!(seqs(&events(&r)), vec![1, 2, 3, 4, 5]);
    assert_eq!(r.json["role"], "primary");
    // `after` acknowledges
    let r = poll(&e, &a, "after=3").await;
    assert_eq!(r.json["acked"], 3);
    assert_eq!(seqs(&events(&r)), vec![4, 5]);
    // the cursor never goes back
    let r = poll(&e, &a, "after=1").await;
    assert_eq!(r.json["acked"], 3);
    assert_eq!(seqs(&events(&r)), vec![4, 5]);

    // standby: answered at once, even with a long wait
    let started = Instant::now();
    let r = poll(&e, &b, "after=0&wait_ms=10000").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        r.json,
        json!({"role": "standby", "primaryAgent": a.id, "acked": 3, "head": 5, "events": []})
    );

    // the primary falls silent for longer than the timeout: the next agent to poll takes over, continuing
    // from the acked cursor (4 and 5 again, not 1..3)
    e.admin(Method::POST, "/clock", Some(&json!({"advance_seconds": 6})))
        .await;
    let r = poll(&e, &b, "after=0").await;
    assert_eq!(r.json["role"], "primary");
    assert_eq!(r.json["primaryAgent"], b.id.as_str());
    assert_eq!(r.json["acked"], 3);
    assert_eq!(seqs(&events(&r)), vec![4, 5]);
    let adoc = e.get(&format!("/api/v2/activedirectories/{ad}")).await;
    assert_eq!(adoc.json["primaryAgent"], b.id.as_str());
    let old = e
        .get(&format!("/api/v2/activedirectories/{ad}/agents/{}", a.id))
        .await;
    assert_eq!(old.json["state"], "inactive");
    // the old primary comes back: active again, but standby
    let r = poll(&e, &a, "after=5").await;
    assert_eq!(r.json["role"], "standby");
    assert_eq!(r.json["acked"], 3, "a standby acknowledges nothing");
    let old = e
        .get(&format!("/api/v2/activedirectories/{ad}/agents/{}", a.id))
        .await;
    assert_eq!(old.json["state"], "active");
    // after beyond head acknowledges up to head
    let r = poll(&e, &b, "after=99").await;
    assert_eq!(r.json["acked"], 5);
    assert_eq!(events(&r), Vec::<Value>::new());

    // the state document shows the channel
    let st = e.admin(Method::GET, "/state", None).await.json;
    let ch = &st["agentChannel"];
    assert_eq!(ch["head"], 5);
    assert_eq!(
        ch["cursors"],
        json!([{"activedirectoryId": ad, "agentType": "SYNC", "acked": 5, "primaryAgent": b.id}])
    );
    let agents = ch["agents"].as_array().cloned().unwrap_or_default();
    assert_eq!(agents.len(), 2);
    for x in &agents {
        assert_eq!(x["primary"], x["id"] == b.id.as_str());
        assert_eq!(x["state"], "active");
        assert!(x["contactAt"].is_string());
    }

    // a primary in a long poll is not replaced, even when its last contact is older than the timeout
    settings(&e, &json!({"agentHeartbeatTimeoutMs": 500})).await;
    let waiter = poll(&e, &b, "after=5&wait_ms=2500");
    let other = async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        poll(&e, &a, "after=5").await
    };
    let (w, o) = tokio::join!(waiter, other);
    assert_eq!(w.json["role"], "primary");
    assert_eq!(o.json["role"], "standby", "{}", o.text);

    // reset: events and cursors go, the sequence goes on
    assert_eq!(e.admin(Method::POST, "/reset", None).await.status, 204);
    let st = e.admin(Method::GET, "/state", None).await.json;
    assert_eq!(st["agentChannel"]["head"], 5);
    assert_eq!(st["agentChannel"]["events"], 0);
    let ad = e.create_ad("DC=fail;DC=test").await;
    let c = join(&e, &ad).await;
    e.create_user("after-reset").await;
    let r = poll(&e, &c, "after=0").await;
    assert_eq!(seqs(&events(&r)), vec![6]);
    e.emu.shutdown().await;
}

#[tokio::test]
async fn long_poll_wakes_on_a_new_event() {
    let e = default().await;
    let ad = e.create_ad("DC=wait;DC=test").await;
    let a = join(&e, &ad).await;
    e.create_user("before").await;
    let head = poll(&e, &a, "").await.json["head"].as_u64().unwrap_or(0);
    assert_eq!(head, 1);
    // nothing new: waits about wait_ms, then answers with no events
    let started = Instant::now();
    let r = poll(&e, &a, "after=1&wait_ms=400").await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(events(&r), Vec::<Value>::new());
    // a new event wakes the poll well before wait_ms
    let started = Instant::now();
    let waiter = poll(&e, &a, "after=1&wait_ms=20000");
    let writer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        e.create_user("during").await
    };
    let (r, during) = tokio::join!(waiter, writer);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(summary(&events(&r)), vec![ev("user", "create", &during)]);
    e.emu.shutdown().await;
}

#[tokio::test]
async fn password_payloads() {
    let e = default().await;
    let ad = e.create_ad("DC=pw;DC=test").await;
    let a = join(&e, &ad).await;
    let b = join(&e, &ad).await;
    let inside = e.create_user("inside").await;
    let outside = e.create_user("outside").await;
    let g = e.create_group("Scope").await;
    assert_eq!(
        assoc(
            &e,
            &format!("/api/v2/usergroups/{g}/members"),
            "add",
            "user",
            &inside
        )
        .await,
        204
    );
    let ad_assoc = format!("/api/v2/activedirectories/{ad}/associations");
    assert_eq!(assoc(&e, &ad_assoc, "add", "user_group", &g).await, 204);
    let head = poll(&e, &a, "").await.json["head"].as_u64().unwrap_or(0);
    for (u, p) in [(&inside, "Ins1de!Pass"), (&outside, "0utside!Pass")] {
        let r = e
            .post(
                &format!("/api/systemusers/{u}/password"),
                &json!({"password": p}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = poll(&e, &a, &format!("after={head}")).await;
    let evs = events(&r);
    assert_eq!(
        summary(&evs),
        vec![
            ev("password", "update", &inside),
            ev("password", "update", &outside)
        ]
    );
    let seq_in = evs[0]["seq"].as_u64().unwrap_or(0);
    let payload = evs[0]["payload"].as_str().unwrap_or_default().to_string();
    assert!(
        payload.len() == 2 * (NONCE_LEN + "Ins1de!Pass".len() + 16),
        "{payload}"
    );
    assert_eq!(
        decrypt(&a, &inside, seq_in, &payload).as_deref(),
        Some("Ins1de!Pass")
    );
    // bound to agent, user and seq
    assert_eq!(decrypt(&b, &inside, seq_in, &payload), None);
    assert_eq!(decrypt(&a, &outside, seq_in, &payload), None);
    assert_eq!(decrypt(&a, &inside, seq_in + 1, &payload), None);
    assert_eq!(evs[1]["payload"], Value::Null, "out of scope");
    // a fresh nonce at every delivery
    let again = events(&poll(&e, &a, &format!("after={head}")).await);
    assert_ne!(again[0]["payload"], evs[0]["payload"]);

    // scope is decided at delivery: bind `outside` directly, and the payload is there (for the new primary,
    // encrypted with its own key)
    assert_eq!(assoc(&e, &ad_assoc, "add", "user", &outside).await, 204);
    e.admin(
        Method::PUT,
        &format!("/agents/{}", a.id),
        Some(&json!({"state": "inactive"})),
    )
    .await;
    let r = poll(&e, &b, &format!("after={head}")).await;
    assert_eq!(r.json["role"], "primary", "{}", r.text);
    let evs = events(&r);
    let seq_out = evs[1]["seq"].as_u64().unwrap_or(0);
    let p = evs[1]["payload"].as_str().unwrap_or_default();
    assert_eq!(
        decrypt(&b, &outside, seq_out, p).as_deref(),
        Some("0utside!Pass")
    );
    assert_eq!(decrypt(&a, &outside, seq_out, p), None);
    // removing the binding takes it away again; passwords in POST/PUT bodies are delivered the same way
    assert_eq!(assoc(&e, &ad_assoc, "remove", "user", &outside).await, 204);
    let r = e
        .post(
            "/api/systemusers",
            &json!({"username": "newbie", "email": "newbie@x.test", "password": "N3wbie!Pass"}),
        )
        .await;
    let newbie = r.id();
    let evs = events(&poll(&e, &b, &format!("after={head}&limit=1000")).await);
    let pw: Vec<&Value> = evs.iter().filter(|x| x["kind"] == "password").collect();
    assert_eq!(pw.len(), 3);
    assert_eq!(pw[1]["payload"], Value::Null, "no longer in scope");
    assert_eq!(pw[2]["id"], newbie.as_str());
    assert_eq!(pw[2]["payload"], Value::Null);

    // passwords never reach the state document
    let st = e.admin(Method::GET, "/state", None).await.text;
    for p in ["Ins1de!Pass", "0utside!Pass", "N3wbie!Pass"] {
        assert!(!st.contains(p));
    }
    e.emu.shutdown().await;
}

/// With the real specs: the channel in use next to the public API, reports shown as `syncStatus`, and no
/// violation recorded for any `/api` call.
#[tokio::test]
async fn reports_as_sync_status_and_conformance() {
    let e = start(jcemu::Config {
        contract: Some(contract()),
        ..config()
    })
    .await;
    let r = e
        .post(
            "/api/v2/activedirectories",
            &json!({"domain": "DC=rep;DC=test", "useCase": "TWOWAYSYNC"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let ad = r.id();
    let a = join(&e, &ad).await;
    let r = e
        .post(
            "/api/systemusers",
            &json!({"username": "rep1", "email": "rep1@x.test", "password": "Rep0rt!Pass"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let u1 = r.id();
    let u2 = e.create_user("rep2").await;
    let g = e.create_group("Reported").await;
    let ad_assoc = format!("/api/v2/activedirectories/{ad}/associations");
    assert_eq!(assoc(&e, &ad_assoc, "add", "user", &u1).await, 204);
    assert_eq!(
        assoc(
            &e,
            &format!("/api/v2/usergroups/{g}/members"),
            "add",
            "user",
            &u2
        )
        .await,
        204
    );
    assert_eq!(assoc(&e, &ad_assoc, "add", "user_group", &g).await, 204);
    let evs = events(&poll(&e, &a, "after=0&limit=1000").await);
    assert!(evs.len() >= 7);
    let pw_seq = evs
        .iter()
        .find(|x| x["kind"] == "password")
        .and_then(|x| x["seq"].as_u64())
        .unwrap_or(0);

    let r = report(
        &e,
        &a,
        &json!({"reports": [
            {"kind": "password", "id": u1, "seq": pw_seq, "code": "ok", "message": ""},
            {"kind": "user", "id": u2, "seq": 5, "code": "rejected", "message": "sAMAccountName conflict"},
            {"kind": "user_group", "id": g, "seq": 6, "code": "error", "message": "LDAP busy"}
        ]}),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);
    // an older report does not replace a newer one
    let r = report(
        &e,
        &a,
        &json!({"reports": [{"kind": "user", "id": u2, "seq": 4, "code": "ok"}]}),
    )
    .await;
    assert_eq!(r.status, 204);
    for bad in [
        json!({}),
        json!({"reports": [{"kind": "group", "id": u1, "seq": 1, "code": "ok"}]}),
        json!({"reports": [{"kind": "user", "id": u1, "seq": -1, "code": "ok"}]}),
        json!({"reports": [{"kind": "user", "id": u1, "seq": 1, "code": "fine"}]}),
        json!({"reports": [{"kind": "user", "seq": 1, "code": "ok"}]}),
        json!({"reports": [{"kind": "user", "id": u1, "seq": 1, "code": "ok", "message": 3}]}),
    ] {
        let r = report(&e, &a, &bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(r.json["code"], "bad_request");
    }

    let users = format!("/api/v2/activedirectories/{ad}/users");
    let r = e.get(&format!("{users}?syncStatus=true")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let find = |id: &str| {
        r.json
            .as_array()
            .and_then(|a| a.iter().find(|x| x["id"] == id))
            .cloned()
            .unwrap_or_default()
    };
    let s1 = &find(&u1)["syncStatus"];
    assert_eq!(s1["code"], 200);
    assert_eq!(s1["message"], "ok");
    assert!(s1["syncedAt"].is_string());
    assert_eq!(s1["details"][0]["kind"], "password");
    assert_eq!(s1["details"][0]["result"], "ok");
    assert_eq!(s1["details"][0]["agentId"], a.id.as_str());
    let s2 = &find(&u2)["syncStatus"];
    assert_eq!(s2["code"], 422);
    assert_eq!(s2["message"], "sAMAccountName conflict");
    assert_eq!(s2["details"][0]["seq"], 5);
    for q in ["", "?syncStatus=false"] {
        let r = e.get(&format!("{users}{q}")).await;
        assert!(
            r.json
                .as_array()
                .is_some_and(|a| a.len() == 2 && a.iter().all(|x| x.get("syncStatus").is_none())),
            "{}",
            r.text
        );
    }
    let st = e.admin(Method::GET, "/state", None).await.json;
    let reports = st["agentReports"].as_array().cloned().unwrap_or_default();
    assert_eq!(reports.len(), 3);
    assert!(reports.iter().any(|x| x["id"] == g.as_str()
        && x["code"] == "error"
        && x["kind"] == "user_group"
        && x["activedirectoryId"] == ad.as_str()));

    // more public API traffic with the channel in use, then: no violations at all
    assert_eq!(
        e.put(
            &format!("/api/systemusers/{u2}"),
            &json!({"password": "Upd4te!Pass"})
        )
        .await
        .status,
        200
    );
    assert_eq!(
        e.call(
            Method::POST,
            &format!("/api/systemusers/{u1}/state/suspend"),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        assoc(
            &e,
            &format!("/api/v2/users/{u1}/associations"),
            "remove",
            "active_directory",
            &ad
        )
        .await,
        204
    );
    assert_eq!(
        e.delete(&format!("/api/v2/usergroups/{g}")).await.status,
        204
    );
    let evs = events(&poll(&e, &a, &format!("after={pw_seq}&limit=1000")).await);
    assert!(
        evs.iter()
            .any(|x| x["kind"] == "password" && x["id"] == u2.as_str() && x["payload"].is_null()),
        "u2 lost its scope with the group"
    );
    let v = e.violations().await;
    assert_eq!(v["count"], 0, "{v}");
    let recent = e.admin(Method::GET, "/requests", None).await.json;
    assert!(
        recent["requests"].as_array().is_some_and(|r| r
            .iter()
            .all(|x| !x["path"].as_str().unwrap_or("").starts_with(CH))),
        "channel calls are not /api requests"
    );
    e.emu.shutdown().await;
}

//! Delivery of queued operations to JumpCloud (the in-process emulator) through the executor and the
//! durable store: lifecycles, replays after a crash, 429 storms and 502s, memberships, quarantine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use forestsync_actors::cloud::{CloudClient, CloudEndpoint};
use forestsync_actors::disposition::{Classified, Disposition};
use forestsync_actors::executor::{
    DrainReport, ExecError, Executor, ExecutorConfig, RateLimits, RetryPolicy,
};
use forestsync_actors::model::{
    Anchor, DesiredGroup, DesiredUser, LinkEffect, ObjectGuid, ObjectKind, Op, RemoveAction,
};
use forestsync_actors::secret::Secret;
use forestsync_actors::store::Store;
use forestsync_actors::trust;
use serde_json::{json, Value};
use tokio::sync::watch;

const KEY: &str = "delivery-test-key";

struct Env {
    emu: jcemu::Emulator,
    tls: Arc<rustls::ClientConfig>,
    admin: reqwest::Client,
    store: Store,
    _dir: TempDir,
}

/// Removed when the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// JumpCloud's published specs (`JC_SPEC_DIR` or `../shared/jumpcloud-api`), parsed once: every
/// request the executor sends is checked against them.
fn contract() -> Arc<jcemu::spec::Contract> {
    static C: OnceLock<Arc<jcemu::spec::Contract>> = OnceLock::new();
    C.get_or_init(|| {
        let dir = std::env::var_os("JC_SPEC_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::support::repo_root().join("../shared/jumpcloud-api"));
        Arc::new(
            jcemu::spec::Contract::load(&dir)
                .unwrap_or_else(|e| panic!("JumpCloud specs under {}: {e}", dir.display())),
        )
    })
    .clone()
}

async fn env(config: jcemu::Config) -> Env {
    let emu = jcemu::Emulator::start(jcemu::Config {
        api_keys: vec![KEY.into()],
        contract: Some(contract()),
        ..config
    })
    .await
    .expect("emulator starts");
    let dir = std::env::temp_dir().join(crate::support::unique("forestsync-delivery-"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emu.ca_pem().unwrap()).unwrap();
    let tls = trust::client_config(Some(&ca)).unwrap();
    let admin = crate::support::emulator_http(&emu);
    let store = Store::open(&dir.join("state")).unwrap();
    Env {
        emu,
        tls,
        admin,
        store,
        _dir: TempDir(dir),
    }
}

impl Env {
    fn client(&self, key: &str) -> CloudClient {
        CloudClient::new(
            CloudEndpoint {
                base_url: self.emu.base_url(),
                api_key: Secret::new(key),
                org_id: None,
                timeout: Duration::from_secs(5),
            },
            self.tls.clone(),
        )
        .unwrap()
    }

    fn executor(&self, ad_instance_id: Option<String>) -> Executor {
        self.executor_with(KEY, ad_instance_id, 60)
    }

    fn executor_with(&self, key: &str, ad_instance_id: Option<String>, attempts: u32) -> Executor {
        Executor::new(
            self.client(key),
            self.store.clone(),
            ExecutorConfig {
                rate: RateLimits {
                    per_minute: 60_000.try_into().unwrap(),
                    burst: 1_000.try_into().unwrap(),
                    slowdown_divisor: 4.try_into().unwrap(),
                    slowdown_for: Duration::from_secs(1),
                    max_concurrent: 4,
                },
                retry: RetryPolicy {
                    base: Duration::from_millis(5),
                    max: Duration::from_millis(40),
                    max_attempts: attempts,
                    max_retry_after: Duration::from_millis(40),
                },
                ad_instance_id,
                batch: 7,
                ..ExecutorConfig::default()
            },
        )
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self
            .admin
            .request(method, format!("{}{path}", self.emu.base_url()))
            .header("x-api-key", KEY);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    async fn faults(&self, faults: Value) {
        self.admin(reqwest::Method::PUT, "/__emulator/faults", Some(faults))
            .await;
    }

    /// The emulator's request log: (method, path, status, fault, body) of every `/api` request.
    async fn requests(&self) -> Vec<Value> {
        let v = self
            .admin(reqwest::Method::GET, "/__emulator/requests", None)
            .await;
        v["requests"].as_array().unwrap().clone()
    }

    fn users(&self) -> Vec<Value> {
        self.emu.state()["users"].as_array().unwrap().clone()
    }

    fn user_named(&self, username: &str) -> Option<Value> {
        self.users().into_iter().find(|u| u["username"] == username)
    }

    fn memberships(&self) -> BTreeSet<(String, String)> {
        self.emu.state()["memberships"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["group_id"].as_str().unwrap().to_owned(),
                    m["user_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Asserts the emulator saw no request outside JumpCloud's specs, then stops it.
    async fn finish(self) {
        assert_eq!(self.emu.violations(), json!([]), "spec violations");
        self.emu.shutdown().await;
    }

    fn link_id(&self, anchor: &Anchor) -> String {
        self.store.link(anchor).unwrap().unwrap().jumpcloud_id
    }
}

fn anchor(n: u8) -> Anchor {
    Anchor {
        domain: "alpha".into(),
        guid: ObjectGuid::from_bytes(&[n; 16]).unwrap(),
    }
}

fn user(n: u8, username: &str) -> DesiredUser {
    DesiredUser {
        anchor: anchor(n),
        username: username.into(),
        email: format!("{username}@alpha.test"),
        firstname: "First".into(),
        lastname: format!("Last{n}"),
        extra: BTreeMap::from([("department".into(), "Engineering".into())]),
        suspended: false,
        external_dn: format!("CN={username},OU=Staff,DC=alpha,DC=test"),
    }
}

fn group(n: u8, name: &str) -> DesiredGroup {
    DesiredGroup {
        anchor: anchor(n),
        name: name.into(),
        members: BTreeSet::new(),
    }
}

async fn drain(ex: &Executor) -> Result<DrainReport, ExecError> {
    let (_tx, rx) = watch::channel(false);
    ex.drain(&rx).await
}

async fn deliver(env: &Env, ex: &Executor, ops: Vec<Op>) -> DrainReport {
    env.store.append_ops(&ops).unwrap();
    let report = drain(ex).await.expect("drain completes");
    assert_eq!(env.store.pending_count().unwrap(), 0, "{report:?}");
    report
}

/// Successful, unfaulted requests as (method, path, body).
fn applied(requests: &[Value]) -> Vec<(String, String, Value)> {
    requests
        .iter()
        .filter(|r| r["fault"].is_null() && r["status"].as_u64().is_some_and(|s| s < 300))
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_owned(),
                r["path"].as_str().unwrap().to_owned(),
                r["body"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_user_lifecycle_reaches_jumpcloud() {
    let env = env(jcemu::Config::default()).await;
    let ad = env
        .admin(
            reqwest::Method::POST,
            "/__emulator/activedirectories",
            Some(json!({"domain": "DC=alpha;DC=test", "useCase": "ADASAUTHORITY"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ex = env.executor(Some(ad.clone()));
    let mut jdoe = user(1, "jdoe");

    let r = deliver(&env, &ex, vec![Op::CreateUser { user: jdoe.clone() }]).await;
    assert_eq!(r.completed, 1);
    let u = env.user_named("jdoe").expect("created");
    let id = u["_id"].as_str().unwrap().to_owned();
    assert_eq!(u["state"], "ACTIVATED");
    assert_eq!(u["email"], "jdoe@alpha.test");
    assert_eq!(u["department"], "Engineering");
    assert_eq!(u["external_dn"], "CN=jdoe,OU=Staff,DC=alpha,DC=test");
    assert_eq!(u["external_source_type"], "ActiveDirectory");
    assert_eq!(
        u["attributes"],
        json!([{"name": "forestsync_anchor", "value": anchor(1).to_string()}])
    );
    let link = env.store.link(&anchor(1)).unwrap().unwrap();
    assert_eq!(link.jumpcloud_id, id);
    assert_eq!(link.kind, ObjectKind::User);
    assert_eq!(link.applied_user.as_ref(), Some(&jdoe));
    let assoc = env.emu.state()["associations"].clone();
    assert_eq!(
        assoc,
        json!([{"activedirectory_id": ad, "type": "user", "id": id}])
    );

    // Update: only the changed fields are sent.
    jdoe.email = "john.doe@alpha.test".into();
    jdoe.extra.insert("jobTitle".into(), "Engineer".into());
    deliver(&env, &ex, vec![Op::UpdateUser { user: jdoe.clone() }]).await;
    let u = env.user_named("jdoe").unwrap();
    assert_eq!(u["email"], "john.doe@alpha.test");
    assert_eq!(u["jobTitle"], "Engineer");
    let puts: Vec<Value> = applied(&env.requests().await)
        .into_iter()
        .filter(|(m, _, _)| m == "PUT")
        .map(|(_, _, b)| b)
        .collect();
    assert_eq!(
        puts,
        vec![json!({"email": "john.doe@alpha.test", "jobTitle": "Engineer"})]
    );
    // Nothing changed: no request at all.
    let before = ex.stats().requests;
    deliver(&env, &ex, vec![Op::UpdateUser { user: jdoe.clone() }]).await;
    assert_eq!(ex.stats().requests, before);

    // Suspend, then activate again through an update.
    deliver(
        &env,
        &ex,
        vec![Op::RemoveUser {
            anchor: anchor(1),
            action: RemoveAction::Suspend,
        }],
    )
    .await;
    assert_eq!(env.user_named("jdoe").unwrap()["state"], "SUSPENDED");
    assert!(
        env.store
            .link(&anchor(1))
            .unwrap()
            .unwrap()
            .applied_user
            .unwrap()
            .suspended
    );
    deliver(&env, &ex, vec![Op::UpdateUser { user: jdoe.clone() }]).await;
    assert_eq!(env.user_named("jdoe").unwrap()["state"], "ACTIVATED");

    // Delete, and the agent dies before recording it: the replay finds the user gone (404), success.
    let delete = Op::RemoveUser {
        anchor: anchor(1),
        action: RemoveAction::Delete,
    };
    let seq = env.store.append_ops(std::slice::from_ref(&delete)).unwrap()[0];
    assert_eq!(
        ex.run(seq, &delete).await.unwrap(),
        LinkEffect::Remove(anchor(1))
    );
    assert!(env.user_named("jdoe").is_none());
    assert!(env.store.link(&anchor(1)).unwrap().is_some());
    assert_eq!(drain(&ex).await.unwrap().completed, 1);
    assert_eq!(env.store.link(&anchor(1)).unwrap(), None);
    // Without a link there is no user to name: BadInput (quarantined by a drain), never a guess.
    assert_eq!(
        ex.run(99, &delete).await.unwrap_err().disposition(),
        Disposition::BadInput
    );

    // Unbind: the association goes, the user stays, the link is dropped.
    deliver(
        &env,
        &ex,
        vec![Op::CreateUser {
            user: user(2, "asmith"),
        }],
    )
    .await;
    let asmith = env.link_id(&anchor(2));
    deliver(
        &env,
        &ex,
        vec![Op::RemoveUser {
            anchor: anchor(2),
            action: RemoveAction::Unbind,
        }],
    )
    .await;
    assert!(env.user_named("asmith").is_some());
    assert_eq!(env.store.link(&anchor(2)).unwrap(), None);
    assert_eq!(env.emu.state()["associations"], json!([]));
    assert_eq!(env.users().len(), 1, "{asmith}");
    assert!(env.store.quarantined().unwrap().is_empty());
    env.finish().await;
}

#[tokio::test]
async fn a_create_replayed_after_a_crash_adopts_instead_of_duplicating() {
    let env = env(jcemu::Config::default()).await;
    let ex = env.executor_with(KEY, None, 3);

    // 1. JumpCloud applied the POST, then the agent died before recording it.
    let jdoe = user(1, "jdoe");
    let pre = env
        .client(KEY)
        .create_user(&jdoe, &anchor(1).to_string())
        .await
        .unwrap();
    deliver(&env, &ex, vec![Op::CreateUser { user: jdoe.clone() }]).await;
    assert_eq!(env.users().len(), 1);
    assert_eq!(env.link_id(&anchor(1)), pre.id);

    // The same for a group.
    let pre_group = env
        .client(KEY)
        .create_group("Engineering", &anchor(10).to_string())
        .await
        .unwrap();
    deliver(
        &env,
        &ex,
        vec![Op::CreateGroup {
            group: group(10, "Engineering"),
        }],
    )
    .await;
    assert_eq!(env.emu.state()["usergroups"].as_array().unwrap().len(), 1);
    assert_eq!(env.link_id(&anchor(10)), pre_group.id);

    // 2. Half the requests are applied and then answered 502 (the POST included): every replay
    //    finds what the interrupted attempt created.
    env.faults(json!({"commit_then_fail_rate": 0.5, "error_statuses": [502]}))
        .await;
    let ex = env.executor(None);
    let mut ops = Vec::new();
    for n in 20..28u8 {
        ops.push(Op::CreateUser {
            user: user(n, &format!("crash{n}")),
        });
    }
    for n in 40..44u8 {
        ops.push(Op::CreateGroup {
            group: group(n, &format!("Crash{n}")),
        });
    }
    let report = deliver(&env, &ex, ops).await;
    assert_eq!(report.completed, 12);
    let interrupted_creates = env
        .requests()
        .await
        .iter()
        .filter(|r| {
            r["method"] == "POST"
                && (r["path"] == "/api/systemusers" || r["path"] == "/api/v2/usergroups")
                && r["fault"] == "commit_then_fail"
        })
        .count();
    assert!(interrupted_creates >= 2, "{interrupted_creates}");
    assert_eq!(env.users().len(), 9);
    for n in 20..28u8 {
        let u = env.user_named(&format!("crash{n}")).unwrap();
        assert_eq!(env.link_id(&anchor(n)), u["_id"].as_str().unwrap());
    }
    let groups = env.emu.state()["usergroups"].as_array().unwrap().clone();
    assert_eq!(groups.len(), 5, "{groups:?}");
    assert!(env.store.quarantined().unwrap().is_empty());
    env.finish().await;
}

/// The ops of the storm tests: 5 users created and updated, a group, memberships.
fn storm_ops() -> Vec<Op> {
    let mut ops = vec![Op::CreateGroup {
        group: group(50, "Storm"),
    }];
    for n in 1..=5u8 {
        ops.push(Op::CreateUser {
            user: user(n, &format!("storm{n}")),
        });
    }
    for n in 1..=5u8 {
        let mut u = user(n, &format!("storm{n}"));
        u.lastname = format!("Renamed{n}");
        ops.push(Op::UpdateUser { user: u });
        ops.push(Op::AddMember {
            group: anchor(50),
            user: anchor(n),
        });
    }
    ops.push(Op::RemoveMember {
        group: anchor(50),
        user: anchor(1),
    });
    ops.push(Op::RemoveUser {
        anchor: anchor(2),
        action: RemoveAction::Suspend,
    });
    ops
}

/// Every op reached JumpCloud exactly once and in order per object.
async fn assert_storm_delivered(env: &Env) {
    assert_storm_state(env);
    assert_storm_requests(env).await;
}

/// The storm's final state: 5 users (no duplicate), updated, storm2 suspended, the group with
/// storm2..5, the store's links and members agreeing, nothing quarantined.
fn assert_storm_state(env: &Env) {
    let users = env.users();
    assert_eq!(users.len(), 5);
    for n in 1..=5u8 {
        let u = env.user_named(&format!("storm{n}")).unwrap();
        assert_eq!(u["lastname"], format!("Renamed{n}"));
        assert_eq!(u["state"], if n == 2 { "SUSPENDED" } else { "ACTIVATED" });
    }
    let gid = env.link_id(&anchor(50));
    let expected: BTreeSet<(String, String)> = (2..=5u8)
        .map(|n| (gid.clone(), env.link_id(&anchor(n))))
        .collect();
    assert_eq!(env.memberships(), expected);
    let members = env
        .store
        .link(&anchor(50))
        .unwrap()
        .unwrap()
        .applied_members;
    assert_eq!(members, (2..=5u8).map(anchor).collect());
    assert_eq!(env.emu.state()["usergroups"].as_array().unwrap().len(), 1);
    assert!(env.store.quarantined().unwrap().is_empty());
}

/// The storm's unfaulted writes: each exactly once, in order per object.
async fn assert_storm_requests(env: &Env) {
    let applied = applied(&env.requests().await);
    let writes: Vec<&(String, String, Value)> =
        applied.iter().filter(|(m, _, _)| m != "GET").collect();
    let posts_users = writes
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/api/systemusers")
        .count();
    let posts_groups = writes
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/api/v2/usergroups")
        .count();
    let member_edits = writes
        .iter()
        .filter(|(_, p, _)| p.ends_with("/members"))
        .count();
    let puts = writes.iter().filter(|(m, _, _)| m == "PUT").count();
    assert_eq!(
        (posts_users, posts_groups, member_edits, puts),
        (5, 1, 6, 6),
        "{writes:#?}"
    );
    // Per user: create, then update, then (storm2) suspend.
    for n in 1..=5u8 {
        let id = env.link_id(&anchor(n));
        let name = format!("storm{n}");
        let mine: Vec<String> = writes
            .iter()
            .filter(|(_, p, b)| p.contains(&id) || b["username"] == name.as_str())
            .map(|(m, _, b)| match (m.as_str(), &b["state"]) {
                ("PUT", Value::String(s)) => format!("PUT {s}"),
                (m, _) => m.to_owned(),
            })
            .collect();
        let expected: Vec<&str> = if n == 2 {
            vec!["POST", "PUT", "PUT SUSPENDED"]
        } else {
            vec!["POST", "PUT"]
        };
        assert_eq!(mine, expected, "storm{n}");
    }
    assert!(env.store.quarantined().unwrap().is_empty());
}

#[tokio::test]
async fn a_429_storm_delays_but_delivers_every_op_once_in_order() {
    let env = env(jcemu::Config {
        rate_limit_per_minute: Some(8),
        ..jcemu::Config::default()
    })
    .await;
    let ex = env.executor(None);
    env.store.append_ops(&storm_ops()).unwrap();
    let lift = async {
        // Let the storm rage for a while, then end the emulator's one-minute window early.
        tokio::time::sleep(Duration::from_millis(700)).await;
        env.faults(json!({"rate_limit_per_minute": null})).await;
    };
    let (report, ()) = tokio::join!(drain(&ex), lift);
    let report = report.expect("drain completes");
    assert_eq!(report.completed, storm_ops().len() as u64);
    assert!(
        ex.stats().throttled >= 5,
        "expected a storm of 429s: {:?}",
        ex.stats()
    );
    let faults = env
        .requests()
        .await
        .iter()
        .filter(|r| r["fault"] == "rate_limit")
        .count();
    assert_eq!(faults as u64, ex.stats().throttled);
    assert_storm_delivered(&env).await;
    env.finish().await;
}

#[tokio::test]
async fn half_the_requests_failing_with_502_still_delivers_every_op_once_in_order() {
    let env = env(jcemu::Config {
        error_rate: 0.5,
        error_statuses: vec![502],
        ..jcemu::Config::default()
    })
    .await;
    let ex = env.executor(None);
    let report = deliver(&env, &ex, storm_ops()).await;
    assert_eq!(report.completed, storm_ops().len() as u64);
    let failed = env
        .requests()
        .await
        .iter()
        .filter(|r| r["fault"] == "error")
        .count();
    assert!(failed >= 10, "expected many 502s, saw {failed}");
    assert_storm_delivered(&env).await;
    env.finish().await;
}

/// Successful answers garbled after the request was applied (jcemu `corrupt_rate`: malformed JSON,
/// truncated, wrong field types, extra fields, empty 200): the unreadable ones are named errors
/// classified Retry (the operation may have been applied; its replay adopts or confirms), the extra
/// fields are accepted; nothing panics, nothing is quarantined, and every operation lands exactly
/// once with the right final state.
#[tokio::test]
async fn corrupted_answers_are_retried_or_accepted_and_every_op_lands_once() {
    let env = env(jcemu::Config::default()).await;

    // One request per mode, straight through the client: the error names the problem.
    let client = env.client(KEY);
    let mut tried = 0;
    for (mode, expect) in [
        ("malformed_json", Some("unreadable response: not JSON")),
        ("truncated", Some("unreadable response: not JSON (cut off")),
        ("empty_body", Some("unreadable response: empty body")),
        (
            "wrong_types",
            Some("unexpected response: field `totalCount`"),
        ),
        ("extra_fields", None),
    ] {
        env.faults(json!({"corrupt_rate": 1.0, "corrupt_modes": [mode]}))
            .await;
        let result = client.list_users_page(0).await;
        match expect {
            None => assert!(result.is_ok(), "{mode}: {result:?}"),
            Some(text) => {
                let e = result.expect_err(mode);
                assert!(e.to_string().contains(text), "{mode}: {e}");
                assert_eq!(e.disposition(), Disposition::Retry, "{mode}: {e}");
            }
        }
        tried += 1;
    }
    // A known field of a user with the wrong type names the field.
    env.faults(json!({"corrupt_rate": 0.0})).await;
    let created = client
        .create_user(&user(90, "typed"), "alpha/typed")
        .await
        .unwrap();
    env.faults(json!({"corrupt_rate": 1.0, "corrupt_modes": ["wrong_types"]}))
        .await;
    let e = client.get_user(&created.id).await.unwrap_err().to_string();
    assert!(e.contains("field `"), "{e}");
    tried += 1;
    env.faults(json!({"corrupt_rate": 0.0})).await;
    client.delete_user(&created.id).await.unwrap();

    // The storm, with 40 % of the successful answers garbled.
    let before = env.requests().await.len();
    env.faults(json!({"corrupt_rate": 0.4, "corrupt_modes": [
        "malformed_json", "truncated", "wrong_types", "extra_fields", "empty_body"
    ]}))
    .await;
    let ex = env.executor(None);
    let report = deliver(&env, &ex, storm_ops()).await;
    assert_eq!(report.completed, storm_ops().len() as u64);
    assert!(report.quarantined.is_empty(), "{report:?}");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in env.requests().await.into_iter().skip(before) {
        if let Some(f) = r["fault"].as_str().filter(|f| f.starts_with("corrupt_")) {
            *seen.entry(f.to_owned()).or_default() += 1;
        }
    }
    eprintln!("corrupted answers during the storm: {seen:?}");
    assert!(
        seen.len() >= 4,
        "too few corruption modes exercised: {seen:?}"
    );
    tried += seen.values().sum::<usize>();
    env.faults(json!({"corrupt_rate": 0.0})).await;
    assert_storm_state(&env);
    eprintln!("API answers tried: {tried}");
    env.finish().await;
}

#[tokio::test]
async fn memberships_are_added_and_removed_idempotently() {
    let env = env(jcemu::Config::default()).await;
    let ex = env.executor(None);
    deliver(
        &env,
        &ex,
        vec![
            Op::CreateUser {
                user: user(1, "m1"),
            },
            Op::CreateUser {
                user: user(2, "m2"),
            },
            Op::CreateGroup {
                group: group(10, "Developers"),
            },
            Op::AddMember {
                group: anchor(10),
                user: anchor(1),
            },
            Op::AddMember {
                group: anchor(10),
                user: anchor(2),
            },
            // Replayed: JumpCloud says 409 "already exists"; a read confirms, success.
            Op::AddMember {
                group: anchor(10),
                user: anchor(1),
            },
        ],
    )
    .await;
    let (g, u1, u2) = (
        env.link_id(&anchor(10)),
        env.link_id(&anchor(1)),
        env.link_id(&anchor(2)),
    );
    assert_eq!(
        env.memberships(),
        BTreeSet::from([(g.clone(), u1.clone()), (g.clone(), u2.clone())])
    );
    let statuses: Vec<u64> = env
        .requests()
        .await
        .iter()
        .filter(|r| r["path"].as_str().unwrap().ends_with("/members"))
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![204, 204, 409]);

    deliver(
        &env,
        &ex,
        vec![
            Op::RemoveMember {
                group: anchor(10),
                user: anchor(1),
            },
            // Replayed: 404 "not a member"; confirmed, success.
            Op::RemoveMember {
                group: anchor(10),
                user: anchor(1),
            },
            Op::RenameGroup {
                anchor: anchor(10),
                name: "Developers-EU".into(),
            },
        ],
    )
    .await;
    assert_eq!(env.memberships(), BTreeSet::from([(g.clone(), u2.clone())]));
    let link = env.store.link(&anchor(10)).unwrap().unwrap();
    assert_eq!(link.applied_members, BTreeSet::from([anchor(2)]));
    assert_eq!(link.applied_group_name.as_deref(), Some("Developers-EU"));
    let groups = env.emu.state()["usergroups"].clone();
    assert_eq!(groups[0]["name"], "Developers-EU");
    assert_eq!(
        groups[0]["description"],
        format!("forestsync_anchor={}", anchor(10))
    );

    // Deleting the user removes its memberships in JumpCloud and in the links; the group goes last.
    deliver(
        &env,
        &ex,
        vec![
            Op::RemoveUser {
                anchor: anchor(2),
                action: RemoveAction::Delete,
            },
            Op::RemoveMember {
                group: anchor(10),
                user: anchor(2),
            },
            Op::DeleteGroup { anchor: anchor(10) },
        ],
    )
    .await;
    assert!(env.memberships().is_empty());
    assert_eq!(env.emu.state()["usergroups"], json!([]));
    assert_eq!(env.store.link(&anchor(10)).unwrap(), None);
    assert!(env.store.quarantined().unwrap().is_empty());
    env.finish().await;
}

#[tokio::test]
async fn a_bad_op_is_quarantined_and_the_next_ops_still_run() {
    let env = env(jcemu::Config::default()).await;
    // Someone created "taken" in JumpCloud by hand.
    let foreign = env
        .admin(
            reqwest::Method::POST,
            "/api/systemusers",
            Some(json!({"username": "taken", "email": "someone@elsewhere.test"})),
        )
        .await["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ex = env.executor(None);
    env.store
        .append_ops(&[
            Op::CreateUser {
                user: user(1, "taken"),
            },
            Op::CreateUser {
                user: user(2, "free"),
            },
            Op::AddMember {
                group: anchor(10),
                user: anchor(2),
            },
            Op::UpdateUser {
                user: user(1, "taken"),
            },
            Op::CreateGroup {
                group: group(10, "After"),
            },
            Op::AddMember {
                group: anchor(10),
                user: anchor(2),
            },
        ])
        .unwrap();
    let report = drain(&ex).await.unwrap();
    assert_eq!(report.completed, 3);
    let q = env.store.quarantined().unwrap();
    assert_eq!(
        q.iter().map(|(s, _, _)| *s).collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    assert_eq!(report.quarantined.len(), 3);
    let collision = &q[0].2;
    assert!(
        collision.contains("\"taken\"")
            && collision.contains(&foreign)
            && collision.contains(&anchor(1).to_string())
            && collision.contains("not managed by forestsync"),
        "{collision}"
    );
    assert!(
        q[1].2.contains("no JumpCloud group is linked"),
        "{}",
        q[1].2
    );
    assert!(q[2].2.contains("no JumpCloud user is linked"), "{}", q[2].2);
    // The foreign user was not touched; the others went through.
    let taken = env.user_named("taken").unwrap();
    assert_eq!(taken["email"], "someone@elsewhere.test");
    assert_eq!(taken["attributes"], json!([]));
    assert!(env.user_named("free").is_some());
    assert_eq!(env.memberships().len(), 1);
    assert_eq!(env.store.pending_count().unwrap(), 0);

    // An email taken by another user is a collision too, named as such.
    deliver(
        &env,
        &ex,
        vec![Op::CreateUser {
            user: DesiredUser {
                email: "someone@elsewhere.test".into(),
                ..user(3, "other")
            },
        }],
    )
    .await;
    let q = env.store.quarantined().unwrap();
    assert!(q[3].2.contains("someone@elsewhere.test"), "{}", q[3].2);

    // The opt-in take-over links the foreign user, marks it and updates it.
    deliver(
        &env,
        &ex,
        vec![Op::TakeOverUser {
            user: user(1, "taken"),
            jumpcloud_id: foreign.clone(),
        }],
    )
    .await;
    let taken = env.user_named("taken").unwrap();
    assert_eq!(taken["email"], "taken@alpha.test");
    assert_eq!(
        taken["attributes"],
        json!([{"name": "forestsync_anchor", "value": anchor(1).to_string()}])
    );
    assert_eq!(env.link_id(&anchor(1)), foreign);
    env.finish().await;
}

#[tokio::test]
async fn a_wrong_key_stops_the_drain_and_keeps_the_ops() {
    let env = env(jcemu::Config::default()).await;
    let ex = env.executor_with("not-the-key", None, 5);
    env.store
        .append_ops(&[Op::CreateUser {
            user: user(1, "jdoe"),
        }])
        .unwrap();
    let err = drain(&ex).await.unwrap_err();
    assert_eq!(err.disposition(), Disposition::Fatal, "{err}");
    assert!(!err.to_string().contains("not-the-key"));
    assert_eq!(env.store.pending_count().unwrap(), 1);
    assert!(env.store.quarantined().unwrap().is_empty());
    // Shutdown before the drain starts leaves everything queued.
    let (_tx, rx) = watch::channel(true);
    let report = env.executor(None).drain(&rx).await.unwrap();
    assert!(report.interrupted && report.completed == 0);
    env.finish().await;
}

#[tokio::test]
async fn passwords_are_set_and_policy_violations_named_without_the_password() {
    let env = env(jcemu::Config::default()).await;
    let ex = env.executor(None);
    deliver(
        &env,
        &ex,
        vec![Op::CreateUser {
            user: user(1, "jdoe"),
        }],
    )
    .await;
    ex.set_password(&anchor(1), &Secret::new("Correct-Horse-9"))
        .await
        .unwrap();
    let state = env.emu.state();
    assert_eq!(state["passwords"].as_array().unwrap().len(), 1);
    let err = ex
        .set_password(&anchor(1), &Secret::new("weakpassword"))
        .await
        .unwrap_err();
    assert_eq!(err.disposition(), Disposition::BadInput);
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("uppercase") && text.contains("specialCharacter"),
        "{text}"
    );
    assert!(!text.contains("weakpassword"));
    let err = ex
        .set_password(&anchor(2), &Secret::new("Correct-Horse-9"))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::MissingLink { .. }), "{err}");
    // A set that JumpCloud applied but answered 502 is not reported as a history violation.
    env.faults(json!({"commit_then_fail_rate": 1.0, "error_statuses": [502]}))
        .await;
    let setter = async {
        ex.set_password(&anchor(1), &Secret::new("Another-Horse-10"))
            .await
    };
    let heal = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        env.faults(json!({"commit_then_fail_rate": 0.0})).await;
    };
    let (result, ()) = tokio::join!(setter, heal);
    result.unwrap();
    let tries: Vec<(u64, Value)> = env
        .requests()
        .await
        .iter()
        .filter(|r| r["path"].as_str().unwrap().ends_with("/password"))
        .map(|r| (r["status"].as_u64().unwrap_or(0), r["fault"].clone()))
        .collect();
    assert_eq!(tries.first(), Some(&(200, Value::Null)), "{tries:?}");
    assert!(
        tries.iter().any(|t| t.1 == "commit_then_fail") && tries.last().is_some_and(|t| t.0 == 400),
        "{tries:?}"
    );
    env.finish().await;
}

//! v1 /systemusers behaviour.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

fn is_hex24(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn create_duplicate_and_stored_fields() {
    let e = default().await;
    let body = json!({
        "username": "jdoe", "email": "jdoe@example.test", "firstname": "John", "lastname": "Doe",
        "password": "Str0ng!pass", "external_dn": "CN=John Doe,OU=Staff,DC=alpha,DC=test",
        "external_source_type": "ActiveDirectory",
        "attributes": [{"name": "objectGUID", "value": "abc"}],
        "restrictedFields": [{"field": "firstname", "type": "active_directory", "id": "abc"}],
        "delegatedAuthority": {"name": "ActiveDirectory", "id": "5f0000000000000000000001"},
        "department": "IT", "unknownField": 1
    });
    let r = e.post("/api/systemusers", &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let u = &r.json;
    assert!(is_hex24(u["_id"].as_str().unwrap_or("")));
    assert!(u["created"].as_str().is_some_and(|c| c.ends_with('Z')));
    assert_eq!(u["organization"], jcemu::DEFAULT_ORG_ID);
    assert!(
        u.get("password").is_none(),
        "password must never be returned"
    );
    assert!(!r.text.contains("Str0ng!pass"));
    assert!(u["password_date"].is_string());
    assert_eq!(u["state"], "ACTIVATED");
    assert_eq!(u["suspended"], false);
    assert_eq!(u["external_dn"], body["external_dn"]);
    assert_eq!(u["external_source_type"], "ActiveDirectory");
    assert_eq!(u["attributes"], body["attributes"]);
    assert_eq!(u["restrictedFields"], body["restrictedFields"]);
    assert_eq!(u["delegatedAuthority"], body["delegatedAuthority"]);
    assert!(u.get("unknownField").is_none());

    // duplicates: username, email (case-insensitive)
    let dup = e
        .post(
            "/api/systemusers",
            &json!({"username": "jdoe", "email": "other@example.test"}),
        )
        .await;
    assert_eq!(dup.status, 400);
    assert_eq!(dup.json["message"], "User already exists");
    assert!(dup.json["details"].is_array());
    let dup = e
        .post(
            "/api/systemusers",
            &json!({"username": "other", "email": "JDOE@example.test"}),
        )
        .await;
    assert_eq!(dup.status, 400);
    assert_eq!(dup.json["message"], "User already exists");
    // required fields
    assert_eq!(
        e.post("/api/systemusers", &json!({"username": "x"}))
            .await
            .status,
        400
    );
    assert_eq!(
        e.post("/api/systemusers", &json!({"email": "x@example.test"}))
            .await
            .status,
        400
    );
    // wrong types
    assert_eq!(
        e.post(
            "/api/systemusers",
            &json!({"username": "y", "email": "y@e.test", "sudo": "yes"})
        )
        .await
        .status,
        400
    );

    // get, put (partial), delete returns the user
    let id = r.id();
    let g = e
        .get(&format!("/api/systemusers/{id}?fields=username"))
        .await;
    assert_eq!(g.status, 200);
    assert_eq!(g.json, json!({"_id": id, "username": "jdoe"}));
    let p = e
        .put(
            &format!("/api/systemusers/{id}"),
            &json!({"department": "Sales"}),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert_eq!(p.json["department"], "Sales");
    assert_eq!(p.json["firstname"], "John");
    let d = e.delete(&format!("/api/systemusers/{id}")).await;
    assert_eq!(d.status, 200);
    assert_eq!(d.json["_id"], id.as_str());
    assert_eq!(e.get(&format!("/api/systemusers/{id}")).await.status, 404);
    assert_eq!(
        e.delete(&format!("/api/systemusers/{id}")).await.status,
        404
    );
    e.emu.shutdown().await;
}

#[tokio::test]
async fn list_pagination_past_100() {
    let e = default().await;
    let users: Vec<Value> = (0..250)
        .map(|i| {
            json!({"username": format!("user{i:03}"), "email": format!("user{i:03}@example.test"),
                        "department": if i % 2 == 0 { "Even" } else { "Odd" }})
        })
        .collect();
    let r = e.admin(Method::POST, "/users", Some(&json!(users))).await;
    assert_eq!(r.status, 201, "{}", r.text);

    let mut seen = Vec::new();
    let mut skip = 0;
    loop {
        let r = e
            .get(&format!(
                "/api/systemusers?limit=100&skip={skip}&sort=_id&fields=username"
            ))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json["totalCount"], 250);
        let page = r.json["results"].as_array().cloned().unwrap_or_default();
        seen.extend(
            page.iter()
                .map(|u| u["_id"].as_str().unwrap_or("").to_string()),
        );
        if page.len() < 100 {
            break;
        }
        skip += page.len();
    }
    assert_eq!(seen.len(), 250);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages are in _id order without duplicates");

    let r = e.get("/api/systemusers").await;
    assert_eq!(
        r.json["results"].as_array().map(Vec::len),
        Some(10),
        "default limit 10"
    );
    // list pages (served from cached JSON) equal single GETs
    let one = e.get(&format!("/api/systemusers/{}", seen[0])).await;
    assert_eq!(r.json["results"][0], one.json);
    e.put(
        &format!("/api/systemusers/{}", seen[0]),
        &json!({"department": "Changed"}),
    )
    .await;
    let r = e.get("/api/systemusers?limit=1").await;
    assert_eq!(
        r.json["results"][0]["department"], "Changed",
        "cache refreshed on update"
    );
    assert_eq!(e.get("/api/systemusers?limit=101").await.status, 400);
    assert_eq!(e.get("/api/systemusers?skip=-1").await.status, 400);

    // descending multi-key sort with _id tiebreak
    let r = e
        .get("/api/systemusers?sort=-department%20-username&limit=3&fields=username%20department")
        .await;
    let names: Vec<&str> = r.json["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert_eq!(names, vec!["user249", "user247", "user245"]);
    let first = &r.json["results"][0];
    assert!(
        first.get("_id").is_some() && first.get("email").is_none(),
        "projection keeps _id only + fields"
    );
    let r = e.get("/api/systemusers?sort=-_id&limit=1").await;
    assert_eq!(
        r.json["results"][0]["_id"].as_str(),
        seen.last().map(String::as_str)
    );
    e.emu.shutdown().await;
}

#[tokio::test]
async fn filters_and_search() {
    let e = default().await;
    let users = json!([
        {"username": "alice", "email": "alice@e.test", "department": "Finance | Sales", "costCenter": "A"},
        {"username": "bob", "email": "bob@e.test", "department": "IT", "costCenter": "B"},
        {"username": "carol", "email": "carol@e.test", "department": "Shipping & Receiving", "costCenter": "C"},
        {"username": "dave", "email": "dave@e.test", "department": "HR", "costCenter": "A"}
    ]);
    assert_eq!(
        e.admin(Method::POST, "/users", Some(&users)).await.status,
        201
    );
    let names = |r: &Resp| -> Vec<String> {
        r.json["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["username"].as_str().map(str::to_string))
            .collect()
    };
    let q = |f: &str| format!("/api/systemusers?sort=username&filter={}", urlencode(f));
    assert_eq!(names(&e.get(&q("username:$eq:bob")).await), ["bob"]);
    assert_eq!(
        names(&e.get(&q("username:$eq:Bob")).await),
        Vec::<String>::new(),
        "values are case-sensitive"
    );
    assert_eq!(
        names(&e.get(&q("username:$ne:bob")).await),
        ["alice", "carol", "dave"]
    );
    assert_eq!(
        names(&e.get(&q("department:$in:Finance \\| Sales|IT")).await),
        ["alice", "bob"]
    );
    assert_eq!(
        names(&e.get(&q("department:$nin:IT|HR")).await),
        ["alice", "carol"]
    );
    assert_eq!(
        names(&e.get(&q("department:$sw:Shipping")).await),
        ["carol"]
    );
    assert_eq!(
        names(&e.get(&q("username:$gt:bob")).await),
        ["carol", "dave"]
    );
    assert_eq!(
        names(&e.get(&q("username:$lte:bob")).await),
        ["alice", "bob"]
    );
    // multi-term $sw and $ew/$co/$nco need x-eventually-consistent
    assert_eq!(e.get(&q("username:$sw:a|b")).await.status, 400);
    assert_eq!(e.get(&q("username:$ew:e")).await.status, 400);
    let ec = [("x-api-key", KEY), ("x-eventually-consistent", "true")];
    let r = e.raw(Method::GET, &q("username:$sw:a|b"), None, &ec).await;
    assert_eq!(names(&r), ["alice", "bob"]);
    let r = e.raw(Method::GET, &q("username:$ew:e"), None, &ec).await;
    assert_eq!(names(&r), ["alice", "dave"]);
    let r = e.raw(Method::GET, &q("username:$nco:a"), None, &ec).await;
    assert_eq!(names(&r), ["bob"]);
    // AND / OR
    let r = e
        .get(
            "/api/systemusers?sort=username&filter[0]=costCenter:$eq:A&filter[1]=department:$eq:HR",
        )
        .await;
    assert_eq!(names(&r), ["dave"]);
    let r = e.get("/api/systemusers?sort=username&filter[or][0]=username:$eq:bob&filter[or][1]=username:$eq:carol").await;
    assert_eq!(names(&r), ["bob", "carol"]);
    assert_eq!(
        e.get(&q("username:eq:bob")).await.status,
        400,
        "v1 operators need $"
    );
    assert_eq!(e.get("/api/systemusers?filter=nonsense").await.status, 400);

    // POST /search/systemusers
    let r = e
        .post(
            "/api/search/systemusers",
            &json!({"filter": [{"costCenter": "A"}], "fields": "username"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["totalCount"], 2);
    let r = e
        .post(
            "/api/search/systemusers",
            &json!({"filter": {"or": [{"department": "IT"}, {"department": "HR"}]}}),
        )
        .await;
    assert_eq!(r.json["totalCount"], 2);
    let r = e
        .post(
            "/api/search/systemusers",
            &json!({"searchFilter": {"searchTerm": ["ALI", "car"], "fields": ["username"]}}),
        )
        .await;
    let mut n = names(&r);
    n.sort();
    assert_eq!(n, ["alice", "carol"]);
    let r = e.post("/api/search/systemusers?limit=1", &json!({})).await;
    assert_eq!(r.json["totalCount"], 4);
    assert_eq!(r.json["results"].as_array().map(Vec::len), Some(1));
    e.emu.shutdown().await;
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'$' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[tokio::test]
async fn state_and_suspended_stay_consistent() {
    let e = default().await;
    let r = e
        .post(
            "/api/systemusers",
            &json!({"username": "s1", "email": "s1@e.test", "state": "SUSPENDED"}),
        )
        .await;
    assert_eq!(
        (r.json["state"].as_str(), r.json["suspended"].as_bool()),
        (Some("SUSPENDED"), Some(true))
    );
    let id = r.id();
    let r = e
        .put(
            &format!("/api/systemusers/{id}"),
            &json!({"suspended": false}),
        )
        .await;
    assert_eq!(
        (r.json["state"].as_str(), r.json["suspended"].as_bool()),
        (Some("ACTIVATED"), Some(false))
    );
    let r = e
        .put(
            &format!("/api/systemusers/{id}"),
            &json!({"state": "SUSPENDED"}),
        )
        .await;
    assert_eq!(
        (r.json["state"].as_str(), r.json["suspended"].as_bool()),
        (Some("SUSPENDED"), Some(true))
    );
    let r = e
        .put(
            &format!("/api/systemusers/{id}"),
            &json!({"state": "ACTIVATED"}),
        )
        .await;
    assert_eq!(
        (r.json["state"].as_str(), r.json["suspended"].as_bool()),
        (Some("ACTIVATED"), Some(false))
    );
    assert_eq!(
        e.put(
            &format!("/api/systemusers/{id}"),
            &json!({"state": "STAGED"})
        )
        .await
        .status,
        400
    );
    assert_eq!(
        e.put(
            &format!("/api/systemusers/{id}"),
            &json!({"state": "ACTIVATED", "suspended": true})
        )
        .await
        .status,
        400
    );
    let r = e
        .post(
            "/api/systemusers",
            &json!({"username": "s2", "email": "s2@e.test", "suspended": true}),
        )
        .await;
    assert_eq!(r.json["state"], "SUSPENDED");

    // suspend: body must be empty
    assert_eq!(
        e.post(&format!("/api/systemusers/{id}/state/suspend"), &json!({}))
            .await
            .status,
        400
    );
    let r = e
        .call(
            Method::POST,
            &format!("/api/systemusers/{id}/state/suspend"),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text.is_empty());
    let g = e.get(&format!("/api/systemusers/{id}")).await;
    assert_eq!(
        (g.json["state"].as_str(), g.json["suspended"].as_bool()),
        (Some("SUSPENDED"), Some(true))
    );

    // STAGED by default when configured; activate
    let e2 = start(jcemu::Config {
        default_user_state: jcemu::DefaultUserState::Staged,
        ..config()
    })
    .await;
    let r = e2
        .post(
            "/api/systemusers",
            &json!({"username": "st", "email": "st@e.test"}),
        )
        .await;
    assert_eq!(
        (r.json["state"].as_str(), r.json["suspended"].as_bool()),
        (Some("STAGED"), Some(false))
    );
    let id = r.id();
    let a = e2
        .post(
            &format!("/api/systemusers/{id}/state/activate"),
            &json!({"email": false}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        e2.get(&format!("/api/systemusers/{id}")).await.json["state"],
        "ACTIVATED"
    );
    assert_eq!(
        e2.post(&format!("/api/systemusers/{id}/state/activate"), &json!({}))
            .await
            .status,
        409
    );
    assert_eq!(
        e2.post(
            &format!("/api/systemusers/{id}/state/activate"),
            &json!({"email": 3})
        )
        .await
        .status,
        400
    );
    e.emu.shutdown().await;
    e2.emu.shutdown().await;
}

#[tokio::test]
async fn password_policy() {
    let e = default().await;
    let id = e.create_user("pwuser").await;
    let path = format!("/api/systemusers/{id}/password");
    let r = e
        .post(
            &format!("{path}?fullValidationDetails=password"),
            &json!({"password": "short"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["status"], "INVALID_ARGUMENT");
    let descs: Vec<&str> = r.json["details"][0]["fieldViolationsList"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["description"].as_str())
        .collect();
    assert_eq!(
        descs,
        ["minLength", "uppercase", "number", "specialCharacter"]
    );
    assert_eq!(
        r.json["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    let r = e.post(&path, &json!({"password": "nouppercase1!"})).await;
    assert_eq!(r.status, 400);
    assert!(r.json.get("details").is_none());
    assert!(r.json["message"]
        .as_str()
        .is_some_and(|m| m.contains("uppercase")));
    let r = e
        .post(
            &format!("{path}?fullValidationDetails=password"),
            &json!({"password": "Xpwuser12!"}),
        )
        .await;
    assert_eq!(
        r.json["details"][0]["fieldViolationsList"][0]["description"],
        "containsUsername"
    );

    let before = e.get(&format!("/api/systemusers/{id}")).await.json["password_date"].clone();
    assert!(before.is_null());
    let r = e.post(&path, &json!({"password": "First#Pass1"})).await;
    assert_eq!(r.status, 200);
    assert!(r.text.is_empty());
    let after = e.get(&format!("/api/systemusers/{id}")).await.json["password_date"].clone();
    assert!(after.is_string());
    assert_eq!(
        e.post(&path, &json!({"password": "Second#Pass2"}))
            .await
            .status,
        200
    );
    let r = e
        .put(
            &format!("/api/systemusers/{id}?fullValidationDetails=password"),
            &json!({"password": "First#Pass1"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json["details"][0]["fieldViolationsList"][0]["description"],
        "passwordHistory"
    );
    assert_eq!(e.post(&path, &json!({})).await.status, 400);
    assert_eq!(
        e.post(
            "/api/systemusers/ffffffffffffffffffffffff/password",
            &json!({"password": "First#Pass9"})
        )
        .await
        .status,
        404
    );
    // a password in POST is checked too
    let r = e
        .post(
            "/api/systemusers?fullValidationDetails=password",
            &json!({"username": "p2", "email": "p2@e.test", "password": "weak"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["message"], "Password validation fail");
    // the state document never holds passwords
    let st = e.admin(Method::GET, "/state", None).await;
    assert!(!st.text.contains("First#Pass1") && !st.text.contains("Second#Pass2"));
    assert_eq!(st.json["passwords"].as_array().map(Vec::len), Some(1));
    e.emu.shutdown().await;
}

#[tokio::test]
async fn delete_cascades() {
    let e = default().await;
    let boss = e.create_user("boss").await;
    let r = e
        .post(
            "/api/systemusers",
            &json!({"username": "worker", "email": "w@e.test", "manager": boss}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let worker = r.id();
    let g = e.create_group("staff").await;
    let ad = e.create_ad("DC=alpha;DC=test").await;
    assert_eq!(
        e.post(
            &format!("/api/v2/usergroups/{g}/members"),
            &json!({"op": "add", "type": "user", "id": boss})
        )
        .await
        .status,
        204
    );
    assert_eq!(
        e.post(
            &format!("/api/v2/activedirectories/{ad}/associations"),
            &json!({"op": "add", "type": "user", "id": boss})
        )
        .await
        .status,
        204
    );
    assert_eq!(
        e.delete(&format!("/api/systemusers/{boss}")).await.status,
        409,
        "manager of someone"
    );
    assert_eq!(
        e.delete(&format!("/api/systemusers/{boss}?cascade_manager=null"))
            .await
            .status,
        200
    );
    assert!(e
        .get(&format!("/api/systemusers/{worker}"))
        .await
        .json
        .get("manager")
        .is_none());
    assert_eq!(
        e.get(&format!("/api/v2/usergroups/{g}/members")).await.json,
        json!([])
    );
    assert_eq!(
        e.get(&format!(
            "/api/v2/activedirectories/{ad}/associations?targets=user"
        ))
        .await
        .json,
        json!([])
    );
    e.emu.shutdown().await;
}

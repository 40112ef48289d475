//! v2 Active Directory instances, agents and connect keys, associations and traversals.

use reqwest::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn activedirectory_crud_and_aliases() {
    let e = default().await;
    let r = e
        .post(
            "/api/v2/activedirectories",
            &json!({"domain": "DC=alpha;DC=test", "use_case": "ADASAUTHORITY"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["useCase"], "ADASAUTHORITY");
    assert!(r.json.get("use_case").is_none());
    let id = r.id();
    assert_eq!(
        e.post(
            "/api/v2/activedirectories",
            &json!({"domain": "dc=ALPHA;dc=test"})
        )
        .await
        .status,
        409
    );
    assert_eq!(
        e.post(
            "/api/v2/activedirectories",
            &json!({"useCase": "NOPE", "domain": "x"})
        )
        .await
        .status,
        400
    );
    let r = e
        .patch(
            &format!("/api/v2/activedirectories/{id}"),
            &json!({"delegation_state": "ENABLED", "useCase": "TWOWAYSYNC"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["delegationState"], "ENABLED");
    assert_eq!(r.json["useCase"], "TWOWAYSYNC");
    let r = e
        .get("/api/v2/activedirectories?filter=domain:eq:DC%3Dalpha%3BDC%3Dtest")
        .await;
    assert_eq!(r.total(), Some(1));
    assert_eq!(
        e.get(&format!("/api/v2/activedirectories/{id}")).await.json["domain"],
        "DC=alpha;DC=test"
    );
    let d = e.delete(&format!("/api/v2/activedirectories/{id}")).await;
    assert_eq!(d.status, 200);
    assert_eq!(d.json["id"], id.as_str());
    assert_eq!(
        e.get(&format!("/api/v2/activedirectories/{id}"))
            .await
            .status,
        404
    );
    e.emu.shutdown().await;
}

#[tokio::test]
async fn connect_key_reuse_and_expiry() {
    let e = default().await;
    let ad = e.create_ad("DC=beta;DC=test").await;
    let agents = format!("/api/v2/activedirectories/{ad}/agents");
    let r = e.post(&agents, &json!({"agentType": "SYNC"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let key = r.json["connectKey"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!key.is_empty());
    assert_eq!(r.json["state"], "unsealed");
    let agent = r.id();
    let l = e.get(&agents).await;
    assert_eq!(l.total(), Some(1));
    assert!(
        l.json[0].get("connectKey").is_none(),
        "no connect key in lists"
    );
    assert_eq!(l.json[0]["agentType"], "SYNC");
    let g = e.get(&format!("{agents}/{agent}")).await;
    assert!(g.json.get("connectKey").is_none());

    let connect = |k: &str| json!({"connectKey": k, "hostname": "dc1.alpha.test"});
    let c = e
        .admin(Method::POST, "/agents/connect", Some(&connect(&key)))
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.json["agentId"], agent.as_str());
    assert_eq!(c.json["activedirectoryId"], ad.as_str());
    let g = e.get(&format!("{agents}/{agent}")).await;
    assert_eq!(g.json["state"], "active");
    assert_eq!(g.json["hostname"], "dc1.alpha.test");
    assert_eq!(
        e.get(&format!("/api/v2/activedirectories/{ad}")).await.json["primaryAgent"],
        agent.as_str()
    );
    let again = e
        .admin(Method::POST, "/agents/connect", Some(&connect(&key)))
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.json["message"], "connect key already used");
    assert_eq!(
        e.admin(Method::POST, "/agents/connect", Some(&connect("nope")))
            .await
            .status,
        404
    );

    // expiry after 7 days by the emulator clock; the agent_type alias
    let r = e.post(&agents, &json!({"agent_type": "IMPORT"})).await;
    assert_eq!(r.status, 201);
    let key2 = r.json["connectKey"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let clock = e
        .admin(
            Method::POST,
            "/clock",
            Some(&json!({"advance_seconds": 7 * 24 * 3600 + 1})),
        )
        .await;
    assert_eq!(clock.status, 200);
    let expired = e
        .admin(Method::POST, "/agents/connect", Some(&connect(&key2)))
        .await;
    assert_eq!(expired.status, 410);
    assert_eq!(expired.json["message"], "connect key expired");
    let r = e.post(&agents, &json!({"agentType": "IMPORT"})).await;
    let key3 = r.json["connectKey"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let import_agent = r.id();
    e.admin(
        Method::POST,
        "/clock",
        Some(&json!({"advance_seconds": 6 * 24 * 3600})),
    )
    .await;
    assert_eq!(
        e.admin(Method::POST, "/agents/connect", Some(&connect(&key3)))
            .await
            .status,
        200
    );
    assert_eq!(
        e.get(&format!("/api/v2/activedirectories/{ad}")).await.json["primaryImportAgent"],
        import_agent.as_str()
    );
    assert_eq!(
        e.post(&agents, &json!({"agentType": "BOTH"})).await.status,
        400
    );

    // primary failover and delete
    let r = e.post(&agents, &json!({"agentType": "SYNC"})).await;
    let second = r.id();
    let k = r.json["connectKey"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    e.admin(Method::POST, "/agents/connect", Some(&connect(&k)))
        .await;
    let s = e
        .admin(
            Method::PUT,
            &format!("/agents/{agent}"),
            Some(&json!({"state": "inactive"})),
        )
        .await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(
        e.get(&format!("/api/v2/activedirectories/{ad}")).await.json["primaryAgent"],
        second.as_str()
    );
    assert_eq!(e.delete(&format!("{agents}/{second}")).await.status, 204);
    assert!(e
        .get(&format!("/api/v2/activedirectories/{ad}"))
        .await
        .json
        .get("primaryAgent")
        .is_none());
    assert_eq!(e.delete(&format!("{agents}/{second}")).await.status, 404);

    let st = e.admin(Method::GET, "/state", None).await.json;
    assert!(st["agents"]
        .as_array()
        .is_some_and(|a| a.iter().all(|x| x.get("connectKey").is_none())));
    assert!(!st.to_string().contains(&key));
    e.emu.shutdown().await;
}

#[tokio::test]
async fn associations_and_traversals() {
    let e = default().await;
    let ad = e.create_ad("DC=gamma;DC=test").await;
    let u1 = e.create_user("a1").await;
    let u2 = e.create_user("a2").await;
    let g = e.create_group("Synced").await;
    e.post(
        &format!("/api/v2/usergroups/{g}/members"),
        &json!({"op": "add", "type": "user", "id": u2}),
    )
    .await;
    let assoc = format!("/api/v2/activedirectories/{ad}/associations");
    assert_eq!(e.get(&assoc).await.status, 400, "targets is required");
    assert_eq!(e.get(&format!("{assoc}?targets=system")).await.status, 400);
    assert_eq!(
        e.post(&assoc, &json!({"op": "add", "type": "user", "id": u1}))
            .await
            .status,
        204
    );
    assert_eq!(
        e.post(&assoc, &json!({"op": "add", "type": "user_group", "id": g}))
            .await
            .status,
        204
    );
    assert_eq!(
        e.post(&assoc, &json!({"op": "add", "type": "user", "id": u1}))
            .await
            .status,
        409
    );
    assert_eq!(
        e.post(
            &assoc,
            &json!({"op": "add", "type": "user", "id": "ffffffffffffffffffffffff"})
        )
        .await
        .status,
        404
    );
    let r = e.get(&format!("{assoc}?targets=user")).await;
    assert_eq!(r.json, json!([{"to": {"id": u1, "type": "user"}}]));
    let r = e.get(&format!("{assoc}?targets=user,user_group")).await;
    assert_eq!(r.total(), Some(2));

    let users = e
        .get(&format!("/api/v2/activedirectories/{ad}/users"))
        .await;
    assert_eq!(users.total(), Some(2));
    let via_group = users
        .json
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["id"] == u2.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        via_group["paths"][0].as_array().map(Vec::len),
        Some(2),
        "user reached through the group"
    );
    let groups = e
        .get(&format!("/api/v2/activedirectories/{ad}/usergroups"))
        .await;
    assert_eq!(groups.json[0]["id"], g.as_str());
    assert_eq!(
        e.get(&format!("/api/v2/users/{u2}/activedirectories"))
            .await
            .json[0]["id"],
        ad.as_str()
    );
    assert_eq!(
        e.get(&format!("/api/v2/usergroups/{g}/activedirectories"))
            .await
            .json[0]["id"],
        ad.as_str()
    );

    // the same edge seen from the user / group side
    let r = e
        .get(&format!(
            "/api/v2/users/{u1}/associations?targets=active_directory"
        ))
        .await;
    assert_eq!(
        r.json,
        json!([{"to": {"id": ad, "type": "active_directory"}}])
    );
    assert_eq!(
        e.get(&format!("/api/v2/users/{u1}/associations"))
            .await
            .status,
        400
    );
    let rm = e
        .post(
            &format!("/api/v2/users/{u1}/associations"),
            &json!({"op": "remove", "type": "active_directory", "id": ad}),
        )
        .await;
    assert_eq!(rm.status, 204);
    assert_eq!(
        e.get(&format!("{assoc}?targets=user")).await.json,
        json!([])
    );
    let add = e
        .post(
            &format!("/api/v2/usergroups/{g}/associations"),
            &json!({"op": "add", "type": "active_directory", "id": ad}),
        )
        .await;
    assert_eq!(add.status, 409, "already bound from the AD side");
    let r = e
        .get(&format!(
            "/api/v2/usergroups/{g}/associations?targets=active_directory"
        ))
        .await;
    assert_eq!(r.total(), Some(1));
    assert_eq!(
        e.post(
            &assoc,
            &json!({"op": "remove", "type": "user_group", "id": g})
        )
        .await
        .status,
        204
    );
    assert_eq!(
        e.post(
            &assoc,
            &json!({"op": "remove", "type": "user_group", "id": g})
        )
        .await
        .status,
        404
    );
    assert_eq!(
        e.get(&format!("/api/v2/activedirectories/{ad}/users"))
            .await
            .json,
        json!([])
    );
    e.emu.shutdown().await;
}

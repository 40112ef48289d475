//! The emulator's spec-conformance test: an emulator started WITH JumpCloud's published specs, driven through
//! every endpoint it serves (success and documented error paths); every request and response was checked
//! against the specs by the emulator itself, and `/__emulator/violations` must stay empty.
//! Fails loudly when the spec folder is missing (`JC_SPEC_DIR` or ../shared/jumpcloud-api).

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

async fn spec_emu() -> Emu {
    start(jcemu::Config {
        contract: Some(contract()),
        ..config()
    })
    .await
}

fn expect(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
}

#[tokio::test]
async fn conformance() {
    let e = spec_emu().await;
    let ad = {
        let r = e
            .post(
                "/api/v2/activedirectories",
                &json!({"domain": "DC=alpha;DC=test", "useCase": "TWOWAYSYNC"}),
            )
            .await;
        expect(&r, 201, "POST /activedirectories");
        r.id()
    };

    // ---- v1 users
    let full = json!({
        "username": "jdoe", "email": "jdoe@alpha.test", "firstname": "John", "lastname": "Doe", "middlename": "Q",
        "displayname": "John Doe", "jobTitle": "Engineer", "department": "IT", "company": "Alpha", "costCenter": "42",
        "employeeType": "Staff", "employeeIdentifier": "E-1", "description": "d", "location": "HQ",
        "alternateEmail": "jd@alt.test", "state": "ACTIVATED", "password": "Str0ng!Passw0rd",
        "external_dn": "CN=John Doe,OU=Staff,DC=alpha,DC=test", "external_source_type": "ActiveDirectory",
        "external_password_expiration_date": "2027-01-01T00:00:00Z",
        "phoneNumbers": [{"number": "+1 555", "type": "work"}],
        "addresses": [{"type": "work", "streetAddress": "1 Main St", "locality": "Town", "country": "US"}],
        "attributes": [{"name": "objectGUID", "value": "6f9619ff-8b86-d011-b42d-00cf4fc964ff"}],
        "relationships": [{"type": "manager", "value": "x"}], "tags": ["t1"],
        "restrictedFields": [{"field": "firstname", "type": "active_directory", "id": "abc"}],
        "delegatedAuthority": {"name": "ActiveDirectory", "id": ad},
        "mfa": {"exclusion": true, "exclusionUntil": "2027-01-01T00:00:00Z"}, "recoveryEmail": {"address": "r@alt.test"},
        "sudo": false, "unix_uid": 7001, "unix_guid": 7001, "account_locked": false, "password_never_expires": false
    });
    let r = e
        .post("/api/systemusers?fullValidationDetails=password", &full)
        .await;
    expect(&r, 200, "POST /systemusers (all fields)");
    let jdoe = r.id();
    let mut users = vec![jdoe.clone()];
    for i in 0..12 {
        let r = e
            .post("/api/systemusers", &json!({"username": format!("u{i:02}"), "email": format!("u{i:02}@alpha.test"),
                                              "firstname": "U", "lastname": format!("{i}"), "manager": jdoe}))
            .await;
        expect(&r, 200, "POST /systemusers");
        users.push(r.id());
    }
    let staged = e
        .post(
            "/api/systemusers",
            &json!({"username": "staged", "email": "staged@alpha.test", "state": "STAGED"}),
        )
        .await;
    expect(&staged, 200, "POST /systemusers STAGED");
    let staged = staged.id();
    expect(
        &e.post(
            "/api/systemusers",
            &json!({"username": "jdoe", "email": "x@alpha.test"}),
        )
        .await,
        400,
        "duplicate",
    );
    let weak = e
        .post(
            "/api/systemusers?fullValidationDetails=password",
            &json!({"username": "w", "email": "w@alpha.test", "password": "weak"}),
        )
        .await;
    expect(&weak, 400, "weak password");

    for q in [
        "",
        "?limit=100&skip=0&sort=_id",
        "?limit=5&skip=5&sort=-lastname%20username&fields=username%20email",
        "?filter=department:$eq:IT",
        "?filter[0]=firstname:$eq:U&filter[1]=lastname:$in:1|2",
        "?filter[or][0]=username:$eq:u01&filter[or][1]=username:$sw:u1",
        "?search=%7B%22searchTerm%22%3A%22u0%22%2C%22fields%22%3A%5B%22username%22%5D%7D",
    ] {
        expect(&e.get(&format!("/api/systemusers{q}")).await, 200, q);
    }
    let ec = e
        .raw(
            Method::GET,
            "/api/systemusers?filter=username:$co:u1|u2",
            None,
            &[("x-api-key", KEY), ("x-eventually-consistent", "true")],
        )
        .await;
    expect(&ec, 200, "eventually consistent filter");
    expect(
        &e.get(&format!("/api/systemusers/{jdoe}")).await,
        200,
        "GET user",
    );
    expect(
        &e.get(&format!("/api/systemusers/{jdoe}?fields=username%20email"))
            .await,
        200,
        "GET user fields",
    );
    expect(
        &e.get("/api/systemusers/ffffffffffffffffffffffff").await,
        404,
        "GET missing user",
    );
    let r = e
        .put(&format!("/api/systemusers/{jdoe}?fullValidationDetails=password"), &json!({
            "department": "Sales", "state": "SUSPENDED", "ssh_keys": [{"name": "k", "public_key": "ssh-ed25519 AAAA"}],
            "phoneNumbers": [{"number": "+1 556", "type": "mobile"}], "password": "An0ther!Passw0rd"
        }))
        .await;
    expect(&r, 200, "PUT user");
    let r = e
        .put(
            &format!("/api/systemusers/{jdoe}?fullValidationDetails=password"),
            &json!({"password": "Str0ng!Passw0rd"}),
        )
        .await;
    expect(&r, 400, "PUT password history");
    expect(
        &e.put(
            &format!("/api/systemusers/{jdoe}"),
            &json!({"suspended": false}),
        )
        .await,
        200,
        "PUT suspended",
    );
    expect(
        &e.post(
            &format!("/api/systemusers/{jdoe}/password"),
            &json!({"password": "Th1rd!Passw0rd"}),
        )
        .await,
        200,
        "password",
    );
    expect(
        &e.post(
            &format!("/api/systemusers/{jdoe}/password?fullValidationDetails=password"),
            &json!({"password": "x"}),
        )
        .await,
        400,
        "password policy",
    );
    expect(
        &e.post(
            &format!("/api/systemusers/{staged}/state/activate"),
            &json!({"email": false}),
        )
        .await,
        200,
        "activate",
    );
    expect(
        &e.post(
            &format!("/api/systemusers/{staged}/state/activate"),
            &json!({}),
        )
        .await,
        409,
        "activate again",
    );
    expect(
        &e.call(
            Method::POST,
            &format!("/api/systemusers/{staged}/state/suspend"),
            None,
        )
        .await,
        200,
        "suspend",
    );
    for body in [
        json!({"filter": [{"department": "Sales"}], "fields": "username email"}),
        json!({"filter": {"or": [{"username": "u01"}, {"username": "u02"}]}}),
        json!({"searchFilter": {"searchTerm": ["u0"], "fields": ["username"]}, "fields": "username"}),
        json!({}),
    ] {
        expect(
            &e.post("/api/search/systemusers?limit=10&skip=0", &body)
                .await,
            200,
            &format!("search {body}"),
        );
    }
    expect(
        &e.raw(Method::GET, "/api/systemusers", None, &[]).await,
        401,
        "401 v1",
    );

    // ---- v2 user groups and members
    let g1 = e.post("/api/v2/usergroups", &json!({"name": "Staff", "description": "all staff", "email": "staff@alpha.test",
                                                     "attributes": {"sudo": {"enabled": false, "withoutPassword": false}},
                                                     "membershipMethod": "STATIC", "memberSuggestionsNotify": false})).await;
    expect(&g1, 201, "POST /usergroups");
    let g1 = g1.id();
    let g2 = e
        .post("/api/v2/usergroups", &json!({"name": "Admins"}))
        .await
        .id();
    expect(
        &e.post("/api/v2/usergroups", &json!({"name": "Staff"}))
            .await,
        409,
        "duplicate group",
    );
    for q in [
        "",
        "?limit=1&skip=1&sort=-name",
        "?filter=name:eq:Staff&fields=name,description",
        "?filter=name:search:a",
    ] {
        let r = e.get(&format!("/api/v2/usergroups{q}")).await;
        expect(&r, 200, q);
        assert!(r.total().is_some(), "x-total-count on {q}");
    }
    expect(
        &e.get(&format!("/api/v2/usergroups/{g1}")).await,
        200,
        "GET group",
    );
    expect(
        &e.put(
            &format!("/api/v2/usergroups/{g2}"),
            &json!({"name": "Admins", "description": "admins"}),
        )
        .await,
        200,
        "PUT group",
    );
    for u in users.iter().take(5) {
        expect(
            &e.post(
                &format!("/api/v2/usergroups/{g1}/members"),
                &json!({"op": "add", "type": "user", "id": u}),
            )
            .await,
            204,
            "add member",
        );
    }
    expect(
        &e.post(
            &format!("/api/v2/usergroups/{g2}/members"),
            &json!({"op": "add", "type": "user", "id": jdoe}),
        )
        .await,
        204,
        "add member",
    );
    expect(
        &e.post(
            &format!("/api/v2/usergroups/{g1}/members"),
            &json!({"op": "add", "type": "user", "id": jdoe}),
        )
        .await,
        409,
        "add again",
    );
    expect(
        &e.post(
            &format!("/api/v2/usergroups/{g1}/members"),
            &json!({"op": "remove", "type": "user", "id": users[4]}),
        )
        .await,
        204,
        "remove",
    );
    expect(
        &e.post(
            &format!("/api/v2/usergroups/{g1}/members"),
            &json!({"op": "remove", "type": "user", "id": users[4]}),
        )
        .await,
        404,
        "remove again",
    );
    expect(
        &e.get(&format!("/api/v2/usergroups/{g1}/members?limit=2&skip=1"))
            .await,
        200,
        "members",
    );
    expect(
        &e.get(&format!(
            "/api/v2/usergroups/{g1}/membership?sort=id&filter=type:eq:user"
        ))
        .await,
        200,
        "membership",
    );
    expect(
        &e.get(&format!(
            "/api/v2/usergroups/{g1}/membership?filter=object_id:eq:{jdoe}"
        ))
        .await,
        200,
        "membership filter",
    );
    expect(
        &e.get(&format!("/api/v2/users/{jdoe}/memberof?limit=10"))
            .await,
        200,
        "memberof",
    );
    expect(
        &e.get(&format!(
            "/api/v2/users/{jdoe}/memberof?filter=object_id:eq:{g2}"
        ))
        .await,
        200,
        "memberof filter",
    );

    // ---- v2 Active Directory, agents, associations, traversals
    let ad2 = e
        .post(
            "/api/v2/activedirectories",
            &json!({"domain": "DC=beta;DC=test"}),
        )
        .await;
    expect(&ad2, 201, "POST AD");
    let ad2 = ad2.id();
    expect(
        &e.post(
            "/api/v2/activedirectories",
            &json!({"domain": "DC=beta;DC=test"}),
        )
        .await,
        409,
        "duplicate AD",
    );
    expect(
        &e.get("/api/v2/activedirectories?limit=10&sort=domain&fields=domain,useCase")
            .await,
        200,
        "list AD",
    );
    expect(
        &e.get("/api/v2/activedirectories?filter=useCase:eq:TWOWAYSYNC")
            .await,
        200,
        "list AD filter",
    );
    expect(
        &e.get(&format!("/api/v2/activedirectories/{ad}")).await,
        200,
        "get AD",
    );
    expect(&e.patch(&format!("/api/v2/activedirectories/{ad}"), &json!({"useCase": "JCASAUTHORITY", "delegationState": "ENABLED", "groupsEnabled": true})).await, 200, "patch AD");
    expect(
        &e.patch(
            &format!("/api/v2/activedirectories/{ad2}"),
            &json!({"use_case": "ADASAUTHORITY", "delegation_state": "DISABLED"}),
        )
        .await,
        200,
        "patch AD snake",
    );
    let agent = e
        .post(
            &format!("/api/v2/activedirectories/{ad}/agents"),
            &json!({"agentType": "SYNC"}),
        )
        .await;
    expect(&agent, 201, "POST agent");
    let key = agent.json["connectKey"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let agent = agent.id();
    let imp = e
        .post(
            &format!("/api/v2/activedirectories/{ad}/agents"),
            &json!({"agent_type": "IMPORT"}),
        )
        .await;
    expect(&imp, 201, "POST agent (agent_type)");
    let imp = imp.id();
    let c = e
        .admin(
            Method::POST,
            "/agents/connect",
            Some(&json!({"connectKey": key, "hostname": "dc1"})),
        )
        .await;
    expect(&c, 200, "connect");
    expect(
        &e.get(&format!(
            "/api/v2/activedirectories/{ad}/agents?limit=10&skip=0"
        ))
        .await,
        200,
        "list agents",
    );
    expect(
        &e.get(&format!("/api/v2/activedirectories/{ad}/agents/{agent}"))
            .await,
        200,
        "get agent",
    );
    expect(
        &e.get(&format!("/api/v2/activedirectories/{ad}")).await,
        200,
        "get AD with primaryAgent",
    );
    expect(
        &e.delete(&format!("/api/v2/activedirectories/{ad}/agents/{imp}"))
            .await,
        204,
        "delete agent",
    );
    let assoc = format!("/api/v2/activedirectories/{ad}/associations");
    expect(
        &e.post(
            &assoc,
            &json!({"op": "add", "type": "user", "id": users[1]}),
        )
        .await,
        204,
        "assoc user",
    );
    expect(
        &e.post(
            &assoc,
            &json!({"op": "add", "type": "user_group", "id": g1}),
        )
        .await,
        204,
        "assoc group",
    );
    expect(
        &e.post(
            &assoc,
            &json!({"op": "add", "type": "user", "id": users[1]}),
        )
        .await,
        409,
        "assoc again",
    );
    expect(
        &e.get(&format!("{assoc}?targets=user")).await,
        200,
        "list assoc",
    );
    expect(
        &e.get(&format!("{assoc}?targets=user,user_group&limit=5"))
            .await,
        200,
        "list assoc 2",
    );
    expect(
        &e.get(&format!("/api/v2/activedirectories/{ad}/users?limit=100"))
            .await,
        200,
        "AD users",
    );
    expect(
        &e.get(&format!(
            "/api/v2/activedirectories/{ad}/users?syncStatus=true"
        ))
        .await,
        200,
        "AD users syncStatus",
    );
    expect(
        &e.get(&format!("/api/v2/activedirectories/{ad}/usergroups"))
            .await,
        200,
        "AD groups",
    );
    let uassoc = format!("/api/v2/users/{}/associations", users[2]);
    expect(
        &e.post(
            &uassoc,
            &json!({"op": "add", "type": "active_directory", "id": ad2}),
        )
        .await,
        204,
        "user assoc",
    );
    expect(
        &e.get(&format!("{uassoc}?targets=active_directory")).await,
        200,
        "user assoc list",
    );
    expect(
        &e.get(&format!("/api/v2/users/{}/activedirectories", users[1]))
            .await,
        200,
        "user ADs",
    );
    let gassoc = format!("/api/v2/usergroups/{g2}/associations");
    expect(
        &e.post(
            &gassoc,
            &json!({"op": "add", "type": "active_directory", "id": ad2}),
        )
        .await,
        204,
        "group assoc",
    );
    expect(
        &e.get(&format!("{gassoc}?targets=active_directory")).await,
        200,
        "group assoc list",
    );
    expect(
        &e.get(&format!("/api/v2/usergroups/{g1}/activedirectories"))
            .await,
        200,
        "group ADs",
    );
    expect(
        &e.post(
            &assoc,
            &json!({"op": "remove", "type": "user", "id": users[1]}),
        )
        .await,
        204,
        "unassoc",
    );
    expect(
        &e.raw(Method::GET, "/api/v2/usergroups", None, &[]).await,
        401,
        "401 v2",
    );

    // ---- deletes
    expect(
        &e.delete(&format!("/api/systemusers/{jdoe}")).await,
        409,
        "delete manager",
    );
    expect(
        &e.delete(&format!("/api/systemusers/{jdoe}?cascade_manager=null"))
            .await,
        200,
        "delete user",
    );
    expect(
        &e.delete(&format!("/api/v2/usergroups/{g2}")).await,
        204,
        "delete group",
    );
    e.admin(
        Method::PUT,
        "/settings",
        Some(&json!({"delete_usergroup_status": 200})),
    )
    .await;
    expect(
        &e.delete(&format!("/api/v2/usergroups/{g1}")).await,
        200,
        "delete group 200",
    );
    expect(
        &e.delete(&format!("/api/v2/activedirectories/{ad2}")).await,
        200,
        "delete AD",
    );

    let v = e.violations().await;
    assert_eq!(
        v["count"],
        0,
        "spec violations: {}",
        serde_json::to_string_pretty(&v).unwrap_or_default()
    );
    e.emu.shutdown().await;
}

#[tokio::test]
async fn spec_rejects_nonconforming_requests() {
    let e = spec_emu().await;
    let r = e
        .post("/api/systemusers", &json!({"username": "nomail"}))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json["message"].as_str().is_some_and(|m| !m.is_empty()));
    let r = e.get("/api/systemusers?limit=abc").await;
    assert_eq!(r.status, 400);
    let r = e.post("/api/v2/usergroups", &json!({"name": 5})).await;
    assert_eq!(r.status, 400);
    let r = e.get("/api/v2/not-a-route").await;
    assert_eq!(r.status, 404);
    let r = e.get("/api/v2/systemgroups").await;
    assert_eq!(r.status, 501, "in the spec, not emulated: {}", r.text);
    let v = e.violations().await;
    let kinds: Vec<&str> = v["violations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["request", "request", "request"], "{v}");
    assert!(v["violations"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|x| x["operation_id"].is_string()));
    e.emu.shutdown().await;
}

#[tokio::test]
async fn spec_dir_config_loads() {
    let e = start(jcemu::Config {
        spec_dir: Some(spec_dir()),
        ..config()
    })
    .await;
    let r = e
        .post(
            "/api/systemusers",
            &json!({"username": "a", "email": "a@e.test"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(e.violations().await["count"], 0);
    let bad = jcemu::Emulator::start(jcemu::Config {
        spec_dir: Some(temp_path("missing")),
        ..config()
    })
    .await;
    assert!(matches!(bad, Err(jcemu::Error::Spec { .. })));
    let _: Value = e.emu.state();
    e.emu.shutdown().await;
}

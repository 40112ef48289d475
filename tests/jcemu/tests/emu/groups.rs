//! v2 user groups, members, membership traversals.

use reqwest::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn usergroup_crud_and_lists() {
    let e = default().await;
    let r = e
        .post(
            "/api/v2/usergroups",
            &json!({"name": "Admins", "description": "d"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["type"], "user_group");
    assert_eq!(r.json["description"], "d");
    let id = r.id();
    assert_eq!(
        e.post("/api/v2/usergroups", &json!({"name": "admins"}))
            .await
            .status,
        409,
        "duplicate name"
    );
    let r = e
        .post("/api/v2/usergroups", &json!({"description": "no name"}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["status"], "nullName");
    for n in ["B-team", "C-team"] {
        e.create_group(n).await;
    }
    let r = e.get("/api/v2/usergroups?limit=2&sort=-name").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.total(), Some(3));
    let names: Vec<&str> = r
        .json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names, ["C-team", "B-team"]);
    let r = e.get("/api/v2/usergroups?filter=name:eq:B-team").await;
    assert_eq!(r.total(), Some(1));
    let r = e
        .get("/api/v2/usergroups?filter=name:eq:B-team&filter=type:eq:user_group")
        .await;
    assert_eq!(r.total(), Some(1));
    let r = e
        .get("/api/v2/usergroups?filter=name:eq:B-team,type:eq:nope")
        .await;
    assert_eq!(r.total(), Some(0), "comma-joined filters are ANDed");
    let r = e
        .get("/api/v2/usergroups?filter=name:search:TEAM&fields=name")
        .await;
    assert_eq!(r.total(), Some(2));
    assert!(r.json[0].get("description").is_none() && r.json[0].get("id").is_some());
    assert_eq!(
        e.get("/api/v2/usergroups?filter=name:$eq:x").await.status,
        400
    );
    assert_eq!(e.get("/api/v2/usergroups?limit=500").await.status, 400);

    // PUT is a full update, name required
    assert_eq!(
        e.put(
            &format!("/api/v2/usergroups/{id}"),
            &json!({"description": "x"})
        )
        .await
        .status,
        400
    );
    let r = e
        .put(
            &format!("/api/v2/usergroups/{id}"),
            &json!({"name": "Admins2"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json["description"], "",
        "full update resets fields not given"
    );
    assert_eq!(
        e.put(
            &format!("/api/v2/usergroups/{id}"),
            &json!({"name": "b-team"})
        )
        .await
        .status,
        409
    );
    assert_eq!(
        e.get(&format!("/api/v2/usergroups/{id}")).await.json["name"],
        "Admins2"
    );
    let d = e.delete(&format!("/api/v2/usergroups/{id}")).await;
    assert_eq!(d.status, 204);
    assert_eq!(e.get(&format!("/api/v2/usergroups/{id}")).await.status, 404);

    // DELETE 200 with body when configured at run time
    let s = e
        .admin(
            Method::PUT,
            "/settings",
            Some(&json!({"delete_usergroup_status": 200})),
        )
        .await;
    assert_eq!(s.status, 200, "{}", s.text);
    let gid = e.create_group("Temp").await;
    let d = e.delete(&format!("/api/v2/usergroups/{gid}")).await;
    assert_eq!(d.status, 200);
    assert_eq!(d.json["name"], "Temp");
    e.emu.shutdown().await;
}

#[tokio::test]
async fn members_add_remove() {
    let e = default().await;
    let g = e.create_group("Staff").await;
    let u1 = e.create_user("m1").await;
    let u2 = e.create_user("m2").await;
    let members = format!("/api/v2/usergroups/{g}/members");
    let op = |op: &str, id: &str| json!({"op": op, "type": "user", "id": id});
    assert_eq!(e.post(&members, &op("add", &u1)).await.status, 204);
    assert_eq!(e.post(&members, &op("add", &u2)).await.status, 204);
    let again = e.post(&members, &op("add", &u1)).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.json["message"], "already exists");
    assert_eq!(
        e.post(&members, &op("add", "ffffffffffffffffffffffff"))
            .await
            .status,
        404,
        "unknown user"
    );
    assert_eq!(
        e.post(
            &members,
            &json!({"op": "add", "type": "user_group", "id": u1})
        )
        .await
        .status,
        400
    );
    assert_eq!(
        e.post(
            "/api/v2/usergroups/ffffffffffffffffffffffff/members",
            &op("add", &u1)
        )
        .await
        .status,
        404
    );

    let r = e.get(&members).await;
    assert_eq!(r.total(), Some(2));
    assert_eq!(r.json[0], json!({"to": {"id": u1, "type": "user"}}));
    let r = e.get(&format!("/api/v2/usergroups/{g}/membership")).await;
    assert_eq!(r.total(), Some(2));
    assert_eq!(r.json[0]["type"], "user");
    assert!(r.json[0]["paths"].is_array());
    let r = e
        .get(&format!(
            "/api/v2/usergroups/{g}/membership?filter=object_id:eq:{u2}"
        ))
        .await;
    assert_eq!(r.total(), Some(1));
    assert_eq!(
        e.get(&format!(
            "/api/v2/usergroups/{g}/membership?filter=name:eq:x"
        ))
        .await
        .status,
        400
    );
    let r = e.get(&format!("/api/v2/users/{u1}/memberof")).await;
    assert_eq!(r.total(), Some(1));
    assert_eq!(r.json[0]["id"], g.as_str());
    assert_eq!(r.json[0]["type"], "user_group");

    assert_eq!(e.post(&members, &op("remove", &u1)).await.status, 204);
    assert_eq!(
        e.post(&members, &op("remove", &u1)).await.status,
        404,
        "not a member"
    );
    assert_eq!(e.get(&members).await.total(), Some(1));
    assert_eq!(
        e.get(&format!("/api/v2/users/{u1}/memberof")).await.json,
        json!([])
    );

    // idempotent mode
    e.admin(
        Method::PUT,
        "/settings",
        Some(&json!({"graph_idempotent": true})),
    )
    .await;
    assert_eq!(e.post(&members, &op("remove", &u1)).await.status, 204);
    assert_eq!(e.post(&members, &op("add", &u2)).await.status, 204);

    // state document
    let st = e.admin(Method::GET, "/state", None).await.json;
    assert_eq!(st["memberships"], json!([{"group_id": g, "user_id": u2}]));
    e.emu.shutdown().await;
}

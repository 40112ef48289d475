//! Auth, headers, rate limits, fault injection, request log, admin API.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn auth_and_org_id() {
    let e = default().await;
    for headers in [vec![], vec![("x-api-key", "wrong")]] {
        let r = e.raw(Method::GET, "/api/systemusers", None, &headers).await;
        assert_eq!(r.status, 401);
        assert_eq!(
            r.json,
            json!({"code": 401, "message": "Unauthenticated", "status": "Unauthorized"})
        );
        let r = e
            .raw(Method::GET, "/api/v2/usergroups", None, &headers)
            .await;
        assert_eq!(r.status, 401);
    }
    // rotation: the old key stops working
    let r = e
        .admin(
            Method::PUT,
            "/api-keys",
            Some(&json!({"keys": ["new-key"]})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(e.get("/api/systemusers").await.status, 401);
    assert_eq!(
        e.raw(
            Method::GET,
            "/api/systemusers",
            None,
            &[("x-api-key", "new-key")]
        )
        .await
        .status,
        200
    );
    e.admin(Method::PUT, "/api-keys", Some(&json!({"keys": [KEY]})))
        .await;

    fn org(o: &str) -> Vec<(&str, &str)> {
        vec![("x-api-key", KEY), ("x-org-id", o)]
    }
    assert_eq!(
        e.raw(Method::GET, "/api/systemusers", None, &org("nothex"))
            .await
            .status,
        400
    );
    let r = e
        .raw(
            Method::GET,
            "/api/systemusers",
            None,
            &org("aaaaaaaaaaaaaaaaaaaaaaaa"),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json["message"], "organization not found");
    assert_eq!(
        e.raw(
            Method::GET,
            "/api/systemusers",
            None,
            &org(jcemu::DEFAULT_ORG_ID)
        )
        .await
        .status,
        200
    );
    e.admin(
        Method::PUT,
        "/settings",
        Some(&json!({"require_org_id": true})),
    )
    .await;
    assert_eq!(e.get("/api/systemusers").await.status, 401);
    assert_eq!(
        e.raw(
            Method::GET,
            "/api/systemusers",
            None,
            &org(jcemu::DEFAULT_ORG_ID)
        )
        .await
        .status,
        200
    );

    // unknown routes, admin without key
    assert_eq!(
        e.raw(
            Method::GET,
            "/api/nothing-here",
            None,
            &org(jcemu::DEFAULT_ORG_ID)
        )
        .await
        .status,
        404
    );
    assert_eq!(e.admin(Method::GET, "/state", None).await.status, 200);
    e.emu.shutdown().await;
}

#[tokio::test]
async fn content_type_required() {
    let e = default().await;
    let body =
        serde_json::to_vec(&json!({"username": "ct", "email": "ct@e.test"})).unwrap_or_default();
    let r = e
        .client
        .post(format!("{}/api/systemusers", e.base))
        .header("x-api-key", KEY)
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 415);
    let r = e
        .client
        .post(format!("{}/api/systemusers", e.base))
        .header("x-api-key", KEY)
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 415);
    let r = e
        .client
        .post(format!("{}/api/systemusers", e.base))
        .header("x-api-key", KEY)
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    // malformed JSON
    let r = e
        .client
        .post(format!("{}/api/systemusers", e.base))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    e.emu.shutdown().await;
}

#[tokio::test]
async fn rate_limit_429_with_retry_after() {
    let e = start(jcemu::Config {
        rate_limit_per_minute: Some(3),
        ..config()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(e.get("/api/systemusers").await.status, 200);
    }
    let r = e.get("/api/systemusers").await;
    assert_eq!(r.status, 429);
    let ra: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=60).contains(&ra), "Retry-After {ra}");
    assert_eq!(r.json["code"], 429);
    // per key: another key has its own window
    e.admin(
        Method::PUT,
        "/api-keys",
        Some(&json!({"keys": [KEY, "k2"]})),
    )
    .await;
    assert_eq!(
        e.raw(
            Method::GET,
            "/api/systemusers",
            None,
            &[("x-api-key", "k2")]
        )
        .await
        .status,
        200
    );
    // without Retry-After
    e.admin(Method::PUT, "/faults", Some(&json!({"retry_after": false})))
        .await;
    let r = e.get("/api/systemusers").await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_none());
    // lifted at run time
    let f = e
        .admin(
            Method::PUT,
            "/faults",
            Some(&json!({"rate_limit_per_minute": null})),
        )
        .await;
    assert_eq!(f.json["rate_limit_per_minute"], serde_json::Value::Null);
    assert_eq!(e.get("/api/systemusers").await.status, 200);
    assert_eq!(
        e.admin(Method::PUT, "/faults", Some(&json!({"error_rate": 2.0})))
            .await
            .status,
        400
    );
    assert_eq!(
        e.admin(Method::PUT, "/faults", Some(&json!({"bogus": 1})))
            .await
            .status,
        400
    );
    e.emu.shutdown().await;
}

#[tokio::test]
async fn injected_errors_drops_latency() {
    let e = default().await;
    e.admin(
        Method::PUT,
        "/faults",
        Some(&json!({"error_rate": 1.0, "error_statuses": [503]})),
    )
    .await;
    let r = e
        .post(
            "/api/systemusers",
            &json!({"username": "nope", "email": "nope@e.test"}),
        )
        .await;
    assert_eq!(r.status, 503);
    e.admin(Method::PUT, "/faults", Some(&json!({"error_rate": 0.0})))
        .await;
    assert_eq!(
        e.get("/api/systemusers").await.json["totalCount"],
        0,
        "an injected error applies nothing"
    );

    e.admin(
        Method::PUT,
        "/faults",
        Some(&json!({"commit_then_fail_rate": 1.0, "error_statuses": [502]})),
    )
    .await;
    let r = e
        .post(
            "/api/systemusers",
            &json!({"username": "ctf", "email": "ctf@e.test"}),
        )
        .await;
    assert_eq!(r.status, 502);
    e.admin(
        Method::PUT,
        "/faults",
        Some(&json!({"commit_then_fail_rate": 0.0})),
    )
    .await;
    assert_eq!(
        e.get("/api/systemusers").await.json["totalCount"],
        1,
        "commit-then-fail applies the request"
    );

    e.admin(Method::PUT, "/faults", Some(&json!({"drop_rate": 1.0})))
        .await;
    let err = e
        .client
        .get(format!("{}/api/systemusers", e.base))
        .header("x-api-key", KEY)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(err.is_err(), "connection closed without a response");
    assert!(err.err().is_some_and(|x| !x.is_timeout()));
    e.admin(
        Method::PUT,
        "/faults",
        Some(&json!({"drop_rate": 0.0, "latency_ms": 300})),
    )
    .await;
    let t = Instant::now();
    assert_eq!(e.get("/api/systemusers").await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let st = e.admin(Method::GET, "/requests", None).await.json;
    let faults: Vec<&str> = st["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["fault"].as_str())
        .collect();
    assert_eq!(faults, ["error", "commit_then_fail", "drop"]);
    e.emu.shutdown().await;
}

#[tokio::test]
async fn request_log_redacts_secrets() {
    let path = temp_path("requests.jsonl");
    let e = start(jcemu::Config {
        request_log: Some(path.clone()),
        ..config()
    })
    .await;
    let r = e
        .post("/api/systemusers", &json!({"username": "log", "email": "log@e.test", "password": "Sup3r$ecret", "nested": {"password": "x2"}}))
        .await;
    assert_eq!(r.status, 200);
    let id = r.id();
    e.post(
        &format!("/api/systemusers/{id}/password"),
        &json!({"password": "An0ther$ecret"}),
    )
    .await;
    e.get("/api/systemusers?limit=5").await;
    e.emu.shutdown().await;
    let text = std::fs::read_to_string(&path).expect("log written");
    let _ = std::fs::remove_file(&path);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        !text.contains("Sup3r$ecret") && !text.contains("An0ther$ecret") && !text.contains("x2")
    );
    assert!(!text.contains(KEY), "the API key is never logged");
    assert_eq!(lines[0]["method"], "POST");
    assert_eq!(lines[0]["path"], "/api/systemusers");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["body"]["password"], "<redacted>");
    assert_eq!(lines[2]["query"], "limit=5");
    assert!(lines[0]["ts"].is_string());
}

#[tokio::test]
async fn plain_http_reset_and_clock() {
    let e = start(jcemu::Config {
        tls: false,
        ..config()
    })
    .await;
    assert!(e.base.starts_with("http://127.0.0.1:"));
    assert!(e.emu.ca_pem().is_none());
    e.create_user("r1").await;
    e.create_group("g1").await;
    let st = e.admin(Method::GET, "/state", None).await.json;
    assert_eq!(st["users"].as_array().map(Vec::len), Some(1));
    assert_eq!(e.admin(Method::POST, "/reset", None).await.status, 204);
    let st = e.admin(Method::GET, "/state", None).await.json;
    assert_eq!(st["users"], json!([]));
    assert_eq!(st["usergroups"], json!([]));
    let c = e
        .admin(
            Method::POST,
            "/clock",
            Some(&json!({"now": "2030-01-02T03:04:05Z"})),
        )
        .await;
    assert!(c.json["now"]
        .as_str()
        .is_some_and(|n| n.starts_with("2030-01-02T03:04:0")));
    let u = e
        .post(
            "/api/systemusers",
            &json!({"username": "later", "email": "later@e.test"}),
        )
        .await;
    assert!(u.json["created"]
        .as_str()
        .is_some_and(|c| c.starts_with("2030-01-02")));
    assert_eq!(
        e.admin(Method::POST, "/clock", Some(&json!({"now": "soon"})))
            .await
            .status,
        400
    );
    e.emu.shutdown().await;
}

#[tokio::test]
async fn ca_out_written() {
    let path = temp_path("ca.pem");
    let e = start(jcemu::Config {
        ca_out: Some(path.clone()),
        ..config()
    })
    .await;
    let pem = std::fs::read_to_string(&path).expect("CA written");
    let _ = std::fs::remove_file(&path);
    assert_eq!(Some(pem.clone()), e.emu.ca_pem());
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    // trusted for localhost too
    let url = e.base.replace("127.0.0.1", "localhost");
    let r = e
        .client
        .get(format!("{url}/api/systemusers"))
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("TLS to localhost");
    assert_eq!(r.status().as_u16(), 200);
    e.emu.shutdown().await;
}

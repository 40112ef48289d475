//! Rough throughput check (ignored by default): `cargo test -p jcemu --test emu throughput -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let e = Arc::new(default().await);
    let users: Vec<Value> = (0..5000)
        .map(|i| json!({"username": format!("t{i}"), "email": format!("t{i}@e.test")}))
        .collect();
    assert_eq!(
        e.admin(Method::POST, "/users", Some(&json!(users)))
            .await
            .status,
        201
    );
    let n: usize = std::env::var("JCEMU_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let only: Option<usize> = std::env::var("JCEMU_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    let conc = 64usize;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conc {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0usize;
            for i in (w..n).step_by(conc) {
                let k = only.unwrap_or(i % 4);
                let path = if k == 0 {
                    format!(
                        "/api/systemusers?limit=100&skip={}&sort=_id{}",
                        (i * 100) % 5000,
                        std::env::var("JCEMU_EXTRA").unwrap_or_default()
                    )
                } else if k == 1 {
                    "/api/systemusers?filter=username:$eq:t42&limit=10".to_string()
                } else if k == 2 {
                    "/api/v2/usergroups?limit=10".to_string()
                } else {
                    format!("/api/systemusers?limit=1&skip={}", i % 5000)
                };
                // bytes only: measure the server, not the client's JSON parsing
                let r = e
                    .client
                    .get(format!("{}{path}", e.base))
                    .header("x-api-key", KEY)
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status().as_u16() == 200 && r.bytes().await.is_ok() {
                        ok += 1;
                    }
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap_or(0);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{ok}/{n} requests in {secs:.2}s = {:.0} req/s",
        n as f64 / secs
    );
    assert_eq!(ok, n);
}

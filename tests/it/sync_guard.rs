//! jumpcloud-authoritative: the mass-removal guard holds back AD disables until an operator approves them.

use std::time::Duration;

use serde_json::json;

use crate::import_mode::{emulator, scratch};
use crate::support::{self, unique};
use crate::sync_mode::{register, start_agent, sync_config, wait_ad, JcAdmin, TargetOu, SYNC};

fn disabled(v: Option<String>) -> Option<bool> {
    v.and_then(|s| s.parse::<u32>().ok()).map(|u| u & 2 != 0)
}

#[tokio::test(flavor = "multi_thread")]
async fn unbinding_most_users_at_once_is_held_until_approved() {
    let Some(lab) = support::lab() else { return };
    let emu = emulator(jcemu::Config::default()).await;
    let jc = JcAdmin::new(&emu);
    let ad = jc.ad_instance(&lab.alpha.base_dn).await;
    let mut ou = TargetOu::new(lab, &lab.alpha, "sync-guard").await;
    let dir = scratch("sync-guard");
    // Default percent guard (20 %), at most 2 removals at once.
    let text = sync_config(lab, &emu, &dir, &lab.alpha, &ad, &ou.dn, "").replace(
        "max_removal_percent = 100",
        "max_removal_percent = 20\nmax_removals = 2",
    );
    let tag = unique("g");
    let short = &tag[..tag.len().min(15)];
    let names: Vec<String> = (0..5).map(|i| format!("{short}{i}")).collect();
    let group = jc.group(&format!("{short}-all")).await;
    for n in &names {
        let id = jc.user(n, json!({})).await;
        jc.member(&group, &id, "add").await;
    }
    jc.bind(&ad, "user_group", &group, "add").await;
    let agent = start_agent(&jc, &ad, dir.clone(), &text).await;
    for n in &names {
        let n = n.clone();
        wait_ad(
            &mut ou,
            &agent,
            SYNC,
            "user created and enabled",
            move |ou| {
                let n = n.clone();
                Box::pin(async move {
                    disabled(ou.first(&n, "userAccountControl").await).filter(|d| !d)
                })
            },
        )
        .await;
    }

    // The whole group leaves the scope: 5 users (and the group) would be disabled/emptied at once.
    jc.bind(&ad, "user_group", &group, "remove").await;
    let held = {
        let started = std::time::Instant::now();
        loop {
            if agent.log().contains("mass-removal guard") {
                break true;
            }
            if started.elapsed() > SYNC {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(held, "the guard did not trip:\n{}", agent.log());
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in &names {
        assert_eq!(
            disabled(ou.first(n, "userAccountControl").await),
            Some(false),
            "{n} was disabled although the guard held the removals"
        );
    }

    // Approved: the held removals go through.
    std::fs::write(dir.join("state").join("approve-removals"), "10\n").unwrap();
    for n in &names {
        let n = n.clone();
        wait_ad(
            &mut ou,
            &agent,
            SYNC,
            "user disabled after approval",
            move |ou| {
                let n = n.clone();
                Box::pin(async move {
                    disabled(ou.first(&n, "userAccountControl").await).filter(|d| *d)
                })
            },
        )
        .await;
    }
    assert!(
        !dir.join("state").join("approve-removals").exists(),
        "the approval is consumed once used"
    );
    drop(agent);
    ou.cleanup().await;
}

async fn faults(jc: &JcAdmin, body: serde_json::Value) {
    jc.call(reqwest::Method::PUT, "/__emulator/faults", Some(body))
        .await;
}

/// Half of all public-API requests answered 429/502/503: the agent retries, converges, and writes each
/// password exactly once. (It makes few requests: the reconcile reads scope and profiles in pages, and
/// a password for a user already in AD needs no API read at all.)
#[tokio::test(flavor = "multi_thread")]
async fn jumpcloud_to_ad_converges_through_api_faults() {
    let Some(lab) = support::lab() else { return };
    let emu = emulator(jcemu::Config::default()).await;
    let jc = JcAdmin::new(&emu);
    let ad = jc.ad_instance(&lab.alpha.base_dn).await;
    let mut ou = TargetOu::new(lab, &lab.alpha, "sync-faults").await;
    let dir = scratch("sync-faults");
    let text = sync_config(lab, &emu, &dir, &lab.alpha, &ad, &ou.dn, "");
    let tag = unique("f");
    let short = &tag[..tag.len().min(15)];
    let mut ids = Vec::new();
    for i in 0..8 {
        let name = format!("{short}{i}");
        let id = jc.user(&name, json!({})).await;
        jc.bind(&ad, "user", &id, "add").await;
        ids.push((name, id));
    }
    // Register while the API is healthy, then fail a third of all API requests from the start of the run.
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("forestsync.toml");
    std::fs::write(&config, &text).unwrap();
    let (ok, out) = register(&config, &jc.connect_key(&ad).await, false);
    assert!(ok, "register failed: {out}");
    faults(
        &jc,
        json!({"error_rate": 0.5, "error_statuses": [429, 502, 503], "retry_after": true}),
    )
    .await;
    let agent = crate::import_mode::Agent::start(dir.clone(), &text);
    for (name, _) in &ids {
        let n = name.clone();
        wait_ad(
            &mut ou,
            &agent,
            Duration::from_secs(90),
            "user created through API faults",
            move |ou| {
                let n = n.clone();
                Box::pin(async move {
                    disabled(ou.first(&n, "userAccountControl").await).filter(|d| !d)
                })
            },
        )
        .await;
    }
    // Changes made while healthy for a moment, applied while faulty.
    faults(&jc, json!({"error_rate": 0.0})).await;
    for (i, (_, id)) in ids.iter().enumerate() {
        jc.set_password(id, &format!("Fault!{i}Pw-{short}")).await;
    }
    jc.put(
        &format!("/api/systemusers/{}", ids[0].1),
        json!({"state": "SUSPENDED"}),
    )
    .await;
    let head = jc
        .call(reqwest::Method::GET, "/__emulator/state", None)
        .await["agentChannel"]["head"]
        .as_u64()
        .unwrap();
    faults(
        &jc,
        json!({"error_rate": 0.5, "error_statuses": [429, 502, 503], "retry_after": true}),
    )
    .await;
    let first = ids[0].0.clone();
    wait_ad(
        &mut ou,
        &agent,
        Duration::from_secs(90),
        "suspended through API faults",
        move |ou| {
            let n = first.clone();
            Box::pin(
                async move { disabled(ou.first(&n, "userAccountControl").await).filter(|d| *d) },
            )
        },
    )
    .await;
    for (i, (name, _)) in ids.iter().enumerate() {
        let n = name.clone();
        let marker = wait_ad(
            &mut ou,
            &agent,
            Duration::from_secs(90),
            "password written",
            move |ou| {
                let n = n.clone();
                Box::pin(async move {
                    ou.first(&n, "adminDescription")
                        .await
                        .filter(|m| m.contains(";pw="))
                })
            },
        )
        .await;
        let seq: u64 = marker.rsplit(";pw=").next().unwrap().parse().unwrap();
        assert!(
            seq <= head,
            "marker {marker} names an event after the last one ({head})"
        );
        if i == 0 {
            continue; // suspended: a disabled account cannot bind
        }
        // The password binds.
        let dn = format!("CN={name},{}", ou.dn);
        let pw = forestsync_actors::secret::Secret::new(format!("Fault!{i}Pw-{short}"));
        let mut s = support::bound_session(lab, &lab.alpha.dc_urls[0], &dn, &pw).await;
        let _ = s.root_dse().await;
    }
    let requests = jc
        .call(reqwest::Method::GET, "/__emulator/requests", None)
        .await;
    let failed = requests["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| [429, 502, 503].contains(&r["status"].as_u64().unwrap_or(0)))
        .count();
    assert!(
        failed >= 1,
        "the faults were not exercised ({failed} failed requests): {}",
        requests["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{} {} {} {}", r["ts"], r["method"], r["path"], r["status"]))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let log = agent.log();
    let written = log.matches("password from JumpCloud written to AD").count();
    assert_eq!(
        written,
        ids.len(),
        "each password is written exactly once:\n{log}"
    );
    faults(&jc, json!({"error_rate": 0.0})).await;
    drop(agent);
    ou.cleanup().await;
}

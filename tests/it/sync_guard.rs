//! jumpcloud-authoritative: the mass-removal guard holds back AD disables until an operator approves them.

use std::time::Duration;

use serde_json::json;

use crate::import_mode::{emulator, scratch};
use crate::support::{self, unique};
use crate::sync_mode::{start_agent, sync_config, wait_ad, JcAdmin, TargetOu, SYNC};

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
    let text = sync_config(lab, &emu, &dir, &lab.alpha, &ad, &ou.dn, "")
        .replace("max_removal_percent = 100", "max_removal_percent = 20\nmax_removals = 2");
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
        wait_ad(&mut ou, &agent, SYNC, "user created and enabled", move |ou| {
            let n = n.clone();
            Box::pin(async move { disabled(ou.first(&n, "userAccountControl").await).filter(|d| !d) })
        })
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
        wait_ad(&mut ou, &agent, SYNC, "user disabled after approval", move |ou| {
            let n = n.clone();
            Box::pin(async move { disabled(ou.first(&n, "userAccountControl").await).filter(|d| *d) })
        })
        .await;
    }
    assert!(
        !dir.join("state").join("approve-removals").exists(),
        "the approval is consumed once used"
    );
    drop(agent);
    ou.cleanup().await;
}

//! `forestsync status` and `forestsync explain` against a running ad-authoritative agent (answered over
//! its admin socket) and after it stopped (read from the store).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::import_mode::{emulator, members, scratch, user, wait_for, Agent, Corner};
use crate::support::{self, unique};

/// Runs `forestsync <args> --config <config>`: (exit code, stdout, stderr).
fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_forestsync"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("FORESTSYNC_LOG", "warn")
        .output()
        .expect("forestsync runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lines of `domain`'s section of a status report.
fn section<'a>(report: &'a str, domain: &str) -> Vec<&'a str> {
    report
        .lines()
        .skip_while(|l| *l != format!("domain {domain}:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_explain_answer_from_a_running_agent_and_from_the_store_once_it_stopped() {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "stx").await;
    let tag = unique("sx");
    let (l1, l2) = (
        c.group(&format!("{tag}-l1")).await,
        c.group(&format!("{tag}-l2")).await,
    );
    let (nested_sam, outside_sam) = (format!("{tag}n"), format!("{tag}o"));
    let nested = c.person(&nested_sam).await;
    let outside = c.person(&outside_sam).await;
    let root = c.root.clone();
    c.add_member(&root, &l1).await;
    c.add_member(&l1, &l2).await;
    c.add_member(&l2, &nested).await;

    let emu = emulator(jcemu::Config::default()).await;
    let dir = scratch("stx");
    std::fs::create_dir_all(&dir).unwrap();
    let mut agent = Agent::start(
        dir.clone(),
        &Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], ""),
    );
    let l2_name = format!("{tag}-l2");
    wait_for(
        &emu,
        &agent,
        Duration::from_secs(60),
        "nested user in its group",
        |s| members(s, &l2_name) == [nested_sam.clone()],
    )
    .await;
    let jc_id = user(&emu.state(), &nested_sam).unwrap()["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(user(&emu.state(), &outside_sam).is_none());

    // Running: the agent answers (the store is locked by it); pending drains to 0.
    let started = Instant::now();
    let report = loop {
        let (code, out, err) = cli(&agent.config, &["status"]);
        eprintln!("{out}");
        assert_eq!(code, 0, "status exits 0\n{out}\n{err}\n{}", agent.log());
        if section(&out, "alpha").contains(&"  pending operations: 0")
            && out.contains("DC in use: ldaps")
        {
            break out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "status never showed the DC in use and 0 pending:\n{out}\n{err}\nagent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(report.contains("agent: running since"), "{report}");
    assert!(!report.contains("agent not running"), "{report}");
    let alpha = section(&report, "alpha");
    let in_use = alpha
        .iter()
        .find_map(|l| l.strip_prefix("  DC in use: "))
        .unwrap_or_else(|| panic!("no DC in use in\n{report}"));
    assert!(
        lab.alpha.dc_urls.iter().any(|u| u == in_use),
        "the DC in use is one of alpha's: {in_use}\n{report}"
    );
    assert!(
        alpha
            .iter()
            .any(|l| l.trim_start().starts_with(&format!("{in_use} up since"))),
        "the DC in use is shown up\n{report}"
    );
    assert!(
        alpha
            .iter()
            .any(|l| l.starts_with("  watermark: committed ") && l.contains("(age ")),
        "watermark age\n{report}"
    );
    assert!(
        alpha
            .iter()
            .any(|l| l.starts_with("  last successful sync AD → JumpCloud: 20")),
        "last sync time\n{report}"
    );
    assert!(
        alpha.contains(&"  failed operations (quarantined): 0"),
        "{report}"
    );

    // The same report as JSON.
    let (code, json, err) = cli(&agent.config, &["status", "--json"]);
    assert_eq!(code, 0, "{json}\n{err}");
    assert!(
        !err.contains("read from the state store"),
        "the running agent answered: {err}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("status --json is JSON");
    let d = &v["domains"][0];
    assert_eq!(d["name"], "alpha", "{json}");
    assert!(v["live"]["started_unix"].as_u64().is_some(), "{json}");
    assert!(
        lab.alpha
            .dc_urls
            .iter()
            .any(|u| d["dc_in_use"] == u.as_str()),
        "{json}"
    );
    assert_eq!(d["pending_count"], 0, "{json}");
    assert!(
        d["watermark_taken_unix"].as_u64().unwrap_or(0) > 0,
        "{json}"
    );

    // explain, nested user: the path root → l1 → l2 → user and the JumpCloud id.
    let (code, out, err) = cli(&agent.config, &["explain", &nested_sam]);
    eprintln!("{out}");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("in scope: yes"), "{out}");
    let path_line = out
        .lines()
        .find_map(|l| l.strip_prefix("  path: "))
        .unwrap_or_else(|| panic!("no path in\n{out}"));
    let steps: Vec<&str> = path_line.split(" → ").collect();
    assert_eq!(
        steps,
        [
            c.root_name.as_str(),
            &format!("{tag}-l1"),
            &format!("{tag}-l2"),
            &nested_sam
        ],
        "{out}"
    );
    for (name, dn) in [
        (format!("{tag}-l1"), &l1),
        (format!("{tag}-l2"), &l2),
        (nested_sam.clone(), &nested),
    ] {
        assert!(out.contains(&format!("    {name}: {dn}\n")), "{out}");
    }
    assert!(out.contains(&format!("  JumpCloud id: {jc_id}")), "{out}");
    assert!(out.contains("  domain: alpha"), "{out}");
    // … by DN too, and by userPrincipalName-less JumpCloud username (= sAMAccountName here).
    let (code, by_dn, _) = cli(&agent.config, &["explain", &nested]);
    assert_eq!(code, 0);
    assert!(
        by_dn.contains(&format!("  JumpCloud id: {jc_id}")),
        "{by_dn}"
    );

    // explain, user outside the root group: not in scope, and why.
    let (code, out, err) = cli(&agent.config, &["explain", &outside_sam]);
    eprintln!("{out}");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("in scope: no"), "{out}");
    assert!(
        out.contains("not in scope: not a member of the root group"),
        "{out}"
    );
    assert!(out.contains("JumpCloud id: none"), "{out}");
    assert!(out.contains(&format!("  DN: {outside}")), "{out}");

    // Unknown user: non-zero exit with a clear message.
    let (code, out, err) = cli(&agent.config, &["explain", "no-such-user-anywhere"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("not found"), "{err}");

    // Stopped (killed: the socket file stays behind, stale): status reads the store.
    agent.kill();
    let (code, out, err) = cli(&agent.config, &["status"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("read from the state store"), "{err}");
    assert!(
        out.contains("agent not running: live DC health unknown"),
        "{out}"
    );
    assert!(
        section(&out, "alpha").contains(&"  pending operations: 0"),
        "{out}"
    );
    assert!(out.contains("  watermark: committed "), "{out}");
    let (code, out, _) = cli(&agent.config, &["explain", &nested_sam]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("  JumpCloud id: {jc_id}")), "{out}");
    assert!(out.contains("in scope: yes"), "{out}");

    // Started again, it replaces the stale socket and answers.
    agent.spawn();
    let started = Instant::now();
    loop {
        let (code, out, _) = cli(&agent.config, &["status"]);
        if code == 0 && out.contains("agent: running since") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the restarted agent never answered:\n{out}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    drop(agent);
    c.cleanup().await;
}

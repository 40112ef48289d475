//! `forestsync plan`: reads every domain and JumpCloud, runs the same planner as the daemon and
//! prints what the next sync would do. Writes nothing anywhere: no store, no watermark, no API write.

use std::collections::BTreeMap;

use forestsync_actors::coordinator::expected::expected_links;
use forestsync_actors::directory::{read, DcEndpoint, DcSession};
use forestsync_actors::model::{Anchor, DomainSnapshot, Link, Op};
use forestsync_actors::plan::{self, Existing, Guard, Plan, PlanInput};
use forestsync_actors::store::{Store, FILE_NAME};
use forestsync_actors::trust;
use serde_json::json;

use crate::config::Config;
use crate::wiring::{self, DC_TIMEOUTS};

pub struct DryRun {
    pub plan: Plan,
    /// Domains that could not be read, with why.
    pub unreadable: Vec<(String, String)>,
    /// Where the applied state came from.
    pub baseline: String,
}

pub async fn run(config: &Config) -> Result<DryRun, String> {
    if config.mode != crate::config::Mode::AdAuthoritative {
        return Err(format!(
            "plan covers AD → JumpCloud (mode ad-authoritative) only; in mode {} the agent logs every AD write it makes (FORESTSYNC_LOG=info), and `check` verifies its access",
            config.mode
        ));
    }
    let settings = wiring::import_settings(config);
    let mut snapshots: BTreeMap<String, DomainSnapshot> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for d in &config.domains {
        match read_domain(d).await {
            Ok(s) => {
                snapshots.insert(d.name.clone(), s);
            }
            Err(e) => unreadable.push((d.name.clone(), e)),
        }
    }
    let client = wiring::cloud_client(config).map_err(|e| e.to_string())?;
    let mut existing = Vec::new();
    loop {
        let (page, _) = client
            .list_users_page(existing.len())
            .await
            .map_err(|e| e.to_string())?;
        let n = page.len();
        existing.extend(page.into_iter().map(|u| Existing {
            id: u.id,
            name: u.username,
            anchor_marker: u.anchor,
        }));
        if n < 100 {
            break;
        }
    }
    let (links, baseline) = baseline(config);
    let inputs = settings.domain_inputs(&snapshots);
    let plan = plan::plan(&PlanInput {
        domains: &inputs,
        links: &links,
        jumpcloud_users: &existing,
        jumpcloud_groups: &[],
        guard: Guard {
            max_removals: settings.max_removals,
            max_removal_percent: settings.max_removal_percent,
            approved: 0,
        },
    });
    Ok(DryRun {
        plan,
        unreadable,
        baseline,
    })
}

/// The applied state: the agent's store (read-only use) when it can be opened, else nothing.
fn baseline(config: &Config) -> (BTreeMap<Anchor, Link>, String) {
    let file = config.state_dir.join(FILE_NAME);
    if !file.exists() {
        return (
            BTreeMap::new(),
            "no agent state yet: planning an initial sync".into(),
        );
    }
    match Store::open(&config.state_dir) {
        Ok(store) => match expected_links(&store) {
            Ok(links) => (links, format!("agent state {}", file.display())),
            Err(e) => (
                BTreeMap::new(),
                format!("agent state unreadable ({e}): planning an initial sync"),
            ),
        },
        Err(e) => (
            BTreeMap::new(),
            format!(
                "agent state {} in use or unreadable ({e}): planning as if nothing were applied",
                file.display()
            ),
        ),
    }
}

async fn read_domain(d: &crate::config::DomainConfig) -> Result<DomainSnapshot, String> {
    let tls = trust::client_config(d.ca_file.as_deref()).map_err(|e| e.to_string())?;
    let spec = wiring::read_spec(d);
    let mut last = String::from("no DC configured");
    for url in &d.dcs {
        let attempt = async {
            let endpoint = DcEndpoint::parse(url).map_err(|e| e.to_string())?;
            let mut s = DcSession::connect(&endpoint, tls.clone(), DC_TIMEOUTS)
                .await
                .map_err(|e| e.to_string())?;
            s.bind(&d.bind_dn, &d.bind_password)
                .await
                .map_err(|e| e.to_string())?;
            s.set_operation_timeout(wiring::READ_TIMEOUT);
            let (changes, _) = read::full_read(&mut s, &spec)
                .await
                .map_err(|e| e.to_string())?;
            let mut snap = DomainSnapshot::default();
            snap.apply(&changes);
            Ok::<_, String>(snap)
        };
        match attempt.await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn describe(op: &Op) -> (&'static str, String, String) {
    match op {
        Op::CreateUser { user } => (
            "create user",
            user.username.clone(),
            format!(
                "{} {} <{}>{}",
                user.firstname,
                user.lastname,
                user.email,
                if user.suspended { ", suspended" } else { "" }
            ),
        ),
        Op::TakeOverUser { user, jumpcloud_id } => (
            "take over user",
            user.username.clone(),
            format!("existing JumpCloud user {jumpcloud_id}"),
        ),
        Op::UpdateUser { user } => (
            if user.suspended {
                "update user (suspended)"
            } else {
                "update user"
            },
            user.username.clone(),
            user.external_dn.clone(),
        ),
        Op::RemoveUser { anchor, action } => match action {
            forestsync_actors::model::RemoveAction::Delete => {
                ("delete user", anchor.to_string(), "left scope".into())
            }
            forestsync_actors::model::RemoveAction::Suspend => {
                ("suspend user", anchor.to_string(), "left scope".into())
            }
            forestsync_actors::model::RemoveAction::Unbind => {
                ("unbind user", anchor.to_string(), "left scope".into())
            }
        },
        Op::CreateGroup { group } => (
            "create group",
            group.name.clone(),
            format!("{} member(s)", group.members.len()),
        ),
        Op::RenameGroup { anchor, name } => ("rename group", name.clone(), anchor.to_string()),
        Op::DeleteGroup { anchor } => ("delete group", anchor.to_string(), "left scope".into()),
        Op::AddMember { group, user } => ("add member", user.to_string(), format!("to {group}")),
        Op::RemoveMember { group, user } => {
            ("remove member", user.to_string(), format!("from {group}"))
        }
    }
}

pub fn render_table(r: &DryRun) -> String {
    let mut out = format!("baseline: {}\n", r.baseline);
    for (d, e) in &r.unreadable {
        out += &format!("ERROR  domain {d} could not be read: {e}\n");
    }
    for (d, e) in &r.plan.domain_errors {
        out += &format!("ERROR  domain {d}: {e}\n");
    }
    out += &format!("{:<24} {:<40} {}\n", "ACTION", "OBJECT", "DETAIL");
    for op in &r.plan.ops {
        let (action, object, detail) = describe(op);
        out += &format!("{action:<24} {object:<40} {detail}\n");
    }
    if let Some(trip) = &r.plan.guard {
        for op in &trip.held {
            let (action, object, detail) = describe(op);
            out += &format!(
                "{:<24} {object:<40} {detail} (HELD by the mass-removal guard)\n",
                action
            );
        }
        out += &format!(
            "GUARD  {} removals exceed the limit of {}; they would be held until approved\n",
            trip.removals, trip.limit
        );
    }
    for p in &r.plan.problems {
        out += &format!("SKIP   {} {}: {}\n", p.anchor, p.dn, p.message);
    }
    for (a, dn, why) in &r.plan.excluded {
        out += &format!("EXCLUDED {a} {dn}: {why}\n");
    }
    out += &format!("{} operation(s); nothing was written\n", r.plan.ops.len());
    out
}

pub fn render_json(r: &DryRun) -> String {
    let ops: Vec<_> = r
        .plan
        .ops
        .iter()
        .map(|op| {
            let (action, object, detail) = describe(op);
            json!({"action": action, "object": object, "detail": detail})
        })
        .collect();
    let held: Vec<_> = r
        .plan
        .guard
        .iter()
        .flat_map(|t| t.held.iter())
        .map(|op| describe(op).1)
        .collect();
    json!({
        "baseline": r.baseline,
        "operations": ops,
        "held_by_guard": held,
        "guard": r.plan.guard.as_ref().map(|t| json!({"removals": t.removals, "limit": t.limit})),
        "problems": r.plan.problems.iter().map(|p| json!({"object": p.anchor.to_string(), "dn": p.dn, "message": p.message})).collect::<Vec<_>>(),
        "excluded": r.plan.excluded.iter().map(|(a, dn, why)| json!({"object": a.to_string(), "dn": dn, "reason": why})).collect::<Vec<_>>(),
        "domain_errors": r.plan.domain_errors.iter().chain(&r.unreadable).map(|(d, e)| json!({"domain": d, "error": e})).collect::<Vec<_>>(),
    })
    .to_string()
}

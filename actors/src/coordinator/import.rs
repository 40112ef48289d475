//! The AD-authoritative coordinator ("Manage users, groups, and passwords in AD"): AD changes in,
//! JumpCloud operations out. [`ImportEngine`] holds the logic (testable without actors); the
//! [`ImportCoordinator`] actor wraps it and talks to the domain actors, the API actor and the
//! password inbox.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use actix::prelude::*;

use crate::api::{ApiActor, Drained, Kick, SetPassword};
use crate::domain::DomainBatch;
use crate::executor::PasswordTarget;
use crate::model::{
    Anchor, DcUsn, DirChange, DomainSnapshot, Link, ObjectKind, RemoveAction, Watermark,
};
use crate::password::{CapturedPassword, PendingPasswords};
use crate::plan::{self, Collision, DomainInput, Existing, Guard, MappingRules, Plan, PlanInput};
use crate::store::{Store, StoreError};

use super::expected::{expect, expected_links};

#[derive(Clone, Debug)]
pub struct DomainSettings {
    pub name: String,
    pub root_group_dn: String,
    pub rules: MappingRules,
    pub leave_action: RemoveAction,
    pub collision: Collision,
    /// Two-way: the target OU, where the objects forestsync manages for JumpCloud live (marked
    /// objects elsewhere belong to no one here).
    pub target_ou: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ImportSettings {
    pub domains: Vec<DomainSettings>,
    pub max_removals: u32,
    pub max_removal_percent: u32,
    /// A file an operator writes a number into to approve that many removals once (mass-removal guard).
    pub approve_file: Option<PathBuf>,
    /// Two-way mode: passwords captured for JumpCloud-owned users (created from JumpCloud, marked)
    /// go to their JumpCloud user too (the password authority decides in the executor).
    pub two_way: bool,
}

impl ImportSettings {
    /// The planner's view of every configured domain that has a snapshot.
    pub fn domain_inputs<'a>(
        &'a self,
        snapshots: &'a BTreeMap<String, DomainSnapshot>,
    ) -> Vec<DomainInput<'a>> {
        self.domains
            .iter()
            .filter_map(|d| {
                Some(DomainInput {
                    name: &d.name,
                    snapshot: snapshots.get(&d.name)?,
                    root_group_dn: &d.root_group_dn,
                    rules: &d.rules,
                    leave_action: d.leave_action,
                    collision: d.collision,
                })
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("domain {domain}: batch read from a cookie that is not the committed one (stale or duplicate batch)")]
    Stale { domain: String },
    #[error("domain {0} is not configured")]
    UnknownDomain(String),
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub ops: usize,
    /// Users whose pwdLastSet changed: (sAMAccountName, new value).
    pub pwd_changes: Vec<(String, i64)>,
}

pub struct ImportEngine {
    settings: ImportSettings,
    store: Store,
    snapshots: BTreeMap<String, DomainSnapshot>,
    watermarks: BTreeMap<String, Option<Watermark>>,
    /// Links as they will be once the outbox has drained.
    expected: BTreeMap<Anchor, Link>,
    jumpcloud_users: Vec<Existing>,
    /// Problems already logged (each is logged once, not on every batch).
    reported: BTreeSet<String>,
}

impl ImportEngine {
    pub fn load(
        settings: ImportSettings,
        store: Store,
        jumpcloud_users: Vec<Existing>,
    ) -> Result<Self, EngineError> {
        let mut snapshots = BTreeMap::new();
        let mut watermarks = BTreeMap::new();
        for d in &settings.domains {
            let (objects, wm) = store.load_domain(&d.name)?;
            snapshots.insert(d.name.clone(), DomainSnapshot::from_objects(objects));
            watermarks.insert(d.name.clone(), wm);
        }
        let mut engine = ImportEngine {
            settings,
            store,
            snapshots,
            watermarks,
            expected: BTreeMap::new(),
            jumpcloud_users,
            reported: BTreeSet::new(),
        };
        engine.refresh_expected()?;
        Ok(engine)
    }

    /// Reloads everything from the store (after a restart of the coordinator: memory is not trusted).
    pub fn reload(&mut self) -> Result<(), EngineError> {
        let fresh = ImportEngine::load(
            self.settings.clone(),
            self.store.clone(),
            std::mem::take(&mut self.jumpcloud_users),
        )?;
        *self = fresh;
        Ok(())
    }

    /// Rebuilds the expected links from the store: what was applied, plus every queued operation.
    pub fn refresh_expected(&mut self) -> Result<(), EngineError> {
        self.expected = expected_links(&self.store)?;
        Ok(())
    }

    /// Per DC URL, the invocationId and USN recorded with the domain's committed watermark.
    pub fn dc_usns(&self, domain: &str) -> BTreeMap<String, DcUsn> {
        self.watermarks
            .get(domain)
            .and_then(|w| w.as_ref())
            .map(|w| w.dc_usns.clone())
            .unwrap_or_default()
    }

    pub fn cookie(&self, domain: &str) -> Vec<u8> {
        self.watermarks
            .get(domain)
            .and_then(|w| w.as_ref())
            .map(|w| w.dirsync_cookie.clone())
            .unwrap_or_default()
    }

    pub fn snapshot(&self, domain: &str) -> Option<&DomainSnapshot> {
        self.snapshots.get(domain)
    }

    pub fn expected_link(&self, anchor: &Anchor) -> Option<&Link> {
        self.expected.get(anchor)
    }

    fn approved_removals(&self) -> u32 {
        super::approval::approved(self.settings.approve_file.as_deref())
    }

    /// The plan for the current state (what the next commit would queue).
    pub fn plan_now(&self) -> Plan {
        let inputs = self.settings.domain_inputs(&self.snapshots);
        plan::plan(&PlanInput {
            domains: &inputs,
            links: &self.expected,
            jumpcloud_users: &self.jumpcloud_users,
            jumpcloud_groups: &[],
            guard: Guard {
                max_removals: self.settings.max_removals,
                max_removal_percent: self.settings.max_removal_percent,
                approved: self.approved_removals(),
            },
        })
    }

    /// Merges a batch, plans, and commits objects + watermark + operations in one transaction.
    pub fn apply_batch(&mut self, batch: &DomainBatch) -> Result<BatchOutcome, EngineError> {
        let domain = batch.domain.as_str();
        if !self.snapshots.contains_key(domain) {
            return Err(EngineError::UnknownDomain(domain.into()));
        }
        let expected_wm = self.watermarks.get(domain).cloned().flatten();
        let committed_cookie = expected_wm
            .as_ref()
            .map(|w| w.dirsync_cookie.clone())
            .unwrap_or_default();
        if batch.from != committed_cookie {
            return Err(EngineError::Stale {
                domain: domain.into(),
            });
        }
        let full = batch.full || batch.from.is_empty();
        let snapshot = self
            .snapshots
            .get_mut(domain)
            .ok_or_else(|| EngineError::UnknownDomain(domain.into()))?;
        let before_pwd: BTreeMap<_, _> = pwd_changed_users(&batch.changes)
            .filter_map(|g| snapshot.get(&g).map(|o| (g, o.pwd_last_set())))
            .collect();
        let mut delta = if full {
            let mut fresh = DomainSnapshot::default();
            let mut delta = fresh.apply(&batch.changes);
            for old in snapshot.objects() {
                if fresh.get(&old.guid).is_none() {
                    delta.removed.insert(old.guid);
                }
            }
            *snapshot = fresh;
            delta
        } else {
            snapshot.apply(&batch.changes)
        };
        delta.upserted.retain(|g| snapshot.get(g).is_some());

        let mut outcome = BatchOutcome::default();
        for (guid, before) in before_pwd {
            if let Some(user) = snapshot.get(&guid) {
                if let (Some(now), Some(sam)) = (user.pwd_last_set(), user.first("samaccountname"))
                {
                    if Some(now) != before {
                        outcome.pwd_changes.push((sam.to_owned(), now));
                    }
                }
            }
        }
        let upserts: Vec<_> = delta
            .upserted
            .iter()
            .filter_map(|g| snapshot.get(g).cloned())
            .collect();
        let removals: Vec<_> = delta.removed.iter().copied().collect();

        // Nothing is planned until every domain has completed its initial read: a username that exists in
        // two domains must be seen as a conflict from the start, not won by whichever domain read first.
        let all_read = self
            .settings
            .domains
            .iter()
            .all(|d| d.name == domain || matches!(self.watermarks.get(&d.name), Some(Some(_))));
        let plan = if all_read {
            self.plan_now()
        } else {
            Plan::default()
        };
        if !all_read {
            tracing::info!(
                domain,
                "initial read committed; waiting for the other domains before planning"
            );
        }
        self.report(&plan);
        let mut dc_usns = expected_wm
            .as_ref()
            .map(|w| w.dc_usns.clone())
            .unwrap_or_default();
        if let Some(usn) = batch.usn {
            dc_usns.insert(
                batch.dc_url.clone(),
                DcUsn {
                    invocation_id: batch.invocation_id.clone().unwrap_or_default(),
                    usn,
                },
            );
        }
        let new_wm = Watermark {
            dirsync_cookie: batch.to.clone(),
            dc_usns,
            taken_unix: crate::health::now_unix(),
        };
        let seqs = match self.store.commit_batch(
            domain,
            expected_wm.as_ref(),
            &new_wm,
            &upserts,
            &removals,
            &plan.ops,
        ) {
            Ok(seqs) => seqs,
            Err(e) => {
                // The in-memory merge is undone by reloading what is committed.
                let (objects, _) = self.store.load_domain(domain)?;
                self.snapshots
                    .insert(domain.into(), DomainSnapshot::from_objects(objects));
                return Err(e.into());
            }
        };
        crate::change_trace::planned(
            domain,
            &batch.span,
            seqs.iter().copied().zip(plan.ops.iter().cloned()),
        );
        self.watermarks.insert(domain.into(), Some(new_wm));
        for op in &plan.ops {
            match op {
                crate::model::Op::UpdateUser { user } => {
                    let update = self
                        .expected
                        .get(&user.anchor)
                        .and_then(|l| l.applied_user.as_ref())
                        .map(|old| crate::cloud::UserUpdate::diff(old, user));
                    let fields: Vec<&str> = match &update {
                        Some(u) => u.field_names(),
                        None => vec!["all"],
                    };
                    tracing::info!(object = %op.subject(), fields = ?fields, "queued {}", op.kind());
                }
                _ => tracing::info!(object = %op.subject(), "queued {}", op.kind()),
            }
            expect(&mut self.expected, op);
        }
        if plan.guard.is_none()
            && plan.ops.iter().any(|o| o.is_removal())
            && self.approved_removals() > 0
        {
            super::approval::consume(self.settings.approve_file.as_deref());
        }
        outcome.ops = plan.ops.len();
        Ok(outcome)
    }

    fn report(&mut self, plan: &Plan) {
        for (domain, users, groups) in &plan.scope_sizes {
            crate::health::set_scope(domain, "users", *users as u64);
            crate::health::set_scope(domain, "groups", *groups as u64);
        }
        for p in &plan.problems {
            let key = format!("{}|{}", p.anchor, p.message);
            if self.reported.insert(key) {
                tracing::warn!(object = %p.anchor, dn = %p.dn, "{}", p.message);
            }
        }
        for (anchor, dn, why) in &plan.excluded {
            if self.reported.insert(format!("{anchor}|excluded")) {
                tracing::warn!(object = %anchor, dn = %dn, "not imported: {why}");
            }
        }
        for (domain, error) in &plan.domain_errors {
            if self.reported.insert(format!("{domain}|{error}")) {
                tracing::error!(domain = %domain, "{error}");
            }
        }
        if let Some(trip) = &plan.guard {
            if self.reported.insert(format!("guard|{}", trip.removals)) {
                tracing::error!(
                    removals = trip.removals,
                    limit = trip.limit,
                    "mass-removal guard: {} deletions/suspensions held back (limit {}); other changes continue. \
                     If this is intended, approve them: echo {} > {}",
                    trip.removals,
                    trip.limit,
                    trip.removals,
                    self.settings.approve_file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<state_dir>/approve-removals".into())
                );
            }
        }
    }

    /// The user (anchor and current pwdLastSet) a captured password belongs to, when in scope and linked.
    /// The JumpCloud ids of JumpCloud-owned objects (marked, in the domain's target OU) among
    /// `changes` of `domain`.
    pub fn jumpcloud_owned_changes(&self, domain: &str, changes: &[DirChange]) -> Vec<String> {
        let Some(snap) = self.snapshots.get(domain) else {
            return Vec::new();
        };
        let Some(ou) = self
            .settings
            .domains
            .iter()
            .find(|d| d.name == domain)
            .and_then(|d| d.target_ou.as_deref())
            .map(|ou| format!(",{}", ou.to_lowercase()))
        else {
            return Vec::new();
        };
        changes
            .iter()
            .filter_map(|c| match c {
                DirChange::Upsert(raw) => snap
                    .get(&raw.guid)
                    .filter(|o| o.dn.to_lowercase().ends_with(&ou))
                    .and_then(|o| o.jumpcloud_id()),
                _ => None,
            })
            .collect()
    }

    pub fn password_target(&self, domain: &str, account: &str) -> Option<(PasswordTarget, i64)> {
        let snap = self.snapshots.get(domain)?;
        let user = snap.objects().find(|o| {
            o.kind == ObjectKind::User
                && o.first("samaccountname")
                    .is_some_and(|s| s.eq_ignore_ascii_case(account))
        })?;
        let anchor = Anchor {
            domain: domain.into(),
            guid: user.guid,
        };
        let pwd_last_set = user.pwd_last_set().unwrap_or(0);
        if self.expected.contains_key(&anchor) {
            return Some((PasswordTarget::Linked(anchor), pwd_last_set));
        }
        let id = user.jumpcloud_id().filter(|_| self.settings.two_way)?;
        Some((
            PasswordTarget::JumpCloud {
                domain: domain.into(),
                id,
            },
            pwd_last_set,
        ))
    }
}

fn pwd_changed_users(changes: &[DirChange]) -> impl Iterator<Item = crate::model::ObjectGuid> + '_ {
    changes.iter().filter_map(|c| match c {
        DirChange::Upsert(raw)
            if raw.kind == ObjectKind::User && raw.attrs.contains_key("pwdlastset") =>
        {
            Some(raw.guid)
        }
        _ => None,
    })
}

// ---- the actor ----

/// A captured password from the inbox.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Captured(pub CapturedPassword);

pub struct ImportCoordinator {
    engine: ImportEngine,
    api: Addr<ApiActor>,
    pending: PendingPasswords,
    /// Tells the inbox task to delete a spooled capture (delivered or dropped).
    ack: tokio::sync::mpsc::Sender<String>,
    /// Two-way: per domain, where to tell the JumpCloud → AD engine that objects it manages changed
    /// in AD.
    touched: BTreeMap<String, tokio::sync::mpsc::UnboundedSender<String>>,
}

impl ImportCoordinator {
    pub fn new(
        engine: ImportEngine,
        api: Addr<ApiActor>,
        pending: PendingPasswords,
        ack: tokio::sync::mpsc::Sender<String>,
    ) -> Self {
        ImportCoordinator {
            engine,
            api,
            pending,
            ack,
            touched: BTreeMap::new(),
        }
    }

    /// Two-way: report changes of JumpCloud-owned AD objects to each domain's JumpCloud → AD engine.
    pub fn with_touched(
        mut self,
        touched: BTreeMap<String, tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Self {
        self.touched = touched;
        self
    }

    pub fn engine(&self) -> &ImportEngine {
        &self.engine
    }

    /// Sends a committed password to JumpCloud; the spooled copy is deleted once JumpCloud has it.
    fn forward(&self, target: PasswordTarget, captured: CapturedPassword) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = captured.id.clone();
        let ack = self.ack.clone();
        self.api.do_send(SetPassword {
            target,
            password: captured.password,
            on_done: Some(tx),
        });
        actix::spawn(async move {
            if rx.await.is_ok() {
                let _ = ack.send(id).await;
            }
        });
    }

    fn ack(&self, id: String) {
        if self.ack.try_send(id).is_err() {
            tracing::warn!(
                "password inbox busy; a handled capture stays spooled until the next start"
            );
        }
    }
}

impl Actor for ImportCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(std::time::Duration::from_secs(1), |act, _| {
            for id in act.pending.expire(std::time::Instant::now()) {
                tracing::info!(capture = %id, "captured password not committed by AD in time (rejected?); dropped, never sent");
                act.ack(id);
            }
        });
    }
}

impl Supervised for ImportCoordinator {
    fn restarting(&mut self, _: &mut Context<Self>) {
        crate::metrics::restarted("import_coordinator");
        if let Err(e) = self.engine.reload() {
            tracing::error!(error = %e, "coordinator restart: cannot reload state from the store");
        }
    }
}

impl Handler<DomainBatch> for ImportCoordinator {
    type Result = Result<(), String>;

    fn handle(&mut self, batch: DomainBatch, _: &mut Context<Self>) -> Self::Result {
        let started = std::time::Instant::now();
        let plan_span = tracing::info_span!(
            parent: &batch.span,
            "plan",
            domain = %batch.domain,
            changes = batch.changes.len(),
            ops = tracing::field::Empty,
        );
        let outcome = {
            let _in_plan = plan_span.enter();
            self.engine.apply_batch(&batch).map_err(|e| e.to_string())?
        };
        plan_span.record("ops", outcome.ops);
        if batch.full {
            crate::progress::read_full(batch.changes.len());
        }
        crate::progress::planned(outcome.ops);
        tracing::info!(
            domain = %batch.domain,
            dc = %batch.dc_url,
            changes = batch.changes.len(),
            ops = outcome.ops,
            ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        if outcome.ops > 0 {
            self.api.do_send(Kick);
        }
        if let Some(tx) = self.touched.get(&batch.domain) {
            for id in self
                .engine
                .jumpcloud_owned_changes(&batch.domain, &batch.changes)
            {
                let _ = tx.send(id);
            }
        }
        for (account, value) in outcome.pwd_changes {
            if let Some(captured) = self.pending.observe_pwd_last_set(
                &batch.domain,
                &account,
                value,
                std::time::Instant::now(),
            ) {
                if let Some((target, _)) = self.engine.password_target(&batch.domain, &account) {
                    self.forward(target, captured);
                }
            }
        }
        Ok(())
    }
}

impl Handler<Captured> for ImportCoordinator {
    type Result = ();

    fn handle(&mut self, Captured(captured): Captured, _: &mut Context<Self>) {
        match self
            .engine
            .password_target(&captured.domain, &captured.account)
        {
            Some((target, pwd_last_set)) => {
                let (domain, account) = (captured.domain.clone(), captured.account.clone());
                tracing::debug!(domain = %domain, account = %account, "password captured; waiting for AD to commit it");
                if let Some(loser) =
                    self.pending
                        .insert(captured, pwd_last_set, std::time::Instant::now())
                {
                    self.ack(loser);
                }
                // The commit may already have been read (the change arrived before the capture message).
                if let Some(confirmed) = self.pending.observe_pwd_last_set(
                    &domain,
                    &account,
                    pwd_last_set,
                    std::time::Instant::now(),
                ) {
                    self.forward(target, confirmed);
                }
            }
            None => {
                tracing::info!(domain = %captured.domain, account = %captured.account, "captured password for a user not in scope; dropped");
                self.ack(captured.id);
            }
        }
    }
}

impl Handler<Drained> for ImportCoordinator {
    type Result = ();

    fn handle(&mut self, Drained(report): Drained, _: &mut Context<Self>) {
        if !report.quarantined.is_empty() {
            if let Err(e) = self.engine.refresh_expected() {
                tracing::error!(error = %e, "cannot re-read links after a quarantine");
            }
        }
    }
}

//! The JumpCloud operation executor: drains the store's outbox in sequence order, one operation at a
//! time, through one rate limiter, and records each result (link effect or quarantine) in the store.
//!
//! Every operation is safe to replay: the agent may be killed after JumpCloud applied an operation and
//! before `complete_op` recorded it, and the operation then runs again on the next start.
//! - `CreateUser` looks the username up first and adopts a user carrying its own anchor attribute
//!   (`forestsync_anchor`) instead of creating a second one; a user with another or no anchor is a
//!   collision (quarantined). `CreateGroup` does the same with the group name and description marker.
//! - Membership and association edits treat "already there" / "already gone" as success once a read
//!   confirms it; deleting an already-deleted user or group is success.
//!
//! Temporary failures (429, 5xx, time-outs, connection errors) are retried per step with capped
//! exponential backoff and full jitter; `Retry-After` pauses every request, and a 429 also lowers the
//! request rate for a while. What is left after the retry budget stays queued (the drain stops, the
//! next drain resumes at the same operation, keeping per-object order). Permanent failures of one
//! operation (BadInput) quarantine it and the drain goes on; Fatal failures (credentials, TLS, store)
//! stop the drain.
//!
//! Errors never carry request bodies, and the password path ([`Executor::set_password`]) never logs or
//! stores the password.

mod error;
mod ops;
mod pace;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

pub use error::ExecError;
pub use pace::{RateLimits, RetryPolicy};

use crate::cloud::{CloudClient, JcUser, PAGE_LIMIT};
use crate::disposition::{Classified, Disposition};
use crate::model::{Anchor, LinkEffect, Op};
use crate::secret::Secret;
use crate::store::{Store, StoreError};
use pace::{Backoff, Pacer};

/// Whose password a captured one is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordTarget {
    /// The JumpCloud user linked to an AD object (AD-owned).
    Linked(Anchor),
    /// A JumpCloud-owned user, named by the marker on its AD object.
    JumpCloud { domain: String, id: String },
}

impl std::fmt::Display for PasswordTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordTarget::Linked(a) => write!(f, "{a}"),
            PasswordTarget::JumpCloud { domain, id } => write!(f, "{domain}/jc:{id}"),
        }
    }
}

/// What became of a forwarded password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordSent {
    Set,
    /// forestsync's own write coming back: dropped.
    Echo,
    /// The user's password authority is the other side: not sent, recorded.
    NotOwner,
    /// The JumpCloud user no longer exists: not sent.
    Gone,
}

/// How the executor paces and retries, and what it binds new objects to.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    pub rate: RateLimits,
    pub retry: RetryPolicy,
    /// The JumpCloud Active Directory instance users and groups are associated with (created, taken
    /// over: add; `RemoveUser` with `Unbind`: remove). `None`: no associations are made.
    pub ad_instance_id: Option<String>,
    /// Per domain, the AD instance its objects are associated with (overrides `ad_instance_id`).
    pub ad_instances: std::collections::BTreeMap<String, String>,
    /// Two-way mode: password authority, echo ledger and conflict records.
    pub two_way: Option<Arc<crate::two_way::TwoWay>>,
    /// How many queued operations a drain reads at once.
    pub batch: usize,
    /// How many operations on different objects a drain runs at once (requests in flight are
    /// bounded separately by `rate.max_concurrent`).
    pub parallel_ops: usize,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            rate: RateLimits::default(),
            retry: RetryPolicy::default(),
            ad_instance_id: None,
            ad_instances: std::collections::BTreeMap::new(),
            two_way: None,
            batch: 100,
            parallel_ops: 16,
        }
    }
}

/// What one drain did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub completed: u64,
    /// Operations moved to the quarantine, with their error.
    pub quarantined: Vec<(u64, String)>,
    /// The drain stopped because shutdown was asked for (operations may remain queued).
    pub interrupted: bool,
}

/// Request counters since the executor was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecStats {
    pub requests: u64,
    pub throttled: u64,
}

/// Runs JumpCloud operations. Cheap to clone (shared state inside).
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    client: CloudClient,
    store: Store,
    pacer: Pacer,
    config: ExecutorConfig,
}

impl Executor {
    pub fn new(client: CloudClient, store: Store, config: ExecutorConfig) -> Executor {
        let pacer = Pacer::new(&config.rate, &config.retry);
        Executor {
            inner: Arc::new(Inner {
                client,
                store,
                pacer,
                config,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn stats(&self) -> ExecStats {
        ExecStats {
            requests: self.inner.pacer.requests.load(Ordering::Relaxed),
            throttled: self.inner.pacer.throttled.load(Ordering::Relaxed),
        }
    }

    /// Executes one operation (with retries) and returns how the links change. Does not touch the
    /// outbox: [`Executor::drain`] records the result.
    pub async fn run(&self, seq: u64, op: &Op) -> Result<LinkEffect, ExecError> {
        self.run_with(seq, op, None).await
    }

    async fn run_with(
        &self,
        seq: u64,
        op: &Op,
        shutdown: Option<&watch::Receiver<bool>>,
    ) -> Result<LinkEffect, ExecError> {
        let run = ops::OpRun {
            ex: self,
            what: describe(seq, op),
            shutdown,
        };
        run.execute(op).await
    }

    /// Runs the queued operations until the outbox is empty, shutdown is asked for (`true` on the
    /// channel), or an operation fails in a way that must stop the drain: Fatal (an operator must act)
    /// or a temporary failure that outlasted the retry budget (left queued). Operations that fail with
    /// BadInput are quarantined and the drain continues.
    ///
    /// Up to `parallel_ops` operations run at once, but never two that touch the same object: an
    /// operation waits for every earlier queued operation whose subject or member is one of its own
    /// (so a membership waits for both creates, and one group's member changes keep their order).
    /// Each completion is recorded on its own, so a crash replays exactly the unfinished ones.
    pub async fn drain(&self, shutdown: &watch::Receiver<bool>) -> Result<DrainReport, ExecError> {
        let mut report = DrainReport::default();
        let batch = self.inner.config.batch.max(1);
        let mut after = None;
        loop {
            let pending = self.inner.store.pending_ops(after, batch)?;
            let Some(&(last, _)) = pending.last() else {
                return Ok(report);
            };
            after = Some(last);
            self.drain_page(pending, shutdown, &mut report).await?;
            if report.interrupted {
                return Ok(report);
            }
        }
    }

    /// One page of the outbox, as concurrently as its dependencies allow (see [`Executor::drain`]).
    /// Completions are group-committed by a committer task (one store transaction, one fsync, for
    /// every completion that arrived meanwhile), so the drain keeps its requests going while the
    /// store syncs; an operation counts as done, for its dependents too, once its commit returned.
    async fn drain_page(
        &self,
        pending: Vec<(u64, Op)>,
        shutdown: &watch::Receiver<bool>,
        report: &mut DrainReport,
    ) -> Result<(), ExecError> {
        use futures_util::stream::{FuturesUnordered, StreamExt};

        let parallel = self.inner.config.parallel_ops.max(1);
        let deps = dependencies(&pending);
        let mut done = vec![false; pending.len()];
        let mut started = vec![false; pending.len()];
        let mut running = FuturesUnordered::new();
        let mut stop: Option<ExecError> = None;
        let (to_commit, mut commits) =
            tokio::sync::mpsc::unbounded_channel::<(usize, u64, LinkEffect)>();
        let (committed_tx, mut committed) =
            tokio::sync::mpsc::unbounded_channel::<Result<Vec<usize>, StoreError>>();
        let store = self.inner.store.clone();
        let committer = tokio::spawn(async move {
            while let Some(first) = commits.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = commits.try_recv() {
                    batch.push(more);
                }
                let store = store.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let items: Vec<(u64, LinkEffect)> =
                        batch.iter().map(|(_, seq, e)| (*seq, e.clone())).collect();
                    store
                        .complete_ops(&items)
                        .map(|()| batch.into_iter().map(|(i, _, _)| i).collect())
                })
                .await
                .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())));
                let failed = result.is_err();
                if committed_tx.send(result).is_err() || failed {
                    return;
                }
            }
        });
        let mut committing = 0usize;
        let outcome = loop {
            if stop.is_none() && !report.interrupted {
                for i in 0..pending.len() {
                    if running.len() >= parallel {
                        break;
                    }
                    if started[i] || !deps[i].iter().all(|&d| done[d]) {
                        continue;
                    }
                    if *shutdown.borrow() {
                        report.interrupted = true;
                        break;
                    }
                    started[i] = true;
                    let (seq, op) = &pending[i];
                    let span = crate::change_trace::take(*seq, op);
                    running.push(async move {
                        let ran = tracing::Instrument::instrument(
                            self.run_with(*seq, op, Some(shutdown)),
                            span,
                        )
                        .await;
                        (i, ran)
                    });
                }
            }
            if running.is_empty() && committing == 0 {
                break Ok(());
            }
            tokio::select! {
                Some(result) = committed.recv(), if committing > 0 => {
                    let indices = match result {
                        Ok(indices) => indices,
                        Err(e) => break Err(ExecError::from(e)),
                    };
                    committing -= indices.len();
                    for i in indices {
                        let (seq, op) = (pending[i].0, &pending[i].1);
                        crate::metrics::change(
                            &op.subject().domain,
                            crate::health::Direction::AdToJumpcloud,
                            op.kind(),
                        );
                        crate::progress::written();
                        report.completed += 1;
                        done[i] = true;
                        tracing::debug!(seq, "operation completed");
                    }
                }
                Some((i, ran)) = running.next(), if !running.is_empty() => {
                    let (seq, op) = (pending[i].0, &pending[i].1);
                    match ran {
                        Ok(effect) => {
                            committing += 1;
                            if to_commit.send((i, seq, effect)).is_err() {
                                break Err(ExecError::from(StoreError::Task(
                                    "the outbox committer stopped".into(),
                                )));
                            }
                        }
                        Err(ExecError::Shutdown) => report.interrupted = true,
                        Err(e) => match e.disposition() {
                            Disposition::BadInput => {
                                crate::metrics::object_error(&op.subject().domain, &e.disposition());
                                let text = e.to_string();
                                tracing::warn!(seq, error = %text, "operation quarantined");
                                let t = text.clone();
                                self.blocking(move |s| s.quarantine_op(seq, &t)).await?;
                                crate::progress::written();
                                report.quarantined.push((seq, text));
                                done[i] = true;
                            }
                            Disposition::Fatal => {
                                tracing::error!(seq, error = %e, "drain stopped");
                                stop.get_or_insert(e);
                            }
                            Disposition::Retry
                            | Disposition::Throttled { .. }
                            | Disposition::FailOver => {
                                tracing::warn!(seq, error = %e, "drain paused; the operation stays queued");
                                stop.get_or_insert(e);
                            }
                        },
                    }
                }
            }
        };
        drop(to_commit);
        let _ = committer.await;
        outcome?;
        match stop {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The JumpCloud AD instance objects of `domain` are associated with (if any).
    pub fn ad_instance(&self, domain: &str) -> Option<&str> {
        self.inner
            .config
            .ad_instances
            .get(domain)
            .or(self.inner.config.ad_instance_id.as_ref())
            .map(String::as_str)
    }

    /// Sets the password of the JumpCloud user linked to `anchor` (the password path does not go
    /// through the outbox: passwords are never stored). A policy violation is BadInput naming the rules.
    pub async fn set_password(&self, anchor: &Anchor, password: &Secret) -> Result<(), ExecError> {
        match self
            .forward_password(&PasswordTarget::Linked(anchor.clone()), password)
            .await?
        {
            PasswordSent::Set
            | PasswordSent::Echo
            | PasswordSent::NotOwner
            | PasswordSent::Gone => Ok(()),
        }
    }

    /// Sends a password captured in AD to its JumpCloud user. In two-way mode the user's password
    /// authority decides first: a password of a JumpCloud-authority user is not sent (and is
    /// recorded), and one forestsync itself wrote to AD (its echo) is dropped silently.
    pub async fn forward_password(
        &self,
        target: &PasswordTarget,
        password: &Secret,
    ) -> Result<PasswordSent, ExecError> {
        let what = format!("SetPassword {target}");
        let (domain, jumpcloud_id) = match target {
            PasswordTarget::Linked(anchor) => {
                let link =
                    self.inner
                        .store
                        .link(anchor)?
                        .ok_or_else(|| ExecError::MissingLink {
                            op: what.clone(),
                            role: "user",
                            anchor: anchor.clone(),
                        })?;
                (anchor.domain.clone(), link.jumpcloud_id)
            }
            PasswordTarget::JumpCloud { domain, id } => (domain.clone(), id.clone()),
        };
        if let Some(tw) = &self.inner.config.two_way {
            if tw.echoes.take(&jumpcloud_id, password) {
                tracing::debug!(domain = %domain, object = %jumpcloud_id, "captured password is the one forestsync wrote to AD; not sent back");
                return Ok(PasswordSent::Echo);
            }
            let id = jumpcloud_id.clone();
            let profile = self
                .read("GetUser (password authority)", move |c| {
                    let id = id.clone();
                    async move { c.get_profile(&id).await }
                })
                .await?;
            let Some(profile) = profile else {
                tracing::info!(domain = %domain, object = %jumpcloud_id, "captured password for a user JumpCloud no longer has; dropped");
                return Ok(PasswordSent::Gone);
            };
            let side = crate::two_way::password_authority(
                &profile,
                tw.settings.default_password_authority,
            );
            if side != crate::two_way::Side::Ad {
                tw.record(
                    &domain,
                    crate::two_way::RecordKind::NonOwnerChange,
                    &jumpcloud_id,
                    "password",
                    &format!(
                        "the password of {} was changed in AD, but its password authority is JumpCloud: not sent to JumpCloud",
                        profile.username
                    ),
                )?;
                return Ok(PasswordSent::NotOwner);
            }
            tw.echoes.record(&jumpcloud_id, password);
        }
        let retry = &self.inner.config.retry;
        let mut backoff = Backoff::new(retry, None);
        loop {
            let result = self
                .request(
                    &what,
                    self.inner.client.set_password(&jumpcloud_id, password),
                )
                .await;
            match result {
                Ok(()) => return Ok(PasswordSent::Set),
                // An earlier attempt that failed ambiguously (5xx, time-out) may have set it: the same
                // password then violates only the history rule.
                Err(ExecError::Cloud {
                    source:
                        crate::cloud::CloudError::Rejected {
                            status: 400,
                            message,
                            ..
                        },
                    ..
                }) if backoff.failures() > 0
                    && message.contains("passwordHistory")
                    && !message.contains(',') =>
                {
                    return Ok(PasswordSent::Set)
                }
                Err(e) => backoff.retry_after_failure(e).await?,
            }
        }
    }

    /// Every JumpCloud user, page by page through the rate limiter (each page retried on its own).
    pub async fn list_users(&self) -> Result<Vec<JcUser>, ExecError> {
        let mut out: Vec<JcUser> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut skip = 0;
        loop {
            let mut backoff = Backoff::new(&self.inner.config.retry, None);
            let page = loop {
                match self
                    .request("ListUsers", self.inner.client.list_users_page(skip))
                    .await
                {
                    Ok((page, _)) => break page,
                    Err(e) => backoff.retry_after_failure(e).await?,
                }
            };
            let n = page.len();
            skip += n;
            out.extend(page.into_iter().filter(|u| seen.insert(u.id.clone())));
            if n < PAGE_LIMIT {
                return Ok(out);
            }
        }
    }

    /// A read of JumpCloud through the one rate limiter, retried like every other request (429,
    /// 5xx, time-outs) within the retry budget. `call` builds the request afresh for each attempt.
    pub async fn read<T, F, Fut>(&self, what: &str, call: F) -> Result<T, ExecError>
    where
        F: Fn(CloudClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::cloud::CloudError>>,
    {
        let mut backoff = Backoff::new(&self.inner.config.retry, None);
        loop {
            match self.request(what, call(self.inner.client.clone())).await {
                Ok(v) => return Ok(v),
                Err(e) => backoff.retry_after_failure(e).await?,
            }
        }
    }

    /// One JumpCloud request through the pacer, errors tagged with the operation.
    async fn request<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, crate::cloud::CloudError>>,
    ) -> Result<T, ExecError> {
        self.inner
            .pacer
            .request(fut)
            .await
            .map_err(|source| ExecError::Cloud {
                op: what.to_owned(),
                source,
            })
    }

    /// A store write on a blocking thread (each commit waits for fsync).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ExecError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ExecError::Task(e.to_string()))?
            .map_err(ExecError::from)
    }
}

/// `"#12 CreateUser alpha/<guid> (jdoe)"`: what error messages and logs name.
fn describe(seq: u64, op: &Op) -> String {
    let detail = match op {
        Op::CreateUser { user } => format!("CreateUser {} ({})", user.anchor, user.username),
        Op::TakeOverUser { user, jumpcloud_id } => format!(
            "TakeOverUser {} ({} -> JumpCloud user {jumpcloud_id})",
            user.anchor, user.username
        ),
        Op::UpdateUser { user } => format!("UpdateUser {} ({})", user.anchor, user.username),
        Op::RemoveUser { anchor, action } => format!("RemoveUser {anchor} ({action:?})"),
        Op::CreateGroup { group } => format!("CreateGroup {} ({})", group.anchor, group.name),
        Op::RenameGroup { anchor, name } => format!("RenameGroup {anchor} (to {name})"),
        Op::DeleteGroup { anchor } => format!("DeleteGroup {anchor}"),
        Op::AddMember { group, user } => format!("AddMember {user} to {group}"),
        Op::RemoveMember { group, user } => format!("RemoveMember {user} from {group}"),
    };
    format!("#{seq} {detail}")
}

/// For each operation of a page, the earlier ones it must wait for: the last earlier operation
/// touching each object it touches (its subject, and the user of a membership change).
fn dependencies(ops: &[(u64, Op)]) -> Vec<Vec<usize>> {
    fn touched(op: &Op) -> Vec<&Anchor> {
        match op {
            Op::AddMember { group, user } | Op::RemoveMember { group, user } => vec![group, user],
            other => vec![other.subject()],
        }
    }
    let mut last: std::collections::HashMap<&Anchor, usize> = std::collections::HashMap::new();
    let mut deps = Vec::with_capacity(ops.len());
    for (i, (_, op)) in ops.iter().enumerate() {
        let anchors = touched(op);
        let mut mine: Vec<usize> = anchors
            .iter()
            .filter_map(|a| last.get(a).copied())
            .collect();
        mine.sort_unstable();
        mine.dedup();
        for a in anchors {
            last.insert(a, i);
        }
        deps.push(mine);
    }
    deps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The executor is shared between tasks and its futures may move between threads.
    #[allow(dead_code)]
    fn executor_and_its_futures_are_send(ex: &Executor, rx: &watch::Receiver<bool>, op: &Op) {
        fn send_sync<T: Send + Sync + Clone>(_: &T) {}
        fn send<T: Send>(_: T) {}
        send_sync(ex);
        send_sync(ex.store());
        send(ex.drain(rx));
        send(ex.run(1, op));
        send(ex.set_password(op.subject(), &Secret::new("x")));
    }

    #[test]
    fn operations_are_described_by_sequence_kind_anchor_and_name() {
        let anchor = Anchor {
            domain: "alpha".into(),
            guid: crate::model::ObjectGuid::from_bytes(&[1; 16]).unwrap(),
        };
        let d = describe(
            7,
            &Op::AddMember {
                group: anchor.clone(),
                user: anchor.clone(),
            },
        );
        assert_eq!(d, format!("#7 AddMember {anchor} to {anchor}"));
    }

    #[test]
    fn an_operation_waits_for_the_earlier_ones_on_its_objects_and_no_others() {
        let a = |n: u8| Anchor {
            domain: "alpha".into(),
            guid: crate::model::ObjectGuid::from_bytes(&[n; 16]).unwrap(),
        };
        let (u1, u2, g) = (a(1), a(2), a(3));
        let remove = |anchor: &Anchor| Op::RemoveUser {
            anchor: anchor.clone(),
            action: crate::model::RemoveAction::Delete,
        };
        let ops = vec![
            (1, remove(&u1)),
            (2, remove(&u2)),
            (3, Op::DeleteGroup { anchor: g.clone() }),
            (
                4,
                Op::AddMember {
                    group: g.clone(),
                    user: u1.clone(),
                },
            ),
            (
                5,
                Op::AddMember {
                    group: g.clone(),
                    user: u2.clone(),
                },
            ),
            (6, remove(&u1)),
        ];
        let deps = dependencies(&ops);
        assert_eq!(
            deps[0],
            Vec::<usize>::new(),
            "independent objects start at once"
        );
        assert_eq!(deps[1], Vec::<usize>::new());
        assert_eq!(deps[2], Vec::<usize>::new());
        assert_eq!(
            deps[3],
            vec![0, 2],
            "a membership waits for its user and its group"
        );
        assert_eq!(
            deps[4],
            vec![1, 3],
            "one group's member changes keep their order"
        );
        assert_eq!(
            deps[5],
            vec![3],
            "a user's removal waits for its membership change"
        );
    }
}

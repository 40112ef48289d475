//! The JumpCloud → AD engine of one domain (one JumpCloud AD instance): what the sync coordinator runs
//! per domain in `jumpcloud-authoritative` mode.
//!
//! How it stays correct without an outbox: every write is derived from *both sides as they are now*
//! (the JumpCloud object read through the public API, the AD object found by its ownership marker), so
//! replaying a change is harmless — a write whose effect is already in AD is not planned again. The
//! channel cursor is acknowledged only after a page of changes was fully applied; a crash, a DC failover
//! or a primary-agent takeover re-delivers the unacknowledged page and it converges to the same state.
//! Passwords, which cannot be read back, are made idempotent by the AD object itself: the password and
//! the marker's `;pw=<seq>` are written in one LDAP modify, and a password event whose seq is not newer
//! than the marker's is skipped.
//!
//! Cost is proportional to changes: after one full reconcile (on becoming primary), each page of events
//! is coalesced per object and each touched object costs a few API reads and one or two AD operations.
//! Events older than the reconcile (up to the channel head it saw) are already reflected in what it
//! read: only their passwords are applied. Profiles are read 100 per request; a membership change
//! touches its user only when the group is bound here (or still held in AD). Group members are
//! written [`MEMBER_CHUNK`] values per LDAP modify. An object forestsync did not create is never
//! written, not even when it holds the DN a create wanted (the add's `entryAlreadyExists` is checked
//! against the marker). Managed AD objects are kept in an in-memory index (built by the reconcile,
//! kept by our own writes); a stale entry (an admin moved or deleted the object) is noticed by the
//! failed write and re-read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use crate::channel::{
    AgentChannel, ChannelError, ChannelEvent, EventKind, EventOp, Report, ReportCode, ReportKind,
    Role,
};
use crate::cloud::{AssocTarget, JcGroup, JcProfile};
use crate::dc::{AttrChange, DirReply, DirRequest};
use crate::directory::entry::{quoted_utf16, AdEntry, FindScope};
use crate::directory::failover::DomainDirectory;
use crate::directory::DirectoryError;
use crate::disposition::{Classified, Disposition};
use crate::executor::{ExecError, Executor};
use crate::plan::to_ad::{
    any_marker_filter, escape_filter_value, marker_value, parse_marker, plan_group, plan_user,
    AdGroup, AdUser, GroupPlan, RemovalAction, ToAdRules, UserPlan, MARKER_ATTRIBUTE,
    UAC_ACCOUNTDISABLE, UAC_NORMAL_ACCOUNT,
};
use crate::secret::Secret;
use crate::store::{Store, StoreError};

mod both_ways;
use both_ways::Polled;

/// Values per LDAP modify when membership changes (never one huge replace).
pub const MEMBER_CHUNK: usize = 500;

/// One domain's JumpCloud → AD settings.
#[derive(Clone)]
pub struct ToAdDomain {
    pub name: String,
    pub base_dn: String,
    pub ad_instance_id: String,
    pub rules: ToAdRules,
    pub directory: DomainDirectory,
    pub channel: Arc<dyn AgentChannel>,
    /// Two-way: JumpCloud ids of managed AD objects the AD reader saw change (ours or an admin's).
    pub touched: Option<Touched>,
}

/// The receiving end of the AD reader's "these managed objects changed in AD" notices.
pub type Touched = Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>>;

/// Pacing and safety shared by every domain.
#[derive(Clone, Debug)]
pub struct ToAdSettings {
    pub max_removals: u32,
    pub max_removal_percent: u32,
    /// `echo N > <file>` approves N held removals once.
    pub approve_file: Option<PathBuf>,
    /// How long one channel poll waits for a change.
    pub poll_wait: Duration,
    /// How often a standby agent asks whether it became primary.
    pub standby_every: Duration,
    /// Two-way mode: authority rules, echo ledger, records.
    pub two_way: Option<Arc<crate::two_way::TwoWay>>,
}

impl Default for ToAdSettings {
    fn default() -> Self {
        ToAdSettings {
            max_removals: 500,
            max_removal_percent: 20,
            approve_file: None,
            poll_wait: Duration::from_secs(20),
            standby_every: Duration::from_secs(1),
            two_way: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToAdError {
    #[error("domain {domain}: {source}")]
    Directory {
        domain: String,
        #[source]
        source: Box<DirectoryError>,
    },
    #[error(transparent)]
    Api(#[from] ExecError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("domain {domain}: {count} object(s) forestsync wrote on a DC that is not answering are not visible on {dc} yet (e.g. {example}); they are not re-created elsewhere, and these changes are applied again once that DC answers")]
    InDoubt {
        domain: String,
        dc: String,
        count: usize,
        example: String,
    },
}

impl Classified for ToAdError {
    fn disposition(&self) -> Disposition {
        match self {
            ToAdError::Directory { source, .. } => source.disposition(),
            ToAdError::Api(e) => e.disposition(),
            ToAdError::Channel(e) => e.disposition(),
            ToAdError::Store(e) => e.disposition(),
            ToAdError::InDoubt { .. } => Disposition::Retry,
        }
    }
}

/// Counters of what the engine did (tests and status read them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToAdStats {
    pub writes: u64,
    pub creates: u64,
    pub removals: u64,
    pub passwords_set: u64,
    pub passwords_rejected: u64,
    pub refused: u64,
    pub held_removals: u64,
    /// Two-way: JumpCloud-side changes of AD-owned users written back.
    pub reverted: u64,
}

/// What is known about users' binding to the AD instance.
#[derive(Clone, Copy)]
enum Bound<'a> {
    /// Exactly these are bound (a full read of the instance's scope).
    Complete(&'a BTreeSet<String>),
    /// These are known to be bound; any other is looked up.
    Partial(&'a BTreeSet<String>),
}

/// JumpCloud groups read during one page: the group (`None`: deleted) and whether it is bound.
type GroupCache = HashMap<String, Option<(JcGroup, bool)>>;

/// Store meta keys (per domain).
fn cursor_key(domain: &str) -> String {
    format!("to_ad/{domain}/cursor")
}
fn error_key(domain: &str, id: &str) -> String {
    format!("to_ad/{domain}/error/{id}")
}
/// Written before an object is created, removed when forestsync deletes it: "this object exists in AD
/// because of us", whatever a lagging DC shows.
fn managed_key(domain: &str, id: &str) -> String {
    format!("to_ad/{domain}/managed/{id}")
}
/// The newest password event this agent wrote for a user.
fn written_key(domain: &str, id: &str) -> String {
    format!("to_ad/{domain}/password_written/{id}")
}
fn rejected_key(domain: &str, id: &str) -> String {
    format!("to_ad/{domain}/password_rejected/{id}")
}

const USER_ATTRS: &[&str] = &[
    "objectClass",
    "objectGUID",
    "sAMAccountName",
    "userPrincipalName",
    "userAccountControl",
    "adminCount",
    "isCriticalSystemObject",
    "pwdLastSet",
    "description",
    "member",
];

/// The engine of one domain. Owned by one task; never shared.
pub struct ToAdEngine {
    d: ToAdDomain,
    settings: ToAdSettings,
    api: Executor,
    store: Store,
    users: HashMap<String, AdUser>,
    groups: HashMap<String, AdGroup>,
    cursor: u64,
    reconciled: bool,
    reports: Vec<Report>,
    pub stats: ToAdStats,
    /// Removals held by the guard since the last approval (re-planned by a reconcile once approved).
    held: bool,
    /// The newest channel seq seen: the seq of per-object reports (so a newer result is never shown
    /// as older than one it replaces).
    report_seq: u64,
    /// Events up to this seq happened before the last full reconcile read both sides: only their
    /// passwords (which the reconcile cannot read) are still applied.
    covered_through: u64,
    /// Objects forestsync manages (per the store) that the DC in use does not show: written on a DC
    /// that is down now and not replicated yet. Never re-created elsewhere; the page stays
    /// unacknowledged (applied again) until the DC that holds them answers.
    in_doubt: BTreeSet<String>,
    /// Of `in_doubt`, the groups (the rest are users): re-planned at every step until resolved.
    in_doubt_groups: BTreeSet<String>,
    /// The DC the last step used: a change (fail-over, fail-back) means the index came from another
    /// DC's view, so the engine reconciles.
    last_dc: String,
    /// Two-way: AD DNs of AD-owned users by JumpCloud id (group members JumpCloud adds to its groups).
    pub(super) ad_owned_dns: HashMap<String, String>,
    /// Two-way: AD-owned users whose JumpCloud side changed while forestsync itself was writing them;
    /// checked again at the next step.
    pub(super) recheck: BTreeSet<String>,
    /// Two-way: the same for AD-owned groups.
    pub(super) recheck_groups: BTreeSet<String>,
}

impl ToAdEngine {
    pub fn new(
        d: ToAdDomain,
        settings: ToAdSettings,
        api: Executor,
        store: Store,
    ) -> Result<Self, ToAdError> {
        let cursor = store
            .get_meta(&cursor_key(&d.name))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(ToAdEngine {
            d,
            settings,
            api,
            store,
            users: HashMap::new(),
            groups: HashMap::new(),
            cursor,
            reconciled: false,
            reports: Vec::new(),
            stats: ToAdStats::default(),
            held: false,
            report_seq: cursor,
            covered_through: 0,
            in_doubt: BTreeSet::new(),
            in_doubt_groups: BTreeSet::new(),
            last_dc: String::new(),
            ad_owned_dns: HashMap::new(),
            recheck: BTreeSet::new(),
            recheck_groups: BTreeSet::new(),
        })
    }

    pub(super) fn dir_err(&self, source: DirectoryError) -> ToAdError {
        ToAdError::Directory {
            domain: self.d.name.clone(),
            source: Box::new(source),
        }
    }

    /// Runs until `stop` turns true: poll, reconcile when becoming primary, apply pages.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let domain = self.d.name.clone();
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            // Held removals: look for an approval every 2 s instead of waiting a whole long poll.
            // Held removals or objects in doubt: look again every second or two instead of
            // waiting a whole long poll (an approval, or the DC holding them coming back).
            let wait = match (
                self.reconciled,
                self.held
                    || !self.in_doubt.is_empty()
                    || !self.recheck.is_empty()
                    || !self.recheck_groups.is_empty(),
            ) {
                (false, _) => Duration::ZERO,
                (true, true) => self.settings.poll_wait.min(Duration::from_secs(2)),
                (true, false) => self.settings.poll_wait,
            };
            let step = tokio::select! {
                r = self.step(wait) => r,
                _ = stop.changed() => return,
            };
            match step {
                Ok(()) => {
                    failures = 0;
                    if self.reconciled {
                        crate::health::synced(&domain, crate::health::Direction::JumpcloudToAd);
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let pause = match e.disposition() {
                        Disposition::Fatal => Duration::from_secs(30),
                        // A server's Retry-After is honoured up to 5 minutes (as the executor does):
                        // a huge or hostile value must not stall the direction until a restart.
                        Disposition::Throttled { retry_after } => retry_after
                            .unwrap_or(Duration::from_secs(5))
                            .min(Duration::from_secs(300)),
                        _ => Duration::from_millis(250 * u64::from(failures.min(20))),
                    };
                    tracing::warn!(domain = %domain, error = %e, retry_in_ms = pause.as_millis() as u64, "JumpCloud → AD sync step failed; the page will be applied again");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {},
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    /// One poll and what follows it.
    pub async fn step(&mut self, wait: Duration) -> Result<(), ToAdError> {
        self.flush_reports().await;
        let page = match self.poll_or_touched(wait).await? {
            Polled::Page(p) => p,
            Polled::Touched(ids) => {
                self.ad_side_changed(ids).await?;
                // What an empty page would have done (AD changes may keep coming faster than a
                // long poll lasts).
                self.retry_in_doubt().await?;
                return self.recheck_ad_owned().await;
            }
        };
        if page.role == Role::Standby {
            if self.reconciled {
                tracing::info!(domain = %self.d.name, primary = ?page.primary_agent, "this agent is standby now");
            }
            self.reconciled = false;
            tokio::time::sleep(self.settings.standby_every).await;
            return Ok(());
        }
        let newest = page.events.iter().map(|e| e.seq).max().unwrap_or(0);
        self.report_seq = self.report_seq.max(page.head).max(newest);
        if self.reconciled && page.acked != self.cursor {
            // Someone else acknowledged changes: the primary role moved away and back without this
            // agent seeing a standby answer (it was paused, or busy longer than the heartbeat
            // timeout). What it holds in memory is stale.
            tracing::warn!(domain = %self.d.name, acked = page.acked, ours = self.cursor, "another agent acknowledged changes meanwhile; reconciling");
            self.reconciled = false;
            self.cursor = self.cursor.max(page.acked);
        }
        self.d.directory.maybe_fail_back();
        let dc = self.d.directory.current_dc();
        if self.reconciled && dc != self.last_dc {
            tracing::info!(domain = %self.d.name, from = %self.last_dc, to = %dc, "the domain's DC changed; reconciling with its view");
            self.reconciled = false;
        }
        self.last_dc = dc;
        if !self.reconciled || (self.held && self.approved_removals() > 0) {
            tracing::info!(domain = %self.d.name, "primary for the AD instance: reconciling JumpCloud and AD");
            let span = tracing::info_span!(parent: None, "reconcile", domain = %self.d.name, direction = "jumpcloud_to_ad");
            tracing::Instrument::instrument(self.reconcile(), span).await?;
            self.reconciled = true;
            // Every event up to the head seen before the reconcile is reflected in what it read.
            self.covered_through = self.covered_through.max(page.head);
            tracing::info!(
                domain = %self.d.name,
                users = self.users.len(),
                groups = self.groups.len(),
                through_seq = page.head,
                "reconciled JumpCloud and AD"
            );
            crate::health::set_scope(&self.d.name, "jumpcloud_users", self.users.len() as u64);
            crate::health::set_scope(&self.d.name, "jumpcloud_groups", self.groups.len() as u64);
        }
        self.retry_in_doubt().await?;
        self.recheck_ad_owned().await?;
        if page.events.is_empty() {
            // Nothing new: still no acknowledgement while objects are in doubt.
            return self.check_in_doubt();
        }
        let last = newest.max(self.cursor);
        let events: Vec<ChannelEvent> = page
            .events
            .iter()
            .filter(|e| e.seq > self.covered_through || e.kind == EventKind::Password)
            .cloned()
            .collect();
        if events.len() < page.events.len() {
            tracing::debug!(domain = %self.d.name, skipped = page.events.len() - events.len(), through_seq = self.covered_through, "events already reflected by the reconcile");
        }
        // One trace per page of JumpCloud changes (usually one change): the channel read is its
        // start, the AD writes its children.
        let span = tracing::info_span!(
            parent: None,
            "jumpcloud.changes",
            domain = %self.d.name,
            events = events.len(),
            first_seq = events.first().map(|e| e.seq).unwrap_or(0),
            last_seq = last,
            object.id = events.first().map(|e| e.id.as_str()).unwrap_or(""),
        );
        tracing::Instrument::instrument(self.apply_events(&events), span).await?;
        self.check_in_doubt()?;
        self.cursor = last;
        let (store, key, value) = (
            self.store.clone(),
            cursor_key(&self.d.name),
            self.cursor.to_string(),
        );
        tokio::task::spawn_blocking(move || store.set_meta(&key, &value))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(())
    }

    /// Plans the objects left in doubt again (the DC holding them may answer now).
    async fn retry_in_doubt(&mut self) -> Result<(), ToAdError> {
        if self.in_doubt.is_empty() {
            return Ok(());
        }
        let groups = std::mem::take(&mut self.in_doubt_groups);
        let users: BTreeSet<String> = std::mem::take(&mut self.in_doubt)
            .into_iter()
            .filter(|id| !groups.contains(id))
            .collect();
        if !users.is_empty() {
            self.refresh_users(&users, Bound::Partial(&BTreeSet::new()))
                .await?;
        }
        if !groups.is_empty() {
            self.refresh_groups(&groups, &mut HashMap::new()).await?;
        }
        Ok(())
    }

    /// Fails the step (the page is not acknowledged) while objects are in doubt.
    fn check_in_doubt(&self) -> Result<(), ToAdError> {
        match self.in_doubt.iter().next() {
            None => Ok(()),
            Some(example) => Err(ToAdError::InDoubt {
                domain: self.d.name.clone(),
                dc: self.d.directory.current_dc(),
                count: self.in_doubt.len(),
                example: example.clone(),
            }),
        }
    }

    fn is_managed(&self, id: &str) -> bool {
        matches!(
            self.store.get_meta(&managed_key(&self.d.name, id)),
            Ok(Some(_))
        )
    }

    async fn set_managed(&self, id: &str, dn: Option<&str>) -> Result<(), ToAdError> {
        let (store, key) = (self.store.clone(), managed_key(&self.d.name, id));
        let dn = dn.map(str::to_owned);
        tokio::task::spawn_blocking(move || match dn {
            Some(dn) => store.set_meta(&key, &dn),
            None => store.delete_meta(&key),
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(())
    }

    /// A create for an object forestsync already made, which the DC in use does not show: on a
    /// fallback DC that is replication lag (in doubt: never re-created there); on the preferred DC
    /// the object is really gone (deleted in AD) and is created again.
    fn create_in_doubt(&mut self, id: &str, dn: &str, group: bool) -> bool {
        if !self.is_managed(id) {
            return false;
        }
        if self.d.directory.on_preferred() {
            tracing::warn!(domain = %self.d.name, object = id, dn, "an object forestsync created is gone from AD; creating it again");
            return false;
        }
        if group {
            self.in_doubt_groups.insert(id.to_owned());
        }
        if self.in_doubt.insert(id.to_owned()) {
            tracing::warn!(domain = %self.d.name, object = id, dn, dc = %self.d.directory.current_dc(), "created on a DC that is not answering and not visible here yet; waiting for that DC instead of creating it twice");
        }
        true
    }

    fn approved_removals(&self) -> u32 {
        super::approval::approved(self.settings.approve_file.as_deref())
    }

    // ---- reading AD ----

    pub(super) async fn find(
        &self,
        base: &str,
        scope: FindScope,
        filter: String,
        attrs: &[&str],
        members: bool,
    ) -> Result<Vec<AdEntry>, ToAdError> {
        self.find_raw(base, scope, filter, attrs, members)
            .await
            .map_err(|e| self.dir_err(e))
    }

    async fn find_raw(
        &self,
        base: &str,
        scope: FindScope,
        filter: String,
        attrs: &[&str],
        members: bool,
    ) -> Result<Vec<AdEntry>, DirectoryError> {
        let mut wanted: Vec<String> = attrs.iter().map(|a| a.to_string()).collect();
        wanted.push(MARKER_ATTRIBUTE.to_owned());
        for (_, ad) in &self.d.rules.attributes {
            wanted.push(ad.clone());
        }
        match self
            .d
            .directory
            .run(DirRequest::Find {
                base: base.to_owned(),
                scope,
                filter,
                attrs: wanted,
                members,
            })
            .await
        {
            Ok(DirReply::Entries(e)) => Ok(e),
            Ok(_) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn write(&mut self, req: DirRequest) -> Result<(), DirectoryError> {
        self.d.directory.run(req).await.map(|_| {
            self.stats.writes += 1;
        })
    }

    /// Reads every managed object into the index. Only the target OU's subtree is forestsync's: an object
    /// an admin moved out of it is no longer managed (and markers elsewhere in the domain, e.g. of another
    /// deployment, are never taken for ours).
    async fn load_index(&mut self) -> Result<(), ToAdError> {
        let entries = self
            .find(
                &self.d.rules.target_ou.clone(),
                FindScope::Subtree,
                any_marker_filter(),
                USER_ATTRS,
                true,
            )
            .await?;
        self.users.clear();
        self.groups.clear();
        let mut seen: HashMap<String, AdEntry> = HashMap::new();
        let mut copies: Vec<AdEntry> = Vec::new();
        for e in entries {
            let Some(m) = e.first(MARKER_ATTRIBUTE).and_then(parse_marker) else {
                continue;
            };
            // Two objects for one JumpCloud id: a create that reached two DCs (replication made one
            // a conflict copy, "CNF:" in its RDN). Keep the regular one.
            let e = match seen.remove(&m.id) {
                Some(first) if is_conflict_copy(&first.dn) && !is_conflict_copy(&e.dn) => {
                    copies.push(first);
                    e
                }
                Some(first) => {
                    copies.push(e);
                    first
                }
                None => e,
            };
            if e.has_class("group") {
                self.groups.insert(m.id.clone(), to_group(&e));
            } else if e.has_class("user") {
                self.users.insert(m.id.clone(), to_user(&e));
            }
            seen.insert(m.id, e);
        }
        for copy in copies {
            if copy.is_privileged() {
                continue;
            }
            tracing::warn!(domain = %self.d.name, dn = %copy.dn, "a second AD object for one JumpCloud object (a replication conflict copy); deleting it");
            if let Err(e) = tolerate_missing(
                self.write(DirRequest::Delete {
                    dn: copy.dn.clone(),
                })
                .await,
            ) {
                tracing::warn!(domain = %self.d.name, dn = %copy.dn, error = %e, "cannot delete the conflict copy");
            }
        }
        Ok(())
    }

    /// AD users (not managed for `except`) with these sAMAccountNames, in batches of 50 per search.
    async fn by_sam(
        &self,
        names: &[String],
        group: bool,
    ) -> Result<HashMap<String, AdEntry>, ToAdError> {
        let mut out = HashMap::new();
        for chunk in names.chunks(50) {
            let filter = format!(
                "(&(objectClass={})(|{}))",
                if group { "group" } else { "user" },
                chunk
                    .iter()
                    .map(|n| format!("(sAMAccountName={})", escape_filter_value(n)))
                    .collect::<String>()
            );
            for e in self
                .find(
                    &self.d.base_dn.clone(),
                    FindScope::Subtree,
                    filter,
                    USER_ATTRS,
                    false,
                )
                .await?
            {
                if let Some(sam) = e.first("samaccountname") {
                    out.insert(sam.to_lowercase(), e.clone());
                }
            }
        }
        Ok(out)
    }

    // ---- reading JumpCloud ----

    async fn paged_ids<F, Fut>(&self, what: &str, f: F) -> Result<Vec<String>, ToAdError>
    where
        F: Fn(crate::cloud::CloudClient, usize) -> Fut + Clone,
        Fut: std::future::Future<Output = Result<Vec<String>, crate::cloud::CloudError>>,
    {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        loop {
            let skip = out.len();
            let f = f.clone();
            let page = self.api.read(what, move |c| f(c, skip)).await?;
            let n = page.len();
            out.extend(page.into_iter().filter(|id| seen.insert(id.clone())));
            if n < crate::cloud::PAGE_LIMIT {
                return Ok(out);
            }
        }
    }

    async fn jc_members(&self, group: &str) -> Result<Vec<String>, ToAdError> {
        let g = group.to_owned();
        self.paged_ids("ListGroupMembers", move |c, skip| {
            let g = g.clone();
            async move { c.member_ids(&g, skip).await }
        })
        .await
    }

    /// The profiles of `ids` that exist (100 per request); a deleted user is simply absent.
    pub(super) async fn jc_profiles(&self, ids: &[String]) -> Result<Vec<JcProfile>, ToAdError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(crate::cloud::PAGE_LIMIT) {
            let ids = chunk.to_vec();
            let page = self
                .api
                .read("GetUsers", move |c| {
                    let ids = ids.clone();
                    async move { c.get_profiles(&ids).await }
                })
                .await?;
            out.extend(page);
        }
        Ok(out)
    }

    /// Whether the user is bound to this AD instance, directly or through a group.
    async fn jc_user_bound(&self, id: &str) -> Result<bool, ToAdError> {
        let uid = id.to_owned();
        let ads = self
            .api
            .read("UserActiveDirectories", move |c| {
                let uid = uid.clone();
                async move { c.user_ad_ids(&uid).await }
            })
            .await?;
        Ok(ads.iter().any(|a| a == &self.d.ad_instance_id))
    }

    /// [`Self::jc_group`], read once per page.
    async fn jc_group_cached(
        &self,
        cache: &mut GroupCache,
        id: &str,
    ) -> Result<Option<(JcGroup, bool)>, ToAdError> {
        if let Some(g) = cache.get(id) {
            return Ok(g.clone());
        }
        let g = self.jc_group(id).await?;
        cache.insert(id.to_owned(), g.clone());
        Ok(g)
    }

    async fn jc_group(&self, id: &str) -> Result<Option<(JcGroup, bool)>, ToAdError> {
        let gid = id.to_owned();
        let Some(g) = self
            .api
            .read("GetGroup", move |c| {
                let gid = gid.clone();
                async move { c.get_group(&gid).await }
            })
            .await?
        else {
            return Ok(None);
        };
        let (gid, ad) = (id.to_owned(), self.d.ad_instance_id.clone());
        let bound = self
            .api
            .read("GroupAssociations", move |c| {
                let (gid, ad) = (gid.clone(), ad.clone());
                async move {
                    match c.is_associated(&ad, AssocTarget::UserGroup, &gid).await {
                        Err(e) if e.is_not_found() => Ok(false),
                        other => other,
                    }
                }
            })
            .await?;
        Ok(Some((g, bound)))
    }

    // ---- the full reconcile ----

    /// Both sides in full: every bound user and group against every managed AD object.
    pub async fn reconcile(&mut self) -> Result<(), ToAdError> {
        self.load_index().await?;
        let ad = self.d.ad_instance_id.clone();
        let user_ids = self
            .paged_ids("BoundUsers", move |c, skip| {
                let ad = ad.clone();
                async move { c.bound_user_ids(&ad, skip).await }
            })
            .await?;
        let ad = self.d.ad_instance_id.clone();
        let group_ids = self
            .paged_ids("BoundGroups", move |c, skip| {
                let ad = ad.clone();
                async move { c.bound_group_ids(&ad, skip).await }
            })
            .await?;
        // Users: bound ones and managed ones.
        let mut bound: BTreeSet<String> = user_ids.into_iter().collect();
        let group_ids: BTreeSet<String> = group_ids.into_iter().collect();
        for id in self.bind_linked(&bound, &group_ids).await? {
            bound.insert(id);
        }
        let mut ids = bound.clone();
        ids.extend(self.users.keys().cloned());
        self.refresh_users(&ids, Bound::Complete(&bound)).await?;
        // Groups (after the users: a group's members exist in AD before it is written).
        let mut gids: BTreeSet<String> = group_ids.into_iter().collect();
        gids.extend(self.groups.keys().cloned());
        self.refresh_groups(&gids, &mut HashMap::new()).await
    }

    /// Plans and applies `ids` against AD: profiles read in batches, the bound check per user only
    /// where `bound` does not already say, same-name lookups in batches, and one removal-guard
    /// decision for all of them.
    async fn refresh_users(
        &mut self,
        ids: &BTreeSet<String>,
        bound: Bound<'_>,
    ) -> Result<(), ToAdError> {
        if ids.is_empty() {
            return Ok(());
        }
        let fetch: Vec<String> = match bound {
            // Unbound users plan the same whether or not their profile is read.
            Bound::Complete(b) => ids.iter().filter(|i| b.contains(*i)).cloned().collect(),
            Bound::Partial(_) => ids.iter().cloned().collect(),
        };
        let mut jc: BTreeMap<String, (JcProfile, bool)> = BTreeMap::new();
        for p in self.jc_profiles(&fetch).await? {
            let is_bound = match bound {
                Bound::Complete(b) => b.contains(&p.id),
                Bound::Partial(b) if b.contains(&p.id) => true,
                Bound::Partial(_) => self.jc_user_bound(&p.id).await?,
            };
            jc.insert(p.id.clone(), (p, is_bound));
        }
        let migrating = self.split_ad_owned(&mut jc).await?;
        let new_names: Vec<String> = jc
            .values()
            .filter(|(p, b)| *b && !self.users.contains_key(&p.id))
            .map(|(p, _)| p.username.clone())
            .collect();
        let same = self.by_sam(&new_names, false).await?;
        let mut plans = Vec::with_capacity(ids.len());
        for id in ids {
            let j = jc.get(id).map(|(p, b)| (p, *b));
            let mut same_name = match (self.users.get(id), j) {
                (None, Some((p, true))) => same.get(&p.username.to_lowercase()).map(to_user),
                _ => None,
            };
            // Ours already (an index that missed it): managed, not a same-name stranger.
            if same_name
                .as_ref()
                .and_then(|u| u.marker.as_ref())
                .is_some_and(|m| &m.id == id)
            {
                if let Some(u) = same_name.take() {
                    self.users.insert(id.clone(), u);
                }
            }
            // Migration (two-way → jumpcloud-authoritative): the AD user this JumpCloud user was
            // imported from (its back-link names that objectGUID) is taken over, never duplicated.
            let takes_over = match (
                migrating.get(id),
                same.get(
                    &j.map(|(p, _)| p.username.to_lowercase())
                        .unwrap_or_default(),
                ),
            ) {
                (Some(guid), Some(e)) => e.guid.as_ref() == Some(guid),
                _ => false,
            };
            let plan = if takes_over && same_name.is_some() && !self.d.rules.adopt_existing {
                let rules = ToAdRules {
                    adopt_existing: true,
                    ..self.d.rules.clone()
                };
                plan_user(j, self.users.get(id), same_name.as_ref(), &rules)
            } else {
                plan_user(j, self.users.get(id), same_name.as_ref(), &self.d.rules)
            };
            plans.push((id.clone(), plan));
        }
        let removals = plans.iter().filter(|(_, p)| p.is_removal()).count();
        let allowed = self.removal_budget(removals);
        self.apply_user_plans(plans, allowed).await
    }

    /// Plans and applies groups `gids` (one removal-guard decision for all of them).
    async fn refresh_groups(
        &mut self,
        gids: &BTreeSet<String>,
        cache: &mut GroupCache,
    ) -> Result<(), ToAdError> {
        let mut plans = Vec::with_capacity(gids.len());
        for gid in gids {
            plans.push(self.plan_group_now(gid, cache).await?);
        }
        let removals = plans.iter().filter(|(_, p)| p.is_removal()).count();
        let allowed = self.removal_budget(removals);
        self.apply_group_plans(plans, allowed).await
    }

    /// How many of `removals` may run now (all, or none when the guard holds them).
    fn removal_budget(&mut self, removals: usize) -> bool {
        if removals == 0 {
            return true;
        }
        let scope = self.users.len() + self.groups.len();
        let by_percent = (scope * self.settings.max_removal_percent as usize).div_ceil(100);
        let limit = (self.settings.max_removals as usize).min(by_percent);
        let approved = self.approved_removals() as usize;
        if removals <= limit || removals <= approved {
            if approved > 0 && removals > limit {
                super::approval::consume(self.settings.approve_file.as_deref());
                self.held = false;
            }
            return true;
        }
        self.held = true;
        self.stats.held_removals += removals as u64;
        tracing::error!(
            domain = %self.d.name,
            removals,
            limit,
            "mass-removal guard: {removals} AD disables/deletions held back (limit {limit}); other changes continue. If this is intended, approve them: echo {removals} > {}",
            self.settings.approve_file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<state_dir>/approve-removals".into())
        );
        false
    }

    // ---- applying ----

    async fn apply_user_plans(
        &mut self,
        plans: Vec<(String, UserPlan)>,
        removals_allowed: bool,
    ) -> Result<(), ToAdError> {
        for (id, plan) in plans {
            if plan.is_removal() && !removals_allowed {
                continue;
            }
            self.apply_user(&id, plan).await?;
        }
        Ok(())
    }

    async fn apply_group_plans(
        &mut self,
        plans: Vec<(String, GroupPlan)>,
        removals_allowed: bool,
    ) -> Result<(), ToAdError> {
        for (id, plan) in plans {
            if plan.is_removal() && !removals_allowed {
                continue;
            }
            self.apply_group(&id, plan).await?;
        }
        Ok(())
    }

    /// A per-object failure (bad input, missing rights): recorded on the object, the rest goes on.
    /// Anything else stops the page (it is applied again).
    async fn per_object(
        &mut self,
        id: &str,
        kind: ReportKind,
        r: Result<(), DirectoryError>,
    ) -> Result<(), ToAdError> {
        match r {
            Ok(()) => {
                crate::metrics::change(
                    &self.d.name,
                    crate::health::Direction::JumpcloudToAd,
                    kind.metric_label(),
                );
                self.clear_error(id, kind).await;
                Ok(())
            }
            // The managed object is not where the index says: on a fallback DC, replication lag (in
            // doubt); on the preferred DC, moved or deleted by someone: re-read both sides.
            Err(e) if is_no_such_object(&e) => {
                if self.d.directory.on_preferred() {
                    tracing::warn!(domain = %self.d.name, object = id, error = %e, "a managed object moved or vanished in AD; reconciling");
                    self.users.remove(id);
                    self.groups.remove(id);
                    self.reconciled = false;
                } else {
                    tracing::warn!(domain = %self.d.name, object = id, dc = %self.d.directory.current_dc(), "a managed object is not on this DC yet (replication); waiting for the DC that has it");
                }
                if kind == ReportKind::UserGroup {
                    self.in_doubt_groups.insert(id.to_owned());
                }
                self.in_doubt.insert(id.to_owned());
                Ok(())
            }
            Err(e) if matches!(e.disposition(), Disposition::BadInput) => {
                crate::metrics::object_error(&self.d.name, &e.disposition());
                let reason = e.to_string();
                tracing::warn!(domain = %self.d.name, object = id, error = %reason, "AD refused a write for this object; it is skipped until it changes");
                self.record_error(id, &reason).await;
                self.reports.push(Report {
                    kind,
                    id: id.to_owned(),
                    seq: self.report_seq,
                    code: ReportCode::Error,
                    message: reason,
                });
                Ok(())
            }
            Err(e) => Err(self.dir_err(e)),
        }
    }

    pub(super) async fn refuse(&mut self, id: &str, kind: ReportKind, reason: String) {
        self.stats.refused += 1;
        crate::metrics::object_error(&self.d.name, &Disposition::BadInput);
        let key = error_key(&self.d.name, id);
        let known = self.store.get_meta(&key).ok().flatten();
        if known.as_deref() != Some(reason.as_str()) {
            tracing::warn!(domain = %self.d.name, object = id, "not synced to AD: {reason}");
            self.reports.push(Report {
                kind,
                id: id.to_owned(),
                seq: self.report_seq,
                code: ReportCode::Error,
                message: reason.clone(),
            });
        }
        self.record_error(id, &reason).await;
    }

    async fn record_error(&self, id: &str, reason: &str) {
        let (store, key, value) = (
            self.store.clone(),
            error_key(&self.d.name, id),
            reason.to_owned(),
        );
        let _ = tokio::task::spawn_blocking(move || store.set_meta(&key, &value)).await;
    }

    /// The object synced: forget its recorded error and tell JumpCloud (whose syncStatus would
    /// otherwise keep showing the old error).
    async fn clear_error(&mut self, id: &str, kind: ReportKind) {
        let key = error_key(&self.d.name, id);
        if self.store.get_meta(&key).ok().flatten().is_some() {
            let store = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || store.delete_meta(&key)).await;
            self.reports.push(Report {
                kind,
                id: id.to_owned(),
                seq: self.report_seq,
                code: ReportCode::Ok,
                message: "synced to AD".into(),
            });
        }
    }

    pub(super) async fn apply_user(&mut self, id: &str, plan: UserPlan) -> Result<(), ToAdError> {
        match plan {
            UserPlan::Nothing => Ok(()),
            UserPlan::Refuse { reason } => {
                self.refuse(id, ReportKind::User, reason).await;
                Ok(())
            }
            UserPlan::Create { dn, attrs, enable } => {
                if self.create_in_doubt(id, &dn, false) {
                    return Ok(());
                }
                self.set_managed(id, Some(&dn)).await?;
                let created = self.create_user(id, &dn, &attrs, enable).await;
                if let Ok(None) = created {
                    let writes: Vec<(String, Option<String>)> = attrs
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone())))
                        .collect();
                    self.save_base(id, &writes).await?;
                }
                match created {
                    Ok(Some(reason)) => {
                        self.refuse(id, ReportKind::User, reason).await;
                        Ok(())
                    }
                    r => self.per_object(id, ReportKind::User, r.map(|_| ())).await,
                }
            }
            UserPlan::Update {
                dn,
                writes,
                uac,
                rename_to,
                adopt,
            } => {
                let writes = if adopt || writes.is_empty() {
                    writes
                } else {
                    self.owner_writes(id, writes).await?
                };
                if writes.is_empty() && uac.is_none() && rename_to.is_none() {
                    return Ok(());
                }
                let r = self
                    .update_user(id, &dn, &writes, uac, rename_to.as_deref(), adopt)
                    .await;
                if r.is_ok() {
                    self.save_base(id, &writes).await?;
                }
                self.per_object(id, ReportKind::User, r).await
            }
            UserPlan::Remove { dn, action } => {
                let r = match action {
                    RemovalAction::Delete => {
                        self.write(DirRequest::Delete { dn: dn.clone() }).await
                    }
                    _ => {
                        let uac = self
                            .users
                            .get(id)
                            .map(|u| u.uac)
                            .unwrap_or(UAC_NORMAL_ACCOUNT);
                        self.write(DirRequest::Modify {
                            dn: dn.clone(),
                            mods: vec![AttrChange::Replace(
                                "userAccountControl".into(),
                                vec![(uac | UAC_ACCOUNTDISABLE).to_string().into_bytes()],
                            )],
                        })
                        .await
                    }
                };
                let r = tolerate_missing(r);
                if r.is_ok() {
                    self.stats.removals += 1;
                    tracing::info!(domain = %self.d.name, object = id, dn = %dn, ?action, "user left the AD instance's scope");
                    match action {
                        RemovalAction::Delete => {
                            self.users.remove(id);
                            self.set_managed(id, None).await?;
                        }
                        _ => {
                            if let Some(u) = self.users.get_mut(id) {
                                u.uac |= UAC_ACCOUNTDISABLE;
                            }
                        }
                    }
                }
                self.per_object(id, ReportKind::User, r).await
            }
        }
    }

    /// Creates the user in one LDAP add: the marker, the attributes, an unknown random password (AD
    /// wants one before an account can be enabled; JumpCloud's, when it sends one, replaces it) and the
    /// final userAccountControl, so no half-made account is ever left behind. `Ok(Some(reason))`: an
    /// object that is not ours already holds the DN (left alone).
    async fn create_user(
        &mut self,
        id: &str,
        dn: &str,
        attrs: &[(String, String)],
        enable: bool,
    ) -> Result<Option<String>, DirectoryError> {
        let uac = if enable {
            UAC_NORMAL_ACCOUNT
        } else {
            UAC_NORMAL_ACCOUNT | UAC_ACCOUNTDISABLE
        };
        let initial = random_password();
        let mut all: Vec<(String, Vec<Vec<u8>>)> = vec![
            ("objectClass".into(), vec![b"user".to_vec()]),
            (
                "userAccountControl".into(),
                vec![uac.to_string().into_bytes()],
            ),
            ("unicodePwd".into(), vec![quoted_utf16(&initial).to_vec()]),
        ];
        all.extend(
            attrs
                .iter()
                .map(|(k, v)| (k.clone(), vec![v.clone().into_bytes()])),
        );
        let added = self
            .write(DirRequest::Add {
                dn: dn.to_owned(),
                attrs: all,
            })
            .await;
        match added {
            Ok(()) => {}
            // A replay after a timed-out add, or someone else's object at this DN.
            Err(e) if is_already_exists(&e) => {
                let found = self
                    .find_raw(
                        dn,
                        FindScope::Base,
                        "(objectClass=*)".into(),
                        USER_ATTRS,
                        false,
                    )
                    .await?;
                match found.first() {
                    Some(existing) if is_ours(existing, id, "user") =>
                    {
                        // Ours (its password came with the add that made it): bring it in line.
                        let mut mods: Vec<AttrChange> = attrs
                            .iter()
                            .map(|(k, v)| AttrChange::Replace(k.clone(), vec![v.clone().into_bytes()]))
                            .collect();
                        mods.push(AttrChange::Replace(
                            "userAccountControl".into(),
                            vec![uac.to_string().into_bytes()],
                        ));
                        self.write(DirRequest::Modify {
                            dn: dn.to_owned(),
                            mods,
                        })
                        .await?;
                    }
                    Some(_) => {
                        return Ok(Some(format!(
                            "an AD object already exists at {dn} and was not created by forestsync for this JumpCloud user; it is left alone. Fix: rename or move it, or rename the user in JumpCloud"
                        )))
                    }
                    // Gone again in between: the next change (or reconcile) creates it.
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        self.stats.creates += 1;
        tracing::info!(domain = %self.d.name, object = id, dn, enabled = enable, "created AD user");
        self.users.insert(
            id.to_owned(),
            AdUser {
                dn: dn.to_owned(),
                uac,
                privileged: false,
                marker: parse_marker(&marker_value(id, None)),
                attrs: attrs
                    .iter()
                    .map(|(k, v)| (k.to_lowercase(), v.clone()))
                    .collect(),
            },
        );
        Ok(None)
    }

    async fn update_user(
        &mut self,
        id: &str,
        dn: &str,
        writes: &[(String, Option<String>)],
        uac: Option<u32>,
        rename_to: Option<&str>,
        adopt: bool,
    ) -> Result<(), DirectoryError> {
        let mut dn = dn.to_owned();
        if let Some(rdn) = rename_to {
            self.write(DirRequest::Rename {
                dn: dn.clone(),
                new_rdn: rdn.to_owned(),
                new_superior: None,
            })
            .await?;
            dn = format!("{rdn},{}", parent_of(&dn));
        }
        let mut mods: Vec<AttrChange> = writes.iter().map(attr_change).collect();
        if let Some(u) = uac {
            mods.push(AttrChange::Replace(
                "userAccountControl".into(),
                vec![u.to_string().into_bytes()],
            ));
        }
        if !mods.is_empty() {
            self.write(DirRequest::Modify {
                dn: dn.clone(),
                mods,
            })
            .await?;
        }
        let attributes: Vec<&str> = writes.iter().map(|(k, _)| k.as_str()).collect();
        tracing::info!(domain = %self.d.name, object = id, dn = %dn, adopted = adopt, renamed = rename_to.is_some(), enabled = ?uac.map(|u| u & UAC_ACCOUNTDISABLE == 0), attributes = ?attributes, "updated AD user");
        let entry = self.users.entry(id.to_owned()).or_default();
        entry.dn = dn;
        if let Some(u) = uac {
            entry.uac = u;
        }
        for (k, v) in writes {
            match v {
                Some(v) => entry.attrs.insert(k.to_lowercase(), v.clone()),
                None => entry.attrs.remove(&k.to_lowercase()),
            };
        }
        if adopt {
            entry.marker = parse_marker(&marker_value(id, None));
        }
        Ok(())
    }

    pub(super) async fn plan_group_now(
        &mut self,
        gid: &str,
        cache: &mut GroupCache,
    ) -> Result<(String, GroupPlan), ToAdError> {
        let jc = self.jc_group_cached(cache, gid).await?;
        // Two-way: a group imported from AD is the AD → JumpCloud direction's.
        if self.settings.two_way.is_some() && !self.groups.contains_key(gid) {
            if let Some((g, _)) = jc.as_ref().filter(|(g, _)| g.anchor.is_some()) {
                self.check_ad_owned_group(g).await?;
                return Ok((gid.to_owned(), GroupPlan::Nothing));
            }
        }
        let mut members = Vec::new();
        if let Some((_, true)) = &jc {
            for uid in self.jc_members(gid).await? {
                if let Some(u) = self.users.get(&uid) {
                    members.push(u.dn.clone());
                } else if let Some(dn) = self.ad_owned_dns.get(&uid) {
                    members.push(dn.clone());
                }
            }
        }
        // The AD side as it is now (an AD admin may have changed the membership).
        let managed = match self.groups.get(gid).map(|g| g.dn.clone()) {
            Some(dn) => match self
                .find(
                    &dn,
                    FindScope::Base,
                    "(objectClass=group)".into(),
                    USER_ATTRS,
                    true,
                )
                .await
            {
                Ok(found) => found.first().map(to_group),
                Err(ToAdError::Directory { source, .. }) if is_no_such_object(&source) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        if let Some(g) = &managed {
            self.groups.insert(gid.to_owned(), g.clone());
        } else {
            self.groups.remove(gid);
        }
        let same_entry = match (&managed, &jc) {
            (None, Some((g, true))) => self
                .by_sam(std::slice::from_ref(&g.name), true)
                .await?
                .remove(&g.name.to_lowercase()),
            _ => None,
        };
        // Migration: the AD group a JumpCloud group was imported from is taken over.
        let takes_over = match (&jc, &same_entry) {
            (Some((g, _)), Some(e)) => g
                .anchor
                .as_deref()
                .and_then(|a| a.rsplit_once('/'))
                .filter(|(d, _)| d.eq_ignore_ascii_case(&self.d.name))
                .and_then(|(_, guid)| guid.parse::<crate::model::ObjectGuid>().ok())
                .is_some_and(|guid| e.guid == Some(guid)),
            _ => false,
        };
        let same = same_entry.as_ref().map(to_group);
        let rules = ToAdRules {
            adopt_existing: self.d.rules.adopt_existing || takes_over,
            ..self.d.rules.clone()
        };
        let plan = plan_group(
            jc.as_ref().map(|(g, b)| (g, *b)),
            &members,
            managed.as_ref(),
            same.as_ref(),
            &rules,
        );
        Ok((gid.to_owned(), plan))
    }

    pub(super) async fn apply_group(&mut self, id: &str, plan: GroupPlan) -> Result<(), ToAdError> {
        match plan {
            GroupPlan::Nothing => Ok(()),
            GroupPlan::Refuse { reason } => {
                self.refuse(id, ReportKind::UserGroup, reason).await;
                Ok(())
            }
            GroupPlan::Create { dn, attrs, members } => {
                if self.create_in_doubt(id, &dn, true) {
                    return Ok(());
                }
                self.set_managed(id, Some(&dn)).await?;
                match self.create_group(id, &dn, &attrs, &members).await {
                    Ok(Some(reason)) => {
                        self.refuse(id, ReportKind::UserGroup, reason).await;
                        Ok(())
                    }
                    r => {
                        self.per_object(id, ReportKind::UserGroup, r.map(|_| ()))
                            .await
                    }
                }
            }
            GroupPlan::Update {
                dn,
                writes,
                rename_to,
                add,
                remove,
                adopt,
            } => {
                let r = self
                    .update_group(id, &dn, &writes, rename_to.as_deref(), &add, &remove, adopt)
                    .await;
                self.per_object(id, ReportKind::UserGroup, r).await
            }
            GroupPlan::Remove {
                dn,
                action,
                members,
            } => {
                let r = match action {
                    RemovalAction::Delete => {
                        self.write(DirRequest::Delete { dn: dn.clone() }).await
                    }
                    _ => self.write_members(id, &dn, &[], &members).await,
                };
                let r = tolerate_missing(r);
                if r.is_ok() {
                    self.stats.removals += 1;
                    tracing::info!(domain = %self.d.name, object = id, dn = %dn, ?action, "group left the AD instance's scope");
                    match action {
                        RemovalAction::Delete => {
                            self.groups.remove(id);
                            self.set_managed(id, None).await?;
                        }
                        _ => {
                            if let Some(g) = self.groups.get_mut(id) {
                                g.members.clear();
                            }
                        }
                    }
                }
                self.per_object(id, ReportKind::UserGroup, r).await
            }
        }
    }

    /// Creates the group, then its members in chunks. `Ok(Some(reason))`: an object that is not ours
    /// already holds the DN (left alone).
    async fn create_group(
        &mut self,
        id: &str,
        dn: &str,
        attrs: &[(String, String)],
        members: &[String],
    ) -> Result<Option<String>, DirectoryError> {
        let all: Vec<(String, Vec<Vec<u8>>)> = attrs
            .iter()
            .map(|(k, v)| (k.clone(), vec![v.clone().into_bytes()]))
            .collect();
        let mut add: Vec<String> = members.to_vec();
        let mut remove: Vec<String> = Vec::new();
        match self
            .write(DirRequest::Add {
                dn: dn.to_owned(),
                attrs: all,
            })
            .await
        {
            Ok(()) => {}
            // A replay after a timed-out add, or someone else's object at this DN.
            Err(e) if is_already_exists(&e) => {
                let found = self
                    .find_raw(
                        dn,
                        FindScope::Base,
                        "(objectClass=*)".into(),
                        USER_ATTRS,
                        true,
                    )
                    .await?;
                match found.first() {
                    Some(existing) if is_ours(existing, id, "group") =>
                    {
                        let want: BTreeSet<String> =
                            members.iter().map(|m| m.to_lowercase()).collect();
                        let have: BTreeSet<String> =
                            existing.members.iter().map(|m| m.to_lowercase()).collect();
                        add.retain(|m| !have.contains(&m.to_lowercase()));
                        remove = existing
                            .members
                            .iter()
                            .filter(|m| !want.contains(&m.to_lowercase()))
                            .cloned()
                            .collect();
                    }
                    Some(_) => {
                        return Ok(Some(format!(
                            "an AD object already exists at {dn} and was not created by forestsync for this JumpCloud group; it is left alone. Fix: rename or move it, or rename the group in JumpCloud"
                        )))
                    }
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        self.write_members(id, dn, &add, &remove).await?;
        self.stats.creates += 1;
        tracing::info!(domain = %self.d.name, object = id, dn = %dn, members = members.len(), "created AD group");
        self.groups.insert(
            id.to_owned(),
            AdGroup {
                dn: dn.to_owned(),
                privileged: false,
                marker: parse_marker(&marker_value(id, None)),
                attrs: attrs
                    .iter()
                    .map(|(k, v)| (k.to_lowercase(), v.clone()))
                    .collect(),
                members: members.to_vec(),
            },
        );
        Ok(None)
    }

    /// Member changes, [`MEMBER_CHUNK`] values per LDAP modify (removals first), one log line per
    /// chunk written.
    async fn write_members(
        &mut self,
        id: &str,
        dn: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<(), DirectoryError> {
        let chunks = remove.len().div_ceil(MEMBER_CHUNK) + add.len().div_ceil(MEMBER_CHUNK);
        let mut chunk = 0usize;
        for (op, values) in [("remove", remove), ("add", add)] {
            for part in values.chunks(MEMBER_CHUNK) {
                chunk += 1;
                let (add, remove) = match op {
                    "add" => (part.to_vec(), Vec::new()),
                    _ => (Vec::new(), part.to_vec()),
                };
                self.write(DirRequest::ChangeMembers {
                    dn: dn.to_owned(),
                    add,
                    remove,
                    chunk: MEMBER_CHUNK,
                })
                .await?;
                tracing::info!(domain = %self.d.name, object = id, dn = %dn, op, values = part.len(), chunk, chunks, "AD group members written");
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn update_group(
        &mut self,
        id: &str,
        dn: &str,
        writes: &[(String, Option<String>)],
        rename_to: Option<&str>,
        add: &[String],
        remove: &[String],
        adopt: bool,
    ) -> Result<(), DirectoryError> {
        let mut dn = dn.to_owned();
        if let Some(rdn) = rename_to {
            self.write(DirRequest::Rename {
                dn: dn.clone(),
                new_rdn: rdn.to_owned(),
                new_superior: None,
            })
            .await?;
            dn = format!("{rdn},{}", parent_of(&dn));
        }
        if !writes.is_empty() {
            self.write(DirRequest::Modify {
                dn: dn.clone(),
                mods: writes.iter().map(attr_change).collect(),
            })
            .await?;
        }
        self.write_members(id, &dn, add, remove).await?;
        tracing::info!(domain = %self.d.name, object = id, dn = %dn, added = add.len(), removed = remove.len(), renamed = rename_to.is_some(), adopted = adopt, "updated AD group");
        let g = self.groups.entry(id.to_owned()).or_default();
        g.dn = dn;
        let gone: BTreeSet<String> = remove.iter().map(|m| m.to_lowercase()).collect();
        g.members.retain(|m| !gone.contains(&m.to_lowercase()));
        g.members.extend(add.iter().cloned());
        for (k, v) in writes {
            match v {
                Some(v) => g.attrs.insert(k.to_lowercase(), v.clone()),
                None => g.attrs.remove(&k.to_lowercase()),
            };
        }
        if adopt {
            g.marker = parse_marker(&marker_value(id, None));
        }
        Ok(())
    }

    // ---- events ----

    /// Applies one page of channel events, coalesced per object: users, then groups (a group's new
    /// members exist in AD before it is written), then passwords (their users exist). The guard counts
    /// a page's removals together: planned first, then applied.
    pub async fn apply_events(&mut self, events: &[ChannelEvent]) -> Result<(), ToAdError> {
        let mut users: BTreeSet<String> = BTreeSet::new();
        let mut groups: BTreeSet<String> = BTreeSet::new();
        let mut scope_groups: BTreeSet<String> = BTreeSet::new();
        let mut member_changes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut deleted_users: BTreeSet<String> = BTreeSet::new();
        let mut passwords: BTreeMap<String, &ChannelEvent> = BTreeMap::new();
        for e in events {
            match &e.kind {
                EventKind::User => {
                    users.insert(e.id.clone());
                    if e.op == EventOp::Delete {
                        deleted_users.insert(e.id.clone());
                    }
                }
                EventKind::UserGroup => {
                    groups.insert(e.id.clone());
                    scope_groups.insert(e.id.clone());
                }
                EventKind::Membership => match &e.group_id {
                    Some(g) => {
                        groups.insert(g.clone());
                        member_changes
                            .entry(g.clone())
                            .or_default()
                            .insert(e.id.clone());
                    }
                    None => {
                        users.insert(e.id.clone());
                    }
                },
                EventKind::Association => {
                    if e.activedirectory_id
                        .as_deref()
                        .is_some_and(|a| a != self.d.ad_instance_id)
                    {
                        continue;
                    }
                    match e.target_type.as_deref() {
                        Some("user_group") => {
                            groups.insert(e.id.clone());
                            scope_groups.insert(e.id.clone());
                        }
                        _ => {
                            users.insert(e.id.clone());
                        }
                    }
                }
                EventKind::Password => {
                    passwords.insert(e.id.clone(), e); // oldest first: the newest wins
                }
                EventKind::Unknown(kind) => {
                    tracing::debug!(kind = %kind, seq = e.seq, "ignoring an unknown channel event");
                }
            }
        }
        let mut cache = GroupCache::new();
        let mut known_bound: BTreeSet<String> = BTreeSet::new();
        // A group entering or leaving the scope changes the scope of its members (JumpCloud's and AD's).
        for gid in &scope_groups {
            if let Some((_, bound)) = self.jc_group_cached(&mut cache, gid).await? {
                let members = self.jc_members(gid).await?;
                if bound {
                    known_bound.extend(members.iter().cloned());
                }
                users.extend(members);
            }
            users.extend(self.managed_members(gid));
        }
        // A membership changes a user's scope only through a group bound here (or one AD still holds
        // for us); members of other groups are not this AD instance's business.
        for (gid, uids) in member_changes {
            let bound = matches!(
                self.jc_group_cached(&mut cache, &gid).await?,
                Some((_, true))
            );
            if bound || self.groups.contains_key(&gid) {
                users.extend(uids);
            } else {
                tracing::debug!(domain = %self.d.name, group = %gid, members = uids.len(), "membership changes of a group outside the scope; ignored");
            }
        }
        // A user deleted in JumpCloud lost its memberships without events: re-plan the managed groups
        // AD still has it in.
        for uid in &deleted_users {
            let Some(dn) = self.users.get(uid).map(|u| u.dn.to_lowercase()) else {
                continue;
            };
            for (gid, g) in &self.groups {
                if g.members.iter().any(|m| m.to_lowercase() == dn) {
                    groups.insert(gid.clone());
                }
            }
        }
        self.refresh_users(&users, Bound::Partial(&known_bound))
            .await?;
        self.refresh_groups(&groups, &mut cache).await?;
        for (uid, e) in passwords {
            self.apply_password(&uid, e).await?;
        }
        Ok(())
    }

    /// The ids of the managed users the managed AD group `gid` has as members.
    fn managed_members(&self, gid: &str) -> Vec<String> {
        let Some(g) = self.groups.get(gid) else {
            return Vec::new();
        };
        let by_dn: HashMap<String, &String> = self
            .users
            .iter()
            .map(|(id, u)| (u.dn.to_lowercase(), id))
            .collect();
        g.members
            .iter()
            .filter_map(|m| by_dn.get(&m.to_lowercase()).map(|id| (*id).clone()))
            .collect()
    }

    async fn apply_password(&mut self, uid: &str, e: &ChannelEvent) -> Result<(), ToAdError> {
        let two_way = self.settings.two_way.clone();
        // Two-way: the user's profile says who owns its password (and, for an AD-owned user, which
        // AD object is its own).
        let profile = match &two_way {
            Some(_) => self
                .jc_profiles(&[uid.to_owned()])
                .await?
                .into_iter()
                .next(),
            None => None,
        };
        let mut ad_owned = false;
        let user = match self.users.get(uid).cloned() {
            Some(u) => u,
            None => {
                let found = match &profile {
                    Some(p) => self.ad_owned_user(p).await?,
                    None => None,
                };
                match found {
                    Some(u) => {
                        ad_owned = true;
                        u
                    }
                    None => {
                        if self.is_managed(uid) && !self.d.directory.on_preferred() {
                            self.in_doubt.insert(uid.to_owned());
                            return Ok(());
                        }
                        tracing::debug!(domain = %self.d.name, object = uid, seq = e.seq, "password for a user with no AD account here; ignored");
                        return Ok(());
                    }
                }
            }
        };
        if user.privileged {
            let reason = format!(
                "{} is privileged (adminCount=1): forestsync never writes its password",
                user.dn
            );
            tracing::warn!(domain = %self.d.name, object = uid, seq = e.seq, "password not written: {reason}");
            self.reports.push(Report {
                kind: ReportKind::Password,
                id: uid.to_owned(),
                seq: e.seq,
                code: ReportCode::Rejected,
                message: reason,
            });
            return Ok(());
        }
        if !ad_owned
            && user
                .marker
                .as_ref()
                .and_then(|m| m.password_seq)
                .is_some_and(|s| s >= e.seq)
        {
            return Ok(()); // already in AD (a replay)
        }
        // Written by this agent to a DC that has not replicated it to the one in use now: not again
        // (the AD marker is the guard across agents, this record the guard across DCs).
        let written = written_key(&self.d.name, uid);
        if self
            .store
            .get_meta(&written)?
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s >= e.seq)
        {
            return Ok(());
        }
        let rejected = rejected_key(&self.d.name, uid);
        if let Some(v) = self.store.get_meta(&rejected)? {
            if v.split('\t')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s >= e.seq)
            {
                return Ok(()); // AD refused this very password; wait for a new one
            }
        }
        let password = match self.d.channel.open_password(e) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            Err(err) => {
                tracing::warn!(domain = %self.d.name, object = uid, seq = e.seq, error = %err, "password payload unusable");
                self.reports.push(Report {
                    kind: ReportKind::Password,
                    id: uid.to_owned(),
                    seq: e.seq,
                    code: ReportCode::Error,
                    message: err.to_string(),
                });
                return Ok(());
            }
        };
        if let (Some(tw), Some(p)) = (&two_way, &profile) {
            if !self.password_may_go_to_ad(tw, p, &password, e.seq)? {
                return Ok(());
            }
        }
        let marker = marker_value(uid, Some(e.seq));
        // An AD-owned user carries no marker (its password seq is kept in the store alone).
        let also = if ad_owned {
            Vec::new()
        } else {
            vec![AttrChange::Replace(
                MARKER_ATTRIBUTE.into(),
                vec![marker.clone().into_bytes()],
            )]
        };
        let r = self
            .write(DirRequest::SetPassword {
                dn: user.dn.clone(),
                password,
                enforce_history: true,
                also,
            })
            .await;
        match r {
            Ok(()) => {
                self.stats.passwords_set += 1;
                tracing::info!(domain = %self.d.name, object = uid, dn = %user.dn, seq = e.seq, "password from JumpCloud written to AD");
                if let Some(u) = self.users.get_mut(uid).filter(|_| !ad_owned) {
                    u.marker = parse_marker(&marker);
                }
                let (store, seq) = (self.store.clone(), e.seq.to_string());
                tokio::task::spawn_blocking(move || {
                    store.set_meta(&written, &seq)?;
                    store.delete_meta(&rejected)
                })
                .await
                .map_err(|e| StoreError::Task(e.to_string()))??;
                self.reports.push(Report {
                    kind: ReportKind::Password,
                    id: uid.to_owned(),
                    seq: e.seq,
                    code: ReportCode::Ok,
                    message: "password set in AD".into(),
                });
                crate::metrics::password(crate::health::Direction::JumpcloudToAd, "forwarded");
                Ok(())
            }
            Err(err) if is_no_such_object(&err) => {
                self.per_object(uid, ReportKind::Password, Err(err)).await
            }
            Err(err) if err.is_password_policy() => {
                let reason = ad_reason(&err);
                self.stats.passwords_rejected += 1;
                crate::metrics::password(crate::health::Direction::JumpcloudToAd, "rejected");
                tracing::warn!(domain = %self.d.name, object = uid, dn = %user.dn, seq = e.seq, reason = %reason, "AD rejected the password from JumpCloud; not retried until it changes again");
                let (store, value) = (self.store.clone(), format!("{}\t{reason}", e.seq));
                tokio::task::spawn_blocking(move || store.set_meta(&rejected, &value))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))??;
                self.reports.push(Report {
                    kind: ReportKind::Password,
                    id: uid.to_owned(),
                    seq: e.seq,
                    code: ReportCode::Rejected,
                    message: reason,
                });
                Ok(())
            }
            Err(err) if matches!(err.disposition(), Disposition::BadInput) => {
                self.per_object(uid, ReportKind::Password, Err(err)).await
            }
            Err(err) => Err(self.dir_err(err)),
        }
    }

    async fn flush_reports(&mut self) {
        if self.reports.is_empty() {
            return;
        }
        let batch: Vec<Report> = std::mem::take(&mut self.reports);
        if let Err(e) = self.d.channel.report(batch.clone()).await {
            tracing::debug!(error = %e, "status reports not delivered; kept for the next round");
            self.reports = batch;
            self.reports.truncate(1000);
        }
    }
}

fn attr_change((k, v): &(String, Option<String>)) -> AttrChange {
    match v {
        Some(v) => AttrChange::Replace(k.clone(), vec![v.clone().into_bytes()]),
        None => AttrChange::Delete(k.clone(), Vec::new()),
    }
}

/// The parent DN (everything after the first unescaped comma). Public for the fuzz targets (tests/fuzz).
pub fn parent_of(dn: &str) -> &str {
    let bytes = dn.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b',' => return &dn[i + 1..],
            _ => i += 1,
        }
    }
    ""
}

fn result_code(e: &DirectoryError) -> Option<u32> {
    match e {
        DirectoryError::Refused { rc, .. } => Some(*rc),
        _ => None,
    }
}

/// The DC's own words for a refused write (what is recorded on the object).
fn ad_reason(e: &DirectoryError) -> String {
    match e {
        DirectoryError::Refused { rc, name, text, .. } => format!("LDAP {rc} ({name}): {text}"),
        other => other.to_string(),
    }
}

/// AD renames the loser of a replication naming conflict to `<RDN>\0ACNF:<guid>` (escaped in a DN).
fn is_conflict_copy(dn: &str) -> bool {
    let rdn = dn
        .split(',')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    rdn.contains("CNF:")
}

fn is_already_exists(e: &DirectoryError) -> bool {
    result_code(e) == Some(68)
}

fn is_no_such_object(e: &DirectoryError) -> bool {
    result_code(e) == Some(32)
}

/// Removing what is already gone is success.
fn tolerate_missing(r: Result<(), DirectoryError>) -> Result<(), DirectoryError> {
    match r {
        Err(e) if is_no_such_object(&e) => Ok(()),
        other => other,
    }
}

fn first_values(e: &AdEntry) -> BTreeMap<String, String> {
    e.attrs
        .iter()
        .filter_map(|(k, v)| v.first().map(|v| (k.clone(), v.clone())))
        .collect()
}

fn marker_of(e: &AdEntry) -> Option<crate::plan::to_ad::Marker> {
    e.first(MARKER_ATTRIBUTE).and_then(parse_marker)
}

/// An existing AD object forestsync may treat as its own for JumpCloud object `id`: it carries our
/// marker for `id`, is of `class` and is not privileged.
fn is_ours(e: &AdEntry, id: &str, class: &str) -> bool {
    marker_of(e).is_some_and(|m| m.id == id) && e.has_class(class) && !e.is_privileged()
}

fn to_user(e: &AdEntry) -> AdUser {
    AdUser {
        dn: e.dn.clone(),
        uac: e.uac().unwrap_or(UAC_NORMAL_ACCOUNT),
        privileged: e.is_privileged(),
        marker: e.first(MARKER_ATTRIBUTE).and_then(parse_marker),
        attrs: first_values(e),
    }
}

fn to_group(e: &AdEntry) -> AdGroup {
    AdGroup {
        dn: e.dn.clone(),
        privileged: e.is_privileged(),
        marker: e.first(MARKER_ATTRIBUTE).and_then(parse_marker),
        attrs: first_values(e),
        members: e.members.clone(),
    }
}

/// 24 random characters with every class AD's complexity rule counts.
fn random_password() -> Secret {
    const SETS: [&[u8]; 4] = [
        b"ABCDEFGHJKLMNPQRSTUVWXYZ",
        b"abcdefghijkmnopqrstuvwxyz",
        b"23456789",
        b"!#%+-.:=?@_",
    ];
    let rng = SystemRandom::new();
    let mut bytes = [0u8; 24];
    if rng.fill(&mut bytes).is_err() {
        // No OS randomness: fall back to a time-derived value mixed with the address of a local; the
        // password is never used to log in (JumpCloud's replaces it) and the account may stay disabled.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(37);
        }
    }
    let mut out = String::with_capacity(24);
    for (i, b) in bytes.iter().enumerate() {
        let set = SETS[i % 4];
        out.push(set[*b as usize % set.len()] as char);
    }
    Secret::new(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_skip_escaped_commas() {
        assert_eq!(parent_of("CN=a\\,b,OU=x,DC=y"), "OU=x,DC=y");
        assert_eq!(parent_of("CN=a,OU=x"), "OU=x");
    }

    #[test]
    fn random_passwords_have_every_class() {
        let p = random_password();
        let s = p.expose();
        assert_eq!(s.len(), 24);
        assert!(s.chars().any(|c| c.is_ascii_uppercase()));
        assert!(s.chars().any(|c| c.is_ascii_lowercase()));
        assert!(s.chars().any(|c| c.is_ascii_digit()));
        assert!(s.chars().any(|c| !c.is_ascii_alphanumeric()));
        assert_ne!(random_password().expose(), s);
    }
}

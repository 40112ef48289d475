//! The JumpCloud → AD engine's part in two-way mode (and the migration from two-way to
//! jumpcloud-authoritative): AD-owned users are recognised and left to the AD → JumpCloud direction,
//! changes made on the non-owning side are reverted or ignored and recorded, conflicts are recorded,
//! and passwords follow each user's password authority. The rules are in [`crate::two_way`].

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::channel::ChangePage;
use crate::cloud::ANCHOR_ATTRIBUTE;
use crate::model::{Anchor, ObjectGuid};
use crate::two_way::{self, NonOwnerChange, RecordKind, Side, TwoWay};

/// What a poll gave: a page of channel events, or AD-side changes of managed objects.
pub(super) enum Polled {
    Page(ChangePage),
    Touched(BTreeSet<String>),
}

/// The AD anchor (`domain/objectGUID`) a JumpCloud user's `forestsync_anchor` back-link names.
pub(super) fn profile_anchor(p: &JcProfile) -> Option<Anchor> {
    parse_anchor(&two_way::custom_attribute(p, ANCHOR_ATTRIBUTE)?)
}

/// `domain/objectGUID` → the anchor.
pub(super) fn parse_anchor(v: &str) -> Option<Anchor> {
    let (domain, guid) = v.rsplit_once('/')?;
    Some(Anchor {
        domain: domain.to_owned(),
        guid: guid.parse::<ObjectGuid>().ok()?,
    })
}

/// An LDAP filter matching one objectGUID (its wire bytes escaped).
pub(super) fn guid_filter(guid: &ObjectGuid) -> String {
    let mut f = String::from("(objectGUID=");
    for b in guid.0 {
        f.push_str(&format!("\\{b:02x}"));
    }
    f.push(')');
    f
}

impl ToAdEngine {
    fn two_way(&self) -> Option<Arc<TwoWay>> {
        self.settings.two_way.clone()
    }

    /// A channel poll, cut short when the AD reader reports managed objects changed in AD (two-way).
    pub(super) async fn poll_or_touched(&mut self, wait: Duration) -> Result<Polled, ToAdError> {
        let Some(touched) = self.d.touched.clone() else {
            return Ok(Polled::Page(self.d.channel.poll(self.cursor, wait).await?));
        };
        let mut rx = touched.lock().await;
        if !self.reconciled {
            // The reconcile reads both sides anyway.
            while rx.try_recv().is_ok() {}
            drop(rx);
            return Ok(Polled::Page(self.d.channel.poll(self.cursor, wait).await?));
        }
        let mut ids = BTreeSet::new();
        while let Ok(id) = rx.try_recv() {
            ids.insert(id);
        }
        if !ids.is_empty() {
            return Ok(Polled::Touched(ids));
        }
        let got = tokio::select! {
            page = self.d.channel.poll(self.cursor, wait) => Ok(page),
            Some(first) = rx.recv() => Err(first),
        };
        match got {
            Ok(page) => Ok(Polled::Page(page?)),
            Err(first) => {
                ids.insert(first);
                while let Ok(id) = rx.try_recv() {
                    ids.insert(id);
                }
                Ok(Polled::Touched(ids))
            }
        }
    }

    /// Managed (JumpCloud-owned) objects the AD reader saw change. Our own writes read back equal to
    /// the index and stop here; anything else is a change on the non-owning side: recorded, and
    /// reverted (JumpCloud's values written back) unless configured to be ignored.
    pub(super) async fn ad_side_changed(&mut self, ids: BTreeSet<String>) -> Result<(), ToAdError> {
        let Some(tw) = self.two_way() else {
            return Ok(());
        };
        for id in ids {
            if let Some(base) = self.users.get(&id).cloned() {
                self.user_changed_in_ad(&tw, &id, base).await?;
            } else if let Some(base) = self.groups.get(&id).cloned() {
                self.group_changed_in_ad(&tw, &id, base).await?;
            }
        }
        Ok(())
    }

    async fn read_user_now(&mut self, dn: &str) -> Result<Option<AdUser>, ToAdError> {
        match self
            .find(
                dn,
                FindScope::Base,
                "(objectClass=user)".into(),
                USER_ATTRS,
                false,
            )
            .await
        {
            Ok(found) => Ok(found.first().map(to_user)),
            Err(ToAdError::Directory { source, .. }) if is_no_such_object(&source) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn user_changed_in_ad(
        &mut self,
        tw: &TwoWay,
        id: &str,
        base: AdUser,
    ) -> Result<(), ToAdError> {
        let Some(now) = self.read_user_now(&base.dn).await? else {
            return Ok(()); // moved or deleted: the next reconcile handles it
        };
        let changed = changed_attributes(&base, &now, &self.d.rules);
        if changed.is_empty() {
            return Ok(()); // our own write read back
        }
        let profile = self.jc_profiles(&[id.to_owned()]).await?.into_iter().next();
        let Some(profile) = profile else {
            return Ok(());
        };
        let mut plan = plan_user(Some((&profile, true)), Some(&now), None, &self.d.rules);
        let revert = tw.settings.non_owner_change == NonOwnerChange::Revert;
        if let UserPlan::Update { uac, .. } = &mut plan {
            if uac.is_some() {
                tw.record(
                    &self.d.name,
                    RecordKind::NonOwnerChange,
                    id,
                    "userAccountControl",
                    &format!(
                        "{} was {} in AD; JumpCloud owns this user: {}",
                        now.dn,
                        if now.uac & UAC_ACCOUNTDISABLE != 0 {
                            "disabled"
                        } else {
                            "enabled"
                        },
                        if revert {
                            "reverted to JumpCloud's state"
                        } else {
                            "left as it is (non_owner_changes = \"ignore\")"
                        }
                    ),
                )?;
                if !revert {
                    *uac = None;
                }
            }
        }
        // Attribute writes are judged (recorded, kept or dropped) by `owner_writes` in apply_user.
        self.apply_user(id, plan).await
    }

    async fn group_changed_in_ad(
        &mut self,
        tw: &TwoWay,
        id: &str,
        base: AdGroup,
    ) -> Result<(), ToAdError> {
        let (gid, plan) = self.plan_group_now(id, &mut GroupCache::new()).await?;
        let GroupPlan::Update {
            add,
            remove,
            writes,
            rename_to,
            ..
        } = &plan
        else {
            return Ok(());
        };
        if add.is_empty() && remove.is_empty() && writes.is_empty() && rename_to.is_none() {
            return Ok(());
        }
        let revert = tw.settings.non_owner_change == NonOwnerChange::Revert;
        tw.record(
            &self.d.name,
            RecordKind::NonOwnerChange,
            id,
            "member",
            &format!(
                "group {} changed in AD ({} member(s) JumpCloud does not have, {} missing); JumpCloud owns this group: {}",
                base.dn,
                remove.len(),
                add.len(),
                if revert { "reverted" } else { "left as it is (non_owner_changes = \"ignore\")" }
            ),
        )?;
        if revert {
            self.apply_group(&gid, plan).await?;
        }
        Ok(())
    }

    /// Two-way, before an update of a JumpCloud-owned user: each attribute write is judged against
    /// the base (what forestsync last wrote for JumpCloud, kept in the store) and AD as it is now.
    /// - AD unchanged since the base (or already equal): written — JumpCloud's change.
    /// - AD changed, JumpCloud did not: a change on the non-owning side, recorded; written back
    ///   (revert) or dropped (ignore).
    /// - Both changed: a conflict, recorded; JumpCloud, the owner, wins.
    pub(super) async fn owner_writes(
        &mut self,
        id: &str,
        writes: Vec<(String, Option<String>)>,
    ) -> Result<Vec<(String, Option<String>)>, ToAdError> {
        let Some(tw) = self.two_way() else {
            return Ok(writes);
        };
        let Some(indexed) = self.users.get(id).cloned() else {
            return Ok(writes);
        };
        let Some(now) = self.read_user_now(&indexed.dn).await? else {
            return Ok(writes);
        };
        let base = self
            .load_base(id)
            .await?
            .unwrap_or_else(|| indexed.attrs.clone());
        let revert = tw.settings.non_owner_change == NonOwnerChange::Revert;
        let mut kept = Vec::with_capacity(writes.len());
        for (attr, value) in writes {
            let lower = attr.to_lowercase();
            if lower == MARKER_ATTRIBUTE.to_lowercase() {
                kept.push((attr, value));
                continue;
            }
            let (was, is) = (base.get(&lower), now.attrs.get(&lower));
            let show = |v: Option<&String>| v.map(String::as_str).unwrap_or("").to_owned();
            if was == is || is == value.as_ref() {
                kept.push((attr, value));
            } else if value.as_ref() == was {
                tw.record(
                    &self.d.name,
                    RecordKind::NonOwnerChange,
                    id,
                    &attr,
                    &format!(
                        "{attr} of {} changed in AD from {:?} to {:?}; JumpCloud owns this user: {}",
                        now.dn,
                        show(was),
                        show(is),
                        if revert { "reverted to JumpCloud's value" } else { "left as it is (non_owner_changes = \"ignore\")" }
                    ),
                )?;
                if revert {
                    kept.push((attr, value));
                }
            } else {
                tw.record(
                    &self.d.name,
                    RecordKind::Conflict,
                    id,
                    &attr,
                    &format!(
                        "{attr} of {} changed in both AD ({:?}) and JumpCloud ({:?}); JumpCloud owns this user, so JumpCloud's value was written",
                        now.dn,
                        show(is),
                        show(value.as_ref())
                    ),
                )?;
                kept.push((attr, value));
            }
        }
        // The index follows AD as read now (what is not written stays as AD has it).
        let mut fresh = now;
        fresh.marker = fresh.marker.or(indexed.marker);
        self.users.insert(id.to_owned(), fresh);
        Ok(kept)
    }

    fn base_key(&self, id: &str) -> String {
        format!("to_ad/{}/base/{id}", self.d.name)
    }

    /// What forestsync last wrote to AD for JumpCloud user `id` (two-way), by lower-case attribute.
    async fn load_base(&self, id: &str) -> Result<Option<BTreeMap<String, String>>, ToAdError> {
        let (store, key) = (self.store.clone(), self.base_key(id));
        let v = tokio::task::spawn_blocking(move || store.get_meta(&key))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Records `writes` (applied) into the base of `id` (two-way only).
    pub(super) async fn save_base(
        &self,
        id: &str,
        writes: &[(String, Option<String>)],
    ) -> Result<(), ToAdError> {
        if self.settings.two_way.is_none() || writes.is_empty() {
            return Ok(());
        }
        let mut base = match self.load_base(id).await? {
            Some(b) => b,
            None => self
                .users
                .get(id)
                .map(|u| u.attrs.clone())
                .unwrap_or_default(),
        };
        for (attr, value) in writes {
            let lower = attr.to_lowercase();
            if lower == MARKER_ATTRIBUTE.to_lowercase() {
                continue;
            }
            match value {
                Some(v) => base.insert(lower, v.clone()),
                None => base.remove(&lower),
            };
        }
        let mapped: BTreeSet<String> = self
            .d
            .rules
            .attributes
            .iter()
            .map(|(_, a)| a.to_lowercase())
            .collect();
        base.retain(|k, _| mapped.contains(k));
        let (store, key) = (self.store.clone(), self.base_key(id));
        let value = serde_json::to_string(&base).unwrap_or_default();
        tokio::task::spawn_blocking(move || store.set_meta(&key, &value))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(())
    }

    /// Sorts profiles read from JumpCloud: AD-owned users (a back-link to an AD object) are the AD →
    /// JumpCloud direction's in two-way mode and are only checked for JumpCloud-side edits here; in
    /// jumpcloud-authoritative mode one whose back-link names an AD object of this domain may be taken
    /// over (the migration path), returned as `(id, objectGUID)`.
    pub(super) async fn split_ad_owned(
        &mut self,
        jc: &mut BTreeMap<String, (JcProfile, bool)>,
    ) -> Result<BTreeMap<String, ObjectGuid>, ToAdError> {
        let mut migrating = BTreeMap::new();
        let mut ad_owned = Vec::new();
        let managed = &self.users;
        jc.retain(|id, (p, _)| match profile_anchor(p) {
            // Marked in AD already (taken over): JumpCloud owns it, whatever its back-link says.
            Some(_) if managed.contains_key(id) => true,
            Some(a) if a.domain.eq_ignore_ascii_case(&self.d.name) => {
                if self.settings.two_way.is_some() {
                    ad_owned.push((p.clone(), a));
                    false
                } else {
                    migrating.insert(id.clone(), a.guid);
                    true
                }
            }
            // Another domain's user: never this domain's to create.
            Some(_) if self.settings.two_way.is_some() => false,
            _ => true,
        });
        for (p, anchor) in ad_owned {
            self.check_ad_owned(&p, &anchor).await?;
        }
        Ok(migrating)
    }

    /// An AD-owned user as JumpCloud has it now, against what the AD → JumpCloud direction last
    /// wrote: fields that differ were changed in JumpCloud (the non-owning side).
    async fn check_ad_owned(&mut self, p: &JcProfile, anchor: &Anchor) -> Result<(), ToAdError> {
        let Some(tw) = self.two_way() else {
            return Ok(());
        };
        let Some(applied) = self.applied_user(anchor).await? else {
            return Ok(()); // not created yet (its create is queued or running)
        };
        self.ad_owned_dns
            .insert(p.id.clone(), applied.external_dn.clone());
        if two_way::drift(&applied, p).is_empty() {
            return Ok(());
        }
        // A difference may be the import's own write, made before its link was committed: judged
        // only when no operation for the user is queued or running and the link stayed the same
        // across a fresh read of JumpCloud (so JumpCloud is at least as new as the link).
        if self.import_busy(anchor).await? {
            self.recheck.insert(p.id.clone());
            return Ok(());
        }
        let Some(now) = self
            .jc_profiles(std::slice::from_ref(&p.id))
            .await?
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        if self.import_busy(anchor).await?
            || self.applied_user(anchor).await?.as_ref() != Some(&applied)
        {
            self.recheck.insert(p.id.clone());
            return Ok(());
        }
        let p = &now;
        let drifted = two_way::drift(&applied, p);
        if drifted.is_empty() {
            return Ok(());
        }
        let revert = tw.settings.non_owner_change == NonOwnerChange::Revert;
        for (field, jc_value, ad_value) in &drifted {
            tw.record(
                &self.d.name,
                RecordKind::NonOwnerChange,
                &p.id,
                field,
                &format!(
                    "{field} of {} changed in JumpCloud to {jc_value:?}; AD owns this user ({ad_value:?}): {}",
                    p.username,
                    if revert { "reverted to AD's value" } else { "left as it is (non_owner_changes = \"ignore\")" }
                ),
            )?;
        }
        if revert {
            let update = two_way::revert_update(&applied, &drifted);
            let id = p.id.clone();
            self.api
                .read("UpdateUser (revert a JumpCloud-side change)", move |c| {
                    let (id, update) = (id.clone(), update.clone());
                    async move { c.update_user_fields(&id, &update).await.map(|_| ()) }
                })
                .await?;
            self.stats.reverted += 1;
        }
        Ok(())
    }

    /// Two-way: objects the AD → JumpCloud direction linked but not bound to this AD instance (made
    /// before the switch from ad-authoritative) are bound now, so JumpCloud's password changes of
    /// AD-owned users reach the agent and a later switch to jumpcloud-authoritative keeps them.
    /// Returns the ids bound.
    pub(super) async fn bind_linked(
        &mut self,
        bound_users: &BTreeSet<String>,
        bound_groups: &BTreeSet<String>,
    ) -> Result<Vec<String>, ToAdError> {
        if self.settings.two_way.is_none() {
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        let links = tokio::task::spawn_blocking(move || store.links())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        let mut done = Vec::new();
        for l in links {
            if !l.anchor.domain.eq_ignore_ascii_case(&self.d.name) || l.jumpcloud_id.is_empty() {
                continue;
            }
            let (target, bound) = match l.kind {
                crate::model::ObjectKind::User => (AssocTarget::User, bound_users),
                crate::model::ObjectKind::Group => (AssocTarget::UserGroup, bound_groups),
            };
            if bound.contains(&l.jumpcloud_id) {
                continue;
            }
            let (ad, id) = (self.d.ad_instance_id.clone(), l.jumpcloud_id.clone());
            let r = self
                .api
                .read("Associate (bind an AD-owned object)", move |c| {
                    let (ad, id) = (ad.clone(), id.clone());
                    async move {
                        c.associate(&ad, target, &id, crate::cloud::GraphOp::Add)
                            .await
                    }
                })
                .await;
            match r {
                Ok(()) => done.push(l.jumpcloud_id),
                // Already bound (a race with the executor's own bind): fine.
                Err(e) if e.cloud().and_then(crate::cloud::CloudError::status) == Some(409) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !done.is_empty() {
            tracing::info!(domain = %self.d.name, bound = done.len(), "bound AD-owned objects to the AD instance");
        }
        Ok(done)
    }

    /// What the AD → JumpCloud direction last wrote for the AD-owned group `anchor`: its name and its
    /// members' JumpCloud ids.
    async fn applied_group(
        &self,
        anchor: &Anchor,
    ) -> Result<Option<(Option<String>, BTreeSet<String>)>, ToAdError> {
        let (store, a) = (self.store.clone(), anchor.clone());
        let applied = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let Some(link) = store.link(&a)? else {
                return Ok(None);
            };
            let mut ids = BTreeSet::new();
            for m in &link.applied_members {
                if let Some(l) = store.link(m)? {
                    ids.insert(l.jumpcloud_id);
                }
            }
            Ok(Some((link.applied_group_name, ids)))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(applied)
    }

    /// What the AD → JumpCloud direction last wrote for the AD-owned user `anchor`.
    async fn applied_user(
        &self,
        anchor: &Anchor,
    ) -> Result<Option<crate::model::DesiredUser>, ToAdError> {
        let (store, anchor) = (self.store.clone(), anchor.clone());
        let link = tokio::task::spawn_blocking(move || store.link(&anchor))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(link.and_then(|l| l.applied_user))
    }

    /// Whether the AD → JumpCloud direction has an operation queued or running for `anchor` (its
    /// link then lags what JumpCloud holds, so JumpCloud is not compared with it yet). A long outbox
    /// (an initial import) counts as busy for everyone.
    async fn import_busy(&self, anchor: &Anchor) -> Result<bool, ToAdError> {
        const SCAN: usize = 1000;
        let (store, anchor) = (self.store.clone(), anchor.clone());
        let busy = tokio::task::spawn_blocking(move || -> Result<bool, StoreError> {
            if store.pending_count()? == 0 {
                return Ok(false);
            }
            let ops = store.pending_ops(None, SCAN)?;
            Ok(ops.len() >= SCAN || ops.iter().any(|(_, op)| op.subject() == &anchor))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(busy)
    }

    /// Two-way: an AD-owned group as JumpCloud has it (name, direct members) against what the AD →
    /// JumpCloud direction last wrote. Differences were made in JumpCloud (the non-owning side):
    /// recorded, and reverted unless configured to be ignored.
    pub(super) async fn check_ad_owned_group(&mut self, g: &JcGroup) -> Result<(), ToAdError> {
        let Some(tw) = self.two_way() else {
            return Ok(());
        };
        let Some(anchor) = g.anchor.as_deref().and_then(parse_anchor) else {
            return Ok(());
        };
        if !anchor.domain.eq_ignore_ascii_case(&self.d.name) {
            return Ok(());
        }
        if self.import_busy(&anchor).await? {
            self.recheck_groups.insert(g.id.clone());
            return Ok(());
        }
        let Some(applied) = self.applied_group(&anchor).await? else {
            return Ok(());
        };
        let now: BTreeSet<String> = self.jc_members(&g.id).await?.into_iter().collect();
        // The same guard as for users: the link must not have moved while JumpCloud was read.
        if self.import_busy(&anchor).await?
            || self.applied_group(&anchor).await?.as_ref() != Some(&applied)
        {
            self.recheck_groups.insert(g.id.clone());
            return Ok(());
        }
        let (applied_name, applied_ids) = applied;
        let added: Vec<&String> = now.difference(&applied_ids).collect();
        let removed: Vec<&String> = applied_ids.difference(&now).collect();
        let renamed = applied_name.as_deref().filter(|n| *n != g.name);
        if added.is_empty() && removed.is_empty() && renamed.is_none() {
            return Ok(());
        }
        let revert = tw.settings.non_owner_change == NonOwnerChange::Revert;
        let outcome = if revert {
            "reverted to AD's"
        } else {
            "left as it is (non_owner_changes = \"ignore\")"
        };
        if !added.is_empty() || !removed.is_empty() {
            tw.record(
                &self.d.name,
                RecordKind::NonOwnerChange,
                &g.id,
                "members",
                &format!(
                    "members of group {} changed in JumpCloud ({} added, {} removed); AD owns this group: {outcome}",
                    g.name,
                    added.len(),
                    removed.len()
                ),
            )?;
        }
        if let Some(name) = renamed {
            tw.record(
                &self.d.name,
                RecordKind::NonOwnerChange,
                &g.id,
                "name",
                &format!(
                    "group {name:?} was renamed in JumpCloud to {:?}; AD owns this group: {outcome}",
                    g.name
                ),
            )?;
        }
        if !revert {
            return Ok(());
        }
        for (uid, add) in added
            .into_iter()
            .map(|u| (u.clone(), false))
            .chain(removed.into_iter().map(|u| (u.clone(), true)))
        {
            let gid = g.id.clone();
            let r = self
                .api
                .read("Members (revert a JumpCloud-side change)", move |c| {
                    let (gid, uid) = (gid.clone(), uid.clone());
                    async move {
                        if add {
                            c.add_member(&gid, &uid).await
                        } else {
                            c.remove_member(&gid, &uid).await
                        }
                    }
                })
                .await;
            match r {
                Ok(()) => self.stats.reverted += 1,
                // Already as AD has it.
                Err(e)
                    if matches!(
                        e.cloud().and_then(crate::cloud::CloudError::status),
                        Some(404) | Some(409)
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(name) = renamed {
            let (id, name, current) = (g.id.clone(), name.to_owned(), g.clone());
            self.api
                .read("RenameGroup (revert a JumpCloud-side change)", move |c| {
                    let (id, name, current) = (id.clone(), name.clone(), current.clone());
                    async move { c.rename_group(&id, &name, &current).await.map(|_| ()) }
                })
                .await?;
            self.stats.reverted += 1;
        }
        Ok(())
    }

    /// AD-owned users and groups whose check waited for the AD → JumpCloud direction: checked now
    /// (again deferred while it is still busy with them).
    pub(super) async fn recheck_ad_owned(&mut self) -> Result<(), ToAdError> {
        if self.settings.two_way.is_none() {
            return Ok(());
        }
        for gid in std::mem::take(&mut self.recheck_groups) {
            if let Some(g) = self.jc_group(&gid).await?.map(|(g, _)| g) {
                self.check_ad_owned_group(&g).await?;
            }
        }
        if self.recheck.is_empty() {
            return Ok(());
        }
        let due: Vec<String> = std::mem::take(&mut self.recheck).into_iter().collect();
        for p in self.jc_profiles(&due).await? {
            if let Some(a) = profile_anchor(&p) {
                self.check_ad_owned(&p, &a).await?;
            }
        }
        Ok(())
    }

    /// The AD user of an AD-owned JumpCloud user (two-way), found by its anchor's objectGUID.
    pub(super) async fn ad_owned_user(
        &mut self,
        p: &JcProfile,
    ) -> Result<Option<AdUser>, ToAdError> {
        let Some(anchor) = profile_anchor(p) else {
            return Ok(None);
        };
        if !anchor.domain.eq_ignore_ascii_case(&self.d.name) {
            return Ok(None);
        }
        let found = self
            .find(
                &self.d.base_dn.clone(),
                FindScope::Subtree,
                format!("(&(objectClass=user){})", guid_filter(&anchor.guid)),
                USER_ATTRS,
                false,
            )
            .await?;
        Ok(found.first().map(to_user))
    }

    /// Two-way: whether a password from JumpCloud may be written to AD for `profile`. An echo of a
    /// password forestsync sent to JumpCloud is dropped silently; one for an AD-authority user is
    /// recorded and reported, not written. On `true` the password is recorded as ours (its capture by
    /// the DC's hook is then recognised).
    pub(super) fn password_may_go_to_ad(
        &mut self,
        tw: &TwoWay,
        profile: &JcProfile,
        password: &Secret,
        seq: u64,
    ) -> Result<bool, ToAdError> {
        if tw.echoes.take(&profile.id, password) {
            tracing::debug!(domain = %self.d.name, object = %profile.id, seq, "password event is the one forestsync sent to JumpCloud; not written back");
            return Ok(false);
        }
        if two_way::password_authority(profile, tw.settings.default_password_authority) == Side::Ad
        {
            let reason = format!(
                "the password of {} was changed in JumpCloud, but its password authority is AD: not written to AD",
                profile.username
            );
            tw.record(
                &self.d.name,
                RecordKind::NonOwnerChange,
                &profile.id,
                "password",
                &reason,
            )?;
            self.reports.push(Report {
                kind: ReportKind::Password,
                id: profile.id.clone(),
                seq,
                code: ReportCode::Rejected,
                message: reason,
            });
            return Ok(false);
        }
        tw.echoes.record(&profile.id, password);
        Ok(true)
    }
}

/// Mapped attributes (and the enabled state) that differ between what the index held and AD now:
/// (AD attribute, before, now).
fn changed_attributes(
    base: &AdUser,
    now: &AdUser,
    rules: &ToAdRules,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (_, attr) in &rules.attributes {
        let lower = attr.to_lowercase();
        let (a, b) = (base.attrs.get(&lower), now.attrs.get(&lower));
        if a != b {
            out.push((
                attr.clone(),
                a.cloned().unwrap_or_default(),
                b.cloned().unwrap_or_default(),
            ));
        }
    }
    let enabled = |u: &AdUser| u.uac & UAC_ACCOUNTDISABLE == 0;
    if enabled(base) != enabled(now) {
        let word = |e: bool| if e { "enabled" } else { "disabled" }.to_owned();
        out.push((
            "userAccountControl".into(),
            word(enabled(base)),
            word(enabled(now)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guid_filter_escapes_every_byte() {
        let g = ObjectGuid([
            0x00, 0x2a, 0xff, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ]);
        assert_eq!(
            guid_filter(&g),
            "(objectGUID=\\00\\2a\\ff\\10\\01\\02\\03\\04\\05\\06\\07\\08\\09\\0a\\0b\\0c)"
        );
    }

    #[test]
    fn only_mapped_attributes_and_the_enabled_state_count_as_ad_side_changes() {
        let rules = ToAdRules {
            target_ou: "OU=x,DC=a".into(),
            upn_suffix: "a".into(),
            attributes: ToAdRules::standard_attributes("givenName", "sn", "mail", &BTreeMap::new()),
            on_removal: RemovalAction::Disable,
            adopt_existing: false,
        };
        let base = AdUser {
            dn: "CN=a,OU=x,DC=a".into(),
            uac: UAC_NORMAL_ACCOUNT,
            attrs: BTreeMap::from([
                ("givenname".into(), "Ann".into()),
                ("pwdlastset".into(), "1".into()),
            ]),
            ..AdUser::default()
        };
        let mut now = base.clone();
        now.attrs.insert("pwdlastset".into(), "2".into());
        assert!(
            changed_attributes(&base, &now, &rules).is_empty(),
            "a password change is not a profile change"
        );
        now.attrs.insert("givenname".into(), "Anne".into());
        now.uac |= UAC_ACCOUNTDISABLE;
        let c = changed_attributes(&base, &now, &rules);
        assert_eq!(
            c,
            vec![
                ("givenName".into(), "Ann".into(), "Anne".into()),
                (
                    "userAccountControl".into(),
                    "enabled".into(),
                    "disabled".into()
                )
            ]
        );
    }
}

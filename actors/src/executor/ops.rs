//! One operation, step by step. Each step is an idempotent attempt retried on temporary failures; an
//! attempt re-reads JumpCloud before any non-idempotent write (create), so a replay adopts what an
//! earlier, interrupted attempt did instead of doing it twice.

use tokio::sync::watch;

use super::pace::Backoff;
use super::{ExecError, Executor};
use crate::cloud::{
    with_anchor_attribute, AssocTarget, CloudClient, CloudError, GraphOp, JcGroup, JcUser,
    UserUpdate,
};
use crate::model::{
    Anchor, DesiredGroup, DesiredUser, Link, LinkEffect, ObjectKind, Op, RemoveAction,
};

/// Runs `$attempt` (an expression, usually `self.x().await`) until it succeeds or the backoff gives up.
macro_rules! retrying {
    ($run:ident, $attempt:expr) => {{
        let mut backoff = $run.backoff();
        loop {
            match $attempt {
                Ok(v) => break v,
                Err(e) => backoff.retry_after_failure(e).await?,
            }
        }
    }};
}

pub(super) struct OpRun<'a> {
    pub(super) ex: &'a Executor,
    pub(super) what: String,
    pub(super) shutdown: Option<&'a watch::Receiver<bool>>,
}

fn status_of(e: &ExecError) -> Option<u16> {
    e.cloud().and_then(CloudError::status)
}

impl OpRun<'_> {
    pub(super) async fn execute(&self, op: &Op) -> Result<LinkEffect, ExecError> {
        match op {
            Op::CreateUser { user } => self.create_user(user).await,
            Op::TakeOverUser { user, jumpcloud_id } => {
                self.take_over_user(user, jumpcloud_id).await
            }
            Op::UpdateUser { user } => self.update_user(user).await,
            Op::RemoveUser { anchor, action } => self.remove_user(anchor, *action).await,
            Op::CreateGroup { group } => self.create_group(group).await,
            Op::RenameGroup { anchor, name } => self.rename_group(anchor, name).await,
            Op::DeleteGroup { anchor } => self.delete_group(anchor).await,
            Op::AddMember { group, user } => self.add_member(group, user).await,
            Op::RemoveMember { group, user } => self.remove_member(group, user).await,
        }
    }

    fn backoff(&self) -> Backoff<'_> {
        Backoff::new(&self.ex.inner.config.retry, self.shutdown)
    }

    fn client(&self) -> &CloudClient {
        &self.ex.inner.client
    }

    async fn req<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, CloudError>>,
    ) -> Result<T, ExecError> {
        self.ex.request(&self.what, fut).await
    }

    fn link(&self, anchor: &Anchor, role: &'static str) -> Result<Link, ExecError> {
        self.ex
            .inner
            .store
            .link(anchor)?
            .ok_or_else(|| ExecError::MissingLink {
                op: self.what.clone(),
                role,
                anchor: anchor.clone(),
            })
    }

    /// A 404 on a linked object: it was deleted in JumpCloud behind forestsync's back.
    fn vanished(&self, e: ExecError, kind: &str, link: &Link) -> ExecError {
        if status_of(&e) == Some(404) {
            ExecError::Vanished {
                op: self.what.clone(),
                detail: format!(
                    "the JumpCloud {kind} {} linked to {} no longer exists; fix: re-plan (the link will be recreated)",
                    link.jumpcloud_id, link.anchor
                ),
            }
        } else {
            e
        }
    }

    // ---- users ----

    async fn create_user(&self, user: &DesiredUser) -> Result<LinkEffect, ExecError> {
        let marker = user.anchor.to_string();
        let existing = self.ex.inner.store.link(&user.anchor)?;
        let jc = retrying!(
            self,
            self.create_user_attempt(user, &marker, existing.as_ref())
                .await
        );
        self.bind(&user.anchor.domain, AssocTarget::User, &jc.id)
            .await?;
        Ok(LinkEffect::Upsert(Link {
            anchor: user.anchor.clone(),
            kind: ObjectKind::User,
            jumpcloud_id: jc.id,
            applied_user: Some(user.clone()),
            applied_group_name: None,
            applied_members: existing.map(|l| l.applied_members).unwrap_or_default(),
        }))
    }

    async fn create_user_attempt(
        &self,
        user: &DesiredUser,
        marker: &str,
        existing: Option<&Link>,
    ) -> Result<JcUser, ExecError> {
        if let Some(link) = existing {
            if let Some(u) = self.req(self.client().get_user(&link.jumpcloud_id)).await? {
                return self.adopt_user(user, u).await;
            }
        }
        if let Some(u) = self
            .req(self.client().find_user_by_username(&user.username))
            .await?
        {
            return self.claim_user(user, marker, u).await;
        }
        match self.req(self.client().create_user(user, marker)).await {
            Ok(u) => Ok(u),
            Err(e) if status_of(&e) == Some(400) => {
                // "User already exists": the username in another case, or the email/employee id of
                // another user.
                match self
                    .req(self.client().find_user_by_username_ci(&user.username))
                    .await?
                {
                    Some(u) => self.claim_user(user, marker, u).await,
                    None if e.to_string().contains("already exists") => Err(ExecError::Collision {
                        op: self.what.clone(),
                        detail: format!(
                            "JumpCloud refuses to create {:?} for {}: user already exists, though no user has that username: the email {:?} (or employee id) belongs to another JumpCloud user; fix: change the AD user's email or the JumpCloud user's",
                            user.username, user.anchor, user.email
                        ),
                    }),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Adopts `u` when it carries this anchor (an earlier attempt created it); anything else is a
    /// collision.
    async fn claim_user(
        &self,
        user: &DesiredUser,
        marker: &str,
        u: JcUser,
    ) -> Result<JcUser, ExecError> {
        if u.anchor.as_deref() == Some(marker) {
            return self.adopt_user(user, u).await;
        }
        let owner = owner_of(u.anchor.as_deref());
        Err(ExecError::Collision {
            op: self.what.clone(),
            detail: format!(
                "username {:?} for {} collides with existing JumpCloud user {} ({:?}, {owner}); fix: rename one of them, or take the JumpCloud user over (opt-in)",
                user.username, user.anchor, u.id, u.username
            ),
        })
    }

    async fn adopt_user(&self, user: &DesiredUser, u: JcUser) -> Result<JcUser, ExecError> {
        tracing::info!(op = %self.what, jumpcloud_id = %u.id, "adopting the JumpCloud user an earlier attempt created");
        self.req(self.client().update_user(&u.id, user)).await
    }

    async fn take_over_user(
        &self,
        user: &DesiredUser,
        jumpcloud_id: &str,
    ) -> Result<LinkEffect, ExecError> {
        let marker = user.anchor.to_string();
        let jc = retrying!(
            self,
            self.take_over_attempt(user, jumpcloud_id, &marker).await
        );
        self.bind(&user.anchor.domain, AssocTarget::User, &jc.id)
            .await?;
        let existing = self.ex.inner.store.link(&user.anchor)?;
        Ok(LinkEffect::Upsert(Link {
            anchor: user.anchor.clone(),
            kind: ObjectKind::User,
            jumpcloud_id: jc.id,
            applied_user: Some(user.clone()),
            applied_group_name: None,
            applied_members: existing.map(|l| l.applied_members).unwrap_or_default(),
        }))
    }

    async fn take_over_attempt(
        &self,
        user: &DesiredUser,
        id: &str,
        marker: &str,
    ) -> Result<JcUser, ExecError> {
        let Some(u) = self.req(self.client().get_user(id)).await? else {
            return Err(ExecError::Vanished {
                op: self.what.clone(),
                detail: format!("the JumpCloud user {id} to take over does not exist"),
            });
        };
        if let Some(other) = u.anchor.as_deref().filter(|a| *a != marker) {
            return Err(ExecError::Collision {
                op: self.what.clone(),
                detail: format!(
                    "JumpCloud user {id} ({:?}) is already managed by forestsync for {other}; {} cannot take it over",
                    u.username, user.anchor
                ),
            });
        }
        let mut update = UserUpdate::full(user);
        update.attributes = Some(with_anchor_attribute(&u.attributes, marker));
        self.req(self.client().update_user_fields(id, &update))
            .await
    }

    async fn update_user(&self, user: &DesiredUser) -> Result<LinkEffect, ExecError> {
        let link = self.link(&user.anchor, "user")?;
        let update = match &link.applied_user {
            Some(old) => UserUpdate::diff(old, user),
            None => UserUpdate::full(user),
        };
        if let (Some(tw), Some(old)) = (&self.ex.inner.config.two_way, &link.applied_user) {
            if !update.is_empty() {
                self.note_conflicts(tw, old, user, &link.jumpcloud_id)
                    .await?;
            }
        }
        if !update.is_empty() {
            retrying!(
                self,
                self.req(
                    self.client()
                        .update_user_fields(&link.jumpcloud_id, &update)
                )
                .await
                .map_err(|e| self.vanished(e, "user", &link))
            );
        }
        Ok(LinkEffect::Upsert(Link {
            applied_user: Some(user.clone()),
            ..link
        }))
    }

    /// Two-way: fields JumpCloud changed since forestsync last wrote them (`old`) that AD changed
    /// too (`new`) are conflicts; AD, the owner, wins and the lost JumpCloud value is recorded.
    async fn note_conflicts(
        &self,
        tw: &crate::two_way::TwoWay,
        old: &DesiredUser,
        new: &DesiredUser,
        id: &str,
    ) -> Result<(), ExecError> {
        let Some(now) = retrying!(self, self.req(self.client().get_profile(id)).await) else {
            return Ok(());
        };
        let ours = crate::two_way::applied_fields(new);
        for (field, jc_value, old_value) in crate::two_way::drift(old, &now) {
            let Some(ad_value) = ours.get(&field) else {
                continue;
            };
            if *ad_value != old_value && *ad_value != jc_value {
                tw.record(
                    &new.anchor.domain,
                    crate::two_way::RecordKind::Conflict,
                    id,
                    &field,
                    &format!(
                        "{field} of {} changed in both AD ({ad_value:?}) and JumpCloud ({jc_value:?}); AD owns this user, so AD's value was kept",
                        new.username
                    ),
                )?;
            }
        }
        Ok(())
    }

    async fn remove_user(
        &self,
        anchor: &Anchor,
        action: RemoveAction,
    ) -> Result<LinkEffect, ExecError> {
        let link = self.link(anchor, "user")?;
        let id = link.jumpcloud_id.as_str();
        match action {
            RemoveAction::Delete => {
                retrying!(
                    self,
                    match self.req(self.client().delete_user(id)).await {
                        Err(e) if status_of(&e) == Some(404) => Ok(()),
                        other => other,
                    }
                );
                Ok(LinkEffect::Remove(anchor.clone()))
            }
            RemoveAction::Suspend => {
                retrying!(
                    self,
                    self.req(self.client().set_user_state(id, true))
                        .await
                        .map_err(|e| self.vanished(e, "user", &link))
                );
                let applied_user = link.applied_user.clone().map(|mut u| {
                    u.suspended = true;
                    u
                });
                Ok(LinkEffect::Upsert(Link {
                    applied_user,
                    ..link
                }))
            }
            RemoveAction::Unbind => {
                if let Some(ad) = self.ex.ad_instance(&anchor.domain) {
                    retrying!(
                        self,
                        self.assoc_attempt(ad, AssocTarget::User, id, GraphOp::Remove)
                            .await
                    );
                }
                Ok(LinkEffect::Remove(anchor.clone()))
            }
        }
    }

    // ---- groups ----

    async fn create_group(&self, group: &DesiredGroup) -> Result<LinkEffect, ExecError> {
        let marker = group.anchor.to_string();
        let existing = self.ex.inner.store.link(&group.anchor)?;
        let jc = retrying!(
            self,
            self.create_group_attempt(group, &marker, existing.as_ref())
                .await
        );
        self.bind(&group.anchor.domain, AssocTarget::UserGroup, &jc.id)
            .await?;
        Ok(LinkEffect::Upsert(Link {
            anchor: group.anchor.clone(),
            kind: ObjectKind::Group,
            jumpcloud_id: jc.id,
            applied_user: None,
            applied_group_name: Some(group.name.clone()),
            applied_members: existing.map(|l| l.applied_members).unwrap_or_default(),
        }))
    }

    async fn create_group_attempt(
        &self,
        group: &DesiredGroup,
        marker: &str,
        existing: Option<&Link>,
    ) -> Result<JcGroup, ExecError> {
        if let Some(link) = existing {
            if let Some(g) = self
                .req(self.client().get_group(&link.jumpcloud_id))
                .await?
            {
                return self.adopt_group(group, g).await;
            }
        }
        if let Some(g) = self
            .req(self.client().find_group_by_name(&group.name))
            .await?
        {
            return self.claim_group(group, marker, g).await;
        }
        match self
            .req(self.client().create_group(&group.name, marker))
            .await
        {
            Ok(g) => Ok(g),
            Err(e) if status_of(&e) == Some(409) => {
                // The same name in another case (JumpCloud's uniqueness ignores case).
                match self
                    .req(self.client().find_group_by_name_ci(&group.name))
                    .await?
                {
                    Some(g) => self.claim_group(group, marker, g).await,
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn claim_group(
        &self,
        group: &DesiredGroup,
        marker: &str,
        g: JcGroup,
    ) -> Result<JcGroup, ExecError> {
        if g.anchor.as_deref() == Some(marker) {
            return self.adopt_group(group, g).await;
        }
        let owner = owner_of(g.anchor.as_deref());
        Err(ExecError::Collision {
            op: self.what.clone(),
            detail: format!(
                "group name {:?} for {} collides with existing JumpCloud user group {} ({:?}, {owner}); fix: rename one of them",
                group.name, group.anchor, g.id, g.name
            ),
        })
    }

    async fn adopt_group(&self, group: &DesiredGroup, g: JcGroup) -> Result<JcGroup, ExecError> {
        tracing::info!(op = %self.what, jumpcloud_id = %g.id, "adopting the JumpCloud group an earlier attempt created");
        if g.name == group.name {
            return Ok(g);
        }
        self.req(self.client().rename_group(&g.id, &group.name, &g))
            .await
    }

    async fn rename_group(&self, anchor: &Anchor, name: &str) -> Result<LinkEffect, ExecError> {
        let link = self.link(anchor, "group")?;
        retrying!(self, self.rename_attempt(&link, name).await);
        Ok(LinkEffect::Upsert(Link {
            applied_group_name: Some(name.to_owned()),
            ..link
        }))
    }

    async fn rename_attempt(&self, link: &Link, name: &str) -> Result<(), ExecError> {
        let Some(g) = self
            .req(self.client().get_group(&link.jumpcloud_id))
            .await?
        else {
            return Err(self.vanished(
                ExecError::Cloud {
                    op: self.what.clone(),
                    source: CloudError::Rejected {
                        url: String::new(),
                        status: 404,
                        message: "user group not found".into(),
                    },
                },
                "user group",
                link,
            ));
        };
        if g.name != name {
            self.req(self.client().rename_group(&g.id, name, &g))
                .await?;
        }
        Ok(())
    }

    async fn delete_group(&self, anchor: &Anchor) -> Result<LinkEffect, ExecError> {
        let link = self.link(anchor, "group")?;
        retrying!(
            self,
            match self
                .req(self.client().delete_group(&link.jumpcloud_id))
                .await
            {
                Err(e) if status_of(&e) == Some(404) => Ok(()),
                other => other,
            }
        );
        Ok(LinkEffect::Remove(anchor.clone()))
    }

    async fn add_member(&self, group: &Anchor, user: &Anchor) -> Result<LinkEffect, ExecError> {
        let g = self.link(group, "group")?;
        let u = self.link(user, "user")?;
        retrying!(
            self,
            self.member_attempt(&g.jumpcloud_id, &u.jumpcloud_id, GraphOp::Add)
                .await
        );
        Ok(LinkEffect::AddMember {
            group: group.clone(),
            user: user.clone(),
        })
    }

    /// Without a link for the group or the user there is no membership to remove (the object was
    /// deleted, and its edges with it, or never created): success without a request.
    async fn remove_member(&self, group: &Anchor, user: &Anchor) -> Result<LinkEffect, ExecError> {
        let store = &self.ex.inner.store;
        match (store.link(group)?, store.link(user)?) {
            (Some(g), Some(u)) => {
                retrying!(
                    self,
                    self.member_attempt(&g.jumpcloud_id, &u.jumpcloud_id, GraphOp::Remove)
                        .await
                );
            }
            _ => {
                tracing::info!(op = %self.what, "no link for the group or the user: nothing to remove")
            }
        }
        Ok(LinkEffect::RemoveMember {
            group: group.clone(),
            user: user.clone(),
        })
    }

    /// One membership edit; "already a member" (409) / "not a member" (404) count as done once a read
    /// confirms the membership is as wanted.
    async fn member_attempt(&self, gid: &str, uid: &str, op: GraphOp) -> Result<(), ExecError> {
        let edit = match op {
            GraphOp::Add => self.req(self.client().add_member(gid, uid)).await,
            GraphOp::Remove => self.req(self.client().remove_member(gid, uid)).await,
        };
        let e = match edit {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let ambiguous = matches!(
            (op, status_of(&e)),
            (GraphOp::Add, Some(409)) | (GraphOp::Remove, Some(404))
        );
        if !ambiguous {
            return Err(e);
        }
        match self.req(self.client().is_member(gid, uid)).await {
            Ok(member) if member == (op == GraphOp::Add) => Ok(()),
            // The group itself is gone: so is the membership being removed.
            Err(read) if op == GraphOp::Remove && status_of(&read) == Some(404) => Ok(()),
            Ok(_) => Err(e),
            Err(read) => Err(read),
        }
    }

    // ---- Active Directory associations ----

    /// Associates a created or taken-over object with the configured AD instance (if any).
    async fn bind(&self, domain: &str, target: AssocTarget, id: &str) -> Result<(), ExecError> {
        if let Some(ad) = self.ex.ad_instance(domain) {
            retrying!(self, self.assoc_attempt(ad, target, id, GraphOp::Add).await);
        }
        Ok(())
    }

    async fn assoc_attempt(
        &self,
        ad: &str,
        target: AssocTarget,
        id: &str,
        op: GraphOp,
    ) -> Result<(), ExecError> {
        let e = match self.req(self.client().associate(ad, target, id, op)).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let ambiguous = matches!(
            (op, status_of(&e)),
            (GraphOp::Add, Some(409)) | (GraphOp::Remove, Some(404))
        );
        if !ambiguous {
            return Err(e);
        }
        match self.req(self.client().is_associated(ad, target, id)).await {
            Ok(bound) if bound == (op == GraphOp::Add) => Ok(()),
            // The object is gone: so is its association.
            Err(read) if op == GraphOp::Remove && status_of(&read) == Some(404) => Ok(()),
            Ok(_) => Err(e),
            Err(read) => Err(read),
        }
    }
}

/// Who owns a JumpCloud object, from its `forestsync_anchor` back-link (for collision messages).
fn owner_of(anchor: Option<&str>) -> String {
    match anchor {
        Some(a) => format!("managed by forestsync for {a}"),
        None => "not managed by forestsync".to_owned(),
    }
}

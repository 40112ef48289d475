//! The DC connection actor: one per domain controller. Owns one LDAP connection (verified TLS,
//! bound as the service account), reconnects on demand, answers reads and runs [`DirRequest`]s
//! (the JumpCloud-authoritative mode's searches and writes). Decides nothing: the domain actor (or
//! `directory::DomainDirectory`) chooses which DC to ask and when to fail over.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use ldap3::Mod;
use rustls::ClientConfig;
use tokio::sync::Mutex;

use crate::directory::read::{self, ReadSpec};
use crate::directory::{AdEntry, DcEndpoint, DcSession, DirectoryError, FindScope, Timeouts};
use crate::disposition::{Classified, Disposition};
use crate::model::DirChange;
use crate::secret::Secret;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

pub struct DcActor {
    pub url: String,
    endpoint: DcEndpoint,
    tls: Arc<ClientConfig>,
    bind_dn: String,
    bind_password: Secret,
    timeouts: Timeouts,
    /// Per-operation timeout for change reads (a full DirSync of a big domain is one long search);
    /// probes keep `timeouts.operation`, so a hung DC is still noticed quickly.
    read_timeout: Duration,
    spec: Arc<ReadSpec>,
    /// The open, bound session; `None` after an error that may have broken it (the next request reconnects).
    /// A mutex, not actor state, because requests run as futures outside the actor's `&mut self`.
    session: Arc<Mutex<Option<DcSession>>>,
    /// The invocationId read on the current connection (cleared on reconnect).
    invocation_id: Arc<std::sync::Mutex<Option<String>>>,
}

impl DcActor {
    pub fn new(
        endpoint: DcEndpoint,
        tls: Arc<ClientConfig>,
        bind_dn: String,
        bind_password: Secret,
        timeouts: Timeouts,
        read_timeout: Duration,
        spec: Arc<ReadSpec>,
    ) -> Self {
        DcActor {
            url: endpoint.url.clone(),
            endpoint,
            tls,
            bind_dn,
            bind_password,
            timeouts,
            read_timeout,
            spec,
            session: Arc::new(Mutex::new(None)),
            invocation_id: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Runs `op` on the (re)connected session; a failure that may have broken the connection drops it.
    fn with_session<T, F>(
        &self,
        timeout: Duration,
        op: F,
    ) -> ResponseFuture<Result<T, DirectoryError>>
    where
        T: 'static,
        F: for<'a> FnOnce(
                &'a mut DcSession,
                Arc<ReadSpec>,
            ) -> BoxFuture<'a, Result<T, DirectoryError>>
            + 'static,
    {
        let session = self.session.clone();
        let invocation = self.invocation_id.clone();
        let (endpoint, tls, dn, pw, timeouts, spec) = (
            self.endpoint.clone(),
            self.tls.clone(),
            self.bind_dn.clone(),
            self.bind_password.clone(),
            self.timeouts,
            self.spec.clone(),
        );
        Box::pin(async move {
            let mut guard = session.lock().await;
            if guard.is_none() {
                // A lock poisoned by a panic elsewhere still holds a usable value: clear it anyway
                // (skipping would keep a stale invocationId across the reconnect).
                *invocation.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let mut s = DcSession::connect(&endpoint, tls, timeouts).await?;
                s.bind(&dn, &pw).await?;
                *guard = Some(s);
            }
            let Some(s) = guard.as_mut() else {
                unreachable!("session set above")
            };
            s.set_operation_timeout(timeout);
            let result = op(s, spec).await;
            if let Err(e) = &result {
                if matches!(e.disposition(), Disposition::FailOver | Disposition::Retry) {
                    *guard = None;
                }
            }
            result
        })
    }
}

impl Actor for DcActor {
    type Context = Context<Self>;
}

impl Supervised for DcActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        crate::metrics::restarted("dc");
        // Never trust a connection that was in use when the actor failed.
        self.session = Arc::new(Mutex::new(None));
    }
}

/// What a probe learned about the DC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DcProbe {
    pub usn: Option<u64>,
    /// The DC's invocationId (its database identity): it changes when the DC is restored from backup.
    pub invocation_id: Option<String>,
}

/// Health probe: the rootDSE (highestCommittedUSN), with the operation timeout, and the DC's
/// invocationId (read once per connection).
#[derive(Message)]
#[rtype(result = "Result<DcProbe, DirectoryError>")]
pub struct Probe;

impl Handler<Probe> for DcActor {
    type Result = ResponseFuture<Result<DcProbe, DirectoryError>>;

    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        let known = self.invocation_id.clone();
        self.with_session(self.timeouts.operation, move |s, _| {
            Box::pin(async move {
                let dse = s.root_dse().await?;
                let cached = known.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let invocation_id = match (cached, &dse.ds_service_name) {
                    (Some(id), _) => Some(id),
                    (None, Some(dsa)) => {
                        let id = read::invocation_id(s, dsa).await?;
                        *known.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
                        Some(id)
                    }
                    (None, None) => None,
                };
                Ok(DcProbe {
                    usn: dse.highest_committed_usn,
                    invocation_id,
                })
            })
        })
    }
}

/// Changes since `cookie` (DirSync); an empty cookie means a full read with ranged member reads.
#[derive(Message)]
#[rtype(result = "Result<(Vec<DirChange>, Vec<u8>), DirectoryError>")]
pub struct ReadChanges {
    pub cookie: Vec<u8>,
}

impl Handler<ReadChanges> for DcActor {
    type Result = ResponseFuture<Result<(Vec<DirChange>, Vec<u8>), DirectoryError>>;

    fn handle(&mut self, msg: ReadChanges, _: &mut Context<Self>) -> Self::Result {
        self.with_session(self.read_timeout, move |s, spec| {
            Box::pin(async move {
                if msg.cookie.is_empty() {
                    read::full_read(s, &spec).await
                } else {
                    read::changes_since(s, &spec, &msg.cookie).await
                }
            })
        })
    }
}

/// One directory operation for the JumpCloud-authoritative mode, run on the DC's bound session.
/// `Debug` never shows a password: [`DirRequest::SetPassword`]'s is a [`Secret`], and the values of
/// password attributes (`unicodePwd`, `userPassword`, …) in `Add`/`Modify` are redacted.
#[derive(Clone)]
pub enum DirRequest {
    /// [`DcSession::find_entries`]; with `members`, under the DC's read timeout.
    Find {
        base: String,
        scope: FindScope,
        filter: String,
        attrs: Vec<String>,
        members: bool,
    },
    /// Creates an object; attributes without values are left out.
    Add {
        dn: String,
        attrs: Vec<(String, Vec<Vec<u8>>)>,
    },
    /// All changes in one LDAP modify (applied together or not at all).
    Modify {
        dn: String,
        mods: Vec<AttrChange>,
    },
    /// modifyDN: `new_rdn` like `CN=new name`; `new_superior` moves the object under another parent.
    Rename {
        dn: String,
        new_rdn: String,
        new_superior: Option<String>,
    },
    Delete {
        dn: String,
    },
    /// [`DcSession::set_password_and`]: the password reset and `also` in one LDAP modify, so they
    /// apply together or not at all (e.g. a marker recording which password was written).
    SetPassword {
        dn: String,
        password: Secret,
        enforce_history: bool,
        also: Vec<AttrChange>,
    },
    /// [`DcSession::change_members`].
    ChangeMembers {
        dn: String,
        add: Vec<String>,
        remove: Vec<String>,
        chunk: usize,
    },
}

impl DirRequest {
    /// A short name for logs (`find`, `add`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            DirRequest::Find { .. } => "find",
            DirRequest::Add { .. } => "add",
            DirRequest::Modify { .. } => "modify",
            DirRequest::Rename { .. } => "rename",
            DirRequest::Delete { .. } => "delete",
            DirRequest::SetPassword { .. } => "set password",
            DirRequest::ChangeMembers { .. } => "change members",
        }
    }

    /// The DN the request is about (the search base for `Find`).
    pub fn dn(&self) -> &str {
        match self {
            DirRequest::Find { base, .. } => base,
            DirRequest::Add { dn, .. }
            | DirRequest::Modify { dn, .. }
            | DirRequest::Rename { dn, .. }
            | DirRequest::Delete { dn }
            | DirRequest::SetPassword { dn, .. }
            | DirRequest::ChangeMembers { dn, .. } => dn,
        }
    }
}

/// One change of a [`DirRequest::Modify`]. `Delete` with no values deletes the whole attribute;
/// `Replace` with no values clears it.
#[derive(Clone)]
pub enum AttrChange {
    Replace(String, Vec<Vec<u8>>),
    Add(String, Vec<Vec<u8>>),
    Delete(String, Vec<Vec<u8>>),
}

impl AttrChange {
    fn into_mod(self) -> Mod<Vec<u8>> {
        let set = |values: Vec<Vec<u8>>| values.into_iter().collect::<HashSet<_>>();
        match self {
            AttrChange::Replace(name, values) => Mod::Replace(name.into_bytes(), set(values)),
            AttrChange::Add(name, values) => Mod::Add(name.into_bytes(), set(values)),
            AttrChange::Delete(name, values) => Mod::Delete(name.into_bytes(), set(values)),
        }
    }
}

/// Attributes whose values `Debug` never shows.
const SECRET_ATTRIBUTES: [&str; 4] = ["unicodepwd", "userpassword", "cleartextpassword", "dbcspwd"];

/// Attribute values for `Debug`: text when UTF-8, otherwise hex; password attributes redacted.
struct ShowValues<'a>(&'a str, &'a [Vec<u8>]);

impl fmt::Debug for ShowValues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = SECRET_ATTRIBUTES.contains(&self.0.to_ascii_lowercase().as_str());
        let mut list = f.debug_list();
        for v in self.1 {
            if secret {
                list.entry(&format_args!("<redacted>"));
            } else {
                match std::str::from_utf8(v) {
                    Ok(s) => list.entry(&s),
                    Err(_) => list.entry(&format_args!(
                        "0x{}",
                        v.iter().map(|b| format!("{b:02x}")).collect::<String>()
                    )),
                };
            }
        }
        list.finish()
    }
}

impl fmt::Debug for AttrChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name, values) = match self {
            AttrChange::Replace(n, v) => ("Replace", n, v),
            AttrChange::Add(n, v) => ("Add", n, v),
            AttrChange::Delete(n, v) => ("Delete", n, v),
        };
        f.debug_tuple(kind)
            .field(name)
            .field(&ShowValues(name, values))
            .finish()
    }
}

impl fmt::Debug for DirRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirRequest::Find {
                base,
                scope,
                filter,
                attrs,
                members,
            } => f
                .debug_struct("Find")
                .field("base", base)
                .field("scope", scope)
                .field("filter", filter)
                .field("attrs", attrs)
                .field("members", members)
                .finish(),
            DirRequest::Add { dn, attrs } => {
                let mut s = f.debug_struct("Add");
                s.field("dn", dn);
                for (name, values) in attrs {
                    s.field(name, &ShowValues(name, values));
                }
                s.finish()
            }
            DirRequest::Modify { dn, mods } => f
                .debug_struct("Modify")
                .field("dn", dn)
                .field("mods", mods)
                .finish(),
            DirRequest::Rename {
                dn,
                new_rdn,
                new_superior,
            } => f
                .debug_struct("Rename")
                .field("dn", dn)
                .field("new_rdn", new_rdn)
                .field("new_superior", new_superior)
                .finish(),
            DirRequest::Delete { dn } => f.debug_struct("Delete").field("dn", dn).finish(),
            DirRequest::SetPassword {
                dn,
                password,
                enforce_history,
                also,
            } => f
                .debug_struct("SetPassword")
                .field("dn", dn)
                .field("password", password)
                .field("enforce_history", enforce_history)
                .field("also", also)
                .finish(),
            DirRequest::ChangeMembers {
                dn,
                add,
                remove,
                chunk,
            } => f
                .debug_struct("ChangeMembers")
                .field("dn", dn)
                .field("add", &add.len())
                .field("remove", &remove.len())
                .field("chunk", chunk)
                .finish(),
        }
    }
}

/// What a [`DirRequest`] returns: the entries of a `Find`, `Done` for every write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirReply {
    Entries(Vec<AdEntry>),
    Done,
}

/// Runs one [`DirRequest`] on a bound session (what the [`Directory`] message does; usable without
/// an actor, e.g. in tests or one-shot tools).
pub async fn execute(session: &mut DcSession, req: DirRequest) -> Result<DirReply, DirectoryError> {
    match req {
        DirRequest::Find {
            base,
            scope,
            filter,
            attrs,
            members,
        } => {
            let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
            session
                .find_entries(&base, scope, &filter, &attrs, members)
                .await
                .map(DirReply::Entries)
        }
        DirRequest::Add { dn, attrs } => {
            let attrs = attrs
                .into_iter()
                .filter(|(_, values)| !values.is_empty())
                .map(|(name, values)| (name.into_bytes(), values.into_iter().collect()))
                .collect();
            session.add(&dn, attrs).await.map(|()| DirReply::Done)
        }
        DirRequest::Modify { dn, mods } => {
            let mods = mods.into_iter().map(AttrChange::into_mod).collect();
            session.modify(&dn, mods).await.map(|()| DirReply::Done)
        }
        DirRequest::Rename {
            dn,
            new_rdn,
            new_superior,
        } => session
            .rename(&dn, &new_rdn, new_superior.as_deref())
            .await
            .map(|()| DirReply::Done),
        DirRequest::Delete { dn } => session.delete(&dn).await.map(|()| DirReply::Done),
        DirRequest::SetPassword {
            dn,
            password,
            enforce_history,
            also,
        } => {
            let also: Vec<_> = also.into_iter().map(AttrChange::into_mod).collect();
            session
                .set_password_and(&dn, &password, enforce_history, &also)
                .await
                .map(|()| DirReply::Done)
        }
        DirRequest::ChangeMembers {
            dn,
            add,
            remove,
            chunk,
        } => session
            .change_members(&dn, &add, &remove, chunk)
            .await
            .map(|()| DirReply::Done),
    }
}

/// A [`DirRequest`] for this DC, on its bound session. Timeout per LDAP operation: the DC's
/// `timeouts.operation`, except `Find` with `members` (many ranged reads), which uses `read_timeout`.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<DirReply, DirectoryError>")]
pub struct Directory(pub DirRequest);

/// The least time an AD write may take before it counts as failed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

impl Handler<Directory> for DcActor {
    type Result = ResponseFuture<Result<DirReply, DirectoryError>>;

    fn handle(&mut self, Directory(req): Directory, _: &mut Context<Self>) -> Self::Result {
        // Writes get longer than probes: an add hashes a password and runs the DC's password
        // script, which a loaded DC takes seconds for; a write that times out leaves its outcome in
        // doubt (the caller then waits for this DC), so a false alarm is costly. A hung DC is still
        // found by the probe timeout.
        let timeout = match &req {
            DirRequest::Find { members: true, .. } => self.read_timeout,
            DirRequest::Find { .. } => self.timeouts.operation,
            _ => self.timeouts.operation.max(WRITE_TIMEOUT),
        };
        self.with_session(timeout, move |s, _| Box::pin(execute(s, req)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_requests_never_shows_a_password() {
        let set = DirRequest::SetPassword {
            dn: "CN=u,DC=x".into(),
            password: Secret::new("Hunter2-Pass!"),
            enforce_history: true,
            also: vec![AttrChange::Replace(
                "unicodePwd".into(),
                vec![b"Hunter2-Pass!".to_vec()],
            )],
        };
        let add = DirRequest::Add {
            dn: "CN=u,DC=x".into(),
            attrs: vec![
                ("sAMAccountName".into(), vec![b"u".to_vec()]),
                ("unicodePwd".into(), vec![b"\"Hunter2-Pass!\"".to_vec()]),
                ("objectSid".into(), vec![vec![1, 0xff]]),
            ],
        };
        let modify = DirRequest::Modify {
            dn: "CN=u,DC=x".into(),
            mods: vec![
                AttrChange::Replace("UnicodePwd".into(), vec![b"Hunter2-Pass!".to_vec()]),
                AttrChange::Replace("userAccountControl".into(), vec![b"512".to_vec()]),
                AttrChange::Delete("description".into(), vec![]),
            ],
        };
        for req in [&set, &add, &modify] {
            let shown = format!("{req:?}");
            assert!(!shown.contains("Hunter2"), "{shown}");
            assert!(shown.contains("CN=u,DC=x"), "{shown}");
        }
        let shown = format!("{add:?}");
        assert!(
            shown.contains("\"u\"") && shown.contains("0x01ff"),
            "{shown}"
        );
        assert!(format!("{modify:?}").contains("\"512\""));
        assert!(format!("{:?}", Directory(set.clone())).contains("<redacted>"));
        assert_eq!(set.kind(), "set password");
        assert_eq!(modify.dn(), "CN=u,DC=x");
    }

    #[test]
    fn attribute_changes_become_ldap_mods() {
        let Mod::Delete(name, values) = AttrChange::Delete("mail".into(), vec![]).into_mod() else {
            panic!("a delete")
        };
        assert_eq!((name.as_slice(), values.len()), (&b"mail"[..], 0));
        let Mod::Replace(_, values) =
            AttrChange::Replace("otherMailbox".into(), vec![b"a".to_vec(), b"b".to_vec()])
                .into_mod()
        else {
            panic!("a replace")
        };
        assert_eq!(values.len(), 2);
    }
}

//! The DC connection actor: one per domain controller. Owns one LDAP connection (verified TLS,
//! bound as the service account), reconnects on demand, answers reads. Decides nothing: the domain
//! actor chooses which DC to ask and when to fail over.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rustls::ClientConfig;
use tokio::sync::Mutex;

use crate::directory::read::{self, ReadSpec};
use crate::directory::{DcEndpoint, DcSession, DirectoryError, Timeouts};
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
                if let Ok(mut cached) = invocation.lock() {
                    *cached = None;
                }
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
                let cached = known.lock().map(|g| g.clone()).unwrap_or(None);
                let invocation_id = match (cached, &dse.ds_service_name) {
                    (Some(id), _) => Some(id),
                    (None, Some(dsa)) => {
                        let id = read::invocation_id(s, dsa).await?;
                        if let Ok(mut g) = known.lock() {
                            *g = Some(id.clone());
                        }
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

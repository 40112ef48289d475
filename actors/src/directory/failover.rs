//! One domain's DCs behind one handle for the JumpCloud-authoritative mode: [`DomainDirectory`]
//! sends each [`DirRequest`] to the current DC (the preferred one, first in the configured order, as
//! long as it works), fails over to the next on a DC-side failure, and fails back to the preferred DC
//! once it answers a probe again. Same policy as the domain actor's reads (`domain.rs`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;

use super::DirectoryError;
use crate::dc::{DcActor, DirReply, DirRequest, Directory, Probe};
use crate::disposition::{Classified, Disposition};

/// How often a domain running on a fallback DC checks whether the preferred one is back.
pub const FAILBACK_EVERY: Duration = Duration::from_secs(5);
/// A fail-back probe (rootDSE read) that takes longer leaves the domain on its fallback DC.
pub const FAILBACK_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The DCs of one domain, in configured order (the first is preferred). Cheap to clone (one `Arc`).
///
/// **Writes and failover:** a request that timed out (or whose connection broke) on one DC is sent
/// again to the next, but the first DC may already have applied it before it stopped answering. The
/// second attempt then meets that state: an `Add` gets `entryAlreadyExists` (68), a member change
/// meets values already in effect (tolerated), a rename may find the old DN gone (`noSuchObject`).
/// Callers re-read the object's state after such an error instead of treating it as a conflict.
#[derive(Clone)]
pub struct DomainDirectory {
    inner: Arc<Inner>,
}

struct Inner {
    domain: String,
    dcs: Vec<(String, Addr<DcActor>)>,
    request_timeout: Duration,
    /// Index into `dcs` of the DC requests go to.
    current: AtomicUsize,
    /// When the last fail-back probe started.
    last_probe: Mutex<Instant>,
    /// A fail-back probe is running.
    probing: AtomicBool,
}

impl DomainDirectory {
    /// `request_timeout` bounds one request on one DC, from sending to answer (a hung DC, e.g.
    /// SIGSTOPped, answers nothing; the DC actor's own per-operation timeouts catch it too, later).
    /// Set it above the longest request expected (a `Find` with `members` of a large OU).
    pub fn new(
        domain: String,
        dcs: Vec<(String, Addr<DcActor>)>,
        request_timeout: Duration,
    ) -> Self {
        DomainDirectory {
            inner: Arc::new(Inner {
                domain,
                dcs,
                request_timeout,
                current: AtomicUsize::new(0),
                last_probe: Mutex::new(Instant::now()),
                probing: AtomicBool::new(false),
            }),
        }
    }

    pub fn domain(&self) -> &str {
        &self.inner.domain
    }

    /// Whether requests go to the preferred (first) DC, whose view is the authoritative one for
    /// the domain's writes (a fallback DC may not have them yet).
    pub fn on_preferred(&self) -> bool {
        self.inner.current.load(Ordering::SeqCst) == 0
    }

    /// The URL of the DC requests currently go to (empty when the domain has no DC).
    pub fn current_dc(&self) -> String {
        let i = self.inner.current.load(Ordering::SeqCst);
        self.inner
            .dcs
            .get(i)
            .map(|(url, _)| url.clone())
            .unwrap_or_default()
    }

    /// Runs `req` on the current DC. On a failure with disposition `FailOver` or `Retry` (DC down,
    /// connection lost, busy, timeout), an unavailable DC actor, or no answer within
    /// `request_timeout`, moves to the next DC and sends the same request again: at most one round
    /// over the domain's DCs, then the last error is returned. `BadInput` and `Fatal` errors are
    /// returned at once (another DC would answer the same). See the type's note on retried writes.
    pub async fn run(&self, req: DirRequest) -> Result<DirReply, DirectoryError> {
        let span = tracing::info_span!(
            "ldap.request",
            otel.name = %format!("ldap {}", req.kind()),
            otel.kind = "client",
            domain = %self.inner.domain,
            ldap.operation = req.kind(),
            ldap.dn = %req.dn(),
            server.address = tracing::field::Empty,
        );
        tracing::Instrument::instrument(self.run_on_dcs(req, span.clone()), span).await
    }

    async fn run_on_dcs(
        &self,
        req: DirRequest,
        span: tracing::Span,
    ) -> Result<DirReply, DirectoryError> {
        let inner = &self.inner;
        let count = inner.dcs.len();
        if count == 0 {
            return Err(DirectoryError::Unreachable {
                url: inner.domain.clone(),
                detail: "the domain has no DC configured".into(),
            });
        }
        self.maybe_fail_back();
        let start = inner.current.load(Ordering::SeqCst) % count;
        let mut last = None;
        for step in 0..count {
            let index = (start + step) % count;
            let (url, dc) = &inner.dcs[index];
            span.record("server.address", url.as_str());
            let sent = tokio::time::timeout(inner.request_timeout, dc.send(Directory(req.clone())));
            let error = match sent.await {
                Ok(Ok(Ok(reply))) => {
                    crate::health::dc_up(&inner.domain, url);
                    crate::health::dc_in_use(&inner.domain, url);
                    return Ok(reply);
                }
                Ok(Ok(Err(e))) => match e.disposition() {
                    Disposition::FailOver | Disposition::Retry | Disposition::Throttled { .. } => e,
                    Disposition::BadInput | Disposition::Fatal => return Err(e),
                },
                Ok(Err(mailbox)) => DirectoryError::ConnectionLost {
                    url: url.clone(),
                    operation: "directory request",
                    detail: format!("DC actor unavailable: {mailbox}"),
                },
                Err(_) => DirectoryError::Timeout {
                    url: url.clone(),
                    operation: "directory request",
                },
            };
            if matches!(
                error.disposition(),
                Disposition::FailOver | Disposition::Retry
            ) {
                crate::health::dc_down(&inner.domain, url, &error.to_string());
            }
            let next = (index + 1) % count;
            // An add whose outcome is unknown (sent, then no answer) may have been applied: sending it
            // to another DC could create a second object that replication later turns into a
            // conflict copy. The DC is still left for the next one; the caller retries later and
            // treats the object as in doubt until the DC that may hold it answers again.
            let outcome_unknown = matches!(req, DirRequest::Add { .. })
                && matches!(
                    error,
                    DirectoryError::Timeout { .. } | DirectoryError::ConnectionLost { .. }
                );
            // Only the first of several concurrent failures on this DC moves the domain on.
            let moved = inner
                .current
                .compare_exchange(index, next, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if count > 1 {
                if moved {
                    crate::metrics::failover(&inner.domain);
                    tracing::warn!(domain = %inner.domain, from = %url, to = %inner.dcs[next].0, request = req.kind(), reason = %error, "DC failed; failing over");
                }
            } else {
                tracing::warn!(domain = %inner.domain, dc = %url, request = req.kind(), reason = %error, "DC failed; no other DC to try");
            }
            if outcome_unknown {
                return Err(error);
            }
            last = Some(error);
        }
        Err(last.unwrap_or_else(|| DirectoryError::Unreachable {
            url: inner.domain.clone(),
            detail: "no DC tried".into(),
        }))
    }

    /// While on a fallback DC, at most every [`FAILBACK_EVERY`]: probes the preferred DC in the
    /// background and makes it current again when it answers. Requests never wait for the probe.
    /// Every request calls it; a caller that may go a while without requests (waiting for the
    /// preferred DC to come back) calls it too.
    pub fn maybe_fail_back(&self) {
        let inner = &self.inner;
        if inner.current.load(Ordering::SeqCst) == 0 || inner.dcs.len() < 2 {
            return;
        }
        {
            // Poisoned (a panic elsewhere): the Instant is still valid; returning here would stop
            // failing back for good.
            let mut last = inner.last_probe.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < FAILBACK_EVERY {
                return;
            }
            *last = Instant::now();
        }
        if inner.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            inner.probing.store(false, Ordering::SeqCst);
            return;
        };
        let inner = Arc::clone(inner);
        runtime.spawn(async move {
            let (url, dc) = &inner.dcs[0];
            let answered = matches!(
                tokio::time::timeout(FAILBACK_PROBE_TIMEOUT, dc.send(Probe)).await,
                Ok(Ok(Ok(_)))
            );
            if answered {
                crate::health::dc_up(&inner.domain, url);
                let from = inner.current.swap(0, Ordering::SeqCst);
                if from != 0 {
                    let from = inner.dcs.get(from).map(|(u, _)| u.as_str()).unwrap_or("");
                    tracing::info!(domain = %inner.domain, from = %from, to = %url, "preferred DC is back; failing back");
                }
            }
            inner.probing.store(false, Ordering::SeqCst);
        });
    }
}

impl std::fmt::Debug for DomainDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainDirectory")
            .field("domain", &self.inner.domain)
            .field(
                "dcs",
                &self.inner.dcs.iter().map(|(u, _)| u).collect::<Vec<_>>(),
            )
            .field("current", &self.current_dc())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc as StdArc;

    use actix::Actor;

    use super::*;
    use crate::directory::read::ReadSpec;
    use crate::directory::{DcEndpoint, FindScope, Timeouts};
    use crate::secret::Secret;

    fn unreachable_dc(port: u16) -> (String, Addr<DcActor>) {
        let url = format!("ldaps://127.0.0.1:{port}");
        let endpoint = DcEndpoint::parse(&url).unwrap();
        let tls = crate::trust::client_config(None).unwrap();
        let actor = DcActor::new(
            endpoint,
            tls,
            "CN=svc".into(),
            Secret::new("x"),
            Timeouts {
                connect: Duration::from_millis(500),
                operation: Duration::from_millis(500),
            },
            Duration::from_secs(1),
            StdArc::new(ReadSpec::new("DC=x")),
        );
        (url, actor.start())
    }

    fn find() -> DirRequest {
        DirRequest::Find {
            base: "DC=x".into(),
            scope: FindScope::Base,
            filter: "(objectClass=*)".into(),
            attrs: vec![],
            members: false,
        }
    }

    #[actix::test]
    async fn every_dc_down_is_one_round_then_the_last_error() {
        // Nothing listens on port 1 or 2 of the loopback address: connection refused at once.
        let dir = DomainDirectory::new(
            "alpha".into(),
            vec![unreachable_dc(1), unreachable_dc(2)],
            Duration::from_secs(5),
        );
        assert_eq!(dir.current_dc(), "ldaps://127.0.0.1:1");
        let err = dir.run(find()).await.unwrap_err();
        assert_eq!(err.disposition(), Disposition::FailOver, "{err}");
        assert!(
            err.to_string().contains("127.0.0.1:2"),
            "the last DC's error: {err}"
        );
        // Both failed: the round ends back on the first DC, which the next request tries first.
        assert_eq!(dir.current_dc(), "ldaps://127.0.0.1:1");
        let none = DomainDirectory::new("empty".into(), vec![], Duration::from_secs(1));
        assert!(none.run(find()).await.is_err());
        assert_eq!(none.current_dc(), "");
    }
}

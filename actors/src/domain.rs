//! The domain actor: one per AD domain. Picks the DC (configured order; fails over on error or
//! timeout; fails back when the preferred DC is healthy again), detects changes with a cheap probe
//! (highestCommittedUSN on the rootDSE, per DC) and reads them with DirSync, whose cookie is portable
//! between the domain's DCs, so a failover needs no full re-read. Every batch goes to the
//! coordinator; the cookie advances only when the coordinator has committed the batch.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::dc::{DcActor, DcProbe, Probe, ReadChanges};
use crate::directory::DirectoryError;
use crate::health::Direction;
use crate::model::DcUsn;
use crate::model::DirChange;

/// A batch of changes from one domain, to be committed with its watermark move.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct DomainBatch {
    pub domain: String,
    /// The committed cookie this batch continues from.
    pub from: Vec<u8>,
    /// A full read (first start, or the DC rejected the cookie): it replaces the domain's snapshot.
    pub full: bool,
    pub to: Vec<u8>,
    pub dc_url: String,
    pub usn: Option<u64>,
    /// The DC's invocationId when the changes were read (kept with the USN in the watermark).
    pub invocation_id: Option<String>,
    pub changes: Vec<DirChange>,
    /// The read's span (LDAP search, then the plan): each planned change's trace links to it.
    pub span: tracing::Span,
}

/// Tells the coordinator which DC a domain is using (status, logs).
#[derive(Clone, Debug)]
pub struct DomainTiming {
    pub poll: Duration,
    /// A change read (DirSync round, or a full read) that takes longer fails over.
    pub read_timeout: Duration,
    /// How often a domain running on a fallback DC checks whether the preferred one is back.
    pub failback_every: Duration,
    /// A probe that takes longer marks the DC as hung.
    pub probe_timeout: Duration,
}

impl Default for DomainTiming {
    fn default() -> Self {
        DomainTiming {
            poll: Duration::from_millis(250),
            read_timeout: Duration::from_secs(120),
            failback_every: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(2),
        }
    }
}

pub struct DomainActor {
    name: String,
    dcs: Vec<(String, Addr<DcActor>)>,
    coordinator: Recipient<DomainBatch>,
    cookie: Vec<u8>,
    /// Per DC URL, the invocationId and USN of the committed watermark.
    known: BTreeMap<String, DcUsn>,
    timing: DomainTiming,
}

impl DomainActor {
    pub fn new(
        name: String,
        dcs: Vec<(String, Addr<DcActor>)>,
        coordinator: Recipient<DomainBatch>,
        cookie: Vec<u8>,
        known: BTreeMap<String, DcUsn>,
        timing: DomainTiming,
    ) -> Self {
        DomainActor {
            name,
            dcs,
            coordinator,
            cookie,
            known,
            timing,
        }
    }
}

impl Actor for DomainActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let run = poll_loop(
            self.name.clone(),
            self.dcs.clone(),
            self.coordinator.clone(),
            self.cookie.clone(),
            self.known.clone(),
            self.timing.clone(),
        );
        ctx.spawn(run.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }
}

impl Supervised for DomainActor {}

/// Pause between trying one DC and the next, so a domain with every DC down does not spin.
const FAILOVER_PAUSE: Duration = Duration::from_millis(100);

async fn probe(dc: &Addr<DcActor>, timeout: Duration) -> Result<DcProbe, String> {
    match tokio::time::timeout(timeout, dc.send(Probe)).await {
        Ok(Ok(Ok(p))) => Ok(p),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(e)) => Err(format!("DC actor unavailable: {e}")),
        Err(_) => Err(format!("no rootDSE answer within {timeout:?} (hung?)")),
    }
}

async fn poll_loop(
    domain: String,
    dcs: Vec<(String, Addr<DcActor>)>,
    coordinator: Recipient<DomainBatch>,
    mut cookie: Vec<u8>,
    known: BTreeMap<String, DcUsn>,
    timing: DomainTiming,
) {
    // Config validation refuses an empty `dcs`; without this a domain built another way would panic
    // on `dcs[current]` below.
    if dcs.is_empty() {
        tracing::error!(domain, "the domain has no DC configured; it is not read");
        return;
    }
    let mut current = 0usize;
    // Per DC URL: the invocationId last seen (from the store at start). A different one means the DC
    // was restored or rebuilt: its USNs start over, so the domain is read in full (a reconcile, not a skip).
    let mut invocations: HashMap<String, String> = known
        .into_iter()
        .filter(|(_, d)| !d.invocation_id.is_empty())
        .map(|(url, d)| (url, d.invocation_id))
        .collect();
    // Per DC: the highestCommittedUSN up to which changes were read (USNs are per DC).
    let mut seen: HashMap<usize, u64> = HashMap::new();
    let mut last_failback = Instant::now();
    let mut pending_read = true;
    let mut full_read_next = cookie.is_empty();
    loop {
        // Fail back to the preferred DC when it answers again.
        if current != 0 && last_failback.elapsed() >= timing.failback_every {
            last_failback = Instant::now();
            if probe(&dcs[0].1, timing.probe_timeout).await.is_ok() {
                crate::health::dc_up(&domain, &dcs[0].0);
                tracing::info!(domain, dc = %dcs[0].0, "preferred DC is back; failing back");
                current = 0;
                pending_read = true;
            }
        }
        let (url, dc) = &dcs[current];
        let (usn, invocation_id) = match probe(dc, timing.probe_timeout).await {
            Ok(p) => {
                crate::health::dc_up(&domain, url);
                crate::health::dc_in_use(&domain, url);
                if let Some(now) = &p.invocation_id {
                    if invocations.get(url).is_some_and(|before| before != now) {
                        tracing::warn!(domain, dc = %url, "the DC's invocationId changed (restored or rebuilt): reading the domain in full");
                        full_read_next = true;
                        seen.remove(&current);
                    }
                    invocations.insert(url.clone(), now.clone());
                }
                (p.usn, p.invocation_id)
            }
            Err(e) => {
                fail_over(&domain, &dcs, &mut current, &e);
                pending_read = true;
                tokio::time::sleep(FAILOVER_PAUSE).await;
                continue;
            }
        };
        let changed = match (usn, seen.get(&current)) {
            (Some(now), Some(before)) => now != *before,
            _ => true,
        };
        if !changed && !pending_read {
            // Nothing new on the DC: the domain is as current as a read would make it.
            crate::health::synced(&domain, Direction::AdToJumpcloud);
        }
        if changed || pending_read {
            let read_from = if full_read_next {
                Vec::new()
            } else {
                cookie.clone()
            };
            // One root span per read that may carry changes (never one span for the actor's life).
            let batch_span = tracing::info_span!(
                parent: None,
                "domain.batch",
                domain = %domain,
                dc = %url,
                full = read_from.is_empty(),
            );
            let search_span = tracing::info_span!(
                parent: &batch_span,
                "ldap.search",
                otel.kind = "client",
                server.address = %url,
                domain = %domain,
                ldap.control = if read_from.is_empty() { "dirsync (full)" } else { "dirsync" },
                changes = tracing::field::Empty,
            );
            let read_started = Instant::now();
            let read = tracing::Instrument::instrument(
                tokio::time::timeout(
                    timing.read_timeout,
                    dc.send(ReadChanges {
                        cookie: read_from.clone(),
                    }),
                ),
                search_span.clone(),
            )
            .await;
            crate::metrics::get().ldap_duration.record(
                read_started.elapsed().as_secs_f64(),
                &[opentelemetry::KeyValue::new("dc", url.clone())],
            );
            if let Ok(Ok(Ok((changes, _)))) = &read {
                search_span.record("changes", changes.len());
            }
            drop(search_span);
            match read {
                Ok(Ok(Ok((changes, next)))) => {
                    if !changes.is_empty() || next != cookie {
                        let batch = DomainBatch {
                            domain: domain.clone(),
                            from: cookie.clone(),
                            full: read_from.is_empty(),
                            to: next.clone(),
                            dc_url: url.clone(),
                            usn,
                            invocation_id: invocation_id.clone(),
                            changes,
                            span: batch_span.clone(),
                        };
                        let queued = crate::metrics::queued("import_coordinator");
                        let sent = coordinator.send(batch).await;
                        drop(queued);
                        match sent {
                            Ok(Ok(())) => {
                                crate::health::synced(&domain, Direction::AdToJumpcloud);
                                cookie = next;
                                pending_read = false;
                                full_read_next = false;
                                if let Some(u) = usn {
                                    seen.insert(current, u);
                                }
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(domain, error = %e, "batch not committed; will read again");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Err(e) => {
                                tracing::error!(domain, error = %e, "coordinator unavailable; domain actor stops");
                                return;
                            }
                        }
                    } else {
                        crate::health::synced(&domain, Direction::AdToJumpcloud);
                        pending_read = false;
                        if let Some(u) = usn {
                            seen.insert(current, u);
                        }
                    }
                }
                Ok(Ok(Err(DirectoryError::Refused { rc: 12, .. })))
                    if !cookie.is_empty() && !full_read_next =>
                {
                    // unavailableCriticalExtension on a non-empty cookie: the DC cannot use our cookie
                    // (corrupt, from another domain, too old). A controlled full re-read, not an outage.
                    tracing::warn!(domain, dc = %url, "DirSync cookie rejected; reading the domain in full");
                    full_read_next = true;
                    continue;
                }
                Ok(Ok(Err(e))) => {
                    fail_over(&domain, &dcs, &mut current, &e.to_string());
                    pending_read = true;
                    tokio::time::sleep(FAILOVER_PAUSE).await;
                    continue;
                }
                Ok(Err(e)) => {
                    fail_over(&domain, &dcs, &mut current, &e.to_string());
                    pending_read = true;
                    tokio::time::sleep(FAILOVER_PAUSE).await;
                    continue;
                }
                Err(_) => {
                    fail_over(&domain, &dcs, &mut current, "change read timed out");
                    pending_read = true;
                    tokio::time::sleep(FAILOVER_PAUSE).await;
                    continue;
                }
            }
        }
        tokio::time::sleep(timing.poll).await;
    }
}

fn fail_over(domain: &str, dcs: &[(String, Addr<DcActor>)], current: &mut usize, why: &str) {
    let from = &dcs[*current].0;
    crate::health::dc_down(domain, from, why);
    if dcs.len() > 1 {
        crate::metrics::failover(domain);
    }
    *current = (*current + 1) % dcs.len();
    if dcs.len() > 1 {
        tracing::warn!(domain, from = %from, to = %dcs[*current].0, reason = why, "DC failed; failing over");
    } else {
        tracing::warn!(domain, dc = %from, reason = why, "DC failed; retrying");
    }
}

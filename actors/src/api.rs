//! The API actor: the only path to JumpCloud. It drains the outbox in order (the executor holds the
//! one rate limiter and the retry policy) whenever the coordinator commits new operations, and sets
//! confirmed passwords once the user's link exists.

use std::collections::VecDeque;

use actix::prelude::*;
use tokio::sync::watch;

use crate::disposition::{Classified, Disposition};
use crate::executor::{DrainReport, Executor};
use crate::secret::Secret;

/// New operations were committed: drain the outbox.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick;

/// A password AD has committed; `on_done` hears whether JumpCloud took it (true) or it was dropped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPassword {
    pub target: crate::executor::PasswordTarget,
    pub password: Secret,
    pub on_done: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// Sent to the coordinator after each drain (quarantines make it re-read what is really applied).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Drained(pub DrainReport);

pub struct ApiActor {
    executor: Executor,
    draining: bool,
    again: bool,
    passwords: VecDeque<SetPassword>,
    report_to: Option<Recipient<Drained>>,
    /// Kept for its receiver side; shutdown of the drain happens when the actor stops.
    shutdown: watch::Sender<bool>,
}

impl ApiActor {
    pub fn new(executor: Executor, report_to: Option<Recipient<Drained>>) -> Self {
        let (shutdown, _) = watch::channel(false);
        ApiActor {
            executor,
            draining: false,
            again: false,
            passwords: VecDeque::new(),
            report_to,
            shutdown,
        }
    }

    fn start_drain(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            self.again = true;
            return;
        }
        self.draining = true;
        self.again = false;
        let executor = self.executor.clone();
        let stop = self.shutdown.subscribe();
        let passwords: Vec<SetPassword> = self.passwords.drain(..).collect();
        let work = async move {
            let report = executor.drain(&stop).await;
            // Passwords after the drain: a new user's create has run by now.
            let mut retry_later = Vec::new();
            for job in passwords {
                match executor.forward_password(&job.target, &job.password).await {
                    Ok(sent) => {
                        if sent == crate::executor::PasswordSent::Set {
                            tracing::info!(target = %job.target, "password set in JumpCloud");
                            crate::metrics::password(
                                crate::health::Direction::AdToJumpcloud,
                                "forwarded",
                            );
                        }
                        if let Some(tx) = job.on_done {
                            let _ = tx.send(true);
                        }
                    }
                    Err(e)
                        if e.disposition() == Disposition::Retry
                            || matches!(e, crate::executor::ExecError::MissingLink { .. }) =>
                    {
                        tracing::warn!(target = %job.target, error = %e, "password not set yet; will retry");
                        retry_later.push(job);
                    }
                    Err(e) => {
                        crate::metrics::password(
                            crate::health::Direction::AdToJumpcloud,
                            "rejected",
                        );
                        tracing::error!(target = %job.target, error = %e, "password not set in JumpCloud");
                        if let Some(tx) = job.on_done {
                            let _ = tx.send(false);
                        }
                    }
                }
            }
            (report, retry_later)
        };
        ctx.spawn(work.into_actor(self).map(|(report, retry_later), act, ctx| {
            act.draining = false;
            let had_retries = !retry_later.is_empty();
            act.passwords.extend(retry_later);
            match report {
                Ok(report) => {
                    if !report.quarantined.is_empty() {
                        for (seq, error) in &report.quarantined {
                            tracing::error!(seq, error, "operation quarantined");
                        }
                    }
                    if let Some(r) = &act.report_to {
                        r.do_send(Drained(report));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "JumpCloud delivery stopped; operations stay queued");
                    // Try again later without waiting for a new change: temporary trouble that
                    // outlasted the retry budget soon, a refused key or role (fixed in JumpCloud's
                    // console, not here) every 30 s: one refused request, no storm.
                    let again_in = match e.disposition() {
                        Disposition::Fatal => std::time::Duration::from_secs(30),
                        _ => std::time::Duration::from_secs(5),
                    };
                    ctx.run_later(again_in, |act, ctx| act.start_drain(ctx));
                }
            }
            if act.again {
                act.start_drain(ctx);
            } else if had_retries {
                ctx.run_later(std::time::Duration::from_secs(2), |act, ctx| act.start_drain(ctx));
            }
        }));
    }
}

impl Actor for ApiActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Replay whatever a previous run left in the outbox.
        self.start_drain(ctx);
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        let _ = self.shutdown.send(true);
        Running::Stop
    }
}

impl Supervised for ApiActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        crate::metrics::restarted("api");
        self.draining = false;
    }
}

impl Handler<Kick> for ApiActor {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Context<Self>) {
        self.start_drain(ctx);
    }
}

impl Handler<SetPassword> for ApiActor {
    type Result = ();

    fn handle(&mut self, msg: SetPassword, ctx: &mut Context<Self>) {
        self.passwords.push_back(msg);
        self.start_drain(ctx);
    }
}

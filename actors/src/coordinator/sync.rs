//! The sync coordinator: the `jumpcloud-authoritative` mode's one coordinator actor. It runs one
//! [`ToAdEngine`] per domain (each is one JumpCloud AD instance) and restarts them, rebuilt from the
//! store and both directories, when it is restarted by its supervisor.

use actix::prelude::*;
use tokio::sync::watch;

use crate::coordinator::to_ad::{ToAdDomain, ToAdEngine, ToAdSettings};
use crate::executor::Executor;
use crate::store::Store;

pub struct SyncCoordinator {
    domains: Vec<ToAdDomain>,
    settings: ToAdSettings,
    api: Executor,
    store: Store,
    stop: watch::Sender<bool>,
}

impl SyncCoordinator {
    pub fn new(
        domains: Vec<ToAdDomain>,
        settings: ToAdSettings,
        api: Executor,
        store: Store,
    ) -> Self {
        SyncCoordinator {
            domains,
            settings,
            api,
            store,
            stop: watch::channel(false).0,
        }
    }
}

impl Actor for SyncCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (tx, rx) = watch::channel(false);
        self.stop = tx;
        for d in &self.domains {
            let name = d.name.clone();
            match ToAdEngine::new(
                d.clone(),
                self.settings.clone(),
                self.api.clone(),
                self.store.clone(),
            ) {
                Ok(engine) => {
                    tracing::info!(domain = %name, ad_instance = %d.ad_instance_id, "JumpCloud → AD sync started");
                    ctx.spawn(engine.run(rx.clone()).into_actor(self));
                }
                Err(e) => {
                    tracing::error!(domain = %name, error = %e, "cannot start JumpCloud → AD sync; restarting the coordinator");
                    ctx.stop();
                    return;
                }
            }
        }
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        let _ = self.stop.send(true);
        Running::Stop
    }
}

impl Supervised for SyncCoordinator {
    fn restarting(&mut self, _: &mut Context<Self>) {
        crate::metrics::restarted("sync_coordinator");
        let _ = self.stop.send(true);
    }
}

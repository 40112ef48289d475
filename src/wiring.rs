//! Turns the configuration into the engine's settings and starts the actors for the configured mode.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use forestsync_actors::api::ApiActor;
use forestsync_actors::cloud::{CloudClient, CloudEndpoint};
use forestsync_actors::coordinator::import::{
    Captured, DomainSettings, ImportCoordinator, ImportEngine, ImportSettings,
};
use forestsync_actors::dc::DcActor;
use forestsync_actors::directory::read::ReadSpec;
use forestsync_actors::directory::{DcEndpoint, Timeouts};
use forestsync_actors::domain::{DomainActor, DomainTiming};
use forestsync_actors::executor::{Executor, ExecutorConfig, RateLimits};
use forestsync_actors::model::RemoveAction;
use forestsync_actors::password::{PasswordInbox, PendingPasswords};
use forestsync_actors::plan::{Collision, Existing, MappingRules, UsernameFrom};
use forestsync_actors::store::Store;
use forestsync_actors::trust;

use crate::config::{
    Config, DomainConfig, LeaveScopeAction, Mode, UsernameCollision, UsernameSource,
};

#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("mode {0} is not implemented yet; this build runs ad-authoritative only")]
    ModeNotImplemented(Mode),
    #[error("{0}")]
    Setup(String),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> WiringError + '_ {
    move |e| WiringError::Setup(format!("{what}: {e}"))
}

pub fn mapping_rules(d: &DomainConfig) -> MappingRules {
    MappingRules {
        username: match d.username_source {
            UsernameSource::SamAccountName => UsernameFrom::SamAccountName,
            UsernameSource::UserPrincipalName => UsernameFrom::UserPrincipalName,
        },
        firstname: d.attributes.firstname.clone(),
        lastname: d.attributes.lastname.clone(),
        email: d.attributes.email.clone(),
        extra: d.attributes.extra.clone(),
    }
}

pub fn import_settings(config: &Config) -> ImportSettings {
    ImportSettings {
        domains: config
            .domains
            .iter()
            .map(|d| DomainSettings {
                name: d.name.clone(),
                root_group_dn: d.root_group_dn.clone(),
                rules: mapping_rules(d),
                leave_action: match d.on_leave_scope {
                    LeaveScopeAction::Delete => RemoveAction::Delete,
                    LeaveScopeAction::Suspend => RemoveAction::Suspend,
                    LeaveScopeAction::Unbind => RemoveAction::Unbind,
                },
                collision: match d.username_collision {
                    UsernameCollision::ReportAndSkip => Collision::ReportAndSkip,
                    UsernameCollision::TakeOver => Collision::TakeOver,
                },
            })
            .collect(),
        max_removals: config.safety.max_removals,
        max_removal_percent: config.safety.max_removal_percent,
        approve_file: Some(config.state_dir.join("approve-removals")),
    }
}

pub fn read_spec(d: &DomainConfig) -> ReadSpec {
    let mut spec = ReadSpec::new(d.base_dn.clone());
    spec.extra_attrs = mapping_rules(d).ad_attributes();
    spec
}

/// DC timeouts: short enough that a dead or hung DC is left within a few seconds.
pub const DC_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    operation: Duration::from_secs(2),
};

/// Per-operation timeout of change reads (one full DirSync of a large domain is a single long search).
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

pub fn cloud_client(config: &Config) -> Result<CloudClient, WiringError> {
    let jc = &config.jumpcloud;
    let tls = trust::client_config(jc.ca_file.as_deref()).map_err(setup("JumpCloud CA"))?;
    CloudClient::new(
        CloudEndpoint {
            base_url: jc.base_url.clone(),
            api_key: jc.api_key.clone(),
            org_id: jc.org_id.clone(),
            timeout: jc.timeout,
        },
        tls,
    )
    .map_err(setup("JumpCloud client"))
}

pub fn executor_config(config: &Config) -> ExecutorConfig {
    let rate = RateLimits {
        per_minute: std::num::NonZeroU32::new(config.jumpcloud.rate_limit_per_minute)
            .unwrap_or(RateLimits::default().per_minute),
        burst: std::num::NonZeroU32::new(config.jumpcloud.burst)
            .unwrap_or(RateLimits::default().burst),
        ..RateLimits::default()
    };
    ExecutorConfig {
        rate,
        ..ExecutorConfig::default()
    }
}

/// Starts every actor of the ad-authoritative mode; returns once they run (the caller waits for a signal).
pub async fn start(config: &Config) -> Result<(), WiringError> {
    if config.mode != Mode::AdAuthoritative {
        return Err(WiringError::ModeNotImplemented(config.mode));
    }
    let store = Store::open(&config.state_dir).map_err(setup("state store"))?;
    let executor = Executor::new(
        cloud_client(config)?,
        store.clone(),
        executor_config(config),
    );
    let existing: Vec<Existing> = executor
        .list_users()
        .await
        .map_err(setup("reading JumpCloud users"))?
        .into_iter()
        .map(|u| Existing {
            id: u.id,
            name: u.username,
            anchor_marker: u.anchor,
        })
        .collect();
    tracing::info!(users = existing.len(), "JumpCloud users read");
    let engine = ImportEngine::load(import_settings(config), store, existing)
        .map_err(setup("loading state"))?;
    let cookies: Vec<_> = config
        .domains
        .iter()
        .map(|d| (engine.cookie(&d.name), engine.dc_usns(&d.name)))
        .collect();

    let passwords = &config.passwords;
    let mut inbox =
        PasswordInbox::bind(&passwords.socket, &passwords.spool_dir, &passwords.key_file)
            .map_err(setup("password capture socket"))?;
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<String>(256);

    // Supervised: a coordinator or API actor that fails is restarted and reloads its state from the store.
    let pending = PendingPasswords::new(passwords.confirm_window);
    let coordinator = Supervisor::start(move |ctx: &mut Context<ImportCoordinator>| {
        let report_to = ctx.address().recipient();
        let api =
            Supervisor::start(move |_| ApiActor::new(executor.clone(), Some(report_to.clone())));
        ImportCoordinator::new(engine, api, pending, ack_tx)
    });
    let captured_to = coordinator.clone();
    actix::spawn(async move {
        loop {
            tokio::select! {
                captured = inbox.recv() => match captured {
                    Some(c) => { let _ = captured_to.send(Captured(c)).await; }
                    None => break,
                },
                Some(id) = ack_rx.recv() => {
                    if let Err(e) = inbox.ack(&id) {
                        tracing::warn!(error = %e, "cannot delete a handled password capture");
                    }
                }
            }
        }
    });

    for (d, (cookie, known)) in config.domains.iter().zip(cookies) {
        let tls = trust::client_config(d.ca_file.as_deref())
            .map_err(setup(&format!("domain {} CA", d.name)))?;
        let spec = Arc::new(read_spec(d));
        let mut dcs = Vec::new();
        for url in &d.dcs {
            let endpoint = DcEndpoint::parse(url).map_err(setup("DC URL"))?;
            let (tls, dn, pw, spec) = (
                tls.clone(),
                d.bind_dn.clone(),
                d.bind_password.clone(),
                spec.clone(),
            );
            let addr = Supervisor::start(move |_| {
                DcActor::new(
                    endpoint.clone(),
                    tls.clone(),
                    dn.clone(),
                    pw.clone(),
                    DC_TIMEOUTS,
                    READ_TIMEOUT,
                    spec.clone(),
                )
            });
            dcs.push((url.clone(), addr));
        }
        let (name, recipient) = (d.name.clone(), coordinator.clone().recipient());
        DomainActor::new(name, dcs, recipient, cookie, known, DomainTiming::default()).start();
        tracing::info!(domain = %d.name, dcs = d.dcs.len(), "domain actor started");
    }
    Ok(())
}

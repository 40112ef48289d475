//! Turns the configuration into the engine's settings and starts the actors for the configured mode.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use forestsync_actors::api::ApiActor;
use forestsync_actors::channel::{self, AgentCredentials, HttpChannel};
use forestsync_actors::cloud::{CloudClient, CloudEndpoint};
use forestsync_actors::coordinator::import::{
    Captured, DomainSettings, ImportCoordinator, ImportEngine, ImportSettings,
};
use forestsync_actors::coordinator::sync::SyncCoordinator;
use forestsync_actors::coordinator::to_ad::{ToAdDomain, ToAdSettings, Touched};
use forestsync_actors::dc::DcActor;
use forestsync_actors::directory::failover::DomainDirectory;
use forestsync_actors::directory::read::ReadSpec;
use forestsync_actors::directory::{DcEndpoint, Timeouts};
use forestsync_actors::domain::{DomainActor, DomainTiming};
use forestsync_actors::executor::{Executor, ExecutorConfig, RateLimits};
use forestsync_actors::model::RemoveAction;
use forestsync_actors::password::{PasswordInbox, PendingPasswords};
use forestsync_actors::plan::to_ad::{RemovalAction, ToAdRules};
use forestsync_actors::plan::{Collision, Existing, MappingRules, UsernameFrom};
use forestsync_actors::sealed::SealKey;
use forestsync_actors::store::Store;
use forestsync_actors::trust;
use forestsync_actors::two_way::{TwoWay, TwoWaySettings};
use std::collections::BTreeMap;

use crate::config::{
    AdRemovalAction, Config, DomainConfig, LeaveScopeAction, Mode, ToAdConfig, UsernameCollision,
    UsernameSource,
};

#[derive(Debug, thiserror::Error)]
pub enum WiringError {
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
                target_ou: d
                    .to_ad
                    .as_ref()
                    .filter(|_| config.mode == Mode::TwoWay)
                    .map(|t| t.target_ou.clone()),
            })
            .collect(),
        max_removals: config.safety.max_removals,
        max_removal_percent: config.safety.max_removal_percent,
        approve_file: Some(config.state_dir.join("approve-removals")),
        two_way: config.mode == Mode::TwoWay,
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
        // Two-way: what the AD → JumpCloud direction creates is bound to the domain's AD instance
        // (so JumpCloud's password changes of AD-owned users reach this agent).
        ad_instances: config
            .domains
            .iter()
            .filter(|_| config.mode == Mode::TwoWay)
            .filter_map(|d| Some((d.name.clone(), d.to_ad.as_ref()?.ad_instance_id.clone())))
            .collect(),
        ..ExecutorConfig::default()
    }
}

/// Starts the DC connection actors of one domain (supervised), in preference order.
fn start_dcs(d: &DomainConfig) -> Result<Vec<(String, Addr<DcActor>)>, WiringError> {
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
    if forestsync_actors::health::register_domain(&d.name, &d.dcs) {
        watch_dcs(d.name.clone(), dcs.clone());
    }
    Ok(dcs)
}

/// How often the DCs a domain is not using are asked whether they answer (the one in use is known
/// from its traffic).
const DC_WATCH_EVERY: Duration = Duration::from_secs(10);

/// Keeps each DC's health current for `/readyz`, `status` and `forestsync.dc.up`: every
/// [`DC_WATCH_EVERY`], a rootDSE probe of every DC other than the one in use. The one in use is
/// skipped because a long read may hold its actor; its health comes from its own requests.
fn watch_dcs(domain: String, dcs: Vec<(String, Addr<DcActor>)>) {
    use forestsync_actors::dc::Probe;
    use forestsync_actors::health;
    actix::spawn(async move {
        loop {
            let in_use = health::in_use(&domain);
            for (url, dc) in &dcs {
                if in_use.as_deref() == Some(url.as_str()) {
                    continue;
                }
                match tokio::time::timeout(Duration::from_secs(5), dc.send(Probe)).await {
                    Ok(Ok(Ok(_))) => health::dc_up(&domain, url),
                    Ok(Ok(Err(e))) => health::dc_down(&domain, url, &e.to_string()),
                    Ok(Err(e)) => {
                        health::dc_down(&domain, url, &format!("DC actor unavailable: {e}"))
                    }
                    Err(_) => health::dc_down(&domain, url, "no rootDSE answer within 5 s (hung?)"),
                }
            }
            tokio::time::sleep(DC_WATCH_EVERY).await;
        }
    });
}

/// The JumpCloud → AD rules of a domain.
pub fn to_ad_rules(d: &DomainConfig, t: &ToAdConfig) -> ToAdRules {
    ToAdRules {
        target_ou: t.target_ou.clone(),
        upn_suffix: t.upn_suffix.clone(),
        attributes: ToAdRules::standard_attributes(
            &d.attributes.firstname,
            &d.attributes.lastname,
            &d.attributes.email,
            &d.attributes.extra,
        ),
        on_removal: match t.on_removal {
            AdRemovalAction::Disable => RemovalAction::Disable,
            AdRemovalAction::Delete => RemovalAction::Delete,
            AdRemovalAction::Leave => RemovalAction::Leave,
        },
        adopt_existing: t.adopt_existing,
    }
}

/// The channel base URL: configured, or derived from the JumpCloud base URL.
pub fn channel_base(config: &Config) -> Result<url::Url, WiringError> {
    match &config.jumpcloud.agent_channel_url {
        Some(u) => url::Url::parse(u).map_err(setup("jumpcloud.agent_channel_url")),
        None => channel::channel_base_from_api_url(&config.jumpcloud.base_url)
            .map_err(setup("jumpcloud.base_url")),
    }
}

/// A domain's registered agent credentials (sealed in the state directory).
pub fn agent_credentials(
    config: &Config,
    d: &DomainConfig,
    t: &ToAdConfig,
) -> Result<AgentCredentials, WiringError> {
    let key = SealKey::load_or_create(&config.seal_key_file).map_err(setup("sealing key"))?;
    let path = channel::credentials_path(&config.state_dir, &d.name);
    let creds = AgentCredentials::load(&path, &key)
        .map_err(setup(&format!("agent credentials {}", path.display())))?
        .ok_or_else(|| {
            WiringError::Setup(format!(
                "domain {}: this agent is not registered with the JumpCloud AD instance {}; fix: forestsync register --config {} --domain {} --connect-key <KEY>",
                d.name,
                t.ad_instance_id,
                config.path.display(),
                d.name
            ))
        })?;
    if creds.activedirectory_id != t.ad_instance_id {
        return Err(WiringError::Setup(format!(
            "domain {}: the agent is registered with AD instance {} but the config names {}; fix: correct ad_instance_id or register again with a connect key of the right instance",
            d.name, creds.activedirectory_id, t.ad_instance_id
        )));
    }
    Ok(creds)
}

/// Opens the state store and starts the admin socket on it (`forestsync status`/`explain` while the
/// agent runs); every mode goes through here. A socket that cannot be bound (a state_dir path too
/// long for a Unix socket, a file in its place) is logged, not fatal: syncing goes on.
/// A store held by another process is waited for this long (a `status` or `explain` reading it
/// while the agent was stopped holds it for well under a second).
async fn open_store(config: &Config) -> Result<Store, WiringError> {
    let deadline = std::time::Instant::now() + STORE_LOCK_WAIT;
    let store = loop {
        match Store::open(&config.state_dir) {
            Ok(s) => break s,
            Err(e) if e.is_locked() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(setup("state store")(e)),
        }
    };
    forestsync_actors::metrics::observe_outbox(store.clone());
    // Management only: without it the agent still syncs; `status` then says the store is held.
    if let Err(e) = crate::admin::start_agent_server(config, store.clone()) {
        tracing::error!(error = %e, "admin socket unavailable: forestsync status/explain cannot reach this agent");
    }
    Ok(store)
}

/// Starts the jumpcloud-authoritative mode: DC actors per domain, the sync coordinator (one engine per
/// domain), all supervised.
async fn start_jumpcloud_authoritative(config: &Config) -> Result<(), WiringError> {
    let store = open_store(config).await?;
    let executor = Executor::new(
        cloud_client(config)?,
        store.clone(),
        executor_config(config),
    );
    start_to_ad(config, store, executor, None, BTreeMap::new())
}

/// Starts the JumpCloud → AD side: DC actors per domain and the sync coordinator (one engine per
/// domain). Two-way passes its shared rules and the AD reader's change notices.
fn start_to_ad(
    config: &Config,
    store: Store,
    executor: Executor,
    two_way: Option<Arc<TwoWay>>,
    mut touched: BTreeMap<String, Touched>,
) -> Result<(), WiringError> {
    let base = channel_base(config)?;
    let tls =
        trust::client_config(config.jumpcloud.ca_file.as_deref()).map_err(setup("JumpCloud CA"))?;
    let mut domains = Vec::new();
    for d in &config.domains {
        let Some(t) = &d.to_ad else {
            return Err(WiringError::Setup(format!(
                "domain {} has no ad_instance_id/target_ou",
                d.name
            )));
        };
        let creds = agent_credentials(config, d, t)?;
        let channel = HttpChannel::new(base.clone(), tls.clone(), creds, config.jumpcloud.timeout)
            .map_err(setup("agent channel"))?;
        let dcs = start_dcs(d)?;
        domains.push(ToAdDomain {
            name: d.name.clone(),
            base_dn: d.base_dn.clone(),
            ad_instance_id: t.ad_instance_id.clone(),
            rules: to_ad_rules(d, t),
            directory: DomainDirectory::new(d.name.clone(), dcs, DIRECTORY_REQUEST_TIMEOUT),
            channel: Arc::new(channel),
            touched: touched.remove(&d.name),
        });
    }
    let settings = ToAdSettings {
        max_removals: config.safety.max_removals,
        max_removal_percent: config.safety.max_removal_percent,
        approve_file: Some(config.state_dir.join("approve-removals")),
        two_way,
        ..ToAdSettings::default()
    };
    Supervisor::start(move |_| {
        SyncCoordinator::new(
            domains.clone(),
            settings.clone(),
            executor.clone(),
            store.clone(),
        )
    });
    Ok(())
}

/// How long the agent waits at start for a store another process holds.
pub const STORE_LOCK_WAIT: Duration = Duration::from_secs(10);

/// How long one AD request may take before the domain fails over (a member write of 500 values
/// included).
pub const DIRECTORY_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts every actor of the configured mode; returns once they run (the caller waits for a signal).
pub async fn start(config: &Config) -> Result<(), WiringError> {
    match config.mode {
        Mode::AdAuthoritative => {}
        Mode::JumpcloudAuthoritative => return start_jumpcloud_authoritative(config).await,
        Mode::TwoWay => return start_two_way(config).await,
    }
    let store = open_store(config).await?;
    let executor = Executor::new(
        cloud_client(config)?,
        store.clone(),
        executor_config(config),
    );
    start_import(config, store, executor, BTreeMap::new()).await
}

/// Starts mode two-way: both directions on one store and one rate-limited executor, sharing the
/// authority rules and the echo ledger; the AD reader tells the JumpCloud → AD engines which
/// JumpCloud-owned objects changed in AD.
async fn start_two_way(config: &Config) -> Result<(), WiringError> {
    let store = open_store(config).await?;
    let two_way = TwoWay::new(
        TwoWaySettings {
            default_password_authority: config.two_way.password_authority,
            non_owner_change: config.two_way.non_owner_changes,
        },
        store.clone(),
    );
    let mut exec_config = executor_config(config);
    exec_config.two_way = Some(two_way.clone());
    let executor = Executor::new(cloud_client(config)?, store.clone(), exec_config);
    let (mut senders, mut receivers) = (BTreeMap::new(), BTreeMap::new());
    for d in &config.domains {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        senders.insert(d.name.clone(), tx);
        receivers.insert(
            d.name.clone(),
            Arc::new(tokio::sync::Mutex::new(rx)) as Touched,
        );
    }
    start_to_ad(
        config,
        store.clone(),
        executor.clone(),
        Some(two_way),
        receivers,
    )?;
    start_import(config, store, executor, senders).await
}

/// Starts the AD → JumpCloud side: the import coordinator, the API actor, the password inbox and one
/// domain actor per domain (with its DC actors).
async fn start_import(
    config: &Config,
    store: Store,
    executor: Executor,
    touched: BTreeMap<String, tokio::sync::mpsc::UnboundedSender<String>>,
) -> Result<(), WiringError> {
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
        ImportCoordinator::new(engine, api, pending, ack_tx).with_touched(touched.clone())
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
        let dcs = start_dcs(d)?;
        let (name, recipient) = (d.name.clone(), coordinator.clone().recipient());
        DomainActor::new(name, dcs, recipient, cookie, known, DomainTiming::default()).start();
        tracing::info!(domain = %d.name, dcs = d.dcs.len(), "domain actor started");
    }
    Ok(())
}

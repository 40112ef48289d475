//! forestsync's JumpCloud client against the emulator: every answer class the API actor will act on
//! (accepted, bad key, throttled with Retry-After, server errors, untrusted certificate) arrives
//! classified the way the retry policy expects. The emulator's own behaviour (paging, filters,
//! duplicates, connect keys, spec validation) is tested in `tests/jcemu/tests/emu`.

use std::sync::Arc;
use std::time::Duration;

use forestsync_actors::cloud::{CloudClient, CloudEndpoint, CloudError};
use forestsync_actors::disposition::{Classified, Disposition};
use forestsync_actors::secret::Secret;
use forestsync_actors::trust;

const KEY: &str = "client-test-key";

async fn start(config: jcemu::Config) -> (jcemu::Emulator, Arc<rustls::ClientConfig>) {
    let emu = jcemu::Emulator::start(jcemu::Config {
        api_keys: vec![KEY.into()],
        ..config
    })
    .await
    .expect("emulator starts");
    let dir = std::env::temp_dir().join(crate::support::unique("forestsync-emu-"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emu.ca_pem().unwrap()).unwrap();
    let tls = trust::client_config(Some(&ca)).unwrap();
    (emu, tls)
}

fn client(emu: &jcemu::Emulator, tls: Arc<rustls::ClientConfig>, key: &str) -> CloudClient {
    CloudClient::new(
        CloudEndpoint {
            base_url: emu.base_url(),
            api_key: Secret::new(key),
            org_id: None,
            timeout: Duration::from_secs(5),
        },
        tls,
    )
    .unwrap()
}

#[tokio::test]
async fn the_key_probe_counts_the_organisations_users() {
    let (emu, tls) = start(jcemu::Config::default()).await;
    let http = crate::support::emulator_http(&emu);
    for n in 0..3 {
        let r = http
            .post(format!("{}/api/systemusers", emu.base_url()))
            .header("x-api-key", KEY)
            .json(&serde_json::json!({"username": format!("probe{n}"), "email": format!("probe{n}@example.test")}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let probe = client(&emu, tls, KEY).probe_key().await.unwrap();
    assert_eq!(probe.user_count, 3);
    emu.shutdown().await;
}

#[tokio::test]
async fn a_wrong_key_is_fatal_and_never_echoed() {
    let (emu, tls) = start(jcemu::Config::default()).await;
    let err = client(&emu, tls, "wrong-key-value")
        .probe_key()
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::Unauthenticated { .. }), "{err}");
    assert_eq!(err.disposition(), Disposition::Fatal);
    assert!(
        !err.to_string().contains("wrong-key-value")
            && !format!("{err:?}").contains("wrong-key-value")
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn a_429_is_throttled_with_the_servers_retry_after() {
    let (emu, tls) = start(jcemu::Config {
        rate_limit_per_minute: Some(1),
        ..jcemu::Config::default()
    })
    .await;
    let c = client(&emu, tls, KEY);
    c.probe_key()
        .await
        .expect("the first request fits the limit");
    let err = c.probe_key().await.unwrap_err();
    match err.disposition() {
        Disposition::Throttled {
            retry_after: Some(wait),
        } => assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(60),
            "{wait:?}"
        ),
        other => panic!("expected Throttled with Retry-After, got {other:?} from {err}"),
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn bad_gateway_and_unavailable_are_retried() {
    for status in [502u16, 503] {
        let (emu, tls) = start(jcemu::Config {
            error_rate: 1.0,
            error_statuses: vec![status],
            ..jcemu::Config::default()
        })
        .await;
        let err = client(&emu, tls, KEY).probe_key().await.unwrap_err();
        assert!(
            matches!(err, CloudError::Server { status: s, .. } if s == status),
            "{err}"
        );
        assert_eq!(err.disposition(), Disposition::Retry);
        emu.shutdown().await;
    }
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_as_fatal() {
    let (emu, _lab_ca) = start(jcemu::Config::default()).await;
    let public_roots = trust::client_config(None).unwrap();
    let err = client(&emu, public_roots, KEY)
        .probe_key()
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::Tls { .. }), "{err}");
    assert_eq!(err.disposition(), Disposition::Fatal);
    emu.shutdown().await;
}

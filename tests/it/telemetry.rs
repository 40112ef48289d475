//! Telemetry on the lab and the emulator: the OTLP export received in-process and decoded (spans of
//! one change from the LDAP read to the API call, the metrics the issue lists, no secret anywhere),
//! the ops endpoint (`/metrics`, `/healthz`), and `/readyz` following a DC going down and coming
//! back, and the API key being revoked and restored.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use tokio::task::JoinHandle;

use crate::import_mode::{user, wait_for, Agent, Corner, API_KEY};
use crate::support::{self, unique};

/// One request the receiver got: (path, body).
type Request = (String, Vec<u8>);

/// What the in-process OTLP/HTTP receiver got.
#[derive(Clone, Default)]
pub(crate) struct Received(Arc<Mutex<Vec<Request>>>);

impl Received {
    fn bodies(&self, path: &str) -> Vec<Vec<u8>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
    pub(crate) fn all_bytes(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, b)| b.clone())
            .collect()
    }
}

/// An OTLP/HTTP receiver (what a collector's `otlp` receiver does on 4318), answering 200 to every
/// POST and keeping the bodies.
pub(crate) async fn otlp_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let keep = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let keep = keep.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            keep.0.lock().unwrap().push((path, body));
                            let mut r = hyper::Response::new(Full::new(Bytes::new()));
                            r.headers_mut()
                                .insert("content-type", "application/x-protobuf".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

/// A TCP proxy in front of a DC, on the DC's own address (so its certificate still matches) and
/// another port; `down` closes it and every connection through it, `up` opens it again.
struct DcProxy {
    listen: SocketAddr,
    target: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl DcProxy {
    async fn start(dc_url: &str) -> DcProxy {
        let u = url::Url::parse(dc_url).unwrap();
        let host = u.host_str().unwrap().to_string();
        let target: SocketAddr = format!("{host}:{}", u.port().unwrap_or(636))
            .parse()
            .unwrap();
        let probe = std::net::TcpListener::bind(format!("{host}:0")).unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        let p = DcProxy {
            listen,
            target,
            tasks: Arc::default(),
        };
        p.up().await;
        p
    }

    fn url(&self) -> String {
        format!("ldaps://{}", self.listen)
    }

    async fn up(&self) {
        let listener = tokio::net::TcpListener::bind(self.listen).await.unwrap();
        let (target, tasks) = (self.target, self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    fn down(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Polls `url` until its status is `want` (and the body contains `needle`), or fails.
pub(crate) async fn wait_status(
    url: &str,
    want: u16,
    needle: &str,
    within: Duration,
    agent: &Agent,
) -> String {
    let started = Instant::now();
    loop {
        let (status, body) = get(url).await;
        if status == want && body.contains(needle) {
            return body;
        }
        if started.elapsed() > within {
            panic!(
                "{url}: wanted {want} with {needle:?} within {within:?}, last {status}: {body}\nagent log:\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn attr_text(kv: &[KeyValue], key: &str) -> Option<String> {
    let v = kv
        .iter()
        .find(|k| k.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match v {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

struct Span {
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    attrs: Vec<KeyValue>,
    links: Vec<(Vec<u8>, Vec<u8>)>,
}

fn spans(received: &Received) -> Vec<Span> {
    let mut out = Vec::new();
    for body in received.bodies("/v1/traces") {
        let req = ExportTraceServiceRequest::decode(body.as_slice())
            .expect("an OTLP trace export decodes");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| attr_text(&r.attributes, "service.name"));
            assert_eq!(
                service.as_deref(),
                Some("forestsync"),
                "resource service.name"
            );
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Span {
                        name: s.name,
                        trace: s.trace_id,
                        id: s.span_id,
                        parent: s.parent_span_id,
                        attrs: s.attributes,
                        links: s
                            .links
                            .into_iter()
                            .map(|l| (l.trace_id, l.span_id))
                            .collect(),
                    });
                }
            }
        }
    }
    out
}

fn metric_names(received: &Received) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for body in received.bodies("/v1/metrics") {
        let req = ExportMetricsServiceRequest::decode(body.as_slice())
            .expect("an OTLP metrics export decodes");
        for rm in req.resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    names.insert(m.name);
                }
            }
        }
    }
    names
}

/// The attribute sets of one metric's data points (sums and gauges), as key → value text.
fn points(received: &Received, metric: &str) -> Vec<BTreeMap<String, String>> {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let mut out = Vec::new();
    for body in received.bodies("/v1/metrics") {
        let req = ExportMetricsServiceRequest::decode(body.as_slice()).unwrap();
        for m in req
            .resource_metrics
            .into_iter()
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
            .filter(|m| m.name == metric)
        {
            let attrs: Vec<Vec<KeyValue>> = match m.data {
                Some(Data::Sum(s)) => s.data_points.into_iter().map(|p| p.attributes).collect(),
                Some(Data::Gauge(g)) => g.data_points.into_iter().map(|p| p.attributes).collect(),
                Some(Data::Histogram(h)) => {
                    h.data_points.into_iter().map(|p| p.attributes).collect()
                }
                _ => Vec::new(),
            };
            for a in attrs {
                out.push(
                    a.iter()
                        .filter_map(|kv| Some((kv.key.clone(), attr_text(&a, &kv.key)?)))
                        .collect(),
                );
            }
        }
    }
    out
}

const METRICS: &[&str] = &[
    "forestsync.changes",
    "forestsync.api.requests",
    "http.client.request.duration",
    "forestsync.ratelimit.wait",
    "forestsync.actor.queue",
    "forestsync.dc.up",
    "forestsync.sync.lag",
    "forestsync.scope.objects",
    "forestsync.ldap.search.duration",
    "forestsync.outbox.pending",
];

#[tokio::test(flavor = "multi_thread")]
async fn one_change_is_one_trace_from_the_ldap_read_to_the_api_call_and_the_metrics_arrive_over_otlp(
) {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "otel").await;
    let sam = unique("otel");
    let person = c.person(&sam).await;
    let root = c.root.clone();
    c.add_member(&root, &person).await;

    let (otlp, received) = otlp_receiver().await;
    let emu = crate::import_mode::emulator(jcemu::Config::default()).await;
    let dir = crate::import_mode::scratch("otel");
    std::fs::create_dir_all(&dir).unwrap();
    let ops = free_port();
    let mut text = Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], "");
    text += &format!(
        "\n[telemetry]\nlisten = \"127.0.0.1:{ops}\"\notlp_endpoint = \"http://{otlp}\"\nexport_interval_seconds = 1\n"
    );
    let agent = Agent::start(dir.clone(), &text);
    wait_for(
        &emu,
        &agent,
        Duration::from_secs(60),
        "the user in JumpCloud",
        |s| user(s, &sam).is_some(),
    )
    .await;

    // The batch span processor exports every few seconds; metrics every second.
    let started = Instant::now();
    let (create, api) = loop {
        let all = spans(&received);
        let create = all.iter().position(|s| {
            s.name == "sync.change"
                && attr_text(&s.attrs, "operation").as_deref() == Some("create user")
                && attr_text(&s.attrs, "domain").as_deref() == Some("alpha")
        });
        let api = create.and_then(|ci| {
            all.iter().position(|s| {
                s.trace == all[ci].trace
                    && attr_text(&s.attrs, "http.request.method").as_deref() == Some("POST")
                    && attr_text(&s.attrs, "url.full")
                        .is_some_and(|u| u.ends_with("/api/systemusers"))
            })
        });
        let have_metrics = METRICS.iter().all(|m| metric_names(&received).contains(*m));
        if let (Some(c), Some(a), true) = (create, api, have_metrics) {
            break (c, a);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no complete export within 60 s: spans {:?}, metrics {:?}\nagent log:\n{}",
            spans(&received)
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
            metric_names(&received),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let all = spans(&received);
    let (create, api) = (&all[create], &all[api]);

    // The change's trace: the change span is a root, with the object as an attribute; the API call
    // is a client span under it, with the HTTP semantic conventions.
    assert!(create.parent.is_empty(), "sync.change is a trace root");
    assert!(
        attr_text(&create.attrs, "object.id").is_some_and(|id| id.starts_with("alpha/")),
        "object.id names the AD object"
    );
    assert_eq!(
        api.parent, create.id,
        "the API request is a child of the change"
    );
    assert_eq!(
        attr_text(&api.attrs, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(attr_text(&api.attrs, "server.address").is_some_and(|a| a == "127.0.0.1"));

    // Linked to the read that found it: a domain.batch whose trace holds the LDAP search and the plan.
    let (link_trace, link_span) = create
        .links
        .first()
        .expect("sync.change links to its batch");
    let batch = all
        .iter()
        .find(|s| &s.trace == link_trace && &s.id == link_span)
        .expect("the linked batch span was exported");
    assert_eq!(batch.name, "domain.batch");
    assert_eq!(attr_text(&batch.attrs, "domain").as_deref(), Some("alpha"));
    let search = all
        .iter()
        .find(|s| s.trace == batch.trace && s.parent == batch.id && s.name == "ldap.search")
        .expect("the batch has its LDAP search");
    assert_eq!(
        attr_text(&search.attrs, "server.address").as_deref(),
        Some(lab.alpha.dc_urls[0].as_str())
    );
    assert!(
        all.iter()
            .any(|s| s.trace == batch.trace && s.parent == batch.id && s.name == "plan"),
        "the batch has its plan"
    );
    // Not one endless span per actor: every domain.batch is its own trace.
    let batches: Vec<_> = all.iter().filter(|s| s.name == "domain.batch").collect();
    let traces: BTreeSet<_> = batches.iter().map(|s| s.trace.clone()).collect();
    assert_eq!(traces.len(), batches.len(), "each batch is its own trace");

    // Metrics with their labels.
    let requests = points(&received, "forestsync.api.requests");
    assert!(
        requests.iter().any(
            |p| p.get("operation").map(String::as_str) == Some("/api/systemusers")
                && p.get("status").map(String::as_str) == Some("200")
        ),
        "API requests by operation and status: {requests:?}"
    );
    let up = points(&received, "forestsync.dc.up");
    assert!(
        up.iter()
            .any(|p| p.get("domain").map(String::as_str) == Some("alpha")
                && p.get("dc").map(String::as_str) == Some(lab.alpha.dc_urls[0].as_str())),
        "DC health per DC: {up:?}"
    );
    let changes = points(&received, "forestsync.changes");
    assert!(
        changes.iter().any(
            |p| p.get("direction").map(String::as_str) == Some("ad_to_jumpcloud")
                && p.get("kind").map(String::as_str) == Some("create user")
        ),
        "changes by direction and kind: {changes:?}"
    );

    // Never a secret in what was exported.
    let bytes = received.all_bytes();
    for secret in [API_KEY, lab.alpha.bind_password.expose()] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret appears in the OTLP export"
        );
    }

    // The ops endpoint: Prometheus text, liveness, readiness.
    let base = format!("http://127.0.0.1:{ops}");
    let (status, body) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE forestsync_api_requests_total counter")
            && body.contains("operation=\"/api/systemusers\"")
            && body.contains("http_client_request_duration_seconds_bucket{")
            && body.contains("forestsync_dc_up{"),
        "/metrics:\n{body}"
    );
    assert!(!body.contains(API_KEY), "no secret in /metrics");
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    wait_status(
        &format!("{base}/readyz"),
        200,
        "ready",
        Duration::from_secs(10),
        &agent,
    )
    .await;
    drop(agent);
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_dcs_and_the_api_key() {
    let Some(lab) = support::lab() else { return };
    let mut c = Corner::new(lab, &lab.alpha, "ready").await;
    let sam = unique("rdy");
    let person = c.person(&sam).await;
    let root = c.root.clone();
    c.add_member(&root, &person).await;

    // The agent reaches ALPHA's DC only through a proxy the test can cut.
    let proxy = DcProxy::start(&lab.alpha.dc_urls[0]).await;
    let emu = crate::import_mode::emulator(jcemu::Config::default()).await;
    let dir = crate::import_mode::scratch("ready");
    std::fs::create_dir_all(&dir).unwrap();
    let ops = free_port();
    let mut text = Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], "");
    let real_dcs = lab
        .alpha
        .dc_urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    text = text.replace(
        &format!("dcs = [{real_dcs}]"),
        &format!("dcs = [\"{}\"]", proxy.url()),
    );
    assert!(text.contains(&proxy.url()), "the config uses the proxy");
    text += &format!("\n[telemetry]\nlisten = \"127.0.0.1:{ops}\"\n");
    let agent = Agent::start(dir.clone(), &text);
    let readyz = format!("http://127.0.0.1:{ops}/readyz");

    wait_for(
        &emu,
        &agent,
        Duration::from_secs(60),
        "the user in JumpCloud",
        |s| user(s, &sam).is_some(),
    )
    .await;
    wait_status(&readyz, 200, "ready", Duration::from_secs(10), &agent).await;

    // The only DC goes away: not ready, naming the domain and the DC.
    proxy.down();
    let body = wait_status(
        &readyz,
        503,
        "domain alpha: no DC reachable",
        Duration::from_secs(30),
        &agent,
    )
    .await;
    assert!(body.contains(&proxy.url()), "{body}");
    assert_eq!(
        get(&format!("http://127.0.0.1:{ops}/healthz")).await.0,
        200,
        "alive while not ready"
    );
    proxy.up().await;
    wait_status(&readyz, 200, "ready", Duration::from_secs(30), &agent).await;

    // The API key is revoked: the next API call is refused and readiness says why.
    let admin = crate::support::emulator_http(&emu);
    let set_keys = |keys: serde_json::Value| {
        let (admin, url) = (
            admin.clone(),
            format!("{}/__emulator/api-keys", emu.base_url()),
        );
        async move {
            let r = admin
                .put(url)
                .json(&serde_json::json!({ "keys": keys }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    set_keys(serde_json::json!(["some-other-key"])).await;
    c.set(&person, "givenName", "Revoked").await;
    wait_status(
        &readyz,
        503,
        "JumpCloud refuses the API key",
        Duration::from_secs(60),
        &agent,
    )
    .await;

    // Restored: the queued change goes through and the agent is ready again.
    set_keys(serde_json::json!([API_KEY])).await;
    wait_for(
        &emu,
        &agent,
        Duration::from_secs(90),
        "the change after the key is back",
        |s| user(s, &sam).is_some_and(|u| u["firstname"] == "Revoked"),
    )
    .await;
    wait_status(&readyz, 200, "ready", Duration::from_secs(30), &agent).await;
    drop(agent);
    proxy.down();
    c.cleanup().await;
}

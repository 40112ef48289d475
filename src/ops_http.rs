//! The ops endpoint (`[telemetry] listen`, default `127.0.0.1:9464`): plain HTTP/1.1, GET only.
//!
//! - `/metrics`: every metric in the Prometheus text format (0.0.4).
//! - `/healthz`: 200 while the process's runtime answers (liveness).
//! - `/readyz`: 200 when every domain has a DC that answers and JumpCloud has not refused the API
//!   key; 503 with one reason per line otherwise (see `forestsync_actors::health`).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};

use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum OpsHttpError {
    #[error("cannot listen on {addr} (telemetry.listen): {source}; fix: pick a free address:port, or \"off\"")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds `addr` and serves in the background; returns the bound address (port 0 picks one).
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> Result<SocketAddr, OpsHttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| OpsHttpError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &metrics)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(5))
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
            });
        }
    });
    Ok(bound)
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn answer(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => match metrics.collect() {
            Some(rm) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                prometheus_text(&rm),
            ),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "metrics are not available (shutting down)\n".into(),
            ),
        },
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => {
            let reasons = forestsync_actors::health::snapshot().not_ready_reasons();
            if reasons.is_empty() {
                reply(StatusCode::OK, TEXT, "ready\n".into())
            } else {
                let mut body = String::from("not ready\n");
                for r in reasons {
                    body.push_str(&r);
                    body.push('\n');
                }
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, body)
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// A Prometheus metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*`; anything else becomes `_`.
fn prom_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels<'a>(attrs: impl Iterator<Item = &'a opentelemetry::KeyValue>, extra: &str) -> String {
    let mut parts: Vec<String> = attrs
        .map(|kv| {
            format!(
                "{}=\"{}\"",
                prom_name(kv.key.as_str()),
                escape_label(&kv.value.to_string())
            )
        })
        .collect();
    parts.sort();
    if !extra.is_empty() {
        parts.push(extra.to_string());
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The unit suffix Prometheus expects (`s` → `_seconds`, `By` → `_bytes`); none for `1` or `{…}`.
fn unit_suffix(unit: &str) -> &'static str {
    match unit {
        "s" => "_seconds",
        "ms" => "_milliseconds",
        "By" => "_bytes",
        _ => "",
    }
}

trait Num: Copy {
    fn text(self) -> String;
}
impl Num for f64 {
    fn text(self) -> String {
        if self.is_nan() {
            "NaN".into()
        } else if self.is_infinite() {
            if self > 0.0 { "+Inf" } else { "-Inf" }.into()
        } else {
            format!("{self}")
        }
    }
}
impl Num for u64 {
    fn text(self) -> String {
        self.to_string()
    }
}
impl Num for i64 {
    fn text(self) -> String {
        self.to_string()
    }
}

fn render<T: Num>(out: &mut String, name: &str, help: &str, data: &MetricData<T>) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    match data {
        MetricData::Gauge(g) => {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for p in g.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(p.attributes(), ""),
                    p.value().text()
                );
            }
        }
        MetricData::Sum(s) => {
            let (full, kind) = if s.is_monotonic() {
                (format!("{name}_total"), "counter")
            } else {
                (name.to_string(), "gauge")
            };
            let _ = writeln!(out, "# HELP {full} {help}\n# TYPE {full} {kind}");
            for p in s.data_points() {
                let _ = writeln!(
                    out,
                    "{full}{} {}",
                    labels(p.attributes(), ""),
                    p.value().text()
                );
            }
        }
        MetricData::Histogram(h) => {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for p in h.data_points() {
                let mut cumulative = 0u64;
                for (bound, count) in p.bounds().zip(p.bucket_counts()) {
                    cumulative += count;
                    let le = format!("le=\"{}\"", bound.text());
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {cumulative}",
                        labels(p.attributes(), &le)
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    labels(p.attributes(), "le=\"+Inf\""),
                    p.count()
                );
                let _ = writeln!(
                    out,
                    "{name}_sum{} {}",
                    labels(p.attributes(), ""),
                    p.sum().text()
                );
                let _ = writeln!(
                    out,
                    "{name}_count{} {}",
                    labels(p.attributes(), ""),
                    p.count()
                );
            }
        }
        // Not used by forestsync's instruments.
        MetricData::ExponentialHistogram(_) => {}
    }
}

/// Every metric in the Prometheus text exposition format.
pub fn prometheus_text(rm: &ResourceMetrics) -> String {
    let mut out = String::new();
    for scope in rm.scope_metrics() {
        for m in scope.metrics() {
            let name = format!("{}{}", prom_name(m.name()), unit_suffix(m.unit()));
            match m.data() {
                AggregatedMetrics::F64(d) => render(&mut out, &name, m.description(), d),
                AggregatedMetrics::U64(d) => render(&mut out, &name, m.description(), d),
                AggregatedMetrics::I64(d) => render(&mut out, &name, m.description(), d),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_label_values_are_made_safe_for_prometheus() {
        assert_eq!(
            prom_name("forestsync.api.requests"),
            "forestsync_api_requests"
        );
        assert_eq!(
            prom_name("http.client.request.duration"),
            "http_client_request_duration"
        );
        assert_eq!(prom_name("9lives"), "_9lives");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

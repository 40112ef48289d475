//! Logs, traces and metrics.
//!
//! - Logs: structured `tracing` events on stderr; JSON when stderr is not a terminal (journald,
//!   containers) unless `[telemetry] log_format` (or `FORESTSYNC_LOG_FORMAT`) says otherwise.
//!   `FORESTSYNC_LOG` (or `RUST_LOG`) sets the filter (default `warn`).
//! - Traces: `tracing` spans of forestsync's crates (info and above) become OpenTelemetry spans,
//!   exported over OTLP/HTTP (protobuf) when an endpoint is configured: `[telemetry] otlp_endpoint`,
//!   else the standard `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` variables. `OTEL_SDK_DISABLED=true`
//!   turns the export off. `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` are honoured.
//! - Metrics: the actors record through the OpenTelemetry API (`forestsync_actors::metrics`); the
//!   meter provider installed here keeps them for `/metrics` (see [`crate::ops_http`]) and pushes
//!   them over OTLP every `export_interval_seconds` when an endpoint is configured.
//!
//! The OTLP client is forestsync's own reqwest client: rustls with the system's web roots plus
//! `otlp_ca_file`, certificates verified.

use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_ca_file: {0}")]
    Trust(String),
    #[error("the OTLP HTTP client cannot be built: {0}")]
    Client(String),
    #[error("the OTLP {signal} exporter for {endpoint} cannot be built: {detail}; fix: check telemetry.otlp_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT")]
    Exporter {
        signal: &'static str,
        endpoint: String,
        detail: String,
    },
}

/// What `run` keeps alive; [`Telemetry::shutdown`] flushes the last spans and metrics.
pub struct Telemetry {
    metrics: Metrics,
    tracer: Option<SdkTracerProvider>,
    meter: SdkMeterProvider,
}

/// A handle that collects every metric on demand (for `/metrics`). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    reader: Arc<ManualReader>,
}

impl Metrics {
    /// Every metric's current value.
    pub fn collect(&self) -> Option<ResourceMetrics> {
        let mut rm = ResourceMetrics::default();
        self.reader.collect(&mut rm).ok()?;
        Some(rm)
    }
}

/// The manual reader, shared between the meter provider and `/metrics`.
#[derive(Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

fn log_filter() -> EnvFilter {
    std::env::var("FORESTSYNC_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("warn"))
}

/// `FORESTSYNC_LOG_FORMAT` (`json`, `text` or `auto`) overrides the configured log format.
fn json_logs(format: LogFormat) -> bool {
    let format = match std::env::var("FORESTSYNC_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        Ok("auto") => LogFormat::Auto,
        _ => format,
    };
    match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    }
}

/// Logs only, as text on a terminal and JSON otherwise: for the short-lived commands.
pub fn init() {
    init_logs(LogFormat::Auto);
}

fn init_logs(format: LogFormat) {
    let _ = tracing_subscriber::registry()
        .with(log_layer(format))
        .try_init();
}

/// The stderr log layer: JSON or text per [`json_logs`], filtered by [`log_filter`].
fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = if json_logs(format) {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    fmt.with_filter(log_filter()).boxed()
}

/// The OTLP/HTTP URL of one signal: `<otlp_endpoint>/v1/<signal>` from the config file; `None` when
/// the file has no endpoint (the exporter then reads the standard variables).
fn signal_url(config: &TelemetryConfig, signal: &str) -> Option<String> {
    let base = config.otlp_endpoint.as_deref()?;
    Some(format!("{}/v1/{signal}", base.trim_end_matches('/')))
}

/// Whether anything says where to export: the config file or a standard variable.
fn export_wanted(config: &TelemetryConfig, signal_var: &str) -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let set = |v: &str| std::env::var(v).is_ok_and(|s| !s.trim().is_empty());
    !disabled
        && (config.otlp_endpoint.is_some() || set("OTEL_EXPORTER_OTLP_ENDPOINT") || set(signal_var))
}

fn resource() -> Resource {
    let mut builder = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        builder = builder.with_service_name("forestsync");
    }
    builder
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build()
}

/// Logs, traces and metrics for `run`. Must be called outside the async runtime (the OTLP client
/// is a blocking one that owns its own thread).
pub fn init_agent(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let resource = resource();
    let traces = export_wanted(config, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let metrics_export = export_wanted(config, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
    let client = if traces || metrics_export {
        let tls = forestsync_actors::trust::client_config(config.otlp_ca_file.as_deref())
            .map_err(|e| TelemetryError::Trust(e.to_string()))?;
        Some(
            reqwest::blocking::Client::builder()
                .use_preconfigured_tls((*tls).clone())
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| TelemetryError::Client(e.to_string()))?,
        )
    } else {
        None
    };

    let tracer = match (&client, traces) {
        (Some(client), true) => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client.clone());
            if let Some(url) = signal_url(config, "traces") {
                builder = builder.with_endpoint(url);
            }
            let exporter = builder.build().map_err(|e| TelemetryError::Exporter {
                signal: "traces",
                endpoint: signal_url(config, "traces")
                    .unwrap_or_else(|| "(OTEL_* variables)".into()),
                detail: e.to_string(),
            })?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.clone())
                    .build(),
            )
        }
        _ => None,
    };

    let reader = Arc::new(ManualReader::builder().build());
    let mut meter = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(SharedReader(reader.clone()));
    if let (Some(client), true) = (&client, metrics_export) {
        let mut builder = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(client.clone());
        if let Some(url) = signal_url(config, "metrics") {
            builder = builder.with_endpoint(url);
        }
        let exporter = builder.build().map_err(|e| TelemetryError::Exporter {
            signal: "metrics",
            endpoint: signal_url(config, "metrics").unwrap_or_else(|| "(OTEL_* variables)".into()),
            detail: e.to_string(),
        })?;
        meter = meter.with_reader(
            opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
                .with_interval(config.export_interval)
                .build(),
        );
    }
    let meter = meter.build();
    opentelemetry::global::set_meter_provider(meter.clone());

    // Spans of forestsync's own crates at info and above are traced, whatever the log filter says.
    let otel = tracer.as_ref().map(|provider| {
        opentelemetry::global::set_tracer_provider(provider.clone());
        forestsync_actors::change_trace::enable();
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("forestsync"))
            .with_filter(EnvFilter::new("forestsync=info,forestsync_actors=info"))
    });
    let _ = tracing_subscriber::registry()
        .with(log_layer(config.log_format))
        .with(otel)
        .try_init();
    Ok(Telemetry {
        metrics: Metrics { reader },
        tracer,
        meter,
    })
}

impl Telemetry {
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Exports what is still buffered. Call outside the async runtime.
    pub fn shutdown(self) {
        if let Some(t) = self.tracer {
            let _ = t.force_flush();
            let _ = t.shutdown();
        }
        let _ = self.meter.force_flush();
        let _ = self.meter.shutdown();
    }
}

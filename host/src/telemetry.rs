//! Logs and traces.
//!
//! Logs go to stderr, as text or JSON (`telemetry.log_format`, or `INFERCELL_LOG_FORMAT`),
//! filtered by `INFERCELL_LOG`. Every line written while a request is served carries its
//! `request_id` (the `request` span, see [`request_span`]).
//!
//! Traces are off unless an OTLP endpoint is configured (`telemetry.otlp_endpoint`, or the
//! standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`). Then each
//! call is a trace of spans: `request` (continuing the caller's W3C `traceparent`), and under
//! it `admit`, `instantiate`, `run`, `nn.load`, `nn.compute` and `commit`, exported over
//! OTLP/HTTP (protobuf) in batches. The phase spans are at the `debug` level of the
//! `infercell::call` target and only the trace layer wants them: with tracing off no layer
//! does, and each costs one cached check of its call site. A function's outbound HTTP requests
//! carry the `traceparent` of the span they are sent from, so the services it calls join the
//! trace.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::TelemetryConfig;

/// The target of the call phase spans.
pub const CALL: &str = "infercell::call";

/// How often finished spans are sent.
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Whether traces are exported (set once, at start).
static TRACING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn tracing_on() -> bool {
    TRACING.get().copied().unwrap_or(false)
}

/// The trace exporter, flushed and stopped by [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans not yet sent and stops the exporter (at shutdown).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }
}

/// The OTLP/HTTP traces endpoint: the configured one, else the standard environment variables.
fn endpoint(config: &TelemetryConfig) -> Option<String> {
    if !config.otlp_endpoint.is_empty() {
        return Some(config.otlp_endpoint.clone());
    }
    if let Ok(url) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        && !url.is_empty()
    {
        return Some(url);
    }
    match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(base) if !base.is_empty() => Some(format!("{}/v1/traces", base.trim_end_matches('/'))),
        _ => None,
    }
}

/// Installs the logger and, when configured, the trace exporter (whose requests run on
/// `runtime`).
pub fn init(config: &TelemetryConfig, runtime: tokio::runtime::Handle) -> anyhow::Result<Telemetry> {
    let filter = || tracing_subscriber::EnvFilter::try_from_env("INFERCELL_LOG").unwrap_or_else(|_| "info".into());
    let format = std::env::var("INFERCELL_LOG_FORMAT").unwrap_or_else(|_| config.log_format.clone());
    let logs = match format.as_str() {
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        "text" => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter()).boxed(),
        other => anyhow::bail!("telemetry.log_format must be \"text\" or \"json\", not {other:?}"),
    };
    let Some(url) = endpoint(config) else {
        let _ = TRACING.set(false);
        tracing_subscriber::registry().with(logs).try_init().context("installing the logger")?;
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(Duration::from_secs(10))
        .with_http_client(Client {
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            runtime,
        })
        .build()
        .context("making the OTLP trace exporter")?;
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().with_scheduled_delay(EXPORT_INTERVAL).build())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batches)
        // By trace id, for every trace, the callers' included: a caller's sampled flag cannot make
        // the server export more than its share (and every span of a trace shares its fate).
        .with_sampler(Sampler::TraceIdRatioBased(config.sample_ratio))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("infercell"))
        .with_filter(tracing_subscriber::EnvFilter::new(format!("info,{CALL}=debug")));
    let _ = TRACING.set(true);
    tracing_subscriber::registry().with(logs).with(traces).try_init().context("installing the logger")?;
    tracing::info!(endpoint = %url, "exporting traces over OTLP/HTTP");
    Ok(Telemetry { provider: Some(provider) })
}

/// The span a request is served in: its id on every log line, and, with tracing on, the root
/// of its trace, continuing the caller's `traceparent` when it sent a valid one.
pub fn request_span(id: &str, method: &http::Method, path: &str, headers: &http::HeaderMap) -> tracing::Span {
    let span = tracing::info_span!("request", request_id = %id, http.method = %method, http.path = %path);
    if tracing_on() {
        let parent = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
        let _ = span.set_parent(parent);
    }
    span
}

/// Sets `traceparent` on an outbound request to the current span's, with tracing on. The
/// caller's `tracestate` is not passed on: it is the caller's to give, not the function's
/// hosts'.
pub fn inject(headers: &mut http::HeaderMap) {
    if !tracing_on() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
    headers.remove("tracestate");
}

/// The exporter's HTTP client: the server's reqwest, its requests run on the server's runtime
/// (the batch processor sends from a thread of its own).
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let send = async move {
            let (parts, body) = request.into_parts();
            let url = parts.uri.to_string();
            let response = http.request(parts.method, url).headers(parts.headers).body(body).send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut answer = http::Response::new(body);
            *answer.status_mut() = status;
            *answer.headers_mut() = headers;
            Ok::<_, reqwest::Error>(answer)
        };
        Ok(self.runtime.spawn(send).await??)
    }
}

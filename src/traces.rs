//! OpenTelemetry traces: the OTLP/HTTP exporter, the target every grantd span is made under,
//! and W3C trace context in (from the app) and out (to a provider that opted in).
//!
//! Owns the tracer provider: spans are queued by a batch processor and exported from its own
//! thread, so the request path only records; [`Traces::shutdown`] flushes what is queued.
//! Off unless `telemetry.otlp_endpoint` is set: then no exporter exists and spans under
//! [`TARGET`] are disabled at their call sites. Spans carry bounded, non-secret values only
//! (integration, rule, action, statuses, the route template): never a header value, a token,
//! a query string or a request path. It must not import anything above `upstream`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::Layer as _;

use crate::config::{TelemetryConfig, UpstreamConfig};
use crate::telemetry::TraceLayer;

pub use crate::telemetry::TRACE_TARGET as TARGET;

/// How long one export may take; a collector that hangs costs a dropped batch, nothing more.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the exit waits for the last spans to reach the collector.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The running exporter. [`Traces::shutdown`] flushes it, waiting a bounded time.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Starts the exporter when `telemetry.otlp_endpoint` is set. The collector is reached
    /// with the upstream client's trust (webpki and native roots, `upstream.ca_bundle`).
    pub fn start(
        config: &TelemetryConfig,
        upstream: &UpstreamConfig,
    ) -> anyhow::Result<Option<Traces>> {
        let Some(url) = config.traces_url() else {
            return Ok(None);
        };
        let tls = crate::upstream::tls_config(upstream)?;
        let client = Exporting::new(crate::upstream::connector(upstream, tls))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        Ok(Some(Traces { provider }))
    }

    /// The subscriber layer that turns grantd's spans into OpenTelemetry spans.
    pub fn layer(&self) -> TraceLayer {
        let tracer = self.provider.tracer("grantd");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(|meta| meta.target() == TARGET))
            .boxed()
    }

    /// Exports every span still queued, then stops the exporter; a collector that does not
    /// answer holds the exit up for [`FLUSH_TIMEOUT`] at most.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(error = %e, "could not flush the last spans to the collector");
        }
    }
}

/// The span of one proxied request, named `{method} /{integration}/{path}` after its route
/// template: the path itself (which may carry an id or a secret) is never recorded.
pub fn request(method: &Method, integration: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = %format!("{} /{integration}/{{path}}", method_name(method)),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method_name(method),
        http.route = %format!("/{integration}/{{path}}"),
        http.response.status_code = Empty,
        grantd.integration = integration,
        grantd.upstream.status_code = Empty,
        grantd.rule = Empty,
        grantd.action = Empty,
        grantd.rule_error = Empty,
    )
}

/// How the request ended, recorded once: the status grantd answered with (a 5xx marks the
/// span failed), the provider's status (`None` when grantd answered itself), and the rule and
/// action of a verdict or refusal.
pub fn responded(
    request: &Span,
    status: u16,
    upstream: Option<u16>,
    rule: Option<&str>,
    action: Option<&str>,
) {
    // As i64: the OpenTelemetry layer records unsigned integers as text.
    request.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        request.record("otel.status_code", "error");
    }
    if let Some(upstream) = upstream {
        request.record("grantd.upstream.status_code", i64::from(upstream));
    }
    if let Some(rule) = rule {
        request.record("grantd.rule", rule);
    }
    if let Some(action) = action {
        request.record("grantd.action", action);
    }
}

/// A rule that failed (the response passed through), on the current request span.
pub fn rule_failed(rule: &str) {
    Span::current().record("grantd.rule_error", rule);
}

/// One exchange with the provider, until its response headers arrive.
pub fn upstream(method: &Method, integration: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "upstream",
        otel.name = %format!("{} {integration}", method_name(method)),
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method_name(method),
        http.response.status_code = Empty,
        error.type = Empty,
        grantd.integration = integration,
    )
}

/// The provider answered this exchange with `status`.
pub fn upstream_answered(upstream: &Span, status: u16) {
    upstream.record("http.response.status_code", i64::from(status));
}

/// The exchange failed before any response (`timeout`, `unreachable`).
pub fn upstream_failed(upstream: &Span, kind: &'static str) {
    upstream.record("error.type", kind);
    upstream.record("otel.status_code", "error");
}

/// A refresh of one connection: its integration is recorded once it holds the lease, its
/// outcome when it ends.
pub fn refresh() -> Span {
    tracing::info_span!(
        target: TARGET,
        "refresh",
        grantd.integration = Empty,
        grantd.refresh.outcome = Empty,
    )
}

/// A call to an integration's token endpoint.
pub fn token_call(integration: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "token call",
        otel.kind = "client",
        grantd.integration = integration,
    )
}

/// Waiting for a refresh lease another process (or flight) holds.
pub fn lease_wait(integration: &str) -> Span {
    tracing::info_span!(target: TARGET, "lease wait", grantd.integration = integration)
}

/// A standard method's name; anything else is `_OTHER` (as OpenTelemetry's HTTP conventions
/// say), so an app cannot put arbitrary text in a span.
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// Continues the app's trace: a valid W3C `traceparent` on the request becomes the parent of
/// `span`. Call it before `span` is first entered.
pub fn continue_from(span: &Span, headers: &HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
}

/// Replaces `traceparent` and `tracestate` with `span`'s context. When `span` is not
/// recorded (traces off) the headers stay as they are.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    headers.remove("traceparent");
    headers.remove("tracestate");
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// The exporter's HTTP client: hyper over grantd's own rustls configuration (no second TLS
/// stack). The batch processor exports from a plain thread, so requests run on a small
/// runtime of their own, apart from the proxy's and the control plane's.
#[derive(Debug)]
struct Exporting {
    hyper: HyperClient<HttpsConnector<HttpConnector>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Exporting {
    fn new(connector: HttpsConnector<HttpConnector>) -> std::io::Result<Exporting> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("grantd-otlp")
            .enable_all()
            .build()?;
        Ok(Exporting {
            hyper: HyperClient::new(connector, EXPORT_TIMEOUT, None),
            runtime: Some(runtime),
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for Exporting {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let runtime = self.runtime.as_ref().ok_or("the exporter is stopped")?;
        let hyper = self.hyper.clone();
        runtime
            .spawn(async move { hyper.send_bytes(request).await })
            .await?
    }
}

impl Drop for Exporting {
    fn drop(&mut self) {
        // Dropping a runtime where blocking is not allowed panics; this never blocks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

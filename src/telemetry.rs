//! Logging and OpenTelemetry traces.
//!
//! Logs go to stderr (text or JSON, filtered by `TESSERA_LOG`) as they always did. Traces are
//! exported over OTLP/HTTP only when the standard variables name a collector:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL;
//! `/v1/traces` is appended). Without either, or with `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none`, no OpenTelemetry layer is installed at all: the subscriber is
//! the plain fmt subscriber, and the spans below are `debug` spans that the default filters
//! disable at their call site, so the unset path costs what it cost before traces existed.
//! With traces on, one global filter lets tessera's spans through at any log level (events
//! still follow `TESSERA_LOG`), so a log line then also names the federation span it is in.
//!
//! When enabled, the exporter follows the rest of the standard environment itself:
//! `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS` (e.g. an API key for a hosted collector) and `_TIMEOUT`
//! (compression is not built in); `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
//! (default service name `tessera`); `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE` and
//! friends for the batch processor. The protocol is `http/protobuf` (the spec's default) unless
//! `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL=http/json`; `grpc` is not built in (no tonic in the tree)
//! and falls back to `http/protobuf` with a warning. Spans are batched on the SDK's own thread
//! and sent with a blocking HTTP client there, never on the request path; [`Telemetry`] flushes
//! what is left when the command ends (`serve`: after the graceful shutdown).
//!
//! **Propagation.** W3C Trace Context: the peer client injects `traceparent` (and `tracestate`)
//! into every call to a peer ([`inject`]); the HTTP layer of the data holder takes it as the
//! parent of its `request` span ([`adopt_remote_parent`]), so one trace covers the reader's admin
//! query (or CLI command), its `peer.call`, and the holder's `federation.guard`,
//! `federation.scope`, `federation.page_sql` and `federation.audit`. A remote parent is only a
//! parent: it links traces and carries the sampled flag (the sampler is the default
//! parent-based always-on), never any authority.
//!
//! **Log lines carry the trace id.** The `request` span (and, with traces on, the `command` span
//! of every command but `serve`) has a `trace_id` field, printed with every line logged inside it, in text
//! and JSON. With traces off it still carries the trace id of an incoming `traceparent`, so a
//! data holder that exports nothing can be correlated with the reader's trace from its logs.
//!
//! Span attributes are ids, verbs, resources, outcomes and deny codes; never credentials,
//! certificates, request bodies, query texts or row data.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// Whether this process exports traces (and so injects and extracts contexts through them).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The default `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES`
/// names one.
pub const DEFAULT_SERVICE_NAME: &str = "tessera";

/// Where traces go, read from the standard variables (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The collector URL as configured (for the start-up log line; never its headers).
    pub endpoint: String,
    pub json: bool,
    /// A protocol we do not build (`grpc`), named for the warning.
    pub unsupported_protocol: Option<String>,
}

impl OtlpSettings {
    /// `None` unless an endpoint is set and the SDK is not disabled. `env` reads a variable.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let set = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let protocol = protocol.map(|p| p.to_ascii_lowercase());
        let json = protocol.as_deref() == Some("http/json");
        let unsupported_protocol = protocol.filter(|p| p != "http/json" && p != "http/protobuf");
        Some(Self { endpoint, json, unsupported_protocol })
    }
}

/// Flushes and stops the exporter when dropped (at the end of `main`).
#[must_use = "dropping it stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            ENABLED.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: could not flush the last traces: {e}");
            }
        }
    }
}

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Installs the global subscriber: stderr logs filtered by `TESSERA_LOG` (else `default_filter`),
/// plus the OpenTelemetry layer when [`OtlpSettings::from_env`] finds a collector.
pub fn init(format: LogFormat, default_filter: &str) -> Telemetry {
    let filter = EnvFilter::try_from_env("TESSERA_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only on a terminal, and never with NO_COLOR set: a log file or a pipe gets
    // plain text that grep and log shippers read as written.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let Some(settings) = OtlpSettings::from_env(|k| std::env::var(k).ok()) else {
        // No collector: exactly the subscriber tessera had before traces, no layer more.
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
        let _ = match format {
            LogFormat::Json => builder.json().try_init(),
            LogFormat::Text => builder.try_init(),
        };
        return Telemetry { provider: None };
    };
    let provider = match provider(&settings) {
        Ok(provider) => provider,
        Err(e) => {
            let builder =
                tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
            let _ = match format {
                LogFormat::Json => builder.json().try_init(),
                LogFormat::Text => builder.try_init(),
            };
            tracing::warn!(error = %e, "OpenTelemetry: cannot build the OTLP exporter; traces are off");
            return Telemetry { provider: None };
        }
    };
    // One global filter: the log filter, plus tessera's own spans (the federation path's are
    // `debug` spans) whatever the log level, so the trace has them. Per-layer filters were tried
    // first; with two of them some request spans came out disabled for both layers.
    let filter = WithTesseraSpans(filter);
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("tessera")).with_tracked_inactivity(false);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let installed = match format {
        LogFormat::Json => Registry::default().with(filter).with(otel).with(fmt.json()).try_init(),
        LogFormat::Text => Registry::default().with(filter).with(otel).with(fmt).try_init(),
    };
    if installed.is_err() {
        // Another subscriber was installed first (a test harness): do not export behind its back.
        let _ = provider.shutdown();
        return Telemetry { provider: None };
    }
    ENABLED.store(true, Ordering::Relaxed);
    if let Some(p) = &settings.unsupported_protocol {
        tracing::warn!(protocol = %p, "OpenTelemetry: only http/protobuf and http/json are built in; using http/protobuf");
    }
    tracing::info!(
        endpoint = %without_credentials(&settings.endpoint),
        protocol = if settings.json { "http/json" } else { "http/protobuf" },
        "OpenTelemetry: exporting traces over OTLP"
    );
    Telemetry { provider: Some(provider) }
}

/// The endpoint for a log line: a user name or password in the URL is replaced by `***`.
fn without_credentials(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("***");
            let _ = url.set_password(None);
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "(not a URL)".to_string(),
    }
}

fn provider(settings: &OtlpSettings) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    let protocol = if settings.json { Protocol::HttpJson } else { Protocol::HttpBinary };
    // Endpoint, headers and timeout come from the environment, read by the exporter itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(protocol).build()?;
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !named {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

/// The log filter, plus every span of tessera's own modules at `debug` or above (only installed
/// with traces on: log lines then also name the federation spans they are in).
struct WithTesseraSpans(EnvFilter);

fn traced_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with("tessera") && *meta.level() <= tracing::Level::DEBUG
}

impl<S: Subscriber> Layer<S> for WithTesseraSpans {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if traced_span(meta) { Interest::always() } else { Layer::<S>::register_callsite(&self.0, meta) }
    }

    fn enabled(&self, meta: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        traced_span(meta) || Layer::<S>::enabled(&self.0, meta, ctx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Layer::<S>::max_level_hint(&self.0).map(|hint| hint.max(LevelFilter::DEBUG))
    }

    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        Layer::<S>::on_new_span(&self.0, attrs, id, ctx);
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        Layer::<S>::on_record(&self.0, id, values, ctx);
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        Layer::<S>::on_enter(&self.0, id, ctx);
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        Layer::<S>::on_exit(&self.0, id, ctx);
    }

    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        Layer::<S>::on_close(&self.0, id, ctx);
    }
}

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

struct PairInjector(Vec<(String, String)>);

impl Injector for PairInjector {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

/// Makes an incoming W3C `traceparent` the parent of `span` (a server span with empty
/// `trace_id` and `otel.kind` fields) and records the trace id in that field. With traces off,
/// only the field: the trace id of a valid incoming `traceparent`, if any.
pub fn adopt_remote_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if enabled() {
        // Before the span is built (by `record_trace_id`): the kind is fixed then.
        span.record("otel.kind", "server");
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(parent);
        record_trace_id(span);
    } else if let Some(trace_id) =
        headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(traceparent_trace_id)
    {
        span.record("trace_id", trace_id);
    }
}

/// Records the trace id of `span` (a span with an empty `trace_id` field) when traces are on.
pub fn record_trace_id(span: &tracing::Span) {
    if !enabled() {
        return;
    }
    let id = span.context().span().span_context().trace_id();
    if id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(id));
    }
}

/// Adds `traceparent` (and `tracestate`) for the current span to a request to a peer. Nothing
/// when traces are off.
pub fn inject(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    if !enabled() {
        return req;
    }
    let cx = tracing::Span::current().context();
    let mut headers = PairInjector(Vec::new());
    TraceContextPropagator::new().inject_context(&cx, &mut headers);
    headers.0.into_iter().fold(req, |req, (k, v)| req.header(k, v))
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is valid and not
/// all zeros.
pub fn traceparent_trace_id(value: &str) -> Option<&str> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    valid.then_some(trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(name, _)| *name == k).map(|(_, v)| (*v).to_string())
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_is_set() {
        assert_eq!(OtlpSettings::from_env(env(&[])), None);
        // Service name, headers or protocol alone export nothing.
        let partial = [
            ("OTEL_SERVICE_NAME", "a"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "  "),
        ];
        assert_eq!(OtlpSettings::from_env(env(&partial)), None);
        let on = OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])).unwrap();
        assert_eq!((on.endpoint.as_str(), on.json, on.unsupported_protocol), ("http://c:4318", false, None));
        let traces =
            [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t/v1/traces"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "x")];
        assert_eq!(OtlpSettings::from_env(env(&traces)).unwrap().endpoint, "http://t/v1/traces");
        for off in [("OTEL_SDK_DISABLED", "TRUE"), ("OTEL_TRACES_EXPORTER", "none")] {
            assert_eq!(OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), off])), None);
        }
        let json = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "HTTP/JSON")];
        assert!(OtlpSettings::from_env(env(&json)).unwrap().json);
        let grpc = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        let grpc = OtlpSettings::from_env(env(&grpc)).unwrap();
        assert_eq!((grpc.json, grpc.unsupported_protocol.as_deref()), (false, Some("grpc")));
    }

    #[test]
    fn the_endpoint_is_logged_without_credentials() {
        assert_eq!(without_credentials("http://c:4318"), "http://c:4318/");
        assert_eq!(without_credentials("https://u:s3cret@c/v1/traces"), "https://***@c/v1/traces");
        assert_eq!(without_credentials("not a url"), "(not a URL)");
    }

    #[test]
    fn only_valid_traceparents_give_a_trace_id() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(traceparent_trace_id(&format!("00-{id}-00f067aa0ba902b7-01")), Some(id));
        assert_eq!(traceparent_trace_id(&format!("01-{id}-00f067aa0ba902b7-01-later")), Some(id));
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            &format!("00-{id}-0000000000000000-01"),
            &format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            &format!("ff-{id}-00f067aa0ba902b7-01"),
            &format!("00-{id}-00f067aa0ba902b7-01-extra"),
            &format!("00-{id}\n-00f067aa0ba902b7-01"),
        ] {
            assert_eq!(traceparent_trace_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn nothing_is_injected_when_traces_are_off() {
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::new();
        let req = inject(client.get("http://127.0.0.1:9/")).build().unwrap();
        assert!(req.headers().get("traceparent").is_none());
    }
}

//! Logging and tracing setup, the same for every service.
//!
//! - `RUST_LOG` sets the filter (default `info`); `JETJOBS_LOG_FORMAT=json` switches to
//!   one JSON object per line, with the fields of the enclosing spans lifted to the top
//!   level, so every line logged while a job is handled carries `job_id` and `trace_id`.
//! - Traces are exported with OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, following the standard `OTEL_*`
//!   variables (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_BSP_*`, …). Unset, no OpenTelemetry layer is installed at all: spans are plain
//!   `tracing` spans and nothing is built for export. Trace context in NATS headers
//!   (see [`crate::trace_context`]) is passed on either way.

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// How long a stopping service waits for its last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Compact human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `JETJOBS_LOG_FORMAT=json` asks for JSON; anything else is text.
    pub fn from_env() -> Self {
        if std::env::var("JETJOBS_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json")) {
            Self::Json
        } else {
            Self::Text
        }
    }
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
#[must_use = "dropping it without shutdown() may lose the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // `shutdown` blocks until the export thread is done, and the export itself needs
        // the runtime (the gRPC connection lives on it): never block a runtime thread.
        let flushed = tokio::time::timeout(
            FLUSH_TIMEOUT,
            tokio::task::spawn_blocking(move || provider.shutdown()),
        )
        .await;
        match flushed {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("telemetry: could not flush the last spans: {e}"),
            Ok(Err(e)) => eprintln!("telemetry: the flush task failed: {e}"),
            Err(_) => {
                eprintln!("telemetry: the last spans were not flushed within {FLUSH_TIMEOUT:?}")
            }
        }
    }
}

/// Why telemetry could not be set up as the `OTEL_*` environment asks.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{name}={protocol:?}: jetjobs exports OTLP over gRPC only; unset it or use \"grpc\"")]
    Protocol {
        name: &'static str,
        protocol: String,
    },
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// Installs the global subscriber and, if configured, the OTLP exporter; call it from
/// inside the Tokio runtime (the gRPC client lives on it). A second call (tests) keeps
/// the first subscriber.
pub fn init(service: &'static str) -> Result<Telemetry, TelemetryError> {
    set_propagator();
    let provider = otlp_provider(service)?;
    install(service, provider.as_ref());
    Ok(Telemetry { provider })
}

/// Logs only, never traces: for one-shot tools (`jetjobs-admin`, a rebuild).
pub fn init_logs(service: &'static str) {
    install(service, None);
}

fn install(service: &'static str, provider: Option<&SdkTracerProvider>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = tracing_subscriber::registry()
        .with(layers(
            service,
            provider,
            LogFormat::from_env(),
            std::io::stdout,
        ))
        .with(filter)
        .try_init()
        .is_ok();
    if installed {
        tracing::debug!(
            service,
            exporting = provider.is_some(),
            "Telemetry initialised."
        );
    }
}

/// The W3C Trace Context propagator, which [`crate::trace_context`] uses to read and
/// write `traceparent` and `tracestate`.
pub fn set_propagator() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
}

/// The OpenTelemetry layer (when `provider` is given) and the log layer, for any
/// subscriber: [`init`] uses them with stdout, tests with an in-memory exporter and buffer.
pub fn layers<S, W>(
    service: &'static str,
    provider: Option<&SdkTracerProvider>,
    format: LogFormat,
    writer: W,
) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let otel = provider.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            // Thread names and ids say nothing useful on a work-stealing runtime.
            .with_threads(false)
    });
    let log = match format {
        LogFormat::Text => fmt::layer().compact().with_writer(writer).boxed(),
        LogFormat::Json => fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .with_writer(writer)
            .boxed(),
    };
    Layer::and_then(otel, log)
}

/// The OTLP exporter the `OTEL_*` environment asks for, or none.
fn otlp_provider(service: &'static str) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    if disabled
        || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    {
        return Ok(None);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        if let Ok(protocol) = std::env::var(name)
            && !protocol.is_empty()
            && protocol != "grpc"
        {
            return Err(TelemetryError::Protocol { name, protocol });
        }
    }
    // The endpoint, headers, timeout and compression come from the OTEL_EXPORTER_OTLP_*
    // variables; the builder reads them.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        // Namespaced, since a trace UI lists the services of many systems.
        resource = resource.with_service_name(format!("jetjobs-{service}"));
    }
    // The sampler comes from OTEL_TRACES_SAMPLER (default parentbased_always_on), and the
    // batch queue from OTEL_BSP_* (bounded: spans beyond it are dropped, not queued).
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// Makes `span` a child of `parent` (a context read from headers) and records its
/// `trace_id` field. Without an OpenTelemetry layer the span cannot join the trace, but
/// its log lines still name the trace the caller started, if any.
pub fn join_trace(span: &tracing::Span, parent: opentelemetry::Context) {
    let inherited = parent.span().span_context().clone();
    // Fails only when no OpenTelemetry layer is installed, which is fine: see above.
    let _ = span.set_parent(parent);
    record_trace_id(span, &inherited);
}

/// Records the span's trace id in its `trace_id` field, for the logs: its own when it is
/// exported, else `fallback`'s (the caller's), else nothing.
pub fn record_trace_id(span: &tracing::Span, fallback: &opentelemetry::trace::SpanContext) {
    let own = span.context().span().span_context().clone();
    let context = if own.is_valid() { &own } else { fallback };
    if context.is_valid() {
        span.record("trace_id", context.trace_id().to_string());
    }
}

/// JSON lines: `timestamp`, `level`, `target`, the fields of every enclosing span (inner
/// ones win) and the event's own fields, all at the top level, plus `span` naming the
/// innermost span. Top-level keys make `job_id` and `trace_id` easy to index.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut line = serde_json::Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                innermost = Some(span.name());
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(fields)) =
                    serde_json::from_str::<serde_json::Value>(fields)
                {
                    for (key, value) in fields {
                        // `otel.*` fields steer the exporter; they are noise in a log line.
                        if !key.starts_with("otel.") {
                            line.insert(key, value);
                        }
                    }
                }
            }
            if let Some(name) = innermost {
                line.insert("span".into(), name.into());
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        let mut bytes = serde_json::to_vec(&line).map_err(|_| std::fmt::Error)?;
        bytes.push(b'\n');
        // The writer takes `str`; serde_json wrote UTF-8.
        let text = String::from_utf8(bytes).map_err(|_| std::fmt::Error)?;
        writer.write_str(&text)
    }
}

struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// A [`MakeWriter`] that appends to a shared buffer, for tests that read the log lines.
#[cfg(any(test, feature = "testing"))]
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(any(test, feature = "testing"))]
impl CapturedLogs {
    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(any(test, feature = "testing"))]
impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut bytes) = self.0.lock() {
            bytes.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(any(test, feature = "testing"))]
impl<'w> MakeWriter<'w> for CapturedLogs {
    type Writer = Self;
    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_lift_span_fields_to_the_top_level() {
        let logs = CapturedLogs::default();
        let subscriber = tracing_subscriber::registry().with(layers(
            "test",
            None,
            LogFormat::Json,
            logs.clone(),
        ));
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(
                "request",
                job_id = "j1",
                trace_id = tracing::field::Empty,
                otel.name = "x"
            );
            outer.record("trace_id", "t1");
            let _outer = outer.enter();
            let inner = tracing::info_span!("inner", attempt = 2);
            let _inner = inner.enter();
            tracing::info!(error = "boom", "Job attempt failed.");
        });
        let lines = logs.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON");
        assert_eq!(line["job_id"], "j1");
        assert_eq!(line["trace_id"], "t1");
        assert_eq!(line["attempt"], 2);
        assert_eq!(line["error"], "boom");
        assert_eq!(line["message"], "Job attempt failed.");
        assert_eq!(line["span"], "inner");
        assert_eq!(line["level"], "INFO");
        assert!(line.get("otel.name").is_none());
    }
}

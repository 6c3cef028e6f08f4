//! Logs, traces and metrics.
//!
//! One `tracing` subscriber per process: human-readable or JSON lines on standard error
//! (filtered by `RUST_LOG`, default `info`), and — when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! the per-signal `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set — spans exported over OTLP,
//! with the standard `OTEL_*` variables (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL` = `http/protobuf` by default or `grpc` with the `grpc`
//! cargo feature, `OTEL_BSP_*`, `OTEL_METRIC_EXPORT_INTERVAL`). Metrics go to the same
//! OTLP endpoint and to `GET /metrics` (see [`metrics`]). Exporters are flushed by
//! [`Telemetry::shutdown`].
//!
//! Trace context crosses process boundaries as W3C `traceparent`: in HTTP requests, in
//! the command row and the job payload (so the worker that applies a command continues
//! the API request's trace), and in calls to agents.

pub mod metrics;

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// What must be flushed at exit.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

fn otlp_configured(signal: &str) -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    set("OTEL_EXPORTER_OTLP_ENDPOINT") || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
}

fn grpc_wanted(signal: &str) -> bool {
    let protocol = std::env::var(format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"))
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    protocol.trim() == "grpc"
}

fn resource() -> opentelemetry_sdk::Resource {
    let mut builder = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        builder = builder.with_service_name("hitl-orchestrator");
    }
    builder.build()
}

fn span_exporter() -> Result<opentelemetry_otlp::SpanExporter, String> {
    if grpc_wanted("TRACES") {
        #[cfg(feature = "grpc")]
        return opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| e.to_string());
        #[cfg(not(feature = "grpc"))]
        return Err(
            "OTLP over gRPC needs a build with the `grpc` cargo feature; use http/protobuf".into(),
        );
    }
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())
}

fn metric_exporter() -> Result<opentelemetry_otlp::MetricExporter, String> {
    if grpc_wanted("METRICS") {
        #[cfg(feature = "grpc")]
        return opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| e.to_string());
        #[cfg(not(feature = "grpc"))]
        return Err(
            "OTLP over gRPC needs a build with the `grpc` cargo feature; use http/protobuf".into(),
        );
    }
    opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())
}

/// Installs the process-wide subscriber and, when configured, the OTLP exporters. Must
/// run inside the tokio runtime (the exporters run on it). Calling it twice is harmless.
pub fn init(format: LogFormat) -> Telemetry {
    // The OTLP exporter's HTTP client needs it.
    crate::tls::install_provider();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,apalis=warn,apalis_core=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let mut problems = Vec::new();
    let tracer = if otlp_configured("TRACES") {
        match span_exporter() {
            Ok(exporter) => {
                let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                    exporter,
                    opentelemetry_sdk::runtime::Tokio,
                )
                .build();
                Some(
                    SdkTracerProvider::builder()
                        .with_span_processor(processor)
                        .with_resource(resource())
                        .build(),
                )
            }
            Err(e) => {
                problems.push(format!("trace export disabled: {e}"));
                None
            }
        }
    } else {
        None
    };
    let meter = if otlp_configured("METRICS") {
        match metric_exporter() {
            Ok(exporter) => {
                let reader = opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
                    exporter,
                    opentelemetry_sdk::runtime::Tokio,
                )
                .build();
                let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                    .with_reader(reader)
                    .with_resource(resource())
                    .build();
                opentelemetry::global::set_meter_provider(provider.clone());
                Some(provider)
            }
            Err(e) => {
                problems.push(format!("metric export disabled: {e}"));
                None
            }
        }
    } else {
        None
    };
    metrics::register_otel_instruments();
    let otel = tracer.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("hitl-orchestrator"))
            .with_filter(EnvFilter::new("hitl_orchestrator=debug,info"))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    for p in problems {
        tracing::warn!("{p}");
    }
    Telemetry { tracer, meter }
}

impl Telemetry {
    /// Flushes and stops the exporters.
    pub fn shutdown(self) {
        if let Some(t) = self.tracer {
            let _ = t.force_flush();
            let _ = t.shutdown();
        }
        if let Some(m) = self.meter {
            let _ = m.force_flush();
            let _ = m.shutdown();
        }
    }
}

/// The current span's trace context as W3C headers (`traceparent`, `tracestate`), for a
/// command row or a job payload; `None` outside a trace.
pub fn current_trace_context() -> Option<HashMap<String, String>> {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    (!carrier.is_empty()).then_some(carrier)
}

/// The current span's trace id (32 hex digits), when tracing is on and there is a trace.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.trace_id().to_string())
}

/// Makes `span` a child of the trace in `carrier` (W3C headers), when there is one.
pub fn continue_trace(span: &tracing::Span, carrier: &HashMap<String, String>) {
    let cx = TraceContextPropagator::new().extract(carrier);
    let _ = span.set_parent(cx);
}

//! Logging and tracing through `tracing`: log lines human-readable by default or JSON on request,
//! filtered by `RUST_LOG`; spans exported over OTLP when the standard `OTEL_*` variables ask for
//! it (see `otlp.rs`), and not even built otherwise.

mod otlp;
mod propagation;

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::{FilterExt, Targets, filter_fn},
    fmt,
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

pub use otlp::TraceExport;
pub use propagation::set_remote_parent;

use crate::config::LogFormat;

/// The target of spans made for export alone, such as a served call's span: log lines don't
/// show them, so the log reads the same whether spans are exported or not.
pub const EXPORTED_ONLY: &str = concat!(env!("CARGO_CRATE_NAME"), "::exported");

/// How long exiting waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether spans are exported: code that builds spans only for export asks this first, so
/// that without an exporter it costs one load.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// True when spans go to an OTLP collector.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Logging only, as every command but `start` has it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Exported spans, if any: flushed and stopped by [`Telemetry::shutdown`].
#[must_use = "shut it down on exit, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Logging, plus span export when `traces` says where to. Must run inside the Tokio runtime
/// that will carry the exports.
pub fn init_with_traces(
    format: LogFormat,
    traces: Option<&TraceExport>,
) -> anyhow::Result<Telemetry> {
    let Some(traces) = traces else {
        init(format);
        return Ok(Telemetry { provider: None });
    };
    let provider = traces.provider()?;
    let log_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .and(filter_fn(|metadata| metadata.target() != EXPORTED_ONLY));
    let log_lines: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
    };
    let spans = otel_layer(&provider);
    if tracing_subscriber::registry()
        .with(log_lines)
        .with(spans)
        .try_init()
        .is_ok()
    {
        EXPORTING.store(true, Ordering::Relaxed);
    }
    for warning in traces.warnings() {
        tracing::warn!(warning = %warning, "tracing setting ignored");
    }
    tracing::info!(
        endpoint = %traces.endpoint(),
        protocol = traces.protocol(),
        sampler = %traces.sampler_name(),
        "exporting traces over otlp"
    );
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Spans of this service (not its log lines, and not its libraries' spans), from debug level
/// on whatever `RUST_LOG` says, so a trace shows every statement and hash while the log stays
/// as quiet as it was asked to be.
fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    use opentelemetry::trace::TracerProvider as _;
    let ours = Targets::new().with_target(env!("CARGO_CRATE_NAME"), Level::DEBUG);
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(env!("CARGO_PKG_NAME")))
        .with_filter(ours.and(filter_fn(|metadata| metadata.is_span())))
}

impl Telemetry {
    /// Sends the spans still queued and stops exporting. Call it outside the runtime's async
    /// context (the exports themselves run on the runtime's workers), while the runtime lives.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            tracing::warn!(%error, "flushing the last spans failed");
        }
    }
}

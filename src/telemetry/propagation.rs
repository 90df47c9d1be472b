//! W3C trace context from incoming headers (`traceparent`, `tracestate`), so a call continues
//! the trace of whoever made it: the gRPC listener reads its metadata, an HTTP listener its
//! headers, both through [`set_remote_parent`].

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes `span` a child of the caller's span that `headers` name in `traceparent` (with its
/// `tracestate`). Call it right after creating the span, before it is entered. Without span
/// export, or without a valid `traceparent`, it does nothing and `span` starts a trace of its
/// own, provided it is a server span: a listener's request span has `otel.kind = "server"`
/// (only those start traces) and the target [`super::EXPORTED_ONLY`] (kept out of log lines),
/// as `grpc/trace.rs` makes them.
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !super::exporting() || span.is_disabled() {
        return;
    }
    if let Some(parent) = remote_context(headers) {
        // Fails only when the span isn't exported (filtered out) or already started; either way
        // it simply has no remote parent.
        let _ = span.set_parent(parent);
    }
}

/// The caller's span context, when the headers carry a valid one.
fn remote_context(headers: &http::HeaderMap) -> Option<Context> {
    if !headers.contains_key("traceparent") {
        return None;
    }
    let context = TraceContextPropagator::new().extract(&Headers(headers));
    context.span().span_context().is_valid().then_some(context)
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};
    use opentelemetry::trace::{SpanId, TraceId};

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn a_traceparent_names_the_callers_trace_and_span() {
        let context = remote_context(&headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=value"),
        ]))
        .expect("a remote context");
        let span = context.span();
        let parent = span.span_context();
        assert_eq!(
            parent.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            parent.span_id(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(parent.is_remote());
        assert!(parent.is_sampled());
        assert_eq!(parent.trace_state().get("vendor"), Some("value"));
    }

    #[test]
    fn a_missing_or_invalid_traceparent_gives_no_parent() {
        assert!(remote_context(&headers(&[])).is_none());
        assert!(remote_context(&headers(&[("tracestate", "vendor=value")])).is_none());
        for invalid in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                remote_context(&headers(&[("traceparent", invalid)])).is_none(),
                "{invalid}"
            );
        }
    }
}

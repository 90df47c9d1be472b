//! A span per gRPC call, continuing the caller's trace from its `traceparent` metadata, named
//! and tagged as OpenTelemetry's RPC conventions say (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`, and `error.type` for the refusal's reason). Built only
//! while spans are exported; otherwise a call passes through untouched. Health checks get no
//! span: probes every few seconds would bury the traces worth reading.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::{Instrument, Span, field::Empty, instrument::Instrumented};

use crate::telemetry;

/// Gives each call a span (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcSpans;

impl<S> Layer<S> for RpcSpans {
    type Service = RpcSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcSpan { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcSpan<S> {
    inner: S,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for RpcSpan<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
{
    type Response = http::Response<SpannedBody<ResponseBody>>;
    type Error = S::Error;
    type Future = SpannedCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let span = if telemetry::exporting() {
            span_of(&request)
        } else {
            Span::none()
        };
        SpannedCall {
            call: self.inner.call(request).instrument(span),
        }
    }
}

/// The span of a call to `path` (`/package.Service/Method`), child of the caller's span when
/// the headers name one.
fn span_of<B>(request: &http::Request<B>) -> Span {
    let Some((service, method)) = rpc_names(request.uri().path()) else {
        return Span::none();
    };
    let span = tracing::info_span!(
        target: telemetry::EXPORTED_ONLY,
        "rpc",
        otel.name = format!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        error.type = Empty,
    );
    telemetry::set_remote_parent(&span, request.headers());
    span
}

/// Service and method of a call's path; `None` for health checks. Names that are no protobuf
/// identifiers (the path is the client's to choose) are `_OTHER`, as the conventions ask.
fn rpc_names(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|path| path.split_once('/'))
        .unwrap_or(("", ""));
    if service == "grpc.health.v1.Health" {
        return None;
    }
    let identifier = |name: &str, extra: char| {
        !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == extra)
    };
    Some((
        if identifier(service, '.') {
            service
        } else {
            "_OTHER"
        },
        if identifier(method, '_') {
            method
        } else {
            "_OTHER"
        },
    ))
}

/// The `grpc-status` in response headers (a refusal without a body) or trailers.
fn grpc_status(headers: &http::HeaderMap) -> Option<i64> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Records a call's gRPC code; the codes that blame the server mark the span as failed, as
/// the conventions have it for servers (a refused login is the service working).
fn record_status(span: &Span, code: i64) {
    span.record("rpc.grpc.status_code", code);
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "error");
    }
}

pin_project! {
    /// A call running inside its span; its response body carries the span on.
    pub struct SpannedCall<F> {
        #[pin]
        call: Instrumented<F>,
    }
}

impl<F, B, E> Future for SpannedCall<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<SpannedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let response = ready!(this.call.as_mut().poll(cx))?;
        let span = this.call.span().clone();
        if !span.is_disabled()
            && let Some(code) = grpc_status(response.headers())
        {
            record_status(&span, code);
        }
        Poll::Ready(Ok(response.map(|body| SpannedBody { body, span })))
    }
}

pin_project! {
    /// A response body that keeps its call's span open until the last frame is sent, and
    /// records the code its trailers give.
    pub struct SpannedBody<B> {
        #[pin]
        body: B,
        span: Span,
    }
}

impl<B: Body> Body for SpannedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if !this.span.is_disabled()
            && let Some(Ok(frame)) = &frame
            && let Some(code) = frame.trailers_ref().and_then(grpc_status)
        {
            record_status(this.span, code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_gives_service_and_method_and_health_checks_give_nothing() {
        assert_eq!(
            rpc_names("/labelstudio.identity.v1.IdentityService/Authenticate"),
            Some(("labelstudio.identity.v1.IdentityService", "Authenticate"))
        );
        assert_eq!(rpc_names("/grpc.health.v1.Health/Check"), None);
        assert_eq!(rpc_names("/grpc.health.v1.Health/Watch"), None);
    }

    #[test]
    fn names_a_client_made_up_are_other() {
        assert_eq!(rpc_names("/"), Some(("_OTHER", "_OTHER")));
        assert_eq!(rpc_names("/no-slash"), Some(("_OTHER", "_OTHER")));
        assert_eq!(rpc_names("/a.B/token=secret"), Some(("a.B", "_OTHER")));
        let long = format!("/{}/M", "s".repeat(129));
        assert_eq!(rpc_names(&long), Some(("_OTHER", "M")));
        assert_eq!(rpc_names("/a b/M"), Some(("_OTHER", "M")));
    }
}

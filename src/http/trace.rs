//! A span per HTTP request, continuing the gateway's trace from its `traceparent` header and
//! tagged as OpenTelemetry's HTTP server conventions say (`http.request.method`, `http.route`,
//! `http.response.status_code`). Built only while spans are exported. The URL's query is never
//! recorded: a gateway may forward one that carries a token.

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use tracing::{Instrument, Span, field::Empty};

use crate::telemetry;

/// Runs the request inside its span (see the module documentation).
pub async fn span_requests(request: Request, next: Next) -> Response {
    let span = span_of(&request);
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    response
}

fn span_of(request: &Request) -> Span {
    let method = method_name(request.method());
    // The route template, never the path itself: paths are the client's to choose.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let span = tracing::info_span!(
        target: telemetry::EXPORTED_ONLY,
        "http",
        otel.name = match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        },
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = Empty,
    );
    telemetry::set_remote_parent(&span, request.headers());
    span
}

/// The method's name when it is one of HTTP's, `_OTHER` otherwise, as the conventions ask.
fn method_name(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ]
    .into_iter()
    .zip([
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ])
    .find(|(known, _)| known == method)
    .map_or("_OTHER", |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    #[test]
    fn a_made_up_method_is_other() {
        assert_eq!(method_name(&Method::GET), "GET");
        assert_eq!(method_name(&Method::PATCH), "PATCH");
        let made_up = Method::from_bytes(b"SECRET-TOKEN").expect("a valid method token");
        assert_eq!(method_name(&made_up), "_OTHER");
    }
}

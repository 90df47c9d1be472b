//! The gateway check endpoints: `/authz/auth-request` for nginx `auth_request` and ingress-nginx
//! `auth-url`, `/authz/forward-auth` for Caddy `forward_auth` and Traefik `ForwardAuth`. Both
//! take any method, ignore the body, and only translate the core's decision into HTTP.

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, request::Parts},
    response::Response,
};

use super::{HttpState, Peer};
use crate::authz::{self, Check, Decision, HeaderSource, Style};

pub async fn auth_request(State(state): State<HttpState>, request: Request) -> Response {
    // The body is never read: only the head matters.
    let (head, _) = request.into_parts();
    answer(&state, "auth-request", Style::AuthRequest, &head).await
}

pub async fn forward_auth(State(state): State<HttpState>, request: Request) -> Response {
    let (head, _) = request.into_parts();
    answer(&state, "forward-auth", Style::ForwardAuth, &head).await
}

async fn answer(state: &HttpState, endpoint: &'static str, style: Style, head: &Parts) -> Response {
    let headers = &head.headers;
    let peer = head.extensions.get::<Peer>().map(|peer| peer.0);
    let client = state
        .trusted_proxies
        .client(peer, headers.texts("x-forwarded-for"));
    let check = Check {
        endpoint,
        headers,
        client,
    };
    match state.authorizer.check(check).await {
        Decision::Allow(identity) => {
            let mut response = Response::new(Body::empty());
            let out = response.headers_mut();
            out.insert("cache-control", HeaderValue::from_static("no-store"));
            for (name, value) in identity.headers() {
                // Values are free of control characters; UTF-8 names pass as they are.
                let value = HeaderValue::from_bytes(value.as_bytes())
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                out.insert(HeaderName::from_static(name), value);
            }
            response
        }
        Decision::Deny(denial) => {
            let refusal = state.authorizer.refusal(
                &denial,
                style,
                authz::is_browser(headers),
                authz::original_target(headers),
            );
            let mut response = Response::new(Body::from(refusal.body));
            *response.status_mut() =
                StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::UNAUTHORIZED);
            copy_headers(response.headers_mut(), &refusal.headers);
            response
        }
    }
}

fn copy_headers(out: &mut HeaderMap, headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            out.insert(HeaderName::from_static(name), value);
        }
    }
}

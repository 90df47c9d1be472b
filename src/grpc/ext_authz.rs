//! Envoy's external authorization, `envoy.service.auth.v3.Authorization/Check`, on the gRPC
//! port: translates Envoy's `CheckRequest` for the authorization core and its decision into a
//! `CheckResponse` (Istio, Envoy Gateway, Contour and Gloo speak the same service).

use std::{borrow::Cow, collections::HashMap, sync::Arc, time::Instant};

use envoy_types::pb::{
    envoy::{
        config::core::v3::{
            HeaderValue, HeaderValueOption, address, header_value_option::HeaderAppendAction,
        },
        service::auth::v3::{
            CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
            attribute_context::HttpRequest, check_response::HttpResponse,
        },
        r#type::v3::HttpStatus,
    },
    google::rpc,
};
use tonic::{Code, Request, Response, Status};

use crate::{
    authz::{self, Authorizer, Check, Decision, Denial, HeaderSource, Style},
    metrics::Metrics,
    proxies::TrustedProxies,
};

/// The service glue generated over `envoy-types`' messages, and the descriptors reflection serves.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.service.auth.v3.Authorization.rs"
    ));

    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/envoy_auth_descriptor.bin"));
}

pub use pb::authorization_server::AuthorizationServer;

pub struct ExtAuthz {
    authorizer: Authorizer,
    metrics: Arc<Metrics>,
    trusted_proxies: Arc<TrustedProxies>,
}

impl ExtAuthz {
    pub fn new(
        authorizer: Authorizer,
        metrics: Arc<Metrics>,
        trusted_proxies: Arc<TrustedProxies>,
    ) -> Self {
        Self {
            authorizer,
            metrics,
            trusted_proxies,
        }
    }
}

#[tonic::async_trait]
impl pb::authorization_server::Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let peer = request.remote_addr();
        let check = request.into_inner();
        let attributes = check.attributes.as_ref();
        let http = attributes
            .and_then(|attributes| attributes.request.as_ref())
            .and_then(|request| request.http.as_ref());
        let empty = HashMap::new();
        let headers = http.map_or(Cow::Borrowed(&empty), headers_of);
        let headers = headers.as_ref();
        // Envoy is the peer: behind a trusted Envoy the client is the downstream address Envoy
        // saw (a client-sent x-forwarded-for would come first in the header), or else the first
        // forwarded hop.
        let source = attributes
            .and_then(|attributes| attributes.source.as_ref())
            .and_then(|source| source.address.as_ref())
            .and_then(|address| match &address.address {
                Some(address::Address::SocketAddress(socket)) => Some(socket.address.as_str()),
                _ => None,
            });
        let client = match source {
            Some(source) => self.trusted_proxies.client(peer, [Some(source)]),
            None => self
                .trusted_proxies
                .client(peer, headers.texts("x-forwarded-for")),
        };
        let decision = self
            .authorizer
            .check(Check {
                endpoint: "ext-authz",
                headers,
                client,
            })
            .await;
        let response = match decision {
            Decision::Allow(identity) => allowed(&identity, headers),
            Decision::Deny(denial) => {
                let original = http
                    .map(|http| http.path.as_str())
                    .filter(|p| !p.is_empty());
                let refusal = self.authorizer.refusal(
                    &denial,
                    Style::ForwardAuth,
                    authz::is_browser(headers),
                    original,
                );
                denied(&denial, refusal)
            }
        };
        self.metrics.observe("Check", Code::Ok, started.elapsed());
        Ok(Response::new(response))
    }
}

/// The checked request's headers: the `headers` map, or the `header_map` Envoy sends instead
/// when `encode_raw_headers` is on (repeated headers merged as the map would have them).
fn headers_of(http: &HttpRequest) -> Cow<'_, HashMap<String, String>> {
    let Some(map) = http.header_map.as_ref().filter(|_| http.headers.is_empty()) else {
        return Cow::Borrowed(&http.headers);
    };
    let mut merged: HashMap<String, String> = HashMap::new();
    for header in &map.headers {
        let value = if header.raw_value.is_empty() {
            header.value.clone()
        } else {
            String::from_utf8_lossy(&header.raw_value).into_owned()
        };
        let key = header.key.to_ascii_lowercase();
        let separator = if key == "cookie" { "; " } else { ", " };
        merged
            .entry(key)
            .and_modify(|existing| {
                existing.push_str(separator);
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    Cow::Owned(merged)
}

/// OK: the identity headers replace whatever the client sent under those names (Envoy appends
/// unless told otherwise), and client-sent `Remote-*` headers the service doesn't set are
/// removed. Only those: Envoy removes after it sets, so removing a set one would drop it.
fn allowed(identity: &authz::Identity, headers: &HashMap<String, String>) -> CheckResponse {
    let set = identity
        .headers()
        .into_iter()
        .map(|(key, value)| header(key, value, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    let mut headers_to_remove: Vec<String> = headers
        .keys()
        .map(|key| key.to_ascii_lowercase())
        .filter(|key| {
            key.starts_with(authz::IDENTITY_PREFIX)
                && !authz::IDENTITY_HEADERS.contains(&key.as_str())
        })
        .collect();
    headers_to_remove.sort();
    CheckResponse {
        status: Some(rpc::Status {
            code: Code::Ok as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: set,
            headers_to_remove,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn denied(denial: &Denial, refusal: authz::Refusal) -> CheckResponse {
    let code = match denial {
        Denial::NotAMember => Code::PermissionDenied,
        Denial::Unavailable => Code::Unavailable,
        Denial::Missing | Denial::Invalid { .. } | Denial::Throttled { .. } => {
            Code::Unauthenticated
        }
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            message: denial.message().to_owned(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(refusal.status),
            }),
            headers: refusal
                .headers
                .into_iter()
                .map(|(key, value)| header(key, value, HeaderAppendAction::OverwriteIfExistsOrAdd))
                .collect(),
            body: refusal.body,
        })),
        ..Default::default()
    }
}

fn header(key: &str, value: String, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            raw_value: Vec::new(),
        }),
        append_action: action as i32,
        // An empty `Remote-Name` must still replace a client's; Envoy drops empty values
        // unless told to keep them.
        keep_empty_value: true,
        ..Default::default()
    }
}

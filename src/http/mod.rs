//! The HTTP/1.1 listener: a router of HTTP endpoints (today the gateway checks), served
//! connection by connection with bounded headers, a header read timeout, keep-alive and a
//! graceful stop on the same signal as gRPC. Any transport that yields a byte stream (a TLS
//! session, later) is served through [`Connections::serve`].

mod authz;
mod jwks;
mod trace;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::watch,
};
use tower_service::Service;

use crate::{authz::Authorizer, proxies::TrustedProxies, tls::TlsAcceptor};

/// How long a client may take to send a request's headers; also how long an idle keep-alive
/// connection stays open, so gateways should pool connections for less.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers) accepted; larger ones get 431.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Read buffer per connection: room for a head over the limit to be read whole and answered
/// 431, rather than the connection reset with bytes unread.
const MAX_BUFFER_BYTES: usize = 64 * 1024;
/// Pause after a failed accept (out of file descriptors, say), so the loop doesn't spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The address of the connection's peer, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// What the endpoints share.
#[derive(Clone)]
pub struct HttpState {
    pub authorizer: Authorizer,
    pub trusted_proxies: Arc<TrustedProxies>,
}

/// Every HTTP endpoint; unknown paths get 404.
pub fn router(state: HttpState) -> Router {
    let router = Router::new()
        .route("/authz/auth-request", any(authz::auth_request))
        .route("/authz/forward-auth", any(authz::forward_auth))
        .route("/.well-known/jwks.json", get(jwks::jwks))
        .fallback(not_found)
        .with_state(state);
    // Only while spans are exported (decided before the listener starts): the middleware boxes
    // every request's future, a cost checks without it don't pay. Outermost, so the span sees
    // the matched route and the final status.
    if crate::telemetry::exporting() {
        router.layer(axum::middleware::from_fn(trace::span_requests))
    } else {
        router
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"detail":"not found"}"#,
    )
        .into_response()
}

/// The connections being served, which a graceful stop waits for.
pub struct Connections {
    builder: http1::Builder,
    router: Router,
    graceful: GracefulShutdown,
}

impl Connections {
    pub fn new(router: Router) -> Self {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_header_size(MAX_HEADER_BYTES)
            .max_buf_size(MAX_BUFFER_BYTES)
            .keep_alive(true);
        Self {
            builder,
            router,
            graceful: GracefulShutdown::new(),
        }
    }

    /// Serves one connection in a task of its own until the client closes it or a stop ends it;
    /// over TLS when an acceptor is given, the handshake in that task too, so a slow or failing
    /// one holds up no other connection.
    pub fn serve<IO>(&self, io: IO, peer: SocketAddr, tls: Option<&TlsAcceptor>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(Peer(peer));
            let mut router = router.clone();
            async move { router.call(request.map(Body::new)).await }
        });
        let watcher = self.graceful.watcher();
        let builder = self.builder.clone();
        let tls = tls.cloned();
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(io), service))
                        .await
                }
                Some(acceptor) => match acceptor.accept(io).await {
                    Ok(io) => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(io), service))
                            .await
                    }
                    Err(error) => {
                        tracing::debug!(%error, peer = %peer, "tls handshake failed");
                        return;
                    }
                },
            };
            if let Err(error) = served {
                tracing::debug!(%error, peer = %peer, "http connection ended with an error");
            }
        });
    }

    /// Closes idle connections, lets requests in flight finish, and waits up to `grace`.
    pub async fn shutdown(self, grace: Duration) {
        if tokio::time::timeout(grace, self.graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "grace period over; closing http connections still busy"
            );
        }
    }
}

/// Accepts connections on `listener` until `stopped` turns true, then stops accepting and gives
/// requests in flight up to `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    mut stopped: watch::Receiver<bool>,
    grace: Duration,
) {
    let connections = Connections::new(router);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, "http listener failed to accept");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Checks are small request/response pairs: waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        connections.serve(stream, peer, tls.as_ref());
    }
    drop(listener);
    connections.shutdown(grace).await;
}

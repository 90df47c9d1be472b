//! `GET /.well-known/jwks.json`: the public keys that verify access tokens, for services that
//! check them offline.

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};

use super::HttpState;

/// The key set from memory (reloaded every few seconds): no database read. Caches may keep it
/// for a minute; a verifier meeting an unknown `kid` should fetch it again.
pub async fn jwks(State(state): State<HttpState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        state.authorizer.jwks(),
    )
        .into_response()
}

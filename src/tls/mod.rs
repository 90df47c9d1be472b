//! TLS with rustls (ring, TLS 1.2 and 1.3): the server's certificate and client CA, re-read when
//! their files change, an acceptor any listener can wrap its connections with, the gRPC
//! listener's stream of TLS connections, and the client side for `probe`.

mod client;
mod incoming;
mod pem;
mod server;

pub use client::ClientTls;
pub use incoming::{TlsConnection, incoming};
pub use pem::TlsError;
pub use server::{Alpn, HANDSHAKE_TIMEOUT, RELOAD_INTERVAL, ServerTls, TlsAcceptor};

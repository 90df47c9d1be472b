//! The client side of TLS, for `probe`: trust a CA, optionally present a certificate.

use std::{path::Path, sync::Arc};

use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig,
    crypto::ring,
    pki_types::ServerName,
    version::{TLS12, TLS13},
};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::pem::{self, TlsError};

/// How to reach a TLS server: the CA to trust, the name to expect, the client certificate.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl ClientTls {
    /// Reads the CA (and the client certificate and key, when given) from PEM files.
    pub fn load(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        server_name: &str,
    ) -> Result<Self, TlsError> {
        let roots = pem::roots("the CA", ca, &pem::read("the CA", ca)?)?;
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| TlsError::Setup(format!("server name {server_name:?}: {e}")))?;
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&TLS13, &TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => {
                let what = "the client certificate";
                let chain = pem::certificates(what, cert, &pem::read(what, cert)?)?;
                let what = "the client key";
                let private_key = pem::private_key(what, key, &pem::read(what, key)?)?;
                builder
                    .with_client_auth_cert(chain, private_key)
                    .map_err(|e| pem::pair_error(&e, cert, key, what))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }

    /// A channel to `addr` (`host:port`) over TLS, with `endpoint`'s timeouts.
    pub async fn connect(
        &self,
        endpoint: Endpoint,
        addr: String,
    ) -> Result<Channel, tonic::transport::Error> {
        let tls = self.clone();
        let connector = tower::service_fn(move |_| {
            let tls = tls.clone();
            let addr = addr.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let stream = tokio_rustls::TlsConnector::from(tls.config)
                    .connect(tls.server_name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        endpoint.connect_with_connector(connector).await
    }
}

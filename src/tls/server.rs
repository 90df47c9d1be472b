//! The server side of TLS: certificate, key and client CA loaded from PEM files and re-read
//! when the files change, and the acceptor that turns accepted connections into TLS streams.

use std::{
    io,
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    crypto::{CryptoProvider, ring},
    server::WebPkiClientVerifier,
    version::{TLS12, TLS13},
};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};

use super::pem::{self, TlsError};
use crate::config::TlsFiles;

/// How often the files are compared with what is being served. Kubernetes takes up to a
/// minute to update a mounted Secret, so a few seconds more are nothing.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// A connection that hasn't completed its handshake by then is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const CERT: &str = "the TLS certificate";
const KEY: &str = "the TLS private key";
const CLIENT_CA: &str = "the TLS client CA";

/// Which application protocol a listener speaks, offered through ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 only.
    H2,
    /// A plain HTTP/1.1 listener.
    Http1,
}

/// TLS for the server's listeners. Clones share one state, so a reload reaches every
/// acceptor made from it.
#[derive(Clone)]
pub struct ServerTls {
    shared: Arc<Shared>,
}

struct Shared {
    files: TlsFiles,
    current: RwLock<Arc<Loaded>>,
}

/// What one version of the files gave: a configuration per protocol, and the digest of the
/// files' contents to tell when they change.
struct Loaded {
    digest: [u8; 32],
    h2: Arc<ServerConfig>,
    http1: Arc<ServerConfig>,
}

/// The files' contents, read together.
struct Sources {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// What a look at the files found.
enum Reload {
    Unchanged,
    Loaded,
}

impl ServerTls {
    /// Reads and checks the files: a missing or unreadable file, invalid PEM, a key that isn't
    /// the certificate's or a client CA certificate unusable as a trust anchor is an error.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let loaded = Loaded::build(&files, &Sources::read(&files)?)?;
        Ok(Self {
            shared: Arc::new(Shared {
                files,
                current: RwLock::new(Arc::new(loaded)),
            }),
        })
    }

    /// Whether clients must present a certificate from the client CA.
    pub fn mutual(&self) -> bool {
        self.shared.files.client_ca.is_some()
    }

    /// An acceptor for a listener speaking `alpn`.
    pub fn acceptor(&self, alpn: Alpn) -> TlsAcceptor {
        TlsAcceptor {
            tls: self.clone(),
            alpn,
        }
    }

    fn current(&self) -> Arc<Loaded> {
        // A poisoned lock still holds a complete configuration: swaps replace the Arc whole.
        match self.shared.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the files every `RELOAD_INTERVAL` until `stopped` turns true, and serves new
    /// handshakes with what they hold once it is usable. Connections already open keep the
    /// certificate they were made with. Files that can't be used leave the current ones in
    /// place, with one warning per distinct problem rather than one per look.
    pub async fn watch(self, mut stopped: watch::Receiver<bool>) {
        let mut last_problem: Option<String> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(RELOAD_INTERVAL) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            match self.reload().await {
                Ok(Reload::Unchanged) => last_problem = None,
                Ok(Reload::Loaded) => {
                    last_problem = None;
                    tracing::info!(
                        cert = %self.shared.files.cert.display(),
                        "tls files changed; new connections get the new certificate"
                    );
                }
                Err((problem, error)) => {
                    if last_problem.as_ref() != Some(&problem) {
                        tracing::warn!(
                            error = %error,
                            "tls files changed but cannot be used; keeping the current certificate"
                        );
                        last_problem = Some(problem);
                    }
                }
            }
        }
    }

    /// Loads the files when their contents differ from what is served. A refusal comes with a
    /// key that stays the same while the files do.
    async fn reload(&self) -> Result<Reload, (String, TlsError)> {
        let files = self.shared.files.clone();
        // File reads block; a mounted volume can be slow.
        let sources = tokio::task::spawn_blocking(move || Sources::read(&files))
            .await
            .unwrap_or_else(|join| Err(TlsError::Setup(join.to_string())))
            .map_err(|error| (error.to_string(), error))?;
        let digest = sources.digest();
        if digest == self.current().digest {
            return Ok(Reload::Unchanged);
        }
        let loaded = Loaded::build(&self.shared.files, &sources)
            .map_err(|error| (hex::encode(digest), error))?;
        let mut current = match self.shared.current.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(loaded);
        Ok(Reload::Loaded)
    }
}

impl Sources {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            cert: pem::read(CERT, &files.cert)?,
            key: pem::read(KEY, &files.key)?,
            client_ca: files
                .client_ca
                .as_deref()
                .map(|path| pem::read(CLIENT_CA, path))
                .transpose()?,
        })
    }

    /// A digest of all three files, so the key need not be kept to compare.
    fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            match part {
                Some(bytes) => {
                    hasher.update((bytes.len() as u64 + 1).to_be_bytes());
                    hasher.update(bytes);
                }
                None => hasher.update(0u64.to_be_bytes()),
            }
        }
        hasher.finalize().into()
    }
}

impl Loaded {
    fn build(files: &TlsFiles, sources: &Sources) -> Result<Self, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let chain = pem::certificates(CERT, &files.cert, &sources.cert)?;
        let key = pem::private_key(KEY, &files.key, &sources.key)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&TLS13, &TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let builder = match (&files.client_ca, &sources.client_ca) {
            (Some(path), Some(pem)) => {
                let roots = pem::roots(CLIENT_CA, path, pem)?;
                let verifier = client_verifier(roots, provider).map_err(|reason| TlsError::Ca {
                    what: CLIENT_CA,
                    path: path.clone(),
                    reason,
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| pem::pair_error(&e, &files.cert, &files.key, KEY))?;
        let with_alpn = |protocol: &[u8]| {
            let mut config = config.clone();
            config.alpn_protocols = vec![protocol.to_vec()];
            Arc::new(config)
        };
        Ok(Self {
            digest: sources.digest(),
            h2: with_alpn(b"h2"),
            http1: with_alpn(b"http/1.1"),
        })
    }
}

fn client_verifier(
    roots: rustls::RootCertStore,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())
}

/// Makes TLS streams of accepted connections with the certificate current at the time.
///
/// A listener wraps its connections with it in its per-connection task, so a slow or failed
/// handshake holds up no other connection:
///
/// ```ignore
/// let acceptor = tls.acceptor(Alpn::Http1);
/// tokio::spawn(async move {
///     let Ok(stream) = acceptor.accept(tcp).await else { return };
///     http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
/// });
/// ```
#[derive(Clone)]
pub struct TlsAcceptor {
    tls: ServerTls,
    alpn: Alpn,
}

impl TlsAcceptor {
    /// The TLS handshake on `stream`, given up after `HANDSHAKE_TIMEOUT`.
    pub async fn accept<IO>(&self, stream: IO) -> io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let current = self.tls.current();
        let config = match self.alpn {
            Alpn::H2 => current.h2.clone(),
            Alpn::Http1 => current.http1.clone(),
        };
        let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "tls handshake timed out",
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        ca: rustls::pki_types::CertificateDer<'static>,
        files: TlsFiles,
    }

    /// A CA, and a `localhost` certificate it signed written to files.
    fn new_fixture() -> Fixture {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: None,
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        Fixture {
            _dir: dir,
            ca: ca.der().clone(),
            files,
        }
    }

    /// Handshakes a client offering `offered` with `acceptor`; the protocol agreed, or the
    /// server's error.
    async fn handshake(
        fixture: &Fixture,
        acceptor: TlsAcceptor,
        offered: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Option<Vec<u8>>, String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor
                .accept(tcp)
                .await
                .map(|tls| tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
                .map_err(|e| e.to_string())
        });
        let mut roots = RootCertStore::empty();
        roots.add(fixture.ca.clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = offered.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _client = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await;
        server.await.unwrap()
    }

    #[tokio::test]
    async fn each_listener_offers_its_own_protocol_over_tls_1_2_and_1_3() {
        let fixture = new_fixture();
        let tls = ServerTls::load(fixture.files.clone()).unwrap();
        let both: &[&[u8]] = &[b"h2", b"http/1.1"];

        for versions in [&[&TLS13][..], &[&TLS12][..]] {
            let grpc = handshake(&fixture, tls.acceptor(Alpn::H2), both, versions).await;
            let http = handshake(&fixture, tls.acceptor(Alpn::Http1), both, versions).await;
            assert_eq!(grpc, Ok(Some(b"h2".to_vec())));
            assert_eq!(http, Ok(Some(b"http/1.1".to_vec())));
        }
        let http1_only =
            handshake(&fixture, tls.acceptor(Alpn::H2), &[b"http/1.1"], &[&TLS13]).await;
        assert!(http1_only.is_err(), "gRPC is HTTP/2 only");
    }

    #[tokio::test]
    async fn a_reload_takes_changed_files_and_refuses_bad_ones_with_a_stable_key() {
        let fixture = new_fixture();
        let tls = ServerTls::load(fixture.files.clone()).unwrap();
        let first = tls.current().digest;

        let unchanged = tls.reload().await;
        let other = new_fixture();
        std::fs::copy(&other.files.cert, &fixture.files.cert).unwrap();
        let mismatched = tls.reload().await;
        let mismatched_again = tls.reload().await;
        std::fs::copy(&other.files.key, &fixture.files.key).unwrap();
        let replaced = tls.reload().await;
        std::fs::remove_file(&fixture.files.key).unwrap();
        let missing = tls.reload().await;

        assert!(matches!(unchanged, Ok(Reload::Unchanged)));
        let (Err((key, error)), Err((key_again, _))) = (mismatched, mismatched_again) else {
            panic!("a certificate without its key is refused");
        };
        assert!(matches!(error, TlsError::Mismatch { .. }), "{error}");
        assert_eq!(key, key_again, "one warning for one bad version");
        assert!(matches!(replaced, Ok(Reload::Loaded)));
        assert_ne!(tls.current().digest, first);
        assert!(matches!(missing, Err((_, TlsError::Read { .. }))));
        assert_eq!(
            handshake(&other, tls.acceptor(Alpn::H2), &[b"h2"], &[&TLS13]).await,
            Ok(Some(b"h2".to_vec())),
            "the last good files stay in use"
        );
    }
}

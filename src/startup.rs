//! The composition root: builds the store, the hasher, the use cases, the gRPC server and the
//! HTTP listener from settings, and runs them until a shutdown signal. The binary and the tests
//! share it.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_stream::{StreamExt as _, wrappers::TcpListenerStream};
use tonic::transport::Server;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    accounts::{
        Accounts, BootstrapAccount, Bootstrapped, KEY_RELOAD_INTERVAL, Policy, ThrottlePolicy,
    },
    authz::Authorizer,
    config::{Durations, Settings},
    domain::ThrottleRule,
    grpc::{
        IdentityApi, LIVENESS_SERVICE_NAME, RpcSpans, SERVICE_NAME,
        ext_authz::{self, AuthorizationServer, ExtAuthz},
        pb,
    },
    http::{self, HttpState},
    metrics::Metrics,
    password::PasswordHasher,
    proxies::TrustedProxies,
    store::{self, Store, StoreError},
    tls::{self, Alpn, ServerTls},
};

/// How often readiness re-checks the database.
const READINESS_INTERVAL: Duration = Duration::from_secs(2);
/// How often expired sessions, stale throttle rows and old audit rows are deleted, and the
/// stored password hashes measured again.
const PURGE_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// How often the refusals of throttled clients are written as aggregated audit rows.
const REFUSALS_INTERVAL: Duration = Duration::from_secs(60);
/// How long one readiness ping may take before the database counts as away.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Application {
    listener: TcpListener,
    http_listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    accounts: Accounts,
    trusted_proxies: TrustedProxies,
    settings: Settings,
    durations: Durations,
    bootstrap: Option<BootstrapAccount>,
    /// TLS for the listeners, when configured; plaintext otherwise.
    tls: Option<ServerTls>,
}

impl Application {
    /// Checks the settings, opens the store and binds the listeners. Nothing is served yet.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let durations = settings.check()?;
        let bootstrap = BootstrapAccount::parse(
            settings.bootstrap.username.as_deref(),
            settings
                .bootstrap
                .password
                .as_ref()
                .map(secrecy::ExposeSecret::expose_secret),
            settings
                .bootstrap
                .user_token
                .as_ref()
                .map(secrecy::ExposeSecret::expose_secret),
        )?;
        let trusted_proxies = TrustedProxies::parse(&settings.server.trusted_proxies)?;
        let tls = settings
            .server
            .tls
            .files()?
            .map(ServerTls::load)
            .transpose()?;
        let accounts = build_accounts(&settings).await?;
        let addr = settings.server.bind_addr()?;
        let listener = bind(addr).await?;
        let http_listener = bind(SocketAddr::new(addr.ip(), settings.server.http_port)).await?;
        let metrics_listener = if settings.metrics.enabled {
            Some(bind(settings.metrics_addr()?).await?)
        } else {
            None
        };
        Ok(Self {
            listener,
            http_listener,
            metrics_listener,
            accounts,
            trusted_proxies,
            settings,
            durations,
            bootstrap,
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// `"off"`, `"on"`, or `"mutual"` when clients must present a certificate.
    pub fn tls_mode(&self) -> &'static str {
        match &self.tls {
            None => "off",
            Some(tls) if tls.mutual() => "mutual",
            Some(_) => "on",
        }
    }

    /// Where the HTTP endpoints (the gateway checks) are served.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http_listener.local_addr()
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Serves until `shutdown` resolves. Health reports NOT_SERVING until migrations ran and the
    /// database answers; on shutdown it turns NOT_SERVING at once, the listener closes, and calls
    /// in flight get the configured grace period to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let health = HealthReporter::new();
        let health_service = crate::grpc::health::server(&health);
        set_readiness(&health, ServingStatus::NotServing).await;
        health
            .set_service_status(LIVENESS_SERVICE_NAME, ServingStatus::Serving)
            .await;

        // Both reflection versions, so old and new grpcurl work; the google.rpc descriptors let
        // clients decode error details.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(ext_authz::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let server_settings = &self.settings.server;
        let metrics = Arc::new(Metrics::new());
        let trusted_proxies = Arc::new(self.trusted_proxies);
        let identity = pb::identity_service_server::IdentityServiceServer::new(IdentityApi::new(
            self.accounts.clone(),
            metrics.clone(),
            trusted_proxies.clone(),
        ))
        .max_decoding_message_size(server_settings.max_request_bytes);
        let authorizer = Authorizer::new(
            self.accounts.clone(),
            metrics.clone(),
            &self.settings.session.cookie_name,
            server_settings.public_url(),
        );
        let ext_authz = AuthorizationServer::new(ExtAuthz::new(
            authorizer.clone(),
            metrics.clone(),
            trusted_proxies.clone(),
        ))
        .max_decoding_message_size(server_settings.max_request_bytes);
        let grace = Duration::from_secs(server_settings.shutdown_grace_seconds);

        let (stop, stopped) = watch::channel(false);
        let mut stopped_signal = stopped.clone();
        let router = Server::builder()
            .tcp_nodelay(true)
            .max_concurrent_streams(server_settings.max_concurrent_streams)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .http2_max_header_list_size(16 * 1024)
            .http2_max_pending_accept_reset_streams(Some(64))
            .layer(RpcSpans)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(identity)
            .add_service(ext_authz);
        let stop_serving = async move {
            let _ = stopped_signal.wait_for(|stop| *stop).await;
        };
        // Plaintext keeps tonic's own path; TLS handshakes happen before tonic sees a connection.
        let mut server: JoinHandle<Result<(), tonic::transport::Error>> = match &self.tls {
            // tonic's `tcp_nodelay` applies only to listeners it binds itself: without it, a
            // response of more than one segment waits on the client's delayed ACK (40 ms).
            None => tokio::spawn(router.serve_with_incoming_shutdown(
                TcpListenerStream::new(self.listener).map(|accepted| {
                    if let Ok(stream) = &accepted {
                        let _ = stream.set_nodelay(true);
                    }
                    accepted
                }),
                stop_serving,
            )),
            Some(server_tls) => {
                tokio::spawn(server_tls.clone().watch(stopped.clone()));
                tokio::spawn(router.serve_with_incoming_shutdown(
                    tls::incoming(self.listener, server_tls.acceptor(Alpn::H2)),
                    stop_serving,
                ))
            }
        };
        let router = http::router(HttpState {
            authorizer,
            trusted_proxies,
        });
        let http_tls = self.tls.as_ref().map(|tls| tls.acceptor(Alpn::Http1));
        let http_server = tokio::spawn(http::serve(
            self.http_listener,
            router,
            http_tls,
            stopped.clone(),
            grace,
        ));
        if let Some(listener) = self.metrics_listener {
            tokio::spawn(crate::metrics::serve(
                listener,
                metrics,
                self.accounts.hasher().clone(),
                self.accounts.store().clone(),
                stopped.clone(),
                self.durations.metrics_header_read_timeout,
            ));
        }
        let mut readiness = tokio::spawn(readiness(
            self.accounts.clone(),
            health.clone(),
            self.bootstrap,
        ));

        let outcome = tokio::select! {
            () = shutdown => Ok(()),
            fatal = &mut readiness => match fatal {
                Ok(Err(error)) => Err(error),
                Ok(Ok(())) => Ok(()),
                Err(join) => Err(anyhow::anyhow!("readiness task failed: {join}")),
            },
            served = &mut server => return served?.map_err(Into::into),
        };
        readiness.abort();
        self.accounts.flush_refusals().await;
        set_readiness(&health, ServingStatus::NotServing).await;
        health
            .set_service_status(LIVENESS_SERVICE_NAME, ServingStatus::NotServing)
            .await;
        tracing::info!("shutting down: no new calls, finishing calls in flight");
        let _ = stop.send(true);
        let grace = self.durations.shutdown_grace;
        match tokio::time::timeout(grace, &mut server).await {
            Ok(served) => served??,
            Err(_) => {
                tracing::warn!(
                    grace_seconds = grace.as_secs(),
                    "grace period over; ending calls still in flight"
                );
                server.abort();
            }
        }
        // The HTTP listener keeps to the same grace period on its own.
        if let Err(error) = http_server.await {
            tracing::warn!(%error, "http listener task failed");
        }
        outcome
    }
}

/// The store, the hasher and the use cases, as every command needs them.
pub async fn build_accounts(settings: &Settings) -> anyhow::Result<Accounts> {
    let durations = settings.check()?;
    let store = store::connect(settings).await?;
    let hasher = PasswordHasher::new(&settings.argon2)?;
    let throttle = &settings.throttle;
    let rule = |max_failures| ThrottleRule {
        max_failures,
        base_delay: durations.throttle_base_delay,
        max_delay: durations.throttle_max_delay,
        window: durations.throttle_window,
    };
    let policy = Policy {
        disable_signup_without_link: settings.signup.disable_without_link,
        session_ttl: durations.session_ttl,
        session_max_idle: durations.session_max_idle,
        public_url: settings.server.public_url().map(str::to_owned),
        throttle: ThrottlePolicy {
            login_per_email: rule(throttle.login_failures_per_email),
            login_per_address: rule(throttle.login_failures_per_address),
            token_per_address: rule(throttle.token_failures_per_address),
            invite_per_address: rule(throttle.invite_failures_per_address),
            in_flight_per_address: throttle.in_flight_per_address,
            ipv6_prefix_length: throttle.ipv6_prefix_length,
        },
        audit_retention: durations.audit_retention,
        access_token_ttl: durations.access_token_ttl,
    };
    Ok(Accounts::new(store, hasher, policy))
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Runs the migrations, retrying while the database is away; other failures are fatal.
pub async fn migrate(store: &Arc<dyn Store>) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(250);
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(StoreError::Unavailable(error)) => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "database unavailable; migrations wait");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                return Err(anyhow::Error::new(error).context("migrations failed"));
            }
        }
    }
}

async fn set_readiness(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// Migrates, bootstraps, then keeps health in step with the database. Returns only on a fatal
/// error; it is aborted at shutdown.
async fn readiness(
    accounts: Accounts,
    health: HealthReporter,
    bootstrap: Option<BootstrapAccount>,
) -> anyhow::Result<()> {
    migrate(accounts.store()).await?;
    if let Some(account) = &bootstrap {
        match accounts.bootstrap(account).await {
            Ok(Bootstrapped::Created) => tracing::info!("bootstrap account created"),
            Ok(Bootstrapped::AlreadyExists) => {
                tracing::info!("bootstrap account exists; left as it is");
            }
            Err(error) => return Err(anyhow::Error::new(error).context("bootstrap failed")),
        }
    }
    // Before any token is signed or checked.
    accounts
        .load_signing_keys()
        .await
        .context("loading the signing keys")?;
    // Before any login is served, so that the first one is already padded right.
    accounts
        .calibrate_password_checks()
        .await
        .context("measuring the stored password hashes")?;
    accounts.mark_ready();
    accounts.purge().await;
    let mut serving = None;
    let mut last_purge = tokio::time::Instant::now();
    let mut last_flush = tokio::time::Instant::now();
    let mut last_keys = tokio::time::Instant::now();
    loop {
        let up = matches!(
            tokio::time::timeout(PING_TIMEOUT, accounts.store().ping()).await,
            Ok(Ok(()))
        );
        accounts.set_database_up(up);
        if serving != Some(up) {
            if up {
                tracing::info!("database reachable: serving");
            } else {
                tracing::warn!("database unreachable: not serving");
            }
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_readiness(&health, status).await;
            serving = Some(up);
        }
        if up && last_flush.elapsed() >= REFUSALS_INTERVAL {
            last_flush = tokio::time::Instant::now();
            accounts.flush_refusals().await;
        }
        if up && last_keys.elapsed() >= KEY_RELOAD_INTERVAL {
            last_keys = tokio::time::Instant::now();
            if let Err(error) = accounts.reload_signing_keys().await {
                tracing::warn!(%error, "reloading the key set failed");
            }
        }
        if up && last_purge.elapsed() >= PURGE_INTERVAL {
            last_purge = tokio::time::Instant::now();
            accounts.purge().await;
            if let Err(error) = accounts.calibrate_password_checks().await {
                tracing::warn!(%error, "measuring the stored password hashes failed");
            }
        }
        tokio::time::sleep(READINESS_INTERVAL).await;
    }
}

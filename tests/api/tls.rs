//! TLS on the gRPC port: server certificates, mutual TLS, plaintext and stalled clients,
//! certificate rotation the way Kubernetes rotates a mounted Secret, bad files at start and on
//! reload, and `probe` over TLS. TLS doesn't touch storage, so these run on SQLite only.

use std::{
    fs::File,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use label_studio_identity::{config::TlsSettings, grpc::LIVENESS_SERVICE_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{BIN, Backend, ServerProcess, TestApp, TestDb, free_port, run};

/// A certificate authority made for one test.
pub(crate) struct Ca {
    pub(crate) pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, in PEM.
pub(crate) struct Pair {
    pub(crate) cert: String,
    pub(crate) key: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pair {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub(crate) fn server(&self) -> Pair {
        self.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    pub(crate) fn client(&self, name: &str) -> Pair {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A tonic client configuration that trusts this CA and expects `localhost`.
    fn trusted(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.pem))
            .domain_name("localhost")
    }
}

fn presenting(tls: ClientTlsConfig, pair: &Pair) -> ClientTlsConfig {
    tls.identity(Identity::from_pem(&pair.cert, &pair.key))
}

/// A directory laid out as the kubelet mounts a Secret: the files live in a timestamped
/// directory, `..data` links to it, and each file name links through `..data`. An update
/// writes a new directory and swaps `..data` in one rename.
struct SecretVolume {
    dir: tempfile::TempDir,
    version: u32,
}

impl SecretVolume {
    fn new(files: &[(&str, &str)]) -> Self {
        let mut volume = Self {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        volume.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.path(name)).unwrap();
        }
        volume
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        let old = format!("..2026_01_01_00_00_{:02}.0", self.version);
        self.version += 1;
        let new = format!("..2026_01_01_00_00_{:02}.0", self.version);
        std::fs::create_dir(self.path(&new)).unwrap();
        for (name, content) in files {
            std::fs::write(self.path(&new).join(name), content).unwrap();
        }
        std::os::unix::fs::symlink(&new, self.path("..data_tmp")).unwrap();
        std::fs::rename(self.path("..data_tmp"), self.path("..data")).unwrap();
        if self.version > 1 {
            std::fs::remove_dir_all(self.path(&old)).unwrap();
        }
    }

    /// Overwrites the files where they are, one after the other, as an operator's `cp` does.
    fn rewrite_in_place(&self, files: &[(&str, &str)]) {
        for (name, content) in files {
            std::fs::write(self.path(name), content).unwrap();
        }
    }

    fn tls_settings(&self, client_ca: bool) -> TlsSettings {
        TlsSettings {
            cert: Some(self.path("tls.crt")),
            key: Some(self.path("tls.key")),
            client_ca: client_ca.then(|| self.path("ca.crt")),
        }
    }
}

async fn settings_with(tls: TlsSettings) -> (label_studio_identity::config::Settings, TestDb) {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut settings = db.settings();
    settings.server.tls = tls;
    (settings, db)
}

/// A health check over a new TLS connection; any failure as text.
async fn health_over(addr: SocketAddr, tls: ClientTlsConfig) -> Result<i32, String> {
    let app = TestApp::connect_tls(addr, tls)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    app.health("").await.map_err(|status| status.to_string())
}

const SERVING: Result<i32, String> = Ok(ServingStatus::Serving as i32);

/// Waits until `check` holds, for at most 30 seconds (the server looks at its files every few).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trusts_the_ca_signs_up_and_logs_in_over_tls() {
    let ca = Ca::new("identity test CA");
    let server = ca.server();
    let volume = SecretVolume::new(&[("tls.crt", &server.cert), ("tls.key", &server.key)]);
    let (settings, db) = settings_with(volume.tls_settings(false)).await;

    let app = TestApp::start_tls(settings, ca.trusted()).await;
    app.sign_up("ann@example.com", "correct-horse").await;
    let login = app.login("ann@example.com", "correct-horse").await;
    let stranger = health_over(app.addr, Ca::new("another CA").trusted()).await;

    assert!(login.is_ok(), "{login:?}");
    assert!(
        db.count("SELECT COUNT(*) FROM audit_events WHERE client_addr = '127.0.0.1'")
            .await
            >= 2,
        "the client's address reaches the service over TLS as over plaintext"
    );
    let refused = stranger.expect_err("a client that trusts another CA is refused");
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    let addr = app.addr;
    app.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a stopped server no longer listens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mutual_tls_only_clients_with_a_certificate_from_the_client_ca_are_served() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server = server_ca.server();
    let gateway = client_ca.client("gateway");
    let volume = SecretVolume::new(&[
        ("tls.crt", &server.cert),
        ("tls.key", &server.key),
        ("ca.crt", &client_ca.pem),
    ]);
    let (settings, _db) = settings_with(volume.tls_settings(true)).await;

    let app = TestApp::start_tls(settings, presenting(server_ca.trusted(), &gateway)).await;
    let anonymous = health_over(app.addr, server_ca.trusted()).await;
    let outsider = Ca::new("outsider CA").client("gateway");
    let foreign = health_over(app.addr, presenting(server_ca.trusted(), &outsider)).await;
    let signed_up = app
        .client
        .clone()
        .create_user(crate::helpers::sign_up("ann@example.com", "correct-horse"))
        .await;

    assert!(
        anonymous.is_err(),
        "a client without a certificate is refused"
    );
    assert!(foreign.is_err(), "a certificate from another CA is refused");
    assert!(signed_up.is_ok(), "{signed_up:?}");
    assert_eq!(
        health_over(app.addr, presenting(server_ca.trusted(), &gateway)).await,
        SERVING
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_stalled_clients_on_the_tls_port_fail_alone_and_the_server_keeps_serving() {
    let ca = Ca::new("identity test CA");
    let server = ca.server();
    let volume = SecretVolume::new(&[("tls.crt", &server.cert), ("tls.key", &server.key)]);
    let (settings, _db) = settings_with(volume.tls_settings(false)).await;
    let app = TestApp::start_tls(settings, ca.trusted()).await;

    // A client that connects and never says anything holds up nobody else.
    let stalled = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let plaintext_grpc = async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map_err(|status| status.to_string())
    }
    .await;
    let mut http = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // Well under the handshake timeout: the server closes at once on bytes that aren't TLS.
    let closed = tokio::time::timeout(Duration::from_secs(5), http.read_to_end(&mut answer)).await;
    let meanwhile = health_over(app.addr, ca.trusted()).await;

    assert!(plaintext_grpc.is_err(), "plaintext gRPC gets no answer");
    assert!(closed.is_ok(), "the plaintext connection is closed");
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/"),
        "no HTTP answer: {answer:?}"
    );
    assert_eq!(meanwhile, SERVING);
    drop(stalled);
    app.sign_up("ann@example.com", "correct-horse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_connections_while_open_ones_keep_working() {
    let first_ca = Ca::new("first CA");
    let first = first_ca.server();
    let mut volume = SecretVolume::new(&[("tls.crt", &first.cert), ("tls.key", &first.key)]);
    let (settings, _db) = settings_with(volume.tls_settings(false)).await;
    let app = TestApp::start_tls(settings, first_ca.trusted()).await;
    app.sign_up("ann@example.com", "correct-horse").await;

    // Kubernetes' way: a new directory and one rename of `..data`.
    let second_ca = Ca::new("second CA");
    let second = second_ca.server();
    volume.update(&[("tls.crt", &second.cert), ("tls.key", &second.key)]);
    eventually("the swapped certificate is served", || async {
        health_over(app.addr, second_ca.trusted()).await == SERVING
    })
    .await;
    let on_the_open_connection = app.login("ann@example.com", "correct-horse").await;
    let new_with_old_ca = health_over(app.addr, first_ca.trusted()).await;

    // An operator's way: the files overwritten where they are, key and certificate in turn.
    let third_ca = Ca::new("third CA");
    let third = third_ca.server();
    volume.rewrite_in_place(&[("tls.key", &third.key), ("tls.crt", &third.cert)]);
    eventually("the rewritten certificate is served", || async {
        health_over(app.addr, third_ca.trusted()).await == SERVING
    })
    .await;

    // Were the first connection dropped, the channel would reconnect and refuse the new
    // certificate, as it trusts the first CA only.
    assert!(on_the_open_connection.is_ok(), "{on_the_open_connection:?}");
    assert!(new_with_old_ca.is_err(), "new connections get the new cert");
    let still = app.login("ann@example.com", "correct-horse").await;
    assert!(still.is_ok(), "{still:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_ca_admits_its_clients_and_no_longer_the_old_ones() {
    let server_ca = Ca::new("server CA");
    let server = server_ca.server();
    let old_ca = Ca::new("old client CA");
    let new_ca = Ca::new("new client CA");
    let (old_client, new_client) = (old_ca.client("gateway"), new_ca.client("gateway"));
    let mut volume = SecretVolume::new(&[
        ("tls.crt", &server.cert),
        ("tls.key", &server.key),
        ("ca.crt", &old_ca.pem),
    ]);
    let (settings, _db) = settings_with(volume.tls_settings(true)).await;
    let app = TestApp::start_tls(settings, presenting(server_ca.trusted(), &old_client)).await;

    volume.update(&[
        ("tls.crt", &server.cert),
        ("tls.key", &server.key),
        ("ca.crt", &new_ca.pem),
    ]);
    eventually("the new client CA is trusted", || async {
        health_over(app.addr, presenting(server_ca.trusted(), &new_client)).await == SERVING
    })
    .await;

    let old = health_over(app.addr, presenting(server_ca.trusted(), &old_client)).await;
    assert!(
        old.is_err(),
        "a new connection with the old CA's certificate is refused"
    );
}

/// Runs `label-studio-identity probe` with these arguments.
fn probe(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["probe", "--addr", &addr.to_string(), "--timeout", "5"])
        .args(args)
        .env_clear()
        .output()
        .unwrap()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_speaks_tls_and_mutual_tls_and_fails_with_a_wrong_ca() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let wrong_ca = Ca::new("wrong CA");
    let internal = server_ca.issue(&["identity.internal"], ExtendedKeyUsagePurpose::ServerAuth);
    let localhost = server_ca.server();
    let gateway = client_ca.client("kubelet");
    let tls_volume = SecretVolume::new(&[("tls.crt", &internal.cert), ("tls.key", &internal.key)]);
    let mtls_volume = SecretVolume::new(&[
        ("tls.crt", &localhost.cert),
        ("tls.key", &localhost.key),
        ("ca.crt", &client_ca.pem),
        ("client.crt", &gateway.cert),
        ("client.key", &gateway.key),
        ("server-ca.crt", &server_ca.pem),
        ("wrong-ca.crt", &wrong_ca.pem),
    ]);
    let (tls_settings, _tls_db) = settings_with(tls_volume.tls_settings(false)).await;
    let (mtls_settings, _mtls_db) = settings_with(mtls_volume.tls_settings(true)).await;
    let tls_app = TestApp::start_tls(
        tls_settings,
        server_ca.trusted().domain_name("identity.internal"),
    )
    .await;
    let mtls_app =
        TestApp::start_tls(mtls_settings, presenting(server_ca.trusted(), &gateway)).await;
    let ca = path_str(&mtls_volume.path("server-ca.crt")).to_owned();
    let wrong = path_str(&mtls_volume.path("wrong-ca.crt")).to_owned();
    let cert = path_str(&mtls_volume.path("client.crt")).to_owned();
    let key = path_str(&mtls_volume.path("client.key")).to_owned();

    let named = probe(
        tls_app.addr,
        &["--tls-ca", &ca, "--tls-server-name", "identity.internal"],
    );
    let by_ip = probe(tls_app.addr, &["--tls-ca", &ca]);
    let wrong_ca = probe(
        tls_app.addr,
        &["--tls-ca", &wrong, "--tls-server-name", "identity.internal"],
    );
    let plaintext = probe(tls_app.addr, &[]);
    let mutual = probe(
        mtls_app.addr,
        &["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key],
    );
    let liveness = probe(
        mtls_app.addr,
        &[
            "--service",
            LIVENESS_SERVICE_NAME,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    let without_cert = probe(mtls_app.addr, &["--tls-ca", &ca]);
    let missing_ca = probe(mtls_app.addr, &["--tls-ca", "/nonexistent/ca.crt"]);

    let stdout = |output: &Output| String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(named.status.success(), "{}", stdout(&named));
    assert_eq!(stdout(&named).trim(), "SERVING");
    assert!(mutual.status.success(), "{}", stdout(&mutual));
    assert!(liveness.status.success(), "{}", stdout(&liveness));
    for (case, output, reason) in [
        (
            "an IP address means localhost",
            &by_ip,
            "not valid for name \"localhost\"",
        ),
        ("a wrong CA", &wrong_ca, "UnknownIssuer"),
        ("plaintext to a TLS port", &plaintext, "NOT_REACHABLE"),
        (
            "no client certificate under mTLS",
            &without_cert,
            "NOT_REACHABLE",
        ),
    ] {
        let text = stdout(output);
        assert!(!output.status.success(), "{case}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "{case}: one line: {text}");
        assert!(text.contains(reason), "{case}: {text}");
    }
    assert!(!missing_ca.status.success());
    assert!(
        String::from_utf8_lossy(&missing_ca.stderr).contains("/nonexistent/ca.crt"),
        "{}",
        String::from_utf8_lossy(&missing_ca.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_stop_the_start_with_a_clear_message() {
    let db = TestDb::new(Backend::Sqlite).await;
    let ca = Ca::new("identity test CA");
    let (server, other) = (ca.server(), ca.server());
    let volume = SecretVolume::new(&[
        ("tls.crt", &server.cert),
        ("tls.key", &server.key),
        ("other.key", &other.key),
        ("garbage.pem", "not a certificate\n"),
        ("ca.crt", &ca.pem),
    ]);
    let file = |name: &str| path_str(&volume.path(name)).to_owned();
    let (cert, key, other_key, garbage, client_ca) = (
        file("tls.crt"),
        file("tls.key"),
        file("other.key"),
        file("garbage.pem"),
        file("ca.crt"),
    );
    // Flags, environment, and what the message must say.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        (vec!["--tls-cert", &cert], vec![], "--tls-key".into()),
        (vec!["--tls-key", &key], vec![], "--tls-cert".into()),
        (
            vec!["--tls-client-ca", &client_ca],
            vec![],
            "needs TLS".into(),
        ),
        (
            vec![],
            vec![("IDENTITY_SERVER__TLS__CERT", cert.as_str())],
            "--tls-key".into(),
        ),
        (
            vec!["--tls-cert", "/nonexistent/tls.crt", "--tls-key", &key],
            vec![],
            "cannot read the TLS certificate /nonexistent/tls.crt".into(),
        ),
        (
            vec!["--tls-cert", &garbage, "--tls-key", &key],
            vec![],
            format!("the TLS certificate {garbage} is not a PEM certificate"),
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &garbage],
            vec![],
            format!("the TLS private key {garbage} holds no PEM private key"),
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            vec![],
            format!("the private key {other_key} does not belong to the certificate {cert}"),
        ),
        (
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &garbage,
            ],
            vec![],
            format!("the TLS client CA {garbage}"),
        ),
    ];

    for (flags, env, expected) in cases {
        let port = free_port().to_string();
        let mut args = vec!["start", "--host", "127.0.0.1", "--port", &port];
        args.extend(flags.iter().copied());
        let output = run(&db, &args, &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{flags:?} {env:?} should stop the start"
        );
        assert!(stderr.contains(&expected), "{flags:?} {env:?}: {stderr}");
    }
}

/// Waits until the server process answers a TLS probe.
async fn wait_serving_tls(server: &mut ServerProcess, ca: &Path) {
    eventually("the server answers over TLS", || {
        let serving = probe(server.addr, &["--tls-ca", path_str(ca)])
            .status
            .success();
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("server exited early: {status}");
        }
        std::future::ready(serving)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_new_files_keep_the_current_certificate_with_a_warning_until_good_ones_come() {
    let db = TestDb::new(Backend::Sqlite).await;
    let first_ca = Ca::new("first CA");
    let second_ca = Ca::new("second CA");
    let (first, second) = (first_ca.server(), second_ca.server());
    let mut volume = SecretVolume::new(&[("tls.crt", &first.cert), ("tls.key", &first.key)]);
    let cas = tempfile::tempdir().unwrap();
    let (first_ca_file, second_ca_file) = (cas.path().join("1.crt"), cas.path().join("2.crt"));
    std::fs::write(&first_ca_file, &first_ca.pem).unwrap();
    std::fs::write(&second_ca_file, &second_ca.pem).unwrap();
    let log_path = cas.path().join("server.log");
    let (cert, key) = (volume.path("tls.crt"), volume.path("tls.key"));
    let mut server = ServerProcess::start_logging(
        &db,
        &[],
        &[
            ("IDENTITY_SERVER__TLS__CERT", path_str(&cert)),
            ("IDENTITY_SERVER__TLS__KEY", path_str(&key)),
        ],
        Stdio::from(File::create(&log_path).unwrap()),
    );
    wait_serving_tls(&mut server, &first_ca_file).await;
    let warnings = || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .matches("tls files changed but cannot be used")
            .count()
    };

    // A new certificate without its new key.
    volume.update(&[("tls.crt", &second.cert), ("tls.key", &first.key)]);
    eventually("a warning about the mismatched key", || {
        std::future::ready(warnings() == 1)
    })
    .await;
    let after_mismatch = probe(server.addr, &["--tls-ca", path_str(&first_ca_file)]);
    volume.update(&[("tls.crt", "garbage"), ("tls.key", &second.key)]);
    eventually("a warning about the garbage certificate", || {
        std::future::ready(warnings() == 2)
    })
    .await;
    let after_garbage = probe(server.addr, &["--tls-ca", path_str(&first_ca_file)]);
    volume.update(&[("tls.crt", &second.cert), ("tls.key", &second.key)]);
    wait_serving_tls(&mut server, &second_ca_file).await;

    assert!(
        after_mismatch.status.success(),
        "the first certificate stays"
    );
    assert!(
        after_garbage.status.success(),
        "the first certificate stays"
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("does not belong to the certificate"), "{log}");
    assert!(log.contains("is not a PEM certificate"), "{log}");
    assert!(
        log.contains("new connections get the new certificate"),
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "no key material in the log");
    assert_eq!(
        warnings(),
        2,
        "one warning per bad version, not per look: {log}"
    );
}

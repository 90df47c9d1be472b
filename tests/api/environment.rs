//! The binary in the environment a platform gives it: Kubernetes' service-link variables,
//! typos in settings, numeric-looking secrets and out-of-range durations. Nothing here depends
//! on the store, so each case runs on SQLite only.

use std::{
    io::Read,
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use tonic::Code;

use crate::helpers::{Backend, ServerProcess, TestDb, assert_refused, command, free_port};

/// What Kubernetes injects into a pod for a Service named `service` with the chart's two ports.
fn service_links(service: &str) -> Vec<(String, String)> {
    let svc = service.to_ascii_uppercase().replace('-', "_");
    let ip = "10.96.0.12";
    let mut vars = vec![
        (format!("{svc}_SERVICE_HOST"), ip.to_owned()),
        (format!("{svc}_SERVICE_PORT"), "50051".to_owned()),
        (format!("{svc}_SERVICE_PORT_GRPC"), "50051".to_owned()),
        (format!("{svc}_SERVICE_PORT_METRICS"), "9464".to_owned()),
        (format!("{svc}_PORT"), format!("tcp://{ip}:50051")),
    ];
    for port in ["50051", "9464"] {
        vars.extend([
            (
                format!("{svc}_PORT_{port}_TCP"),
                format!("tcp://{ip}:{port}"),
            ),
            (format!("{svc}_PORT_{port}_TCP_PROTO"), "tcp".to_owned()),
            (format!("{svc}_PORT_{port}_TCP_PORT"), port.to_owned()),
            (format!("{svc}_PORT_{port}_TCP_ADDR"), ip.to_owned()),
        ]);
    }
    vars
}

/// A server whose log lines go to a file, read back with [`LoggedServer::log`].
struct LoggedServer {
    server: ServerProcess,
    log: tempfile::NamedTempFile,
}

impl LoggedServer {
    fn start(db: &TestDb, env: &[(&str, &str)]) -> Self {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let file = log.reopen().expect("log file");
        let server = ServerProcess::start_logging(db, &[], env, Stdio::from(file));
        Self { server, log }
    }

    /// Stops the server and returns what it logged.
    fn stop(self) -> String {
        assert!(self.server.terminate().success(), "SIGTERM ends it cleanly");
        let mut text = String::new();
        self.log
            .reopen()
            .expect("log file")
            .read_to_string(&mut text)
            .expect("read the log");
        text
    }
}

/// Runs `start` with `env` and waits for it to exit; a server still running after 30 s has
/// accepted what it should have refused, and the test fails.
async fn start_expecting_refusal(db: &TestDb, env: &[(&str, &str)]) -> Output {
    let port = free_port().to_string();
    let mut child = command(db, &["start", "--host", "127.0.0.1", "--port", &port], env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("poll the binary").is_some() {
            return child.wait_with_output().expect("collect the output");
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{env:?}: the server started instead of refusing the configuration");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_starts_among_the_variables_kubernetes_injects_for_its_services() {
    let db = TestDb::new(Backend::Sqlite).await;
    for service in ["identity-label-studio-identity", "identity"] {
        let links = service_links(service);
        let mut env: Vec<(&str, &str)> = links
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        env.push(("IDENTITY_RELEASE_CHANNEL", "not-a-setting-value"));

        let mut server = LoggedServer::start(&db, &env);
        server.server.wait_serving().await;
        let log = server.stop();

        let warnings: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("IDENTITY_RELEASE_CHANNEL"))
            .collect();
        assert_eq!(
            warnings.len(),
            1,
            "{service}: one warning expected in\n{log}"
        );
        assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
        assert!(!log.contains("not-a-setting-value"), "{log}");
        for (name, _) in &links {
            assert!(!log.contains(name.as_str()), "{name} is silent\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_in_a_setting_still_stops_the_start_naming_the_variable() {
    let db = TestDb::new(Backend::Sqlite).await;

    let output = start_expecting_refusal(&db, &[("IDENTITY_THROTTLE__WINDOW_SECOND", "5")]).await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("IDENTITY_THROTTLE__WINDOW_SECOND is not a setting"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_beyond_their_bounds_stop_the_start_naming_the_setting() {
    let db = TestDb::new(Backend::Sqlite).await;
    for (variable, value, setting) in [
        (
            "IDENTITY_THROTTLE__WINDOW_SECONDS",
            "9000000000000",
            "throttle.window_seconds",
        ),
        (
            "IDENTITY_SESSION__TTL_SECONDS",
            "18446744073709551615",
            "session.ttl_seconds",
        ),
    ] {
        let output = start_expecting_refusal(&db, &[(variable, value)]).await;

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}");
        assert!(stderr.contains(setting), "{stderr}");
        assert!(stderr.contains(variable), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_looking_secrets_reach_the_server_exactly_as_written() {
    let db = TestDb::new(Backend::Sqlite).await;
    // (prefix of the variables, email, password, API token)
    let cases = [
        (
            "IDENTITY_BOOTSTRAP__",
            "zeros@example.com",
            "0123456789",
            "0000012345",
        ),
        (
            "IDENTITY_BOOTSTRAP__",
            "exponent@example.com",
            "1e500000",
            "FALSE",
        ),
        (
            "IDENTITY_BOOTSTRAP__",
            "float@example.com",
            "12345e10",
            "1e100",
        ),
        (
            "LABEL_STUDIO_",
            "label-studio@example.com",
            "00000000",
            "00123",
        ),
    ];
    for (prefix, email, password, token) in cases {
        let names = ["USERNAME", "PASSWORD", "USER_TOKEN"].map(|name| format!("{prefix}{name}"));
        let env = [
            (names[0].as_str(), email),
            (names[1].as_str(), password),
            (names[2].as_str(), token),
        ];
        let mut server = ServerProcess::start(&db, &[], &env);
        server.wait_serving().await;
        let client = server.client().await;

        client
            .login(email, password)
            .await
            .unwrap_or_else(|status| panic!("{prefix} password {password:?}: {status:?}"));
        let by_token = client
            .token_login(token)
            .await
            .unwrap_or_else(|status| panic!("{prefix} token {token:?}: {status:?}"));
        assert_eq!(by_token.user.expect("user").email, email);
        assert_refused(
            client.login(email, "123456789").await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
        assert!(server.terminate().success());
    }
}

/// Starts the binary under `umask 000` with its default SQLite database in `data`.
fn start_with_open_umask(data: &std::path::Path, port: u16) -> std::process::Child {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && exec {} start --host 127.0.0.1 --port {port}",
            crate::helpers::BIN
        ))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LABEL_STUDIO_BASE_DATA_DIR", data)
        .env("IDENTITY_ARGON2__MEMORY_KIB", "64")
        .env("IDENTITY_ARGON2__ITERATIONS", "1")
        .env("IDENTITY_METRICS__PORT", "0")
        .env("IDENTITY_SERVER__HTTP_PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A client of the server on `port` once it is SERVING.
async fn serving_on(port: u16) -> crate::helpers::TestApp {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    loop {
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            let app = crate::helpers::TestApp::with_channel(addr, channel);
            if app
                .health(label_studio_identity::grpc::SERVICE_NAME)
                .await
                .ok()
                == Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
            {
                return app;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The default SQLite database holds every password hash and the invite token: its directory
/// and every file the service creates there are private to the service's user, whatever the
/// umask, and a database an older version left readable is made private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;

    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("nested").join("data");
    let port = free_port();
    let mut child = start_with_open_umask(&data, port);
    let app = serving_on(port).await;
    // Writes make SQLite create its WAL and shared-memory files.
    app.sign_up("ann@example.com", "correct-horse").await;

    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&data), 0o700, "the data directory");
    let mut files = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(
        files >= 3,
        "the database with its WAL and shared memory: {files} files"
    );
    let _ = child.kill();
    let _ = child.wait();

    let database = data.join("identity.sqlite3");
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = free_port();
    let mut child = start_with_open_umask(&data, port);
    let _app = serving_on(port).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mode(&database), 0o600, "made private at the next start");
}

//! Serving: health for readiness and liveness, reflection, and refusing calls while the
//! database is unreachable.

use std::time::Duration;

use label_studio_identity::grpc::{LIVENESS_SERVICE_NAME, SERVICE_NAME};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::{
    helpers::{Backend, TestApp, TestDb, spawn_app},
    on_both_backends,
};

async fn health_reports_serving_for_the_server_the_service_and_liveness(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;

    for service in ["", SERVICE_NAME, LIVENESS_SERVICE_NAME] {
        assert_eq!(
            app.health(service).await.ok(),
            Some(ServingStatus::Serving as i32),
            "{service:?}"
        );
    }
    let unknown = app
        .health("no.such.Service")
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);
}

async fn reflection_v1_lists_the_identity_service(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let mut reflection = ServerReflectionClient::new(app.channel.clone());

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let Some(Ok(response)) = responses.next().await else {
        panic!("no reflection answer");
    };

    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected answer {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&SERVICE_NAME.to_owned()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

/// Postgres only: the embedded SQLite database can't be away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_postgres_is_away_is_not_ready_and_answers_unavailable() {
    let mut settings = TestDb::new(Backend::Sqlite).await.settings();
    // Nothing listens on port 1.
    settings.database.url = Some("postgres://postgres@127.0.0.1:1/none".into());
    settings.database.acquire_timeout_ms = 300;
    let app = label_studio_identity::startup::Application::build(settings)
        .await
        .expect("build");
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    assert_eq!(status(SERVICE_NAME).await, ServingStatus::NotServing as i32);
    assert_eq!(status("").await, ServingStatus::NotServing as i32);
    assert_eq!(
        status(LIVENESS_SERVICE_NAME).await,
        ServingStatus::Serving as i32
    );
    let mut client =
        label_studio_identity::grpc::pb::identity_service_client::IdentityServiceClient::new(
            channel,
        );
    let refused = client
        .create_user(crate::helpers::sign_up("a@example.com", "correct-horse"))
        .await
        .expect_err("no database");
    assert_eq!(refused.code(), Code::Unavailable);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

async fn data_survives_a_stop_and_a_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(db.settings()).await;
    app.sign_up("ann@example.com", "correct-horse").await;

    app.stop().await;

    let again = TestApp::start(db.settings()).await;
    again
        .login("ann@example.com", "correct-horse")
        .await
        .expect("login after restart");
}

on_both_backends!(
    health_reports_serving_for_the_server_the_service_and_liveness,
    reflection_v1_lists_the_identity_service,
    data_survives_a_stop_and_a_restart,
);

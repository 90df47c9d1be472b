//! `grpc.health.v1.Health`: `tonic-health`'s service behind glue generated with this service's
//! codec, so a probe sending bytes that are no valid message gets INVALID_ARGUMENT, as every
//! other RPC does, rather than INTERNAL.

use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{HealthCheckRequest, HealthCheckResponse, health_server::Health as _},
    server::{HealthReporter, HealthService, WatchStream},
};

/// The service glue generated over `tonic-health`'s messages.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.Health.rs"));
}

pub use pb::health_server::HealthServer;

/// Health checks answered from what `reporter` is told.
pub fn server(reporter: &HealthReporter) -> HealthServer<StrictHealth> {
    HealthServer::new(StrictHealth(HealthService::from_health_reporter(
        reporter.clone(),
    )))
}

pub struct StrictHealth(HealthService);

#[tonic::async_trait]
impl pb::health_server::Health for StrictHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.0.watch(request).await
    }
}

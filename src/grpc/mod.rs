//! The gRPC transport: generated types, the service implementation, caller metadata and the one
//! mapping from errors to `tonic::Status`.

pub mod codec;
pub mod ext_authz;
pub mod health;
mod metadata;
mod personal_tokens;
mod service;
mod status;
mod trace;

pub use service::IdentityApi;
pub use trace::RpcSpans;

/// Types generated from `proto/labelstudio/identity/v1/identity.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("labelstudio.identity.v1");

    /// The encoded descriptors served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/identity_descriptor.bin"));
}

/// The health-check name of the identity service.
pub const SERVICE_NAME: &str = "labelstudio.identity.v1.IdentityService";
/// A health-check name that stays SERVING while the process runs, whatever the database does:
/// for liveness probes, which must not restart a pod over a brief database outage.
pub const LIVENESS_SERVICE_NAME: &str = "liveness";

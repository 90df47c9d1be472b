//! Label Studio's user management as a gRPC service: accounts with email and password, one
//! organization whose members share an invite link, and signup restricted to that link on demand.

pub mod accounts;
pub mod authz;
pub mod cli;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod http;
pub mod import;
pub mod metrics;
pub mod password;
pub mod proxies;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;

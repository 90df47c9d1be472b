//! The integration suite: the real server over real gRPC, on SQLite and on Postgres.

mod helpers;

mod access_tokens;
mod authenticate;
mod cli;
mod costs;
mod environment;
mod faults;
mod gateway;
mod hostile;
mod import;
mod import_personal_tokens;
mod invites;
mod load;
mod members;
mod operations;
mod personal_tokens;
mod profile;
mod security;
mod server;
mod signup;
mod telemetry;
mod throttle;
mod tls;
mod tokens;

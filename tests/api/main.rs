//! The integration suite: the real server over real gRPC, on SQLite and on Postgres.

mod helpers;

mod authenticate;
mod cli;
mod import;
mod invites;
mod server;
mod signup;
mod tokens;

//! The `label-studio-identity` binary.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = label_studio_identity::cli::Cli::parse();
    label_studio_identity::cli::run(cli)
}

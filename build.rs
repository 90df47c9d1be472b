//! Compiles the protobuf API with a pure-Rust compiler, so no `protoc` is needed; generates the
//! server side of Envoy's `envoy.service.auth.v3.Authorization` over the message types of the
//! `envoy-types` crate, and compiles that service's descriptors (from the `.proto` files the crate
//! ships) for reflection.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

type BoxError = Box<dyn std::error::Error>;

/// The file that declares Envoy's external authorization service.
const EXT_AUTHZ_PROTO: &str = "envoy/service/auth/v3/external_auth.proto";

fn main() -> Result<(), BoxError> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let proto = "proto/labelstudio/identity/v1/identity.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let descriptors = protox::compile([proto], ["proto"])?;
    std::fs::write(
        out_dir.join("identity_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .codec_path("crate::grpc::codec::StrictCodec")
        .compile_fds(descriptors)?;

    // Only the service glue is generated here: the messages are `envoy-types`' own, and the
    // codec is ours, so undecodable bytes are INVALID_ARGUMENT as on the identity service.
    let check = tonic_build::manual::Method::builder()
        .name("check")
        .route_name("Check")
        .input_type("::envoy_types::pb::envoy::service::auth::v3::CheckRequest")
        .output_type("::envoy_types::pb::envoy::service::auth::v3::CheckResponse")
        .codec_path("crate::grpc::codec::StrictCodec")
        .build();
    let authorization = tonic_build::manual::Service::builder()
        .name("Authorization")
        .package("envoy.service.auth.v3")
        .method(check)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_transport(false)
        .out_dir(&out_dir)
        .compile(&[authorization]);

    // Health checks likewise: `tonic-health`'s messages and service, served through this
    // glue so that undecodable bytes are INVALID_ARGUMENT there too.
    let health_method = |name: &str, route: &str, response: &str, streaming: bool| {
        let method = tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type("::tonic_health::pb::HealthCheckRequest")
            .output_type(response)
            .codec_path("crate::grpc::codec::StrictCodec");
        if streaming {
            method.server_streaming().build()
        } else {
            method.build()
        }
    };
    let health = tonic_build::manual::Service::builder()
        .name("Health")
        .package("grpc.health.v1")
        .method(health_method(
            "check",
            "Check",
            "::tonic_health::pb::HealthCheckResponse",
            false,
        ))
        .method(health_method(
            "watch",
            "Watch",
            "::tonic_health::pb::HealthCheckResponse",
            true,
        ))
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_transport(false)
        .out_dir(&out_dir)
        .compile(&[health]);

    let root = envoy_types_protos()?;
    let includes = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec/proto",
    ]
    .map(|dir| root.join(dir));
    let envoy = protox::compile([EXT_AUTHZ_PROTO], includes)?;
    std::fs::write(
        out_dir.join("envoy_auth_descriptor.bin"),
        prost::Message::encode_to_vec(&envoy),
    )?;
    Ok(())
}

/// The `proto/` folder of the `envoy-types` package this build uses, found through
/// `cargo metadata`, so the descriptors always match the compiled message types.
fn envoy_types_protos() -> Result<PathBuf, BoxError> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(&env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(&manifest)
        // Only this target's packages: `cargo build` downloads no others, and offline metadata
        // of the whole graph would ask for every platform's.
        .args(["--filter-platform", &env::var("TARGET")?])
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let manifest_path = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|package| package["name"] == "envoy-types")
        .and_then(|package| package["manifest_path"].as_str())
        .ok_or("cargo metadata lists no envoy-types package")?;
    let protos = Path::new(manifest_path)
        .parent()
        .ok_or("envoy-types has no package folder")?
        .join("proto");
    if !protos
        .join("data-plane-api")
        .join(EXT_AUTHZ_PROTO)
        .is_file()
    {
        return Err(format!("{} holds no {EXT_AUTHZ_PROTO}", protos.display()).into());
    }
    Ok(protos)
}

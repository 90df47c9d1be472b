//! Compiles the protobuf API with a pure-Rust compiler, so no `protoc` is needed.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/labelstudio/identity/v1/identity.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("identity_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .codec_path("crate::grpc::codec::StrictCodec")
        .compile_fds(descriptors)?;
    Ok(())
}

//! Generates the protocol's messages from ../proto (the one source of truth) at
//! build time with protox (pure Rust, no `protoc` needed) and prost-build, so the
//! Rust types cannot drift from the .proto files the Python stubs come from.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files = [
        proto.join("grpc_service.proto"),
        proto.join("model_config.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&proto])?;
    // The same set for the REST routes' JSON forms of the messages (prost-reflect).
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    let mut config = prost_build::Config::new();
    // bytes fields as `bytes::Bytes`: raw tensors are slices of the received buffer.
    config.bytes(["."]);
    config.compile_fds(descriptors)?;
    Ok(())
}

//! Compiles `blangko/v1/*.proto` in pure Rust (protox), so a fresh machine needs no `protoc`.
//! The encoded file descriptor set is written next to the generated code for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "blangko/v1/common.proto",
        "blangko/v1/counter_service.proto",
        "blangko/v1/stock_service.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("blangko_v1_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::BlangkoCodec")
        .compile_fds(descriptors)?;
    Ok(())
}

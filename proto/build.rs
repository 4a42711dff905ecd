//! Compiles `csi.proto` with the vendored `protoc`, so no system protoc is needed.

use std::path::PathBuf;

const PROTO: &str = "csi.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");

    // The vendored include directory holds descriptor.proto, timestamp.proto and wrappers.proto.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let includes = [PathBuf::from("."), protoc_bin_vendored::include_path()?];

    tonic_prost_build::configure().build_server(true).build_client(true).compile_with_config(
        config,
        &[PathBuf::from(PROTO)],
        &includes,
    )?;
    Ok(())
}

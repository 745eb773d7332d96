//! Generates the Rust types for `proto/` with prost and their canonical
//! proto3 JSON serde impls with pbjson, using the vendored `protoc`.

use std::{env, error::Error, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let proto_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    let descriptor_path = PathBuf::from(env::var("OUT_DIR")?).join("fechatter_descriptor.bin");

    // Equivalent to setting `PROTOC`, without the `unsafe` `env::set_var`.
    prost_build::Config::new()
        .protoc_executable(protoc_bin_vendored::protoc_bin_path()?)
        .file_descriptor_set_path(&descriptor_path)
        .compile_protos(&[proto_dir.join("fechatter/v1/analytics.proto")], &[&proto_dir])?;

    let descriptor_set = fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_set)?
        .build(&[".fechatter"])?;
    Ok(())
}

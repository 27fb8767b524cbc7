//! Generates the gRPC code and the reflection descriptor set from `proto/`,
//! with a `protoc` that ships inside a crate, so no system install is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut protos = vec![
        std::path::PathBuf::from("proto/tenantry/v1/tenants.proto"),
        std::path::PathBuf::from("proto/tenantry/v1/items.proto"),
    ];
    // The test-only resource, with the feature that compiles it.
    if std::env::var_os("CARGO_FEATURE_TEST_RESOURCE").is_some() {
        protos.push("proto/tenantry/v1/notes.proto".into());
    }
    let includes = [
        std::path::PathBuf::from("proto"),
        protoc_bin_vendored::include_path()?,
    ];
    let descriptor_set =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("tenantry_descriptor.bin");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_set)
        .compile_with_config(config, &protos, &includes)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

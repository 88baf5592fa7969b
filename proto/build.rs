//! Compiles the gRPC API (`knockgate/v1/*.proto`) when the `grpc` feature is on, with the
//! vendored protoc unless `PROTOC` names another.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=knockgate");
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return Ok(());
    }
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => std::path::PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .codec_path("crate::codec::LeanCodec")
        .compile_with_config(
            config,
            &[
                "knockgate/v1/common.proto",
                "knockgate/v1/enrollment.proto",
                "knockgate/v1/agent.proto",
                "knockgate/v1/admin.proto",
            ],
            &["."],
        )?;
    Ok(())
}

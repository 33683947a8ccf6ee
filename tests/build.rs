//! Compiles `emqx_exhook`'s `.proto` files (`plugins/emqx_exhook/proto/`) into gRPC server
//! code in `OUT_DIR`, for the HookProvider servers `tests/plugins_exhook.rs` runs. Parsed by
//! `protox` (protobuf in Rust): no `protoc` needed. Every message derives `serde::Serialize`
//! so a test can look at a request as JSON.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../plugins/emqx_exhook/proto";
    let protos = [format!("{dir}/exhook_v1.proto"), format!("{dir}/exhook_v2.proto")];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(&protos, [dir])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .type_attribute(".", "#[derive(::serde::Serialize)]")
        .compile_fds(descriptors)?;
    Ok(())
}

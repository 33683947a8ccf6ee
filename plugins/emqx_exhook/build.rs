//! Compiles `proto/exhook_v1.proto` and `proto/exhook_v2.proto` into gRPC client code in
//! `OUT_DIR` (`emqx.exhook.v1.rs`, `emqx.exhook.v2.rs`). The protos are parsed by `protox`,
//! a protobuf compiler in Rust, so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/exhook_v1.proto", "proto/exhook_v2.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().build_server(false).build_transport(false).compile_fds(descriptors)?;
    Ok(())
}

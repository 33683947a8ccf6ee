//! Compiles `emqx_exhook`'s `emqx.exhook.v2` `.proto` (`plugins/emqx_exhook/proto/`) into gRPC
//! server code in `OUT_DIR`, for `exhook_server`. Parsed by `protox` (protobuf in Rust): no
//! `protoc` needed. Every rpc gets a default body (`UNIMPLEMENTED`): the server implements
//! the ones it asks for.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../plugins/emqx_exhook/proto";
    let proto = format!("{dir}/exhook_v2.proto");
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([&proto], [dir])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}

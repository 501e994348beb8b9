//! Compiles the `.proto` files under `proto/` with protox, a pure-Rust protobuf
//! compiler, so that building Keelson never needs a system `protoc`.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "mvccpb/kv.proto",
    "etcdserverpb/rpc.proto",
    "keelsonpb/command.proto",
    "keelsonpb/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    for file in FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(FILES, [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}

//! Compiles every `.proto` file under `twtr/` with `protox` (pure Rust, so no system `protoc`),
//! generates tonic clients and servers, and writes the encoded descriptor set that the services
//! embed for gRPC server reflection.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "twtr/events/v1/events.proto",
    "twtr/users/v1/users.proto",
    "twtr/tweets/v1/tweets.proto",
    "twtr/followers/v1/followers.proto",
    "twtr/feeds/v1/feeds.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=twtr");
    let fds = protox::compile(PROTOS, ["."])?;

    // `compile_fds` ignores `file_descriptor_set_path`, so the set is written by hand.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("twtr_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

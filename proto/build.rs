//! Compiles every `.proto` file under `twtr/` with `protox` (pure Rust, so no system `protoc`),
//! generates tonic clients and servers, and writes the encoded descriptor set that the services
//! embed for gRPC server reflection.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "twtr/events/v1/events.proto",
    "twtr/events/v1/dead_letters.proto",
    "twtr/admin/v1/admin.proto",
    "twtr/users/v1/users.proto",
    "twtr/tweets/v1/tweets.proto",
    "twtr/followers/v1/followers.proto",
    "twtr/feeds/v1/feeds.proto",
];

/// Every message with a password or token field.
const SECRET_BEARING: [&str; 4] = [
    ".twtr.users.v1.CreateUserRequest",
    ".twtr.users.v1.LoginRequest",
    ".twtr.users.v1.LoginResponse",
    ".twtr.users.v1.UpdateUserRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=twtr");
    let fds = protox::compile(PROTOS, ["."])?;

    // `compile_fds` ignores `file_descriptor_set_path`, so the set is written by hand.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("twtr_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // Messages that carry a password or a token get a hand-written, redacting `Debug`
        // (src/lib.rs), so a secret can never reach a log through `{:?}`.
        .skip_debug(SECRET_BEARING)
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

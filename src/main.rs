//! The `twtr` binary: reads the optional config file, parses flags and environment, then hands
//! over to [`twtr::run`] on a multi-threaded runtime.

use clap::Parser as _;

/// mimalloc rather than glibc's allocator: glibc keeps a heap arena per thread that touched it
/// and rarely gives their memory back, so the password hashes' 19 MiB buffers, each allocated
/// on whichever blocking thread hashed, left the process above a gigabyte after a sign-up burst;
/// mimalloc returns freed memory to the system and spends less CPU per allocation (see
/// `docs/bench/` for the measurements behind the choice).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Before the runtime exists: loading the file writes environment variables, which is only
    // sound while this is the process's one thread.
    twtr::load_config_file(std::env::args_os())?;
    let cli = twtr::Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(twtr::run(cli))
}

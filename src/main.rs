//! The `twtr` binary: reads the optional config file, parses flags and environment, then hands
//! over to [`twtr::run`] on a multi-threaded runtime.

use clap::Parser as _;

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

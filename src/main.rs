//! The `twtr` binary: parses flags and environment, then hands over to [`twtr::run`].

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    twtr::run(twtr::Cli::parse()).await
}

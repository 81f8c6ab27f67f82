//! twtr's seed and benchmark tools, behind `twtr seed` and `twtr bench`. They talk to a running
//! mesh only through its public HTTP API, like any client.
//!
//! # Layout
//!
//! - [`graph`]: the data set from a seed alone: a heavy-tailed follow graph, who posts what.
//! - [`api`]: a small typed client of the public API.
//! - [`seed`]: `twtr seed`, resumable, with a progress bar and a state file for `twtr bench`.
//! - [`schedule`], [`load`], [`hist`]: the open-loop schedule and operation mix, the closed-
//!   and open-loop generators, latency histograms (hdrhistogram).
//! - [`ceiling`]: a bare HTTP server answering a feed page's bytes, the ceiling of the machine.
//! - [`memory`]: the mesh's resident memory from `/proc`.
//! - [`run`]: `twtr bench run`, the phases of one benchmark, written to `<label>.json`.
//! - [`report`], [`plot`]: `twtr bench report`, the Markdown report and its SVG plots.
//!
//! # How a benchmark flows
//!
//! `twtr seed` writes the data set through the gateway and a state file (IDs and tokens);
//! `twtr bench run` reads it, drives the gateway phase by phase and writes its results;
//! `twtr bench report` checks them against the targets and renders the report.
//! `scripts/bench.sh` runs all three against each backend.

pub mod api;
pub mod ceiling;
pub mod graph;
pub mod hist;
pub mod live;
pub mod load;
pub mod memory;
pub mod plot;
pub mod report;
pub mod run;
pub mod schedule;
pub mod seed;

pub use report::ReportArgs;
pub use run::RunArgs;
pub use seed::SeedArgs;

/// `twtr bench` subcommands.
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum BenchCommand {
    /// Drive a running, seeded mesh and write `<out>/<label>.json`.
    Run(RunArgs),
    /// Render results into a Markdown report with plots.
    Report(ReportArgs),
}

/// Runs `twtr seed`.
pub async fn seed(args: SeedArgs) -> anyhow::Result<()> {
    seed::run(args).await
}

/// Runs `twtr bench <command>`.
pub async fn bench(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Run(args) => run::run(args).await,
        BenchCommand::Report(args) => report::run(args),
    }
}

//! `twtr backup` and `twtr restore`: the embedded store's backups (see
//! [`twtr_common::backup`]). A running process holds its redb files locked, so `backup` asks it
//! to write the copy (`twtr.admin.v1.Admin/Backup` on any of its gRPC ports, from the same
//! host); `restore` runs with the mesh stopped, into an empty data directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use twtr_common::tls::MeshTls;
use twtr_proto::admin::v1::BackupRequest;
use twtr_proto::admin::v1::admin_client::AdminClient;

/// How long `twtr backup` waits for the copy.
const TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct BackupArgs {
    /// Where to write the backup: a new or empty directory on the host the mesh runs on.
    #[arg(long)]
    pub to: PathBuf,
    /// The gRPC URL of any service of the running process (default: the users service's,
    /// `TWTR_USERS_URL`).
    #[arg(long)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RestoreArgs {
    /// A directory `twtr backup` wrote.
    #[arg(long)]
    pub from: PathBuf,
}

/// Asks the process at `url` for a backup into `args.to`; prints what it wrote.
pub async fn backup(args: BackupArgs, url: &str, tls: Option<&MeshTls>) -> anyhow::Result<()> {
    let to = absolute(&args.to)?;
    let channel = twtr_common::client::endpoint(url, tls)?
        .timeout(TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("failed to reach the mesh at {url}"))?;
    let done = AdminClient::new(channel)
        .backup(BackupRequest {
            to: to.to_string_lossy().into_owned(),
        })
        .await
        .with_context(|| format!("the backup into {} failed", to.display()))?
        .into_inner();
    for file in &done.files {
        println!("{:>14} bytes  {}  {}", file.bytes, file.sha256, file.name);
    }
    println!(
        "backup written to {} in {} ms (writes held {} ms)",
        to.display(),
        done.took_ms,
        done.writes_held_ms
    );
    Ok(())
}

/// Restores the backup in `args.from` into `data_dir`, which must be absent or empty.
pub fn restore(args: &RestoreArgs, data_dir: &Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let manifest = twtr_common::backup::restore(&args.from, data_dir)?;
    for file in &manifest.files {
        println!("{:>14} bytes  verified  {}", file.bytes, file.name);
    }
    println!(
        "restored the backup of {} into {} in {} ms",
        manifest.taken_at,
        data_dir.display(),
        started.elapsed().as_millis()
    );
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    Ok(std::env::current_dir()
        .context("failed to read the current directory")?
        .join(path))
}

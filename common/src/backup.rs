//! Backups of the embedded store: [`backup`] copies the redb files a running process has open
//! in its data directory, [`restore`] puts such a copy into an empty data directory, and
//! [`BackupAdmin`] serves `twtr.admin.v1.Admin/Backup`, which is how `twtr backup` reaches the
//! process that has the files open (redb locks a file to one process, so no other process may
//! open it, even to read).
//!
//! # Consistency
//!
//! One cut across every file: the writer thread of each database is parked after an fsync
//! ([`EmbeddedDb::hold_writes`]), all of them at once, the files are copied byte for byte, then
//! the writers go on. Reads are served throughout; writes wait in their queues for the copy
//! (about as long as copying the files takes; the time is reported), and none is refused. A write
//! acknowledged before the backup began is in it; one acknowledged after it ended is not; one in
//! between may be, or not, and either way whole.
//!
//! Because the cut is the same instant for every file, an event between two parts is in the
//! copy exactly once or harmlessly twice: still in its producer's outbox (the relay publishes it
//! after a restore), or in the bus file (`bus.redb`, published and not yet acknowledged: it is
//! delivered again), or acknowledged, which the consumer does only after its effect is stored
//! (so the effect is in the consumer's file). Between publish and outbox removal, or between
//! the effect and the acknowledgement, it is in both places, and handlers are idempotent.
//!
//! # The copy
//!
//! `DIR/<name>.redb` for each database, `token_private.pem` and `token_public.pem` when the data
//! directory has them (the all-in-one mesh's signing key: without it, tokens issued before the
//! backup stop verifying after a restore, and everyone logs in again), and `manifest.json` last,
//! with each file's size and SHA-256. A directory without a manifest is an unfinished backup.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};
use twtr_proto::admin::v1::admin_server::{self, AdminServer};
use twtr_proto::admin::v1::{BackedUpFile, BackupRequest, BackupResponse};

use crate::embedded::{self, EmbeddedDb};

/// The file that completes a backup.
pub const MANIFEST: &str = "manifest.json";
/// The data directory's key files, copied when present.
pub const KEY_FILES: [&str; 2] = ["token_private.pem", "token_public.pem"];
/// The layout [`Manifest`] describes; a restore refuses another.
const FORMAT: u32 = 1;

/// What a backup holds (its `manifest.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// When writes were held, RFC 3339.
    pub taken_at: String,
    pub files: Vec<FileEntry>,
    /// How long writes waited while the databases were copied.
    pub writes_held_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A finished backup: its manifest and how long it took.
#[derive(Debug)]
pub struct Done {
    pub manifest: Manifest,
    pub took: Duration,
}

/// Copies every database this process has open in `data_dir`, as one cut (see the [module
/// docs](self)), and the key files, into `to` (absent or empty). Blocking.
pub fn backup(data_dir: &Path, to: &Path) -> anyhow::Result<Done> {
    let started = Instant::now();
    let databases = embedded::open_under(data_dir);
    anyhow::ensure!(
        !databases.is_empty(),
        "this process has no embedded database open in {}",
        data_dir.display()
    );
    empty_destination(to)?;

    let held_at = Instant::now();
    let taken_at = crate::clock::rfc3339(crate::clock::now_millis());
    let held = databases
        .iter()
        .map(EmbeddedDb::hold_writes)
        .collect::<Result<Vec<_>, _>>()
        .context("failed to hold writes")?;
    let copied = copy_databases(&databases, to);
    drop(held);
    let writes_held = held_at.elapsed();
    let mut names = copied?;
    tracing::info!(
        files = names.len(),
        held_ms = writes_held.as_millis() as u64,
        "databases copied, writes going on"
    );

    for key in KEY_FILES {
        let source = data_dir.join(key);
        if source.exists() {
            std::fs::copy(&source, to.join(key))
                .with_context(|| format!("failed to copy {}", source.display()))?;
            names.push(key.to_owned());
        }
    }
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = to.join(&name);
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("failed to fsync {}", path.display()))?;
        let (bytes, sha256) = digest(&path)?;
        files.push(FileEntry {
            name,
            bytes,
            sha256,
        });
    }
    let manifest = Manifest {
        format: FORMAT,
        taken_at,
        files,
        writes_held_ms: writes_held.as_millis() as u64,
    };
    write_manifest(to, &manifest)?;
    Ok(Done {
        manifest,
        took: started.elapsed(),
    })
}

/// Copies the held databases' files into `to`; the names written.
fn copy_databases(databases: &[EmbeddedDb], to: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::with_capacity(databases.len());
    for db in databases {
        let name = db
            .path()
            .file_name()
            .context("a database path without a file name")?
            .to_string_lossy()
            .into_owned();
        std::fs::copy(db.path(), to.join(&name))
            .with_context(|| format!("failed to copy {}", db.path().display()))?;
        names.push(name);
    }
    Ok(names)
}

/// Puts the backup in `from` into `to`, which must be absent or empty: checks every file
/// against the manifest, and every database with redb's integrity check. Blocking.
pub fn restore(from: &Path, to: &Path) -> anyhow::Result<Manifest> {
    let manifest_path = from.join(MANIFEST);
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("no backup in {} (no {MANIFEST})", from.display()))?,
    )
    .with_context(|| format!("failed to read {}", manifest_path.display()))?;
    anyhow::ensure!(
        manifest.format == FORMAT,
        "{} is a backup of format {}; this twtr restores format {FORMAT}",
        from.display(),
        manifest.format
    );
    empty_destination(to)?;
    for file in &manifest.files {
        anyhow::ensure!(
            !file.name.contains('/') && !file.name.starts_with('.'),
            "a file name the manifest may not hold: {:?}",
            file.name
        );
        let source = from.join(&file.name);
        let target = to.join(&file.name);
        std::fs::copy(&source, &target)
            .with_context(|| format!("failed to copy {}", source.display()))?;
        let (bytes, sha256) = digest(&target)?;
        anyhow::ensure!(
            bytes == file.bytes && sha256 == file.sha256,
            "{} does not match the manifest ({bytes} bytes, SHA-256 {sha256}; the manifest says \
             {} bytes, {}): the backup is damaged",
            source.display(),
            file.bytes,
            file.sha256
        );
        if file.name.ends_with(".redb") {
            check_database(&target)?;
        }
        std::fs::File::open(&target)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("failed to fsync {}", target.display()))?;
    }
    std::fs::File::open(to)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("failed to fsync {}", to.display()))?;
    Ok(manifest)
}

/// Opens a restored database (closing it cleanly after) and runs redb's integrity check.
fn check_database(path: &Path) -> anyhow::Result<()> {
    let mut db = redb::Database::create(path)
        .with_context(|| format!("failed to open the restored {}", path.display()))?;
    let clean = db
        .check_integrity()
        .with_context(|| format!("{} fails redb's integrity check", path.display()))?;
    anyhow::ensure!(
        clean,
        "{} failed redb's integrity check (redb repaired it, but the backup is suspect)",
        path.display()
    );
    Ok(())
}

/// Creates `dir` (private to this user) unless it exists; refuses one that holds anything.
fn empty_destination(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))?;
        if let Some(entry) = entries.next() {
            let entry = entry?;
            anyhow::bail!(
                "{} is not empty (it holds {}): give a new or empty directory",
                dir.display(),
                entry.file_name().to_string_lossy()
            );
        }
    }
    crate::files::private_dir(dir).with_context(|| format!("failed to create {}", dir.display()))
}

/// A file's size and SHA-256 (hex).
fn digest(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("failed to read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((bytes, sha256))
}

/// Writes the manifest under a temporary name, then renames it: it appears whole or not at all.
fn write_manifest(dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let partial = dir.join(".manifest.json.partial");
    let mut file = std::fs::File::create(&partial)
        .with_context(|| format!("failed to create {}", partial.display()))?;
    file.write_all(&serde_json::to_vec_pretty(manifest)?)?;
    file.sync_all()?;
    std::fs::rename(&partial, dir.join(MANIFEST))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    Ok(())
}

/// Serves `twtr.admin.v1.Admin` for the process's data directory.
#[derive(Debug, Clone)]
pub struct BackupAdmin {
    data_dir: PathBuf,
}

impl BackupAdmin {
    pub fn server(data_dir: PathBuf) -> AdminServer<Self> {
        AdminServer::new(Self { data_dir })
    }
}

#[tonic::async_trait]
impl admin_server::Admin for BackupAdmin {
    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<BackupResponse>, Status> {
        // The files are written on this host, so the caller must be on it.
        if !request.remote_addr().is_some_and(|a| a.ip().is_loopback()) {
            return Err(Status::permission_denied(
                "a backup is written on the server's host: ask from that host (a loopback address)",
            ));
        }
        let to = PathBuf::from(request.into_inner().to);
        if !to.is_absolute() {
            return Err(Status::invalid_argument(
                "`to` must be an absolute path on the server's host",
            ));
        }
        let data_dir = self.data_dir.clone();
        tracing::info!(to = %to.display(), "backup starting");
        let done = tokio::task::spawn_blocking(move || backup(&data_dir, &to))
            .await
            .map_err(|err| Status::internal(format!("the backup panicked: {err}")))?
            .map_err(|err| {
                tracing::warn!(error = format!("{err:#}"), "backup failed");
                Status::failed_precondition(format!("{err:#}"))
            })?;
        tracing::info!(
            files = done.manifest.files.len(),
            took_ms = done.took.as_millis() as u64,
            held_ms = done.manifest.writes_held_ms,
            "backup written"
        );
        Ok(Response::new(BackupResponse {
            files: done
                .manifest
                .files
                .into_iter()
                .map(|f| BackedUpFile {
                    name: f.name,
                    bytes: f.bytes,
                    sha256: f.sha256,
                })
                .collect(),
            writes_held_ms: done.manifest.writes_held_ms,
            took_ms: done.took.as_millis() as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase as _, ReadableTableMetadata as _, TableDefinition};

    use super::*;

    const ROWS: TableDefinition<u64, u64> = TableDefinition::new("rows");

    async fn database(dir: &Path) -> EmbeddedDb {
        let db = EmbeddedDb::open(&dir.join("t.redb"), |tx| {
            tx.open_table(ROWS)?;
            Ok(())
        })
        .unwrap();
        db.write(|tx| {
            let mut rows = tx.open_table(ROWS)?;
            for i in 0..100 {
                rows.insert(i, i * 2)?;
            }
            Ok(())
        })
        .await
        .unwrap();
        db
    }

    #[tokio::test]
    async fn a_backup_restores_whole_and_refuses_what_is_not_empty_or_not_intact() {
        let data = tempfile::tempdir().unwrap();
        let db = database(data.path()).await;
        let out = tempfile::tempdir().unwrap();
        let to = out.path().join("backup");
        let done = tokio::task::spawn_blocking({
            let (data, to) = (data.path().to_owned(), to.clone());
            move || backup(&data, &to)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(done.manifest.files.len(), 1, "{:?}", done.manifest);
        // Writes go on once the backup is done.
        db.write(|tx| Ok(tx.open_table(ROWS)?.insert(1000, 1).map(|_| ())?))
            .await
            .unwrap();

        let again = backup(data.path(), &to).unwrap_err();
        assert!(format!("{again:#}").contains("not empty"), "{again:#}");
        let into_live = restore(&to, data.path()).unwrap_err();
        assert!(
            format!("{into_live:#}").contains("not empty"),
            "{into_live:#}"
        );

        let restored = out.path().join("restored");
        restore(&to, &restored).unwrap();
        let copy = redb::Database::open(restored.join("t.redb")).unwrap();
        let read = copy.begin_read().unwrap();
        let rows = read.open_table(ROWS).unwrap();
        assert_eq!(
            rows.len().unwrap(),
            100,
            "the rows of the cut, not the write after it"
        );
        drop((rows, read, copy));

        // One byte changed: the restore refuses the file.
        let file = to.join("t.redb");
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        let damaged = restore(&to, &out.path().join("again")).unwrap_err();
        assert!(format!("{damaged:#}").contains("damaged"), "{damaged:#}");
    }
}

//! Private files: the data directory (0700), the embedded stores and the generated signing key
//! in it (0600). Created so, and checked each time a process opens them.
//!
//! A directory or file found readable by its group or by others (left by an older twtr, which
//! created `users.redb`, the password hashes, with mode 0644; or by a copy or a restore) is
//! tightened with a warning rather than refused: the process owns these files and can fix them
//! at once, and refusing would stop every upgraded deployment for a fix it can make itself. The
//! warning stays, because what was readable may have been read. A store file that cannot be
//! tightened is refused (its contents would stay readable); a directory that cannot be (one this
//! process does not own, such as a volume's mount point) only warns, since the files in it are
//! private by themselves.
//!
//! Files an operator provides (a key file named by configuration, often a read-only mount) are
//! never changed: [`warn_if_readable`] says so when they are readable by others.

use std::io;
use std::path::Path;

/// Group and other permission bits.
#[cfg(unix)]
const NOT_OWNER: u32 = 0o077;

/// Creates `dir` (and its missing parents) with mode 0700, or tightens an existing one that
/// group or others can use.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
        if mode & NOT_OWNER != 0 {
            let tightened = (mode & !NOT_OWNER) | 0o700;
            match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(tightened)) {
                Ok(()) => tracing::warn!(
                    path = %dir.display(),
                    was = format!("{mode:o}"),
                    now = format!("{tightened:o}"),
                    "the data directory was open to other users; tightened it"
                ),
                Err(error) => tracing::warn!(
                    path = %dir.display(),
                    mode = format!("{mode:o}"),
                    %error,
                    "the data directory is open to other users and cannot be tightened; \
                     its files are private by themselves"
                ),
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Makes sure `path` exists with mode 0600: creates it empty if missing, tightens it if group
/// or others can read or write it. An error when it cannot be made private.
pub fn private_file(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
        if mode & NOT_OWNER != 0 {
            let tightened = mode & !NOT_OWNER;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(tightened)).map_err(
                |err| {
                    io::Error::new(
                        err.kind(),
                        format!(
                            "{} is open to other users (mode {mode:o}) and cannot be made \
                             private: {err}",
                            path.display()
                        ),
                    )
                },
            )?;
            tracing::warn!(
                path = %path.display(),
                was = format!("{mode:o}"),
                now = format!("{tightened:o}"),
                "a private file was open to other users; tightened it"
            );
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map(drop)
    }
}

/// Warns when `path`, a secret an operator provides, is readable by group or others. Such a
/// file is left as it is (it is often a read-only mount).
pub fn warn_if_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & NOT_OWNER != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "a private key file is readable by other users; make it 0600 (0400 or 0440 \
                     on a mounted secret)"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn new_directories_and_files_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data/nested");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("data")), 0o700);
        let file = dir.join("users.redb");
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
    }

    #[test]
    fn loose_ones_are_tightened_and_keep_their_contents() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o755);
        let file = dir.join("users.redb");
        std::fs::write(&file, b"hashes").unwrap();
        set_mode(&file, 0o644);
        private_dir(&dir).unwrap();
        private_file(&file).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"hashes");
        // Stricter modes are left alone.
        set_mode(&file, 0o400);
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o400);
    }
}

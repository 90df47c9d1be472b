//! Keeps the data directory and the files the service creates there private to the service's
//! user (0700 and 0600) whatever the umask: they hold every password hash and the invite token.

use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

/// Creates the data directory (and its parents) if missing, and makes it private.
pub(crate) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let exists = dir.exists();
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
    #[cfg(unix)]
    if !exists {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            anyhow::anyhow!("cannot restrict data directory {}: {e}", dir.display())
        })?;
    }
    #[cfg(not(unix))]
    let _ = exists;
    Ok(())
}

/// Creates the SQLite database file private before SQLite opens it (SQLite gives its WAL and
/// shared-memory files the database file's permissions), and makes existing ones private.
pub(crate) fn prepare_sqlite_file(path: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    options.mode(0o600);
    options
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create sqlite database {}: {e}", path.display()))?;
    restrict_sqlite_files(path);
    Ok(())
}

/// Makes the database and its companion files private, for files an older version created.
pub(crate) fn restrict_sqlite_files(path: &Path) {
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm", "-journal", ".migrate-lock"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = Path::new(&file);
        if let Ok(metadata) = std::fs::metadata(file)
            && metadata.permissions().mode() & 0o077 != 0
            && let Err(error) =
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(file = %file.display(), %error, "cannot make a database file private");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Opens (creating it private) a file used as a lock.
pub(crate) fn open_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)
}

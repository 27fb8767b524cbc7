//! The layout of the data directory. Every path tenantry touches is built here.
//!
//! ```text
//! <data-dir>/
//!   catalog.db            tenants, API keys (hashed), admin audit trail
//!   admin.token           generated admin token (mode 0600), unless one is configured
//!   lock                  held (flock) by the one process using the directory
//!   tenants/<uuid>.db     one SQLite database per tenant
//!   backups/<uuid>/<time>.db  snapshots made by BackupTenant
//!   trash/<uuid>.<time>.db    files of deleted tenants, and data a restore replaced
//!   staging/              files being made (snapshots, uploads); emptied at start-up
//! ```

use std::fs::Permissions;
use std::path::{Path, PathBuf};

use crate::clock::Micros;
use crate::error::{Context, Error, Result};
use crate::ids::TenantId;

#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory tree if it is missing, private to this
    /// process's user whatever the umask: the process's file mode creation
    /// mask becomes 077, so that every file it makes (the catalog, tenant
    /// databases and their -wal and -shm, snapshots) is 0600 and every
    /// folder 0700; the folders and the catalog of a data directory made
    /// before are made private too.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        let data_dir = DataDir { root: root.into() };
        for dir in [
            data_dir.root.clone(),
            data_dir.tenants_dir(),
            data_dir.backups_dir(),
            data_dir.trash_dir(),
            data_dir.staging_dir(),
        ] {
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::set_permissions(&dir, Permissions::from_mode(0o700)))
                .context(|| format!("creating data directory {}", dir.display()))?;
        }
        let catalog = data_dir.catalog();
        for file in [
            catalog.clone(),
            with_suffix(&catalog, "-wal"),
            with_suffix(&catalog, "-shm"),
        ] {
            match std::fs::set_permissions(&file, Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).context(|| format!("making {} private", file.display()));
                }
                _ => {}
            }
        }
        Ok(data_dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn catalog(&self) -> PathBuf {
        self.root.join("catalog.db")
    }

    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }

    pub fn tenants_dir(&self) -> PathBuf {
        self.root.join("tenants")
    }

    /// The database file of one tenant. Only a parsed [`TenantId`] can name it.
    pub fn tenant_file(&self, tenant: TenantId) -> PathBuf {
        self.tenants_dir().join(tenant.file_name())
    }

    pub fn backups_dir(&self) -> PathBuf {
        self.root.join("backups")
    }

    /// Where the backups of one tenant go.
    pub fn tenant_backups_dir(&self, tenant: TenantId) -> PathBuf {
        self.backups_dir().join(tenant.to_string())
    }

    pub fn trash_dir(&self) -> PathBuf {
        self.root.join("trash")
    }

    /// Where a tenant's file goes when it is deleted, or replaced by a
    /// restore: `trash/<uuid>.<time>.db`.
    pub fn trash_file(&self, tenant: TenantId, time: Micros) -> PathBuf {
        self.trash_dir()
            .join(format!("{tenant}.{}.db", file_time(time)))
    }

    /// Every file in the trash that belongs to `tenant`.
    pub fn trash_files_of(&self, tenant: TenantId) -> Result<Vec<PathBuf>> {
        let prefix = format!("{tenant}.");
        let dir = self.trash_dir();
        let entries = std::fs::read_dir(&dir).context(|| format!("listing {}", dir.display()))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.context(|| format!("listing {}", dir.display()))?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                files.push(entry.path());
            }
        }
        Ok(files)
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// A fresh file name in the staging folder, for a file being made.
    pub fn staging_file(&self, what: &str) -> PathBuf {
        self.staging_dir()
            .join(format!("{what}.{}.db", uuid::Uuid::new_v4()))
    }

    /// The path of `path` relative to the data directory, for answers and
    /// logs; `path` itself if it lies elsewhere.
    pub fn relative<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }

    /// Takes the data directory for this process: two servers (or a server
    /// and an offline `tenantry migrate`) on one directory would corrupt
    /// each other's view of it. The lock lasts as long as the returned file.
    pub fn lock(&self) -> Result<std::fs::File> {
        let path = self.root.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::FailedPrecondition(format!(
                "the data directory {} is in use by another tenantry process: stop it first",
                self.root.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// A time as it appears in file names: `20261123T101500.123456Z` (UTC),
/// which sorts in time order.
pub fn file_time(micros: Micros) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}.{fraction:06}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The companions SQLite may keep next to a database file.
const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Moves a database file, and any companions it has, to `to`. A missing
/// companion is fine; a missing database file is an error.
pub fn move_database_files(from: &Path, to: &Path) -> Result<()> {
    for suffix in COMPANIONS {
        let source = with_suffix(from, suffix);
        if source.exists() {
            std::fs::rename(&source, with_suffix(to, suffix))
                .context(|| format!("moving {}", source.display()))?;
        }
    }
    std::fs::rename(from, to)
        .context(|| format!("moving {} to {}", from.display(), to.display()))?;
    sync_parent(to)?;
    if from.parent() != to.parent() {
        sync_parent(from)?;
    }
    Ok(())
}

/// Makes a rename or a removal in `path`'s directory durable.
pub fn sync_parent(path: &Path) -> Result<()> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .context(|| format!("syncing directory {}", dir.display()))
}

/// Removes the companions of a database file (not the file itself).
pub fn remove_companions(db: &Path) -> Result<()> {
    for suffix in COMPANIONS {
        remove_if_present(&with_suffix(db, suffix))?;
    }
    Ok(())
}

/// Removes a file; one that is not there is fine.
pub fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).context(|| format!("removing {}", path.display())),
    }
}

/// Removes a SQLite database and its `-wal` and `-shm` companions, ignoring
/// the ones that do not exist.
pub fn remove_database_files(db: &Path) -> Result<()> {
    remove_companions(db)?;
    remove_if_present(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_times_are_utc_calendar_times_that_sort() {
        assert_eq!(file_time(0), "19700101T000000.000000Z");
        // 2024-02-29T23:59:59.999999Z, a leap day.
        assert_eq!(file_time(1_709_251_199_999_999), "20240229T235959.999999Z");
        assert!(file_time(1_709_251_199_999_999) < file_time(1_709_251_200_000_000));
    }
}

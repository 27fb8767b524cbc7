//! The layout of the data directory. Every path tenantry touches is built here.
//!
//! ```text
//! <data-dir>/
//!   catalog.db            tenants, API keys (hashed), admin audit trail
//!   admin.token           generated admin token (mode 0600), unless one is configured
//!   tenants/<uuid>.db     one SQLite database per tenant
//!   backups/              snapshots made by the backup API
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Context, Result};
use crate::ids::TenantId;

#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory tree if it is missing.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        let data_dir = DataDir { root: root.into() };
        for dir in [data_dir.root.clone(), data_dir.tenants_dir()] {
            std::fs::create_dir_all(&dir)
                .context(|| format!("creating data directory {}", dir.display()))?;
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
}

/// Removes a SQLite database and its `-wal` and `-shm` companions, ignoring
/// the ones that do not exist.
pub fn remove_database_files(db: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::remove_file(&name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(|| format!("removing {}", Path::new(&name).display())),
        }
    }
    Ok(())
}

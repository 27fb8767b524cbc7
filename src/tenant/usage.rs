//! What a tenant costs: its size on disk, its item count, its schema version,
//! when its data was last called, and whether it is open. What billing and
//! capacity planning read, through `GetTenantUsage` and `ListTenants` with
//! `include_usage`.
//!
//! Reading usage never opens a tenant in the registry's cache (its file is
//! read aside, see [`Registry::read_aside`]) and never counts as an access.

use crate::catalog::TenantRecord;
use crate::clock::Micros;
use crate::error::{Context, Result};
use crate::ids::TenantId;
use crate::storage::sqlite::run_blocking;
use crate::tenant::Registry;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub tenant_id: TenantId,
    pub database_bytes: u64,
    pub wal_bytes: u64,
    /// `None` when the file could not be read.
    pub item_count: Option<u64>,
    pub schema_version: u32,
    pub last_access_time: Option<Micros>,
    pub open: bool,
}

impl Usage {
    pub fn size_bytes(&self) -> u64 {
        self.database_bytes + self.wal_bytes
    }
}

impl Registry {
    /// A tenant's usage, reading its file for the item count and schema
    /// version. Fails as a read of the file fails (a damaged file is
    /// DATA_LOSS, and so on).
    pub async fn usage(&self, record: &TenantRecord) -> Result<Usage> {
        let (item_count, schema_version) = self
            .read_aside(record.id, |conn| {
                let items: i64 = conn
                    .query_row("SELECT count(*) FROM items", [], |row| row.get(0))
                    .context(|| "counting items".into())?;
                let version: u32 = conn
                    .pragma_query_value(None, "user_version", |row| row.get(0))
                    .context(|| "reading the schema version".into())?;
                Ok((items.max(0) as u64, version))
            })
            .await?;
        let mut usage = self.known_usage(record).await?;
        usage.item_count = Some(item_count);
        usage.schema_version = schema_version;
        Ok(usage)
    }

    /// What is known of a tenant's usage without reading its file: its
    /// sizes, the catalog's schema version, the last access and whether it
    /// is open.
    pub async fn known_usage(&self, record: &TenantRecord) -> Result<Usage> {
        let id = record.id;
        let last_access_time = match (self.pending_access(id), record.last_access_time) {
            (Some(pending), Some(flushed)) => Some(pending.max(flushed)),
            (pending, flushed) => pending.or(flushed),
        };
        // Held so that no restore or delete moves the file while it is
        // measured.
        let _held = self.shared(id).await;
        let path = self.data_dir().tenant_file(id);
        let (database_bytes, wal_bytes) = run_blocking(move || {
            let size = |path: &std::path::Path| match std::fs::metadata(path) {
                Ok(metadata) => Ok(metadata.len()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
                Err(error) => Err(error).context(|| format!("measuring {}", path.display())),
            };
            let mut wal = path.clone().into_os_string();
            wal.push("-wal");
            Ok((size(&path)?, size(std::path::Path::new(&wal))?))
        })
        .await?;
        Ok(Usage {
            tenant_id: id,
            database_bytes,
            wal_bytes,
            item_count: None,
            schema_version: record.schema_version,
            last_access_time,
            open: self.is_open(id),
        })
    }
}

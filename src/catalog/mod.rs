//! The catalog: the one database that knows every tenant.
//!
//! It holds the tenants (with their lifecycle state and schema version), their
//! API keys (only a SHA-256 of each secret) and the admin audit trail. It is
//! the source of truth: a tenant file with no active catalog row is never
//! served. The SQL lives in [`store`], as functions over a connection.

mod migrations;
pub mod operations;
pub mod spares;
pub mod store;

use std::sync::Arc;

use rusqlite::{Connection, Transaction};

use crate::error::{Error, Result};
use crate::storage::data_dir::DataDir;
use crate::storage::disk::Disk;
use crate::storage::schema;
use crate::storage::sqlite::{Database, PoolSettings};

pub use operations::{OperationKind, OperationRecord};
pub use store::{ApiKeyRecord, KeyGrant, TenantRecord, TenantState};

/// A cheap, clone-able handle on the catalog database.
#[derive(Clone)]
pub struct Catalog {
    db: Arc<Database>,
    /// Consulted before every write: when the disk is full, the catalog
    /// writes in the room the reserve gave back.
    disk: Arc<Disk>,
}

impl Catalog {
    /// Opens (creating if needed) and migrates the catalog. Blocking; runs at
    /// start-up, before [`crate::tenant::recover`].
    pub fn open(data_dir: &DataDir, settings: &PoolSettings, disk: Arc<Disk>) -> Result<Self> {
        let path = data_dir.catalog();
        if !path.exists() {
            Database::create(&path, settings, |_| Ok(()))?;
        }
        let (db, ()) = Database::open(&path, settings, |conn| {
            crate::storage::sqlite::set_wal(conn)?;
            schema::migrate(conn, migrations::CATALOG, "the catalog").map(|_| ())
        })
        .map_err(|error| {
            Error::internal(
                format!("the catalog {} cannot be used", path.display()),
                error,
            )
        })?;
        Ok(Catalog {
            db: Arc::new(db),
            disk,
        })
    }

    /// The catalog's database, for what works on it whole (replication).
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// The disk the catalog and the tenants are on.
    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }

    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.db.read(f).await
    }

    /// Runs `f` on a catalog connection now, on the calling thread: for work
    /// that is already on a blocking thread.
    pub fn read_now<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.db.with_connection(|conn| f(conn))
    }

    /// Runs `f` in a write transaction now, on the calling thread: for
    /// start-up recovery.
    pub fn write_now<T>(&self, f: impl FnOnce(&Transaction) -> Result<T>) -> Result<T> {
        self.disk.check();
        self.db.write_now(f)
    }

    /// Runs `f` in a write transaction whose commit is answered before it
    /// is synced: it survives the process being killed, and a power cut
    /// once [`Catalog::sync_unsynced`] ran (every second while serving) or
    /// any synced commit followed. For changes whose loss in a power cut
    /// harms nobody's security (a tenant created: its file is durable
    /// before it commits); a revoke, a suspension, a delete are synced.
    pub async fn write_unsynced<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
    {
        let disk = self.disk.clone();
        self.db
            .write_unsynced(move |tx| {
                disk.check();
                f(tx)
            })
            .await
    }

    /// Syncs the commits [`Catalog::write_unsynced`] made since the last
    /// time, if there were any. Blocking.
    pub fn sync_unsynced(&self) -> Result<()> {
        self.db.sync_unsynced()
    }

    /// Syncs the catalog's log whatever is known of it: the last sync of a
    /// stop, after which the stop may be recorded as clean. Blocking.
    pub fn sync_now(&self) -> Result<()> {
        self.db.sync_log_now()
    }

    /// Runs `f` in a write transaction (committed durably: the catalog is
    /// synced at every commit), on a blocking thread.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
    {
        let disk = self.disk.clone();
        self.db
            .write(move |tx| {
                disk.check();
                f(tx)
            })
            .await
    }
}

//! The catalog: the one database that knows every tenant.
//!
//! It holds the tenants (with their lifecycle state and schema version), their
//! API keys (only a SHA-256 of each secret) and the admin audit trail. It is
//! the source of truth: a tenant file with no active catalog row is never
//! served. The SQL lives in [`store`], as functions over a connection.

mod migrations;
pub mod store;

use std::sync::Arc;

use rusqlite::{Connection, Transaction};

use crate::data_dir::{self, DataDir};
use crate::error::Result;
use crate::schema;
use crate::sqlite::{Database, PoolSettings};

pub use store::{ApiKeyRecord, KeyGrant, TenantRecord, TenantState};

/// A cheap, clone-able handle on the catalog database.
#[derive(Clone)]
pub struct Catalog {
    db: Arc<Database>,
}

impl Catalog {
    /// Opens (creating if needed) and migrates the catalog, then finishes or
    /// rolls back whatever a crash interrupted. Blocking; runs at start-up.
    pub fn open(data_dir: &DataDir, settings: &PoolSettings) -> Result<Self> {
        let path = data_dir.catalog();
        if !path.exists() {
            Database::create(&path, settings, |_| Ok(()))?;
        }
        let db = Database::open(&path, settings)?;
        db.with_connection(|conn| {
            crate::sqlite::set_wal(conn)?;
            schema::migrate(conn, migrations::CATALOG, "the catalog").map(|_| ())
        })?;
        let catalog = Catalog { db: Arc::new(db) };
        catalog.recover(data_dir)?;
        Ok(catalog)
    }

    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.db.read(f).await
    }

    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
    {
        self.db.write(f).await
    }

    /// Rolls back tenant creations that a crash cut short: the row never
    /// turned active, so no client ever saw the tenant. Blocking.
    fn recover(&self, data_dir: &DataDir) -> Result<()> {
        self.db.with_connection(|conn| {
            for tenant in store::tenants_in_state(conn, TenantState::Provisioning)? {
                tracing::warn!(tenant = %tenant.id, name = tenant.name, "rolling back a tenant creation interrupted by a crash");
                data_dir::remove_database_files(&data_dir.tenant_file(tenant.id))?;
                store::delete_tenant_row(conn, tenant.id)?;
            }
            Ok(())
        })
    }
}

//! The registry of open tenant databases.
//!
//! A bounded moka cache maps a tenant id to its open [`Database`] (a small
//! r2d2 pool). The first call for a tenant opens its file, sets its pragmas and
//! runs its pending migrations; `try_get_with` makes that single flight, so a
//! hundred concurrent first calls open the file once. The least recently used
//! tenants beyond `max_open`, and those idle longer than `idle`, are evicted:
//! their pool is dropped once the last in-flight call lets go of it, SQLite
//! checkpoints the WAL into the main file, and the tenant is again exactly one
//! self-contained file.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;

use crate::catalog::{Catalog, TenantRecord, TenantState, store};
use crate::clock::now_micros;
use crate::data_dir::{self, DataDir};
use crate::error::{Error, Result};
use crate::ids::{TenantId, TenantName};
use crate::schema::{self, Migrated};
use crate::sqlite::{self, Database, PoolSettings, run_blocking};
use crate::tenant::migrations::{self, TENANT};

#[derive(Clone)]
pub struct RegistrySettings {
    pub max_open: u64,
    pub idle: Duration,
    pub pool: PoolSettings,
}

/// A cheap, clone-able handle on the open tenants.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    open: Cache<TenantId, Arc<Database>>,
    catalog: Catalog,
    data_dir: DataDir,
    pool: PoolSettings,
    opens: AtomicU64,
}

impl Registry {
    pub fn new(catalog: Catalog, data_dir: DataDir, settings: RegistrySettings) -> Self {
        let open = Cache::builder()
            .max_capacity(settings.max_open)
            .time_to_idle(settings.idle)
            .eviction_listener(|tenant: Arc<TenantId>, _, cause| {
                tracing::debug!(tenant = %tenant, ?cause, "closing tenant database");
            })
            .build();
        Registry {
            inner: Arc::new(Inner {
                open,
                catalog,
                data_dir,
                pool: settings.pool,
                opens: AtomicU64::new(0),
            }),
        }
    }

    /// The open database of an active tenant, opening it on first use. The
    /// caller has already checked in the catalog that the tenant is active.
    pub async fn get(&self, tenant: TenantId) -> Result<Arc<Database>> {
        let inner = &self.inner;
        let database = inner
            .open
            .try_get_with(tenant, async {
                let (database, migrated) = self.open_file(tenant).await?;
                if migrated.from != migrated.to {
                    self.record_schema_version(tenant, migrated.to).await?;
                }
                Ok::<_, Error>(Arc::new(database))
            })
            .await?;
        Ok(database)
    }

    async fn open_file(&self, tenant: TenantId) -> Result<(Database, Migrated)> {
        let path = self.inner.data_dir.tenant_file(tenant);
        let pool = self.inner.pool.clone();
        let opened = run_blocking(move || {
            let database = Database::open(&path, &pool)?;
            let migrated = database.with_connection(|conn| {
                sqlite::set_wal(conn)?;
                schema::migrate(conn, TENANT, &format!("tenant {tenant}"))
            })?;
            Ok((database, migrated))
        })
        .await;
        self.inner.opens.fetch_add(1, Ordering::Relaxed);
        match &opened {
            Ok((_, migrated)) => tracing::debug!(%tenant, ?migrated, "opened tenant database"),
            Err(error) => {
                tracing::error!(%tenant, error = %crate::error::error_chain(error), "could not open tenant database")
            }
        }
        opened
    }

    async fn record_schema_version(&self, tenant: TenantId, version: u32) -> Result<()> {
        self.inner
            .catalog
            .write(move |tx| {
                tx.execute(
                    "UPDATE tenants SET schema_version = ?2 WHERE id = ?1",
                    rusqlite::params![tenant.to_string(), version],
                )
                .map_err(|e| {
                    Error::internal(format!("recording schema version of tenant {tenant}"), e)
                })?;
                Ok(())
            })
            .await
    }

    /// Creates a tenant: a `provisioning` catalog row, then its database file
    /// with the current schema, then the row turns `active`. A failure or a
    /// crash in between never leaves an active tenant without its file; start-up
    /// rolls back what a crash left `provisioning`.
    pub async fn create_tenant(
        &self,
        name: TenantName,
        display_name: String,
    ) -> Result<TenantRecord> {
        let now = now_micros();
        let mut tenant = TenantRecord {
            id: TenantId::new_random(),
            name: name.as_str().to_owned(),
            display_name,
            state: TenantState::Provisioning,
            schema_version: 0,
            create_time: now,
            update_time: now,
        };
        let row = tenant.clone();
        self.inner
            .catalog
            .write(move |tx| store::insert_tenant(tx, &row))
            .await?;

        let path = self.inner.data_dir.tenant_file(tenant.id);
        let pool = self.inner.pool.clone();
        let label = format!("tenant {}", tenant.id);
        let created = run_blocking(move || {
            Database::create(&path, &pool, |conn| {
                schema::migrate(conn, TENANT, &label).map(|_| ())
            })
        })
        .await;
        if let Err(error) = created {
            self.roll_back_creation(tenant.id).await;
            return Err(error);
        }

        tenant.state = TenantState::Active;
        tenant.schema_version = migrations::latest();
        let row = tenant.clone();
        self.inner
            .catalog
            .write(move |tx| {
                store::set_tenant_state(
                    tx,
                    row.id,
                    row.state,
                    row.schema_version,
                    row.update_time,
                )?;
                store::record_admin_event(
                    tx,
                    &store::AdminEvent {
                        time: row.update_time,
                        actor: "admin",
                        action: "CreateTenant",
                        target: &format!("tenants/{}", row.id),
                        outcome: "ok",
                    },
                )
            })
            .await?;
        Ok(tenant)
    }

    async fn roll_back_creation(&self, tenant: TenantId) {
        let path = self.inner.data_dir.tenant_file(tenant);
        let removed = run_blocking(move || data_dir::remove_database_files(&path)).await;
        let forgotten = self
            .inner
            .catalog
            .write(move |tx| store::delete_tenant_row(tx, tenant))
            .await;
        if let Err(error) = removed.and(forgotten) {
            // Start-up recovery finishes the job: the row is still `provisioning`.
            tracing::error!(%tenant, error = %crate::error::error_chain(&error), "could not roll back a failed tenant creation");
        }
    }

    /// How many times a tenant database has been opened since start.
    pub fn opens(&self) -> u64 {
        self.inner.opens.load(Ordering::Relaxed)
    }

    /// How many tenant databases are open now.
    pub async fn open_count(&self) -> u64 {
        self.inner.open.run_pending_tasks().await;
        self.inner.open.entry_count()
    }

    /// Closes every open tenant database: for shutdown, once no call is in
    /// flight. Each pool closes its connections as it is dropped, and the
    /// last connection of a WAL database checkpoints it, so each tenant is
    /// left as one self-contained file.
    pub async fn close_all(&self) {
        self.inner.open.invalidate_all();
        self.inner.open.run_pending_tasks().await;
    }
}

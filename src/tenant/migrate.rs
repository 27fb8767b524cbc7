//! Eager migration of every tenant: what `MigrateTenants` and the offline
//! `tenantry migrate` run.
//!
//! Tenants also migrate lazily, when they are opened; this brings the ones
//! nobody calls up to date too, a few at a time. The catalog records each
//! tenant's schema version, so tenants already current are skipped without
//! opening their files: a migrate-all with nothing to do reads one catalog
//! query.

use futures::StreamExt;
use rusqlite::Connection;
use tokio::sync::mpsc;

use crate::catalog::{TenantState, store};
use crate::error::{Context, Error, Result};
use crate::ids::TenantId;
use crate::storage::schema;
use crate::storage::sqlite::{self, run_blocking};
use crate::tenant::Registry;

/// The outcome of migrating one tenant.
#[derive(Debug)]
pub struct MigrationReport {
    pub tenant_id: TenantId,
    pub from_version: u32,
    pub to_version: u32,
    pub result: Result<()>,
}

impl Registry {
    /// Migrates every tenant the catalog records as older than this binary,
    /// `workers` at a time, sending one report per tenant as it finishes.
    /// Stops starting new tenants once the receiver is gone. Each tenant is
    /// migrated on a task of its own, so that one started is finished (and
    /// its file let go of) however slowly the reports are taken.
    pub async fn migrate_all(
        &self,
        workers: usize,
        reports: mpsc::Sender<MigrationReport>,
    ) -> Result<()> {
        let catalog = self.catalog().clone();
        let latest = self.schema().latest();
        let pending = catalog
            .read(move |conn| store::tenants_to_migrate(conn, latest))
            .await?;
        tracing::info!(tenants = pending.len(), workers, "migrating tenants");
        let mut running = futures::stream::iter(pending)
            .map(|(tenant, recorded)| {
                let registry = self.clone();
                tokio::spawn(async move { registry.migrate_one(tenant, recorded).await })
            })
            .buffer_unordered(workers.max(1));
        while let Some(report) = running.next().await {
            let report = report.context(|| "migrating a tenant".into())?;
            if reports.send(report).await.is_err() {
                tracing::info!("the migration's receiver went away: stopping");
                break;
            }
        }
        Ok(())
    }

    /// Brings one tenant's file to the current schema, holding it in place
    /// meanwhile, and records the new version in the catalog.
    pub async fn migrate_one(&self, tenant: TenantId, recorded: u32) -> MigrationReport {
        let _held = self.shared(tenant).await;
        let path = self.data_dir().tenant_file(tenant);
        let catalog = self.catalog().clone();
        let busy_timeout = self.pool_settings().busy_timeout;
        let migrations = self.schema().migrations();
        let outcome = run_blocking(move || {
            let state = catalog
                .read_now(|conn| store::get_tenant(conn, tenant))?
                .map(|t| t.state);
            if !matches!(state, Some(TenantState::Active | TenantState::Suspended)) {
                return Err(Error::NotFound(format!("tenant {tenant} no longer exists")));
            }
            if !path.is_file() {
                return Err(Error::internal(
                    format!("migrating tenant {tenant}"),
                    "its database file is missing",
                ));
            }
            let mut conn = Connection::open_with_flags(&path, sqlite::EXISTING)
                .context(|| format!("opening {}", path.display()))?;
            sqlite::defend(&conn, None)
                .and_then(|()| conn.busy_timeout(busy_timeout))
                .context(|| format!("opening {}", path.display()))?;
            let migrated = sqlite::set_wal(&conn)
                .and_then(|()| schema::migrate(&mut conn, migrations, &format!("tenant {tenant}")));
            drop(conn);
            match migrated {
                Ok(migrated) => {
                    catalog.write_now(|tx| store::set_schema_version(tx, tenant, migrated.to))?;
                    Ok(migrated)
                }
                Err(error) => Err(error),
            }
        })
        .await;
        let outcome_label = match &outcome {
            Ok(migrated) if migrated.from == migrated.to => None,
            Ok(_) => Some("ok"),
            Err(_) => Some("failed"),
        };
        if let Some(outcome) = outcome_label {
            self.metrics()
                .migrations
                .get_or_create(&crate::metrics::OutcomeLabels { outcome })
                .inc();
        }
        match outcome {
            Ok(migrated) => MigrationReport {
                tenant_id: tenant,
                from_version: migrated.from,
                to_version: migrated.to,
                result: Ok(()),
            },
            Err(error) => {
                tracing::warn!(%tenant, error = %crate::error::error_chain(&error), "could not migrate tenant");
                MigrationReport {
                    tenant_id: tenant,
                    from_version: recorded,
                    to_version: recorded,
                    result: Err(error),
                }
            }
        }
    }
}

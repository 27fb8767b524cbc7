//! Eager migration of every tenant: what `MigrateTenants` and the offline
//! `tenantry migrate` run.
//!
//! Tenants also migrate lazily, when they are opened; this brings the ones
//! nobody calls up to date too, a few at a time. The catalog records each
//! tenant's schema version, so tenants already current are skipped without
//! opening their files: a migrate-all with nothing to do reads one catalog
//! query.

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::catalog::{TenantState, store};
use crate::error::{Context, Error, Result};
use crate::ids::TenantId;
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
        let catalog = self.catalog().clone();
        let exists = catalog
            .read(move |conn| store::get_tenant(conn, tenant))
            .await
            .map(|record| {
                record.is_some_and(|t| {
                    matches!(t.state, TenantState::Active | TenantState::Suspended)
                })
            });
        let outcome = match exists {
            Ok(true) => self.migrate_aside(tenant).await,
            Ok(false) => Err(Error::NotFound(format!("tenant {tenant} no longer exists"))),
            Err(error) => Err(error),
        };
        // The catalog follows the file, even where the file was ahead of it.
        let outcome = match outcome {
            Ok(migrated) if migrated.to != recorded => catalog
                .write(move |tx| store::set_schema_version(tx, tenant, migrated.to))
                .await
                .map(|()| migrated),
            outcome => outcome,
        };
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

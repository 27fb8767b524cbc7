//! Tenant lifecycle operations: create (and clone), update, delete, backup
//! and restore, and the start-up recovery that finishes whatever a crash
//! interrupted.
//!
//! Every operation that changes files is a small state machine recorded in
//! the catalog before its first step: a `provisioning` tenant row for a
//! creation, a `tenant_operations` row for a delete, purge or restore. Each
//! step is idempotent, and [`recover`] runs the remaining steps at start-up,
//! so a crash at any point leaves the tenant either as it was or as asked,
//! never half done. Crash points ([`crate::fault`]) sit between the steps.

use std::path::{Path, PathBuf};

use crate::auth::Authenticator;
use crate::catalog::store::{self, AdminEvent, Operation, OperationKind};
use crate::catalog::{ApiKeyRecord, Catalog, TenantRecord, TenantState};
use crate::clock::{Micros, now_micros};
use crate::data_dir::{self, DataDir};
use crate::error::{Context, Error, Result};
use crate::fault;
use crate::ids::{TenantId, TenantName};
use crate::metrics::KindLabels;
use crate::schema::{self, Migrated};
use crate::sqlite::{Database, run_blocking};
use crate::tenant::Registry;
use crate::tenant::migrations::{self, TENANT};
use crate::tenant::snapshot::{self, FileSummary};

/// Runs lifecycle operations. A cheap, clone-able handle.
#[derive(Clone)]
pub struct Lifecycle {
    registry: Registry,
    auth: Authenticator,
}

/// Changes asked of a tenant by UpdateTenant; `None` leaves a field alone.
#[derive(Default)]
pub struct TenantChanges {
    pub display_name: Option<String>,
    pub state: Option<TenantState>,
}

/// A snapshot made by [`Lifecycle::backup`] or [`Lifecycle::snapshot`].
pub struct Snapshot {
    pub tenant_id: TenantId,
    pub path: PathBuf,
    pub summary: FileSummary,
    pub time: Micros,
}

/// What a restore did.
pub struct Restored {
    pub tenant_id: TenantId,
    pub migrated: Migrated,
    pub size_bytes: u64,
    pub sha256: String,
}

fn not_found(id: TenantId) -> Error {
    Error::NotFound(format!("tenant {id} does not exist"))
}

/// The tenant, if clients can see it (active or suspended); else NOT_FOUND.
fn visible_tenant(conn: &rusqlite::Connection, id: TenantId) -> Result<TenantRecord> {
    match store::get_tenant(conn, id)? {
        Some(tenant) if tenant.state.is_visible() => Ok(tenant),
        _ => Err(not_found(id)),
    }
}

fn audit(conn: &rusqlite::Connection, action: &str, target: &str, outcome: &str) -> Result<()> {
    store::record_admin_event(
        conn,
        &AdminEvent {
            time: now_micros(),
            actor: "admin",
            action,
            target,
            outcome,
            detail: "",
        },
    )
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Lifecycle {
    pub fn new(registry: Registry, auth: Authenticator) -> Self {
        Lifecycle { registry, auth }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn catalog(&self) -> &Catalog {
        self.registry.catalog()
    }

    fn data_dir(&self) -> &DataDir {
        self.registry.data_dir()
    }

    /// Creates a tenant: a `provisioning` catalog row, then its database file
    /// (empty at the current schema, or a consistent copy of `source`), then
    /// the row turns `active`. A failure or a crash in between never leaves
    /// an active tenant without its file; start-up rolls back what a crash
    /// left `provisioning`.
    pub async fn create_tenant(
        &self,
        name: TenantName,
        display_name: String,
        source: Option<TenantId>,
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
            last_access_time: None,
        };
        let row = tenant.clone();
        self.catalog()
            .write(move |tx| {
                if let Some(source) = source {
                    visible_tenant(tx, source).map_err(|_| {
                        Error::NotFound(format!("source tenant {source} does not exist"))
                    })?;
                }
                store::insert_tenant(tx, &row)
            })
            .await?;

        let made = match source {
            None => self.create_empty_file(tenant.id).await,
            Some(source) => self.copy_file(source, tenant.id).await,
        };
        if let Err(error) = made {
            self.roll_back_creation(tenant.id).await;
            return Err(error);
        }
        fault::point("create.after-file");

        tenant.state = TenantState::Active;
        tenant.schema_version = migrations::latest();
        let row = tenant.clone();
        let target = match source {
            None => format!("tenants/{}", row.id),
            Some(source) => format!("tenants/{} (copy of tenants/{source})", row.id),
        };
        self.catalog()
            .write(move |tx| {
                store::set_tenant_state(
                    tx,
                    row.id,
                    row.state,
                    row.schema_version,
                    row.update_time,
                )?;
                audit(tx, "CreateTenant", &target, "OK")
            })
            .await?;
        Ok(tenant)
    }

    async fn create_empty_file(&self, tenant: TenantId) -> Result<()> {
        let path = self.data_dir().tenant_file(tenant);
        let pool = self.registry.pool_settings().clone();
        run_blocking(move || {
            Database::create(&path, &pool, |conn| {
                schema::migrate(conn, TENANT, &format!("tenant {tenant}")).map(|_| ())
            })
        })
        .await
    }

    /// Makes `tenant`'s file a consistent copy of `source`'s, at the current
    /// schema version.
    async fn copy_file(&self, source: TenantId, tenant: TenantId) -> Result<()> {
        let _source_held = self.registry.shared(source).await;
        let from = self.data_dir().tenant_file(source);
        let staged = self.data_dir().staging_file("clone");
        let to = self.data_dir().tenant_file(tenant);
        run_blocking(move || {
            let copied = snapshot::take(&from, &staged).and_then(|_| {
                let mut conn = rusqlite::Connection::open(&staged)
                    .context(|| format!("opening {}", staged.display()))?;
                schema::migrate(&mut conn, TENANT, &format!("tenant {tenant}"))?;
                drop(conn);
                snapshot::seal(&staged)?;
                std::fs::rename(&staged, &to)
                    .context(|| format!("moving {} into place", staged.display()))?;
                data_dir::sync_parent(&to)
            });
            if copied.is_err() {
                data_dir::remove_database_files(&staged).ok();
            }
            copied
        })
        .await
    }

    async fn roll_back_creation(&self, tenant: TenantId) {
        let path = self.data_dir().tenant_file(tenant);
        let removed = run_blocking(move || data_dir::remove_database_files(&path)).await;
        let forgotten = self
            .catalog()
            .write(move |tx| store::delete_tenant_row(tx, tenant))
            .await;
        if let Err(error) = removed.and(forgotten) {
            // Start-up recovery finishes the job: the row is still `provisioning`.
            tracing::error!(%tenant, error = %crate::error::error_chain(&error), "could not roll back a failed tenant creation");
        }
    }

    /// Changes a tenant's display name and state. Every cached credential
    /// is dropped, so a suspension refuses the tenant's very next call.
    pub async fn update_tenant(
        &self,
        id: TenantId,
        changes: TenantChanges,
    ) -> Result<TenantRecord> {
        let updated = self
            .catalog()
            .write(move |tx| {
                let mut tenant = visible_tenant(tx, id)?;
                let before = tenant.state;
                if let Some(display_name) = changes.display_name {
                    tenant.display_name = display_name;
                }
                if let Some(state) = changes.state {
                    tenant.state = state;
                }
                tenant.update_time = now_micros().max(tenant.update_time);
                store::update_tenant(tx, &tenant)?;
                let action = match (before, tenant.state) {
                    (TenantState::Active, TenantState::Suspended) => "SuspendTenant",
                    (TenantState::Suspended, TenantState::Active) => "ResumeTenant",
                    _ => "UpdateTenant",
                };
                audit(tx, action, &format!("tenants/{id}"), "OK")?;
                Ok(tenant)
            })
            .await?;
        self.auth.invalidate();
        if updated.state == TenantState::Suspended {
            self.registry.evict(id).await;
        }
        Ok(updated)
    }

    /// Revokes an API key, effective from the next call.
    pub async fn revoke_api_key(&self, id: uuid::Uuid) -> Result<ApiKeyRecord> {
        let key = self
            .catalog()
            .write(move |tx| {
                let Some(key) = store::get_api_key(tx, id)? else {
                    return Err(Error::NotFound(format!("api key {id} does not exist")));
                };
                if key.revoke_time.is_some() {
                    return Ok(key);
                }
                let now = now_micros();
                store::revoke_api_key(tx, id, now)?;
                audit(
                    tx,
                    "RevokeApiKey",
                    &format!("tenants/{}/keys/{id}", key.tenant_id),
                    "OK",
                )?;
                Ok(ApiKeyRecord {
                    revoke_time: Some(now),
                    ..key
                })
            })
            .await?;
        self.auth.invalidate();
        Ok(key)
    }

    /// Deletes a tenant: its keys stop working at once, calls running on it
    /// finish, then its file moves to the trash (or, with `purge`, it and
    /// every copy tenantry keeps are removed). A tenant already deleted
    /// without `purge` can still be purged.
    pub async fn delete_tenant(&self, id: TenantId, purge: bool) -> Result<()> {
        let time = now_micros();
        let op = Operation {
            tenant_id: id,
            kind: if purge {
                OperationKind::Purge
            } else {
                OperationKind::Delete
            },
            staging_file: None,
            trash_file: (!purge).then(|| file_name(&self.data_dir().trash_file(id, time))),
            start_time: time,
        };
        let started = op.clone();
        let erase_only = self
            .catalog()
            .write(move |tx| {
                let tenant = store::get_tenant(tx, id)?;
                match tenant.map(|t| t.state) {
                    Some(state) if state.is_visible() => {}
                    // Erasing what a soft delete kept: no tenant state changes.
                    Some(TenantState::Deleted) if purge => return Ok(true),
                    _ => return Err(not_found(id)),
                }
                store::insert_operation(tx, &started)?;
                // Its keys now answer NOT_FOUND: a key's grant carries its
                // tenant's state.
                store::set_tenant_state_only(tx, id, TenantState::Deleting, time)?;
                Ok(false)
            })
            .await?;
        if erase_only {
            let data_dir = self.data_dir().clone();
            run_blocking(move || erase_copies(&data_dir, id)).await?;
            self.catalog()
                .write(move |tx| audit(tx, "PurgeTenant", &format!("tenants/{id}"), "OK"))
                .await?;
            return Ok(());
        }
        self.auth.invalidate();
        fault::point("delete.after-mark");

        let _held = self.registry.exclusive(id).await;
        let data_dir = self.data_dir().clone();
        let catalog = self.catalog().clone();
        run_blocking(move || finish_delete(&catalog, &data_dir, &op)).await
    }

    /// Takes a consistent snapshot of a live tenant into
    /// `backups/<id>/<time>.db`.
    pub async fn backup(&self, id: TenantId) -> Result<Snapshot> {
        let mut snapshot = self.snapshot(id).await?;
        let dir = self.data_dir().tenant_backups_dir(id);
        let dest = dir.join(format!("{}.db", data_dir::file_time(snapshot.time)));
        let staged = snapshot.path.clone();
        let moved = dest.clone();
        run_blocking(move || {
            std::fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
            std::fs::rename(&staged, &moved)
                .context(|| format!("moving a snapshot to {}", moved.display()))?;
            data_dir::sync_parent(&moved)
        })
        .await
        .inspect_err(|_| {
            std::fs::remove_file(&snapshot.path).ok();
        })?;
        snapshot.path = dest;
        self.registry
            .metrics()
            .backups
            .get_or_create(&KindLabels { kind: "backup" })
            .inc();
        let target = format!(
            "tenants/{id} -> {}",
            self.data_dir().relative(&snapshot.path).display()
        );
        self.catalog()
            .write(move |tx| audit(tx, "BackupTenant", &target, "OK"))
            .await?;
        Ok(snapshot)
    }

    /// Takes a consistent snapshot of a live tenant into the staging folder;
    /// the caller owns the file and removes it when done.
    pub async fn snapshot(&self, id: TenantId) -> Result<Snapshot> {
        self.catalog()
            .read(move |conn| visible_tenant(conn, id))
            .await?;
        let _held = self.registry.shared(id).await;
        let source = self.data_dir().tenant_file(id);
        let dest = self.data_dir().staging_file("snapshot");
        let time = now_micros();
        let path = dest.clone();
        let summary = run_blocking(move || {
            snapshot::take(&source, &dest).inspect_err(|_| {
                data_dir::remove_database_files(&dest).ok();
            })
        })
        .await?;
        Ok(Snapshot {
            tenant_id: id,
            path,
            summary,
            time,
        })
    }

    /// Replaces a tenant's data with `staged`, a private copy of a snapshot
    /// in the staging folder (this takes it over: it is moved or removed).
    /// The copy is checked and upgraded first; nothing of the tenant changes
    /// unless it passes. Then, with the tenant's file held exclusively, the
    /// current file moves to the trash and the copy takes its place: calls
    /// arriving meanwhile wait, and then see the restored data.
    pub async fn restore(&self, id: TenantId, staged: PathBuf, action: &str) -> Result<Restored> {
        let result = self.restore_staged(id, &staged, action).await;
        if result.is_ok() {
            let kind = if action == "ImportTenant" {
                "import"
            } else {
                "restore"
            };
            self.registry
                .metrics()
                .restores
                .get_or_create(&KindLabels { kind })
                .inc();
        }
        if result.is_err() {
            // Still ours unless the operation was recorded (then recovery owns it).
            let staged = staged.clone();
            let catalog = self.catalog().clone();
            run_blocking(move || {
                let recorded = catalog
                    .read_now(store::operations)?
                    .iter()
                    .any(|op| op.staging_file.as_deref() == Some(file_name(&staged).as_str()));
                if !recorded {
                    data_dir::remove_database_files(&staged)?;
                }
                Ok(())
            })
            .await
            .ok();
        }
        result
    }

    async fn restore_staged(&self, id: TenantId, staged: &Path, action: &str) -> Result<Restored> {
        self.catalog()
            .read(move |conn| visible_tenant(conn, id))
            .await?;
        let path = staged.to_owned();
        let (size_bytes, sha256, migrated) = run_blocking(move || {
            let (size, sha256) = snapshot::file_sha256(&path)?;
            let migrated = snapshot::check_and_upgrade(&path)?;
            Ok((size, sha256, migrated))
        })
        .await?;
        if let Some(max) = self.registry.pool_settings().max_bytes
            && size_bytes > max
        {
            return Err(Error::ResourceExhausted(format!(
                "the snapshot holds {size_bytes} bytes, more than the tenant storage quota \
                 of {} KiB: raise --tenant-quota-kib to restore it",
                max / 1024
            )));
        }

        let time = now_micros();
        let op = Operation {
            tenant_id: id,
            kind: OperationKind::Restore,
            staging_file: Some(file_name(staged)),
            trash_file: Some(file_name(&self.data_dir().trash_file(id, time))),
            start_time: time,
        };
        let recorded = op.clone();
        self.catalog()
            .write(move |tx| {
                visible_tenant(tx, id)?;
                store::insert_operation(tx, &recorded)
            })
            .await?;
        fault::point("restore.after-record");

        let _held = self.registry.exclusive(id).await;
        let data_dir = self.data_dir().clone();
        let catalog = self.catalog().clone();
        let target = format!("tenants/{id} (sha256 {sha256})");
        let action = action.to_owned();
        run_blocking(move || {
            finish_restore(&catalog, &data_dir, &op)?;
            catalog.write_now(|tx| audit(tx, &action, &target, "OK"))
        })
        .await?;
        Ok(Restored {
            tenant_id: id,
            migrated,
            size_bytes,
            sha256,
        })
    }
}

/// Removes what tenantry keeps of a deleted tenant besides its live file:
/// its trash copies and its backups. Blocking.
fn erase_copies(data_dir: &DataDir, id: TenantId) -> Result<()> {
    for file in data_dir.trash_files_of(id)? {
        data_dir::remove_if_present(&file)?;
    }
    let backups = data_dir.tenant_backups_dir(id);
    match std::fs::remove_dir_all(&backups) {
        Ok(()) => data_dir::sync_parent(&backups),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).context(|| format!("removing {}", backups.display())),
    }
}

/// Moves a tenant's file to the trash as one complete file: sealed first
/// (its write-ahead log checkpointed into it, nothing left beside it), so
/// that the copy in the trash holds every commit and is never written
/// again. A file too damaged to seal moves as it is, with its companions.
/// Nothing may have the file open. Blocking.
fn to_trash(id: TenantId, file: &Path, trash: &Path) -> Result<()> {
    if let Err(error) = snapshot::seal(file) {
        tracing::warn!(tenant = %id, error = %crate::error::error_chain(&error), "moving a tenant file that could not be sealed to the trash as it is");
    }
    data_dir::move_database_files(file, trash)
}

/// The steps of a delete or purge after the tenant is marked `deleting` and
/// nothing has its file open. Idempotent: recovery runs it again. Blocking.
fn finish_delete(catalog: &Catalog, data_dir: &DataDir, op: &Operation) -> Result<()> {
    let id = op.tenant_id;
    let file = data_dir.tenant_file(id);
    match op.kind {
        OperationKind::Purge => {
            data_dir::remove_database_files(&file)?;
            data_dir::sync_parent(&file)?;
            erase_copies(data_dir, id)?;
        }
        _ => {
            if file.exists() {
                let trash = data_dir
                    .trash_dir()
                    .join(op.trash_file.as_deref().ok_or_else(|| {
                        Error::internal("deleting a tenant", "no trash file recorded")
                    })?);
                to_trash(id, &file, &trash)?;
            }
        }
    }
    fault::point("delete.after-move");
    let action = if op.kind == OperationKind::Purge {
        "PurgeTenant"
    } else {
        "DeleteTenant"
    };
    catalog.write_now(|tx| {
        store::set_tenant_state_only(tx, id, TenantState::Deleted, now_micros())?;
        store::delete_operation(tx, id)?;
        audit(tx, action, &format!("tenants/{id}"), "OK")
    })
}

/// The steps of a restore once it is recorded and nothing has the tenant's
/// file open: the current file to the trash, the checked copy into place.
/// Idempotent: recovery runs it again. Blocking.
fn finish_restore(catalog: &Catalog, data_dir: &DataDir, op: &Operation) -> Result<()> {
    let id = op.tenant_id;
    let file = data_dir.tenant_file(id);
    let missing = |what| Error::internal("restoring a tenant", format!("no {what} recorded"));
    let staged = data_dir.staging_dir().join(
        op.staging_file
            .as_deref()
            .ok_or_else(|| missing("staging file"))?,
    );
    let trash = data_dir.trash_dir().join(
        op.trash_file
            .as_deref()
            .ok_or_else(|| missing("trash file"))?,
    );
    if staged.exists() {
        if file.exists() {
            to_trash(id, &file, &trash)?;
        }
        fault::point("restore.after-trash");
        // A checked copy is sealed: it has no companions of its own.
        data_dir::remove_companions(&file)?;
        std::fs::rename(&staged, &file)
            .context(|| format!("moving {} into place", staged.display()))?;
        data_dir::sync_parent(&file)?;
        fault::point("restore.after-swap");
    }
    let version = {
        let conn = rusqlite::Connection::open_with_flags(
            &file,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .context(|| format!("opening {}", file.display()))?;
        schema::version(&conn).context(|| format!("reading the version of {}", file.display()))?
    };
    catalog.write_now(|tx| {
        store::set_schema_version(tx, id, version)?;
        store::delete_operation(tx, id)
    })
}

/// Finishes or rolls back whatever a crash interrupted, before serving:
/// creations left `provisioning` are rolled back (no client ever saw them),
/// recorded deletes, purges and restores are finished, and the staging
/// folder is emptied. Blocking.
pub fn recover(catalog: &Catalog, data_dir: &DataDir) -> Result<()> {
    let provisioning =
        catalog.read_now(|conn| store::tenants_in_state(conn, TenantState::Provisioning))?;
    for tenant in provisioning {
        tracing::warn!(tenant = %tenant.id, name = tenant.name, "rolling back a tenant creation interrupted by a crash");
        data_dir::remove_database_files(&data_dir.tenant_file(tenant.id))?;
        catalog.write_now(|tx| store::delete_tenant_row(tx, tenant.id))?;
    }
    for op in catalog.read_now(store::operations)? {
        tracing::warn!(tenant = %op.tenant_id, kind = ?op.kind, "finishing an operation interrupted by a crash");
        match op.kind {
            OperationKind::Delete | OperationKind::Purge => finish_delete(catalog, data_dir, &op)?,
            OperationKind::Restore => finish_restore(catalog, data_dir, &op)?,
        }
    }
    let staging = data_dir.staging_dir();
    let entries =
        std::fs::read_dir(&staging).context(|| format!("listing {}", staging.display()))?;
    for entry in entries {
        let path = entry
            .context(|| format!("listing {}", staging.display()))?
            .path();
        tracing::info!(path = %path.display(), "removing an unfinished file from the staging folder");
        data_dir::remove_if_present(&path)?;
    }
    Ok(())
}

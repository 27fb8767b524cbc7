//! Tenant lifecycle operations: create (and clone), update, delete, backup
//! and restore, and the start-up recovery that finishes whatever a crash
//! interrupted.
//!
//! Creating, deleting, purging and restoring are operations
//! ([`crate::tenant::operations`]): each is recorded in the catalog once it
//! holds the tenant, runs to its end on a task of its own, and records its
//! end in the transaction of its last change. Each step is idempotent, and
//! [`recover`] runs the remaining steps at start-up, so a crash at any point
//! leaves the tenant either as it was or as asked, never half done; a step
//! that fails (a disk error) is tried again until it succeeds. Crash points
//! ([`crate::fault`]) sit between the steps.

use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::audit::{self, AdminCall};
use crate::auth::Authenticator;
use crate::catalog::operations::{OperationKind, OperationRecord};
use crate::catalog::store;
use crate::catalog::{ApiKeyRecord, Catalog, TenantRecord, TenantState};
use crate::clock::{Micros, now_micros};
use crate::error::{Context, Error, Result};
use crate::fault;
use crate::ids::{TenantId, TenantName};
use crate::metrics::KindLabels;
use crate::storage::data_dir::{self, DataDir};
use crate::storage::schema::{self, Schema};
use crate::storage::sqlite::run_blocking;
use crate::storage::staging::StagedFile;
use crate::tenant::Registry;
use crate::tenant::operations::{self, Call, Done, Operations, Outcome, Restored};
use crate::tenant::snapshot::{self, FileSummary};
use crate::tenant::spares::Spares;

/// Runs lifecycle operations. A cheap, clone-able handle.
#[derive(Clone)]
pub struct Lifecycle {
    registry: Registry,
    auth: Authenticator,
    operations: Operations,
    spares: Spares,
}

/// Changes asked of a tenant by UpdateTenant; `None` leaves a field alone.
#[derive(Default)]
pub struct TenantChanges {
    pub display_name: Option<String>,
    pub state: Option<TenantState>,
}

/// A snapshot made by [`Lifecycle::backup`]: where it is, and what it is.
pub struct Snapshot {
    pub tenant_id: TenantId,
    pub path: PathBuf,
    pub summary: FileSummary,
    pub time: Micros,
}

/// A snapshot in the staging folder, made by [`Lifecycle::snapshot`]: removed
/// when dropped.
pub struct StagedSnapshot {
    pub tenant_id: TenantId,
    pub file: StagedFile,
    pub summary: FileSummary,
    pub time: Micros,
}

/// The tenant, if clients can see it (active or suspended); else NOT_FOUND.
fn visible_tenant(conn: &rusqlite::Connection, id: TenantId) -> Result<TenantRecord> {
    match store::get_tenant(conn, id)? {
        Some(tenant) if tenant.state.is_visible() => Ok(tenant),
        _ => Err(crate::error::tenant_not_found(id)),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Lifecycle {
    pub fn new(registry: Registry, auth: Authenticator, spares: Spares) -> Self {
        Lifecycle {
            registry,
            auth,
            operations: Operations::default(),
            spares,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn operations(&self) -> &Operations {
        &self.operations
    }

    fn catalog(&self) -> &Catalog {
        self.registry.catalog()
    }

    fn data_dir(&self) -> &DataDir {
        self.registry.data_dir()
    }

    /// Creates a tenant, as an operation. An empty tenant takes a spare
    /// file ([`crate::tenant::spares`]): the tenant row goes in active, in
    /// one catalog transaction. A clone, or an empty tenant when no spare is
    /// ready: a `provisioning` catalog row, then its database file (empty
    /// at the current schema, or a consistent copy of `source`), then the
    /// row turns `active`. A failure or a crash in between never leaves an
    /// active tenant without its file: the operation rolls back what it
    /// made, and so does start-up after a crash. Returns the operation's id
    /// and the tenant.
    pub async fn create_tenant(
        &self,
        name: TenantName,
        display_name: String,
        source: Option<TenantId>,
        request_id: Option<uuid::Uuid>,
    ) -> Result<(uuid::Uuid, TenantRecord)> {
        let now = now_micros();
        let tenant = TenantRecord {
            id: TenantId::new_random(),
            name: name.as_str().to_owned(),
            display_name,
            state: TenantState::Provisioning,
            schema_version: 0,
            create_time: now,
            update_time: now,
            last_access_time: None,
        };
        let call = Call {
            subject: format!("names/{}", name.as_str()),
            kind: OperationKind::Create,
            action: "CreateTenant",
            request: format!(
                "{} {} {}",
                name.as_str(),
                source.map(|s| s.to_string()).unwrap_or_default(),
                tenant.display_name
            ),
            request_id,
        };
        let existing = match self.operations.existing(self.catalog(), &call).await? {
            Some(started) => Some(started),
            None if source.is_none() => self.create_from_spare(&tenant, &call, now).await?,
            None => None,
        };
        let started = match existing {
            Some(started) => started,
            None => {
                let row = tenant.clone();
                let tenant_id = tenant.id;
                let lifecycle = self.clone();
                self.operations
                    .start(
                        self.catalog(),
                        call.clone(),
                        |id| record(id, tenant_id, &call, now),
                        (),
                        move |tx| {
                            if let Some(source) = source {
                                visible_tenant(tx, source).map_err(|_| {
                                    Error::NotFound(format!(
                                        "source tenant {source} does not exist"
                                    ))
                                })?;
                            }
                            store::insert_tenant(tx, &row)
                        },
                        move |op| async move { lifecycle.make_tenant(op, tenant, source).await },
                    )
                    .await?
            }
        };
        match started.outcome().await? {
            (id, Done::Created(tenant)) => Ok((id, tenant)),
            (id, other) => Err(unexpected(id, &other)),
        }
    }

    fn count_creation(&self, kind: &'static str) {
        self.registry
            .metrics()
            .tenants_created
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Creates an empty tenant from a spare file, if one is ready: the
    /// tenant row (active), the operation's record (done) and its audit
    /// event, in one catalog transaction; `None` if no spare is ready.
    async fn create_from_spare(
        &self,
        tenant: &TenantRecord,
        call: &Call,
        now: Micros,
    ) -> Result<Option<operations::Started>> {
        let spares = self.spares.clone();
        let synced = spares.synced();
        // Whether this call's transaction took one: a retried call is
        // answered with the first one's operation, and takes none.
        let took = Arc::new(AtomicBool::new(false));
        let taking = took.clone();
        let (row, recorded) = (tenant.clone(), call.clone());
        let started = self
            .operations
            // Unless --sync-creations, answered before the catalog syncs
            // it: the spare's file is durable already, and after a power cut
            // every spare is made anew ([`crate::tenant::spares::recover`]),
            // so a lost creation's file and id are never handed out again.
            .run_at_once(self.catalog(), call.clone(), synced, move |tx, op| {
                let Some(id) = spares.take(tx)? else {
                    return Ok(None);
                };
                taking.store(true, Ordering::Relaxed);
                let tenant = TenantRecord {
                    id,
                    state: TenantState::Active,
                    schema_version: spares.version(),
                    ..row
                };
                store::insert_tenant(tx, &tenant)?;
                let record = record(op, id, &recorded, now);
                Ok(Some((record, Done::Created(tenant), String::new())))
            })
            .await?;
        if started.is_some() && took.load(Ordering::Relaxed) {
            self.spares.taken();
            self.count_creation("spare");
        }
        Ok(started)
    }

    /// The steps of a creation once it is recorded: the file, then the
    /// tenant active; on failure, the file and the row are removed again.
    async fn make_tenant(
        &self,
        op: OperationRecord,
        mut tenant: TenantRecord,
        source: Option<TenantId>,
    ) -> Outcome {
        let made = match source {
            None => self.create_empty_file(tenant.id).await,
            Some(source) => self.copy_file(source, tenant.id).await,
        };
        if let Err(error) = made {
            let error = Arc::new(error);
            let (catalog, data_dir) = (self.catalog().clone(), self.data_dir().clone());
            let failed = error.clone();
            persist("rolling back a tenant creation", move || {
                roll_back_creation(&catalog, &data_dir, &op, Err(&failed))
            })
            .await;
            return Err(error);
        }
        self.count_creation(if source.is_some() { "copy" } else { "new" });
        fault::reached("create.after-file").await;
        tenant.state = TenantState::Active;
        tenant.schema_version = self.registry.schema().latest();
        let row = tenant.clone();
        let target = match source {
            None => String::new(),
            Some(source) => format!("a copy of tenants/{source}"),
        };
        let catalog = self.catalog().clone();
        persist("recording a tenant creation", move || {
            catalog.write_now(|tx| {
                store::set_tenant_state(
                    tx,
                    row.id,
                    row.state,
                    row.schema_version,
                    row.update_time,
                )?;
                operations::finish(tx, &op, &Ok(String::new()), &target)
            })
        })
        .await;
        Ok(Done::Created(tenant))
    }

    async fn create_empty_file(&self, tenant: TenantId) -> Result<()> {
        let path = self.data_dir().tenant_file(tenant);
        let spares = self.spares.clone();
        run_blocking(move || {
            spares.write_file(&path)?;
            data_dir::sync_parent(&path)
        })
        .await
    }

    /// Makes `tenant`'s file a consistent copy of `source`'s, at the current
    /// schema version.
    async fn copy_file(&self, source: TenantId, tenant: TenantId) -> Result<()> {
        let (staged, _) = self.registry.snapshot(source, "clone").await?;
        let to = self.data_dir().tenant_file(tenant);
        let migrations = self.registry.schema().migrations();
        run_blocking(move || {
            let mut conn = rusqlite::Connection::open(staged.path())
                .context(|| format!("opening {}", staged.path().display()))?;
            schema::migrate(&mut conn, migrations, &format!("tenant {tenant}"))?;
            drop(conn);
            snapshot::seal(staged.path())?;
            std::fs::rename(staged.path(), &to)
                .context(|| format!("moving {} into place", staged.path().display()))?;
            staged.keep();
            data_dir::sync_parent(&to)
        })
        .await
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
                audit::record_in(
                    tx,
                    now_micros(),
                    &AdminCall::ok(action, format!("tenants/{id}")),
                )?;
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
                audit::record_in(
                    tx,
                    now,
                    &AdminCall::ok(
                        "RevokeApiKey",
                        format!("tenants/{}/keys/{id}", key.tenant_id),
                    ),
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

    /// Deletes a tenant, as an operation: its keys stop working at once,
    /// calls running on it finish, then its file moves to the trash (or,
    /// with `purge`, it and every copy tenantry keeps are removed). A tenant
    /// already deleted without `purge` can still be purged. Returns the
    /// operation's id.
    pub async fn delete_tenant(
        &self,
        id: TenantId,
        purge: bool,
        request_id: Option<uuid::Uuid>,
    ) -> Result<uuid::Uuid> {
        let call = Call {
            subject: format!("tenants/{id}"),
            kind: if purge {
                OperationKind::Purge
            } else {
                OperationKind::Delete
            },
            action: if purge { "PurgeTenant" } else { "DeleteTenant" },
            request: String::new(),
            request_id,
        };
        let started = match self.operations.existing(self.catalog(), &call).await? {
            Some(started) => started,
            None => {
                deletable(self.catalog(), id, purge).await?;
                let held = self.registry.exclusive(id).await;
                let time = now_micros();
                let trash = (!purge).then(|| file_name(&self.data_dir().trash_file(id, time)));
                let lifecycle = self.clone();
                self.operations
                    .start(
                        self.catalog(),
                        call.clone(),
                        |op| OperationRecord {
                            trash_file: trash,
                            ..record(op, id, &call, time)
                        },
                        held,
                        move |tx| {
                            // Its keys now answer NOT_FOUND: a key's grant
                            // carries its tenant's state.
                            if visible_tenant(tx, id).is_ok() {
                                store::set_tenant_state_only(tx, id, TenantState::Deleting, time)
                            } else {
                                // Erasing what a soft delete kept.
                                deleted_already(tx, id, purge)
                            }
                        },
                        move |op| async move {
                            lifecycle.auth.invalidate();
                            fault::reached("delete.after-mark").await;
                            let (catalog, data_dir) =
                                (lifecycle.catalog().clone(), lifecycle.data_dir().clone());
                            persist("deleting a tenant", move || {
                                finish_delete(&catalog, &data_dir, &op, "")
                            })
                            .await;
                            Ok(Done::Deleted)
                        },
                    )
                    .await?
            }
        };
        started.outcome().await.map(|(id, _)| id)
    }

    /// Takes a consistent snapshot of a live tenant into
    /// `backups/<id>/<time>.db`. A caller whose deadline passes before the
    /// snapshot is in place hears that nothing was made, and nothing is.
    pub async fn backup(&self, id: TenantId) -> Result<Snapshot> {
        let staged = self.snapshot(id).await?;
        let dir = self.data_dir().tenant_backups_dir(id);
        let dest = dir.join(format!("{}.db", data_dir::file_time(staged.time)));
        let moved = dest.clone();
        let deadline = crate::deadline::current();
        let StagedSnapshot {
            file,
            summary,
            time,
            ..
        } = staged;
        run_blocking(move || {
            std::fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
            crate::deadline::commit(deadline.as_deref())?;
            let path = file.keep();
            std::fs::rename(&path, &moved)
                .inspect_err(|_| {
                    data_dir::remove_if_present(&path).ok();
                })
                .context(|| format!("moving a snapshot to {}", moved.display()))?;
            data_dir::sync_parent(&moved)
        })
        .await?;
        self.registry
            .metrics()
            .backups
            .get_or_create(&KindLabels { kind: "backup" })
            .inc();
        let relative = self.data_dir().relative(&dest).display().to_string();
        let target = format!("tenants/{id} -> {relative}");
        let record = store::BackupRecord {
            path: relative,
            tenant_id: id,
            size_bytes: summary.size_bytes,
            sha256: summary.sha256.clone(),
            schema_version: summary.schema_version,
            create_time: time,
        };
        let recorded = self
            .catalog()
            .write(move |tx| {
                store::insert_backup(tx, &record)?;
                audit::record_in(tx, now_micros(), &AdminCall::ok("BackupTenant", target))
            })
            .await;
        if let Err(error) = recorded {
            // Unrecorded, it could never be restored: it does not stay.
            let dest = dest.clone();
            run_blocking(move || data_dir::remove_if_present(&dest))
                .await
                .ok();
            return Err(error);
        }
        Ok(Snapshot {
            tenant_id: id,
            path: dest,
            summary,
            time,
        })
    }

    /// Takes a consistent snapshot of a live tenant into the staging folder
    /// (counted against its bound); the file is removed when the returned
    /// snapshot is dropped.
    pub async fn snapshot(&self, id: TenantId) -> Result<StagedSnapshot> {
        self.catalog()
            .read(move |conn| visible_tenant(conn, id))
            .await?;
        let time = now_micros();
        let (file, summary) = self.registry.snapshot(id, "snapshot").await?;
        Ok(StagedSnapshot {
            tenant_id: id,
            file,
            summary,
            time,
        })
    }

    /// Replaces a tenant's data with `staged`, a private copy of a snapshot
    /// in the staging folder (this takes it over: it is moved or removed),
    /// as an operation. The copy is checked and upgraded first; nothing of
    /// the tenant changes unless it passes. Then, with the tenant's file
    /// held exclusively, the current file moves to the trash and the copy
    /// takes its place: calls arriving meanwhile wait, and then see the
    /// restored data. `request` tells a retry of this call from another
    /// (the backup it names, the digest of an upload).
    pub async fn restore(
        &self,
        id: TenantId,
        staged: Source,
        action: &'static str,
        request: String,
        request_id: Option<uuid::Uuid>,
    ) -> Result<(uuid::Uuid, Restored)> {
        let call = Call {
            subject: format!("tenants/{id}"),
            kind: OperationKind::Restore,
            action,
            request,
            request_id,
        };
        // Unless an operation takes it over, the copy is removed with it.
        let started = match self.operations.existing(self.catalog(), &call).await? {
            Some(started) => started,
            None => self.start_restore(id, staged, call).await?,
        };
        let kind = if action == "ImportTenant" {
            "import"
        } else {
            "restore"
        };
        match started.outcome().await? {
            (op, Done::Restored(restored)) => {
                self.registry
                    .metrics()
                    .restores
                    .get_or_create(&KindLabels { kind })
                    .inc();
                Ok((op, restored))
            }
            (op, other) => Err(unexpected(op, &other)),
        }
    }

    async fn start_restore(
        &self,
        id: TenantId,
        source: Source,
        call: Call,
    ) -> Result<operations::Started> {
        self.catalog()
            .read(move |conn| visible_tenant(conn, id))
            .await?;
        let deadline = crate::deadline::current();
        let Source {
            file: staged,
            size_bytes,
            sha256,
        } = source;
        let schema = self.registry.schema();
        let (staged, migrated) = run_blocking(move || {
            let migrated = snapshot::check_and_upgrade(staged.path(), schema, deadline.as_deref())?;
            Ok((staged, migrated))
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
        let restored = Restored {
            tenant_id: id,
            from_version: migrated.from,
            to_version: migrated.to,
            size_bytes,
            sha256,
        };
        let held = self.registry.exclusive(id).await;
        let time = now_micros();
        let staging = file_name(staged.path());
        // None when there is no file to move aside (recovery tells by it
        // whether the copy was put in place).
        let trash = self
            .data_dir()
            .tenant_file(id)
            .exists()
            .then(|| file_name(&self.data_dir().trash_file(id, time)));
        let lifecycle = self.clone();
        self.operations
            .start(
                self.catalog(),
                call.clone(),
                |op| OperationRecord {
                    staging_file: Some(staging),
                    trash_file: trash,
                    ..record(op, id, &call, time)
                },
                held,
                move |tx| visible_tenant(tx, id).map(|_| ()),
                move |op| async move {
                    // Recorded: the operation moves the copy into place.
                    // Unrecorded, these steps are dropped and the copy with
                    // them.
                    staged.keep();
                    fault::reached("restore.after-record").await;
                    let (catalog, data_dir) =
                        (lifecycle.catalog().clone(), lifecycle.data_dir().clone());
                    let result = serde_json::to_string(&restored).unwrap_or_default();
                    let detail = format!("sha256 {}", restored.sha256);
                    persist("restoring a tenant", move || {
                        finish_restore(&catalog, &data_dir, &op, &result, &detail)
                    })
                    .await
                    .map(|()| Done::Restored(restored))
                    .map_err(Arc::new)
                },
            )
            .await
    }
}

/// A snapshot to restore: a private copy in the staging folder, with the
/// size and SHA-256 of the bytes as they were given.
pub struct Source {
    pub file: StagedFile,
    pub size_bytes: u64,
    pub sha256: String,
}

impl Lifecycle {
    /// A private copy of tenant `id`'s backup at `path` (relative to the
    /// data directory, or absolute), for a restore; and the backup's path as
    /// recorded. The backup must be this tenant's own (another tenant's is
    /// INVALID_ARGUMENT: data moves between tenants only as a copy or an
    /// import, acts the audit names as such), a regular file with no other
    /// link, made by BackupTenant and unchanged since.
    pub async fn stage_backup(&self, id: TenantId, path: String) -> Result<(Source, String)> {
        let data_dir = self.data_dir().clone();
        let (file, relative) = run_blocking(move || open_backup(&data_dir, id, &path)).await?;
        let name = relative.clone();
        let record = self
            .catalog()
            .read(move |conn| store::get_backup(conn, &name))
            .await?
            .filter(|record| record.tenant_id == id)
            .ok_or_else(|| {
                Error::invalid(
                    "backup_path",
                    "was not made by BackupTenant: restore only the backups it made, and put \
                     a snapshot from elsewhere into a tenant with ImportTenant",
                )
            })?;
        let staging = self.registry.staging().clone();
        let source = run_blocking(move || {
            let staged = staging.reserve("restore", record.size_bytes)?;
            let (size_bytes, sha256) = copy_with_digest(file, staged.path())?;
            if sha256 != record.sha256 || size_bytes != record.size_bytes {
                return Err(Error::invalid(
                    "backup_path",
                    "has changed since BackupTenant made it (its SHA-256 is not the one \
                     recorded): it is not restored",
                ));
            }
            Ok(Source {
                file: staged,
                size_bytes,
                sha256,
            })
        })
        .await?;
        Ok((source, relative))
    }
}

impl Lifecycle {
    /// Tenant `id`'s data as it was at `until` (Unix microseconds), rebuilt
    /// from the server's replica into the staging folder, for a restore;
    /// and how the source is named in the operation's record.
    pub async fn stage_point_in_time(
        &self,
        id: TenantId,
        until: Micros,
    ) -> Result<(Source, String)> {
        let Some(replica) = self.registry.replica() else {
            return Err(Error::FailedPrecondition(
                "this server has no replica (--replica): a tenant can be restored to a point \
                 in time only from one; restore a backup instead"
                    .into(),
            ));
        };
        if until > now_micros() {
            return Err(Error::invalid(
                "point_in_time",
                "is in the future: give a moment that has passed",
            ));
        }
        // What is committed but not shipped yet is shipped first: without
        // it, a moment after the last shipped commit would bring back an
        // older state than the one asked for.
        if let Some(database) = self.registry.if_open(id).await {
            database.replicate_pending().await?;
        }
        let mut staged = self.registry.staging().reserve("restore", 0)?;
        let restored = crate::replica::restore(
            replica.store(),
            crate::replica::manifest::Subject::Tenant(id),
            Some(until),
            staged.path(),
        )
        .await?;
        let path = staged.path().to_owned();
        let (size_bytes, sha256) = run_blocking(move || snapshot::file_sha256(&path)).await?;
        staged.grow(size_bytes)?;
        tracing::debug!(tenant = %id, generation = restored.generation, commits = restored.commits, "rebuilt a tenant from the replica");
        let named = format!("replica at {}", data_dir::file_time(until));
        Ok((
            Source {
                file: staged,
                size_bytes,
                sha256,
            },
            named,
        ))
    }
}

/// Opens tenant `id`'s backup at `text` without following links: its
/// descriptor, and its path relative to the data directory. Blocking.
fn open_backup(data_dir: &DataDir, id: TenantId, text: &str) -> Result<(std::fs::File, String)> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    use std::path::Component;
    const FIELD: &str = "backup_path";
    let outside = || {
        Error::invalid(
            FIELD,
            "must name a file inside the backups folder of the data directory, such as \
             backups/<tenant id>/<time>.db",
        )
    };
    if text.is_empty() {
        return Err(Error::invalid(FIELD, "is required"));
    }
    let root =
        std::path::absolute(data_dir.root()).context(|| "resolving the data directory".into())?;
    let given = Path::new(text);
    let path = if given.is_absolute() {
        given.to_owned()
    } else {
        root.join(given)
    };
    let relative = path.strip_prefix(&root).map_err(|_| outside())?;
    let parts: Vec<Component> = relative.components().collect();
    let [
        Component::Normal(backups),
        Component::Normal(owner),
        Component::Normal(name),
    ] = parts.as_slice()
    else {
        return Err(outside());
    };
    if *backups != "backups" {
        return Err(outside());
    }
    if *owner != id.to_string().as_str() {
        return Err(Error::invalid(
            FIELD,
            "is not a backup of this tenant: a backup is restored into its own tenant only; to \
             move data between tenants, make a copy (CreateTenant with source_tenant_id) or \
             import an export (ImportTenant)",
        ));
    }
    // The folders on the way must be the data directory's own, not links.
    for dir in [root.join("backups"), root.join("backups").join(owner)] {
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(outside()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("backup {text} does not exist")));
            }
            Err(e) => return Err(e).context(|| format!("reading {}", dir.display())),
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound(format!("backup {text} does not exist")));
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::invalid(
                FIELD,
                "is a symbolic link: only the files BackupTenant made are restored",
            ));
        }
        Err(e) => return Err(e).context(|| format!("opening {}", path.display())),
    };
    // Checked through the descriptor: what was opened is what is copied.
    let meta = file
        .metadata()
        .context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        return Err(Error::invalid(FIELD, "must name a file, not a folder"));
    }
    if meta.nlink() != 1 {
        return Err(Error::invalid(
            FIELD,
            "has other links to it (it may be another file, such as a live tenant's): only \
             the files BackupTenant made are restored",
        ));
    }
    Ok((file, format!("backups/{id}/{}", name.to_string_lossy())))
}

/// Copies `from` into a new file at `to`, durably; the bytes copied and
/// their SHA-256. Blocking.
fn copy_with_digest(mut from: std::fs::File, to: &Path) -> Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let mut out = std::fs::File::create_new(to).context(|| format!("creating {}", to.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let read = from
            .read(&mut buffer)
            .context(|| "reading a backup".into())?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        out.write_all(&buffer[..read])
            .context(|| format!("writing {}", to.display()))?;
        size += read as u64;
    }
    out.sync_all()
        .context(|| format!("syncing {}", to.display()))?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// A new operation's record, from the call that starts it.
fn record(id: uuid::Uuid, tenant: TenantId, call: &Call, time: Micros) -> OperationRecord {
    OperationRecord {
        id,
        tenant_id: tenant,
        kind: call.kind,
        action: call.action.to_owned(),
        request: call.identity(),
        request_id: call.request_id,
        staging_file: None,
        trash_file: None,
        outcome: None,
        message: String::new(),
        result: String::new(),
        start_time: time,
        end_time: None,
    }
}

fn unexpected(op: uuid::Uuid, done: &Done) -> Error {
    Error::internal(
        format!("operation {op}"),
        format!("it ended with an unexpected result: {done:?}"),
    )
}

/// Whether tenant `id` may be deleted (or purged): NOT_FOUND unless it is
/// visible, or deleted already and `purge` asks to erase what it left.
async fn deletable(catalog: &Catalog, id: TenantId, purge: bool) -> Result<()> {
    catalog
        .read(move |conn| {
            if visible_tenant(conn, id).is_ok() {
                Ok(())
            } else {
                deleted_already(conn, id, purge)
            }
        })
        .await
}

fn deleted_already(conn: &rusqlite::Connection, id: TenantId, purge: bool) -> Result<()> {
    match store::get_tenant(conn, id)?.map(|t| t.state) {
        Some(TenantState::Deleted) if purge => Ok(()),
        _ => Err(crate::error::tenant_not_found(id)),
    }
}

/// Runs a step of an operation until it succeeds: a step past the point of
/// no return must happen, and every step is idempotent. A failure (a disk
/// error, a full disk) is logged and tried again, waiting longer each time.
/// What the step returns is how the operation ended.
async fn persist<T, F>(what: &'static str, step: F) -> T
where
    T: Send + 'static,
    F: Fn() -> Result<T> + Send + Sync + 'static,
{
    let step = Arc::new(step);
    let mut wait = Duration::from_millis(100);
    loop {
        let attempt = step.clone();
        match run_blocking(move || attempt()).await {
            Ok(value) => return value,
            Err(error) => {
                tracing::error!(error = %crate::error::error_chain(&error), ?wait, "{what} failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
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

/// The steps of a delete or purge once it is recorded and nothing has the
/// tenant's file open: the file to the trash (or removed, with its copies),
/// then the tenant `deleted` and the operation's end, in one transaction.
/// Idempotent: recovery runs it again. Blocking.
fn finish_delete(
    catalog: &Catalog,
    data_dir: &DataDir,
    op: &OperationRecord,
    detail: &str,
) -> Result<()> {
    let id = op.tenant_id;
    let file = data_dir.tenant_file(id);
    match op.kind {
        OperationKind::Purge => {
            data_dir::remove_database_files(&file)?;
            data_dir::sync_parent(&file)?;
            erase_copies(data_dir, id)?;
            catalog.write_now(|tx| store::delete_backups_of(tx, id))?;
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
    catalog.write_now(|tx| {
        let state = store::get_tenant(tx, id)?.map(|t| t.state);
        if state != Some(TenantState::Deleted) {
            store::set_tenant_state_only(tx, id, TenantState::Deleted, now_micros())?;
        }
        operations::finish(tx, op, &Ok(String::new()), detail)
    })
}

/// The steps of a restore once it is recorded and nothing has the tenant's
/// file open: the current file to the trash, the checked copy into place,
/// then the operation's end. Idempotent: recovery runs it again. The outer
/// error is a step to try again; the inner one is how the restore ended,
/// when its checked copy was lost before it was put in place. Blocking.
fn finish_restore(
    catalog: &Catalog,
    data_dir: &DataDir,
    op: &OperationRecord,
    result: &str,
    detail: &str,
) -> Result<Result<()>> {
    let id = op.tenant_id;
    let file = data_dir.tenant_file(id);
    let staged = data_dir.staging_dir().join(
        op.staging_file
            .as_deref()
            .ok_or_else(|| Error::internal("restoring a tenant", "no staging file recorded"))?,
    );
    let trash = op
        .trash_file
        .as_deref()
        .map(|name| data_dir.trash_dir().join(name));
    if !staged.exists() {
        // Either it was moved into place (the old file went to the trash
        // first, or there was none), or it was lost before: then the
        // tenant's data is as it was (its file back from the trash, if it
        // went there), and the restore failed.
        let swapped = match &trash {
            Some(trash) if trash.exists() && !file.exists() => {
                data_dir::move_database_files(trash, &file)?;
                false
            }
            Some(trash) => trash.exists(),
            None => file.exists(),
        };
        if !swapped {
            tracing::warn!(tenant = %id, path = %staged.display(), "the checked copy of a restore is gone");
            let lost = Error::Aborted(
                "the checked copy of the snapshot in the staging folder was lost before it was \
                 put in place: the tenant's data is unchanged; restore again"
                    .into(),
            );
            catalog.write_now(|tx| operations::finish(tx, op, &Err(&lost), detail))?;
            return Ok(Err(lost));
        }
    } else {
        if let Some(trash) = &trash
            && file.exists()
        {
            to_trash(id, &file, trash)?;
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
        operations::finish(tx, op, &Ok(result.to_owned()), detail)
    })?;
    Ok(Ok(()))
}

/// Rolls back a creation: its file removed, its catalog row forgotten, and
/// the operation's end recorded with `outcome`. Idempotent. Blocking.
fn roll_back_creation(
    catalog: &Catalog,
    data_dir: &DataDir,
    op: &OperationRecord,
    outcome: std::result::Result<String, &Error>,
) -> Result<()> {
    let id = op.tenant_id;
    data_dir::remove_database_files(&data_dir.tenant_file(id))?;
    catalog.write_now(|tx| {
        if store::get_tenant(tx, id)?.is_some_and(|t| t.state == TenantState::Provisioning) {
            store::delete_tenant_row(tx, id)?;
        }
        operations::finish(tx, op, &outcome, "")
    })
}

/// Finishes or rolls back whatever a stop interrupted, before serving:
/// recorded deletes, purges and restores are finished (their callers heard,
/// at most, that the outcome was unknown), creations are rolled back (no
/// client ever saw the tenant), and the staging folder is emptied. Each
/// ends as an operation, with its audit event. Blocking.
pub fn recover(catalog: &Catalog, data_dir: &DataDir, schema: &Schema) -> Result<()> {
    const DETAIL: &str = "finished at start-up: the server stopped while it ran";
    for op in catalog.read_now(crate::catalog::operations::running)? {
        tracing::warn!(tenant = %op.tenant_id, operation = %op.id, action = op.action, "finishing an operation interrupted by a stop");
        match op.kind {
            OperationKind::Create => {
                let interrupted = Error::Aborted(
                    "the server stopped before the tenant was made: nothing was created; \
                     create it again"
                        .into(),
                );
                roll_back_creation(catalog, data_dir, &op, Err(&interrupted))?;
            }
            OperationKind::Delete | OperationKind::Purge => {
                finish_delete(catalog, data_dir, &op, DETAIL)?;
            }
            OperationKind::Restore => {
                let staged = op
                    .staging_file
                    .as_deref()
                    .map(|name| data_dir.staging_dir().join(name))
                    .filter(|path| path.exists());
                let current = data_dir.tenant_file(op.tenant_id);
                let (size, sha256) = match staged {
                    Some(path) => snapshot::file_sha256(&path)?,
                    None if current.exists() => snapshot::file_sha256(&current)?,
                    None => (0, String::new()),
                };
                let restored = Restored {
                    tenant_id: op.tenant_id,
                    from_version: 0,
                    to_version: schema.latest(),
                    size_bytes: size,
                    sha256,
                };
                let result = serde_json::to_string(&restored).unwrap_or_default();
                if let Err(error) = finish_restore(catalog, data_dir, &op, &result, DETAIL)? {
                    tracing::warn!(tenant = %op.tenant_id, operation = %op.id, error = %error, "an interrupted restore could not be finished");
                }
            }
        }
    }
    // Creations an older version left without an operation record.
    let provisioning =
        catalog.read_now(|conn| store::tenants_in_state(conn, TenantState::Provisioning))?;
    for tenant in provisioning {
        tracing::warn!(tenant = %tenant.id, name = tenant.name, "rolling back a tenant creation interrupted by a crash");
        data_dir::remove_database_files(&data_dir.tenant_file(tenant.id))?;
        catalog.write_now(|tx| store::delete_tenant_row(tx, tenant.id))?;
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

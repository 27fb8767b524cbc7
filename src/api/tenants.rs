//! `tenantry.v1.TenantService`: the admin API over tenants and their keys.

use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::api::search;
use crate::api::stream;
use crate::audit::{self, AdminCall, record_admin_call};
use crate::auth::NewApiKey;
use crate::catalog::{ApiKeyRecord, Catalog, TenantRecord, TenantState, store};
use crate::clock::{now_micros, to_timestamp};
use crate::error::{Context, Error, OPERATION_METADATA, Result, code_name};
use crate::ids::{TenantId, TenantName, parse_canonical_uuid};
use crate::pagination::{self, Cursor};
use crate::pb::{self, tenant_service_server::TenantService};
use crate::tenant::Registry;
use crate::tenant::lifecycle::{Lifecycle, Snapshot, Source, TenantChanges};
use crate::tenant::migrate::MigrationReport;
use crate::tenant::operations::Restored;
use crate::tenant::usage::Usage;

const MAX_DISPLAY_NAME_CHARS: usize = 200;
const MAX_KEY_DESCRIPTION_CHARS: usize = 200;
const LIST_SCOPE: &[u8] = b"tenants/by-name";

pub struct TenantApi {
    catalog: Catalog,
    lifecycle: Lifecycle,
    settings: AdminSettings,
}

/// Limits of the admin API.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// How long a streamed answer waits for its reader before it is ended.
    pub stream_stall: std::time::Duration,
    /// Tenants migrated at once by MigrateTenants.
    pub migrate_workers: usize,
    /// The largest snapshot ImportTenant accepts.
    pub max_import_bytes: u64,
    /// Tenants one SearchItems reads at once.
    pub search_parallelism: usize,
}

impl TenantApi {
    pub fn new(lifecycle: Lifecycle, settings: AdminSettings) -> Self {
        TenantApi {
            catalog: lifecycle.registry().catalog().clone(),
            lifecycle,
            settings,
        }
    }
}

/// Bytes per ExportTenant message: well under the 4 MiB message limit.
const EXPORT_CHUNK: usize = 256 * 1024;

fn to_pb(tenant: &TenantRecord) -> pb::Tenant {
    let state = match tenant.state {
        TenantState::Active => pb::TenantState::Active,
        TenantState::Suspended => pb::TenantState::Suspended,
        TenantState::Provisioning | TenantState::Deleting | TenantState::Deleted => {
            pb::TenantState::Unspecified
        }
    };
    pb::Tenant {
        id: tenant.id.to_string(),
        name: tenant.name.clone(),
        display_name: tenant.display_name.clone(),
        state: state.into(),
        create_time: Some(to_timestamp(tenant.create_time)),
        update_time: Some(to_timestamp(tenant.update_time)),
        usage: None,
    }
}

/// Checks a short, single-line text field.
fn check_label(field: &'static str, text: &str, max_chars: usize) -> Result<()> {
    if text.chars().count() > max_chars {
        return Err(Error::invalid(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let pb::CreateTenantRequest {
            tenant,
            source_tenant_id,
            request_id,
        } = request.into_inner();
        let tenant = tenant.ok_or_else(|| Error::invalid("tenant", "is required"))?;
        let source = request_source(&source_tenant_id)?;
        let request_id = parse_request_id(&request_id)?;
        let name = TenantName::parse("tenant.name", &tenant.name)?;
        check_label(
            "tenant.display_name",
            &tenant.display_name,
            MAX_DISPLAY_NAME_CHARS,
        )?;
        let (operation, created) = self
            .lifecycle
            .create_tenant(name, tenant.display_name, source, request_id)
            .await?;
        tracing::info!(tenant = %created.id, name = created.name, source = ?source, %operation, "created tenant");
        Ok(of_operation(operation, to_pb(&created)))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let id = TenantId::parse("id", &request.get_ref().id)?;
        let tenant = self
            .catalog
            .read(move |conn| store::get_tenant(conn, id))
            .await?;
        match tenant {
            Some(tenant) if tenant.state.is_visible() => Ok(Response::new(to_pb(&tenant))),
            _ => Err(crate::error::tenant_not_found(id).into()),
        }
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let query = request.into_inner();
        let page_size = pagination::page_size(query.page_size)?;
        let after = pagination::decode_with(LIST_SCOPE, &query.page_token, |bytes| {
            String::from_utf8(bytes).ok()
        })?;
        let mut page = self
            .catalog
            .read(move |conn| store::list_tenants(conn, after.as_deref(), page_size + 1))
            .await?;
        let next_page_token = pagination::cut_page(&mut page, page_size, LIST_SCOPE, |last| {
            last.name.as_bytes().to_vec()
        });
        let mut tenants: Vec<pb::Tenant> = page.iter().map(to_pb).collect();
        if query.include_usage {
            let registry = self.lifecycle.registry().clone();
            let usages: Vec<Usage> = futures::stream::iter(page.clone())
                .map(move |record| {
                    let registry = registry.clone();
                    async move { page_usage(&registry, &record).await }
                })
                .buffered(USAGE_PARALLELISM)
                .try_collect()
                .await?;
            for (tenant, usage) in tenants.iter_mut().zip(&usages) {
                tenant.usage = Some(usage_to_pb(usage));
            }
        }
        Ok(Response::new(pb::ListTenantsResponse {
            tenants,
            next_page_token,
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let query = request.into_inner();
        let tenant_id = TenantId::parse("tenant_id", &query.tenant_id)?;
        check_label("description", &query.description, MAX_KEY_DESCRIPTION_CHARS)?;
        let new = NewApiKey::generate();
        let record = ApiKeyRecord {
            id: new.id,
            tenant_id,
            description: query.description,
            secret_sha256: new.secret_sha256,
            create_time: now_micros(),
            revoke_time: None,
        };
        let row = record.clone();
        self.catalog
            .write(move |tx| {
                match store::get_tenant(tx, tenant_id)? {
                    Some(tenant) if tenant.state.is_visible() => {}
                    _ => return Err(crate::error::tenant_not_found(tenant_id)),
                }
                store::insert_api_key(tx, &row)?;
                audit::record_in(
                    tx,
                    row.create_time,
                    &AdminCall::ok(
                        "CreateApiKey",
                        format!("tenants/{}/keys/{}", row.tenant_id, row.id),
                    ),
                )
            })
            .await?;
        tracing::info!(tenant = %tenant_id, key_id = %record.id, "created api key");
        Ok(Response::new(pb::ApiKey {
            id: record.id.hyphenated().to_string(),
            tenant_id: tenant_id.to_string(),
            description: record.description,
            secret: new.token.expose().to_owned(),
            create_time: Some(to_timestamp(record.create_time)),
            revoke_time: None,
        }))
    }

    async fn update_tenant(
        &self,
        request: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let pb::UpdateTenantRequest {
            tenant,
            update_mask,
        } = request.into_inner();
        let tenant = tenant.ok_or_else(|| Error::invalid("tenant", "is required"))?;
        let id = TenantId::parse("tenant.id", &tenant.id)?;
        let paths = update_mask.map(|mask| mask.paths).unwrap_or_default();
        let changes = tenant_changes(tenant, &paths)?;
        let updated = self.lifecycle.update_tenant(id, changes).await?;
        tracing::info!(tenant = %id, state = updated.state.as_str(), "updated tenant");
        Ok(Response::new(to_pb(&updated)))
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<()>, Status> {
        let query = request.into_inner();
        let id = TenantId::parse("id", &query.id)?;
        let request_id = parse_request_id(&query.request_id)?;
        let operation = self
            .lifecycle
            .delete_tenant(id, query.purge, request_id)
            .await?;
        tracing::info!(tenant = %id, purge = query.purge, %operation, "deleted tenant");
        Ok(of_operation(operation, ()))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let query = request.into_inner();
        let tenant_id = TenantId::parse("tenant_id", &query.tenant_id)?;
        let page_size = pagination::page_size(query.page_size)?;
        let scope = format!("keys/{tenant_id}").into_bytes();
        let after = pagination::decode_with(&scope, &query.page_token, |bytes| {
            Cursor::from_bytes(&bytes)
        })?;
        let mut page = self
            .catalog
            .read(move |conn| {
                match store::get_tenant(conn, tenant_id)? {
                    Some(tenant) if tenant.state.is_visible() => {}
                    _ => return Err(crate::error::tenant_not_found(tenant_id)),
                }
                store::list_api_keys(
                    conn,
                    tenant_id,
                    after.map(|c| (c.create_time, c.id)),
                    page_size + 1,
                )
            })
            .await?;
        let next_page_token = pagination::cut_page(&mut page, page_size, &scope, |last| {
            Cursor {
                create_time: last.create_time,
                id: last.id,
            }
            .to_bytes()
        });
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: page.iter().map(key_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let id = parse_canonical_uuid("id", &request.get_ref().id)?;
        let key = self.lifecycle.revoke_api_key(id).await?;
        tracing::info!(tenant = %key.tenant_id, key_id = %id, "revoked api key");
        Ok(Response::new(key_to_pb(&key)))
    }

    type MigrateTenantsStream = stream::Answer<pb::MigrateTenantsResponse>;

    async fn migrate_tenants(
        &self,
        _request: Request<pb::MigrateTenantsRequest>,
    ) -> Result<Response<Self::MigrateTenantsStream>, Status> {
        let (reports, received) = mpsc::channel::<MigrationReport>(1);
        let (producer, answer) = stream::open(self.settings.stream_stall);
        let registry = self.lifecycle.registry().clone();
        let workers = self.settings.migrate_workers;
        let catalog = self.catalog.clone();
        tokio::spawn(async move {
            let forward = async {
                // Owned here, so that it is dropped when the client stops
                // reading: the migration then starts no further tenant.
                let mut received = received;
                let (mut ok, mut failed) = (0u64, 0u64);
                while let Some(report) = received.recv().await {
                    if report.result.is_ok() {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                    if let Err(stopped) = producer.send(report_to_pb(report)).await {
                        // No tenant is started after this; those under way
                        // finish on their own.
                        return (ok, failed, Some(stopped));
                    }
                }
                (ok, failed, None)
            };
            let (migrated, (ok, failed, stopped)) =
                tokio::join!(registry.migrate_all(workers, reports), forward);
            let outcome = match (&migrated, stopped) {
                (Err(_), _) => "INTERNAL",
                (Ok(()), None) => "OK",
                (Ok(()), Some(stream::Stopped::Gone)) => "CANCELLED",
                (Ok(()), Some(stream::Stopped::Stalled)) => "UNAVAILABLE",
            };
            let outcome = format!("{outcome}: {ok} migrated, {failed} failed");
            tracing::info!(ok, failed, "migrated tenants");
            if let Err(error) = migrated {
                producer.end_with(error.into());
            }
            record_admin_call(
                &catalog,
                AdminCall {
                    action: "MigrateTenants".into(),
                    target: "tenants".into(),
                    outcome,
                    detail: String::new(),
                },
            )
            .await;
        });
        Ok(Response::new(answer))
    }

    async fn backup_tenant(
        &self,
        request: Request<pb::BackupTenantRequest>,
    ) -> Result<Response<pb::Backup>, Status> {
        let id = TenantId::parse("id", &request.get_ref().id)?;
        let snapshot = self.lifecycle.backup(id).await?;
        let path = self
            .lifecycle
            .registry()
            .data_dir()
            .relative(&snapshot.path)
            .display()
            .to_string();
        tracing::info!(tenant = %id, path, size = snapshot.summary.size_bytes, "backed up tenant");
        Ok(Response::new(backup_to_pb(&snapshot, path)))
    }

    type ExportTenantStream = stream::Answer<pb::ExportTenantResponse>;

    async fn export_tenant(
        &self,
        request: Request<pb::ExportTenantRequest>,
    ) -> Result<Response<Self::ExportTenantStream>, Status> {
        let id = TenantId::parse("id", &request.get_ref().id)?;
        let snapshot = self.lifecycle.snapshot(id).await?;
        self.lifecycle
            .registry()
            .metrics()
            .backups
            .get_or_create(&crate::metrics::KindLabels { kind: "export" })
            .inc();
        let header = pb::Backup {
            tenant_id: id.to_string(),
            path: String::new(),
            size_bytes: snapshot.summary.size_bytes,
            sha256: snapshot.summary.sha256.clone(),
            schema_version: snapshot.summary.schema_version,
            create_time: Some(to_timestamp(snapshot.time)),
        };
        let (producer, answer) = stream::open(self.settings.stream_stall);
        let catalog = self.catalog.clone();
        let deadline = crate::deadline::current();
        tokio::spawn(async move {
            let sent = stream_file(snapshot.file.path(), header, &producer, deadline).await;
            let outcome = match sent {
                Ok(None) => "OK".to_owned(),
                Ok(Some(stream::Stopped::Gone)) => "CANCELLED".to_owned(),
                Ok(Some(stream::Stopped::Stalled)) => "UNAVAILABLE".to_owned(),
                Err(error) => {
                    let status = Status::from(error);
                    let code = code_name(status.code()).to_owned();
                    producer.end_with(status);
                    code
                }
            };
            // The staged snapshot goes as soon as the stream is done with.
            drop(snapshot);
            record_admin_call(
                &catalog,
                AdminCall {
                    action: "ExportTenant".into(),
                    target: format!("tenants/{id}"),
                    outcome,
                    detail: String::new(),
                },
            )
            .await;
        });
        Ok(Response::new(answer))
    }

    async fn restore_tenant(
        &self,
        request: Request<pb::RestoreTenantRequest>,
    ) -> Result<Response<pb::RestoreTenantResponse>, Status> {
        let query = request.into_inner();
        let id = TenantId::parse("id", &query.id)?;
        let request_id = parse_request_id(&query.request_id)?;
        let (source, path) = match query.source {
            Some(pb::restore_tenant_request::Source::BackupPath(backup_path)) => {
                self.lifecycle.stage_backup(id, backup_path).await?
            }
            Some(pb::restore_tenant_request::Source::PointInTime(time)) => {
                let until = crate::clock::from_timestamp(&time)
                    .ok_or_else(|| Error::invalid("point_in_time", "is not a valid timestamp"))?;
                self.lifecycle.stage_point_in_time(id, until).await?
            }
            None => {
                return Err(Error::invalid(
                    "source",
                    "is required: set backup_path or point_in_time",
                )
                .into());
            }
        };
        let (operation, restored) = self
            .lifecycle
            .restore(id, source, "RestoreTenant", path, request_id)
            .await?;
        tracing::info!(tenant = %id, sha256 = restored.sha256, %operation, "restored tenant");
        Ok(of_operation(operation, restored_to_pb(&restored)))
    }

    async fn import_tenant(
        &self,
        request: Request<Streaming<pb::ImportTenantRequest>>,
    ) -> Result<Response<pb::RestoreTenantResponse>, Status> {
        let mut upload = request.into_inner();
        let mut staged = self.lifecycle.registry().staging().reserve("import", 0)?;
        let (id, size_bytes, sha256, request_id) =
            receive_upload(&mut upload, &mut staged, self.settings.max_import_bytes).await?;
        let source = Source {
            file: staged,
            size_bytes,
            sha256: sha256.clone(),
        };
        let (operation, restored) = self
            .lifecycle
            .restore(id, source, "ImportTenant", sha256, request_id)
            .await?;
        tracing::info!(tenant = %id, sha256 = restored.sha256, %operation, "imported tenant");
        Ok(of_operation(operation, restored_to_pb(&restored)))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let query = request.into_inner();
        let tenant = if query.tenant_id.is_empty() {
            None
        } else {
            Some(TenantId::parse("tenant_id", &query.tenant_id)?)
        };
        let page_size = pagination::page_size(query.page_size)?;
        let scope = match tenant {
            Some(id) => format!("audit/tenants/{id}"),
            None => "audit/all".to_owned(),
        };
        let after = pagination::decode_with(scope.as_bytes(), &query.page_token, |bytes| {
            audit::Position::from_bytes(&bytes)
        })?
        .unwrap_or(audit::Position::START);
        let (admin, state) = self
            .catalog
            .read(move |conn| {
                let state = match tenant {
                    Some(id) => store::get_tenant(conn, id)?.map(|t| t.state),
                    None => None,
                };
                Ok((
                    audit::list_admin(conn, tenant, after, page_size + 1)?,
                    state,
                ))
            })
            .await?;
        // A tenant's own trail is in its file, while it has one.
        let schema = self.lifecycle.registry().schema();
        let writes = match (tenant, state) {
            (Some(id), Some(state)) if state.is_visible() => {
                self.lifecycle
                    .registry()
                    .read_aside(id, move |conn| {
                        audit::list_writes(conn, schema, id, after, page_size + 1)
                    })
                    .await?
            }
            (Some(id), None) => return Err(crate::error::tenant_not_found(id).into()),
            _ => Vec::new(),
        };
        let mut events = audit::merge(admin, writes);
        let next_page_token =
            pagination::cut_page(&mut events, page_size, scope.as_bytes(), |last| {
                last.position().to_bytes()
            });
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.iter().map(event_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn get_tenant_usage(
        &self,
        request: Request<pb::GetTenantUsageRequest>,
    ) -> Result<Response<pb::TenantUsage>, Status> {
        let id = TenantId::parse("id", &request.get_ref().id)?;
        let record = self
            .catalog
            .read(move |conn| store::get_tenant(conn, id))
            .await?
            .filter(|tenant| tenant.state.is_visible())
            .ok_or_else(|| crate::error::tenant_not_found(id))?;
        let usage = self.lifecycle.registry().usage(&record).await?;
        Ok(Response::new(usage_to_pb(&usage)))
    }

    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let id = parse_canonical_uuid("id", &request.get_ref().id)?;
        let record = self.lifecycle.operations().get(&self.catalog, id).await?;
        Ok(Response::new(operation_to_pb(&record)))
    }

    type SearchItemsStream = stream::Answer<pb::SearchItemsResponse>;

    async fn search_items(
        &self,
        request: Request<pb::SearchItemsRequest>,
    ) -> Result<Response<Self::SearchItemsStream>, Status> {
        let query = search::Query::parse(request.into_inner())?;
        Ok(Response::new(search::search(
            self.lifecycle.registry().clone(),
            query,
            self.settings.search_parallelism,
            crate::deadline::current(),
            self.settings.stream_stall,
        )))
    }
}

/// Tenants whose files ListTenants reads at once for `include_usage`.
const USAGE_PARALLELISM: usize = 4;

/// A tenant's usage for a page of ListTenants: a file that cannot be read
/// does not fail the page; its entry has what is known without it (an item
/// count of 0), and the failure is logged.
async fn page_usage(registry: &Registry, record: &TenantRecord) -> Result<Usage> {
    match registry.usage(record).await {
        Ok(usage) => Ok(usage),
        Err(error) => {
            tracing::warn!(tenant = %record.id, error = %crate::error::error_chain(&error), "could not read a tenant's usage");
            registry.known_usage(record).await
        }
    }
}

fn usage_to_pb(usage: &Usage) -> pb::TenantUsage {
    pb::TenantUsage {
        tenant_id: usage.tenant_id.to_string(),
        size_bytes: usage.size_bytes(),
        database_bytes: usage.database_bytes,
        wal_bytes: usage.wal_bytes,
        item_count: usage.item_count.unwrap_or(0),
        schema_version: usage.schema_version,
        last_access_time: usage.last_access_time.map(to_timestamp),
        open: usage.open,
    }
}

fn event_to_pb(event: &audit::Event) -> pb::AuditEvent {
    pb::AuditEvent {
        time: Some(to_timestamp(event.time)),
        source: match event.source {
            audit::Source::Admin => pb::AuditSource::Admin,
            audit::Source::Tenant => pb::AuditSource::Tenant,
        }
        .into(),
        actor: event.actor.clone(),
        action: event.action.clone(),
        target: event.target.clone(),
        tenant_id: event.tenant_id.map(|id| id.to_string()).unwrap_or_default(),
        outcome: event.outcome.clone(),
        detail: event.detail.clone(),
    }
}

fn request_source(source_tenant_id: &str) -> Result<Option<TenantId>> {
    if source_tenant_id.is_empty() {
        Ok(None)
    } else {
        TenantId::parse("source_tenant_id", source_tenant_id).map(Some)
    }
}

/// The changes an UpdateTenant asks for (AIP-134), as for UpdateItem.
fn tenant_changes(tenant: pb::Tenant, paths: &[String]) -> Result<TenantChanges> {
    const FIELD: &str = "update_mask";
    let (mut display_name, mut state) = (false, false);
    if paths.is_empty() {
        display_name = !tenant.display_name.is_empty();
        state = tenant.state != pb::TenantState::Unspecified as i32;
    }
    for path in paths {
        match path.as_str() {
            "*" => (display_name, state) = (true, true),
            "display_name" => display_name = true,
            "state" => state = true,
            "id" | "name" | "create_time" | "update_time" => {
                return Err(Error::invalid(FIELD, format!("{path:?} cannot be changed")));
            }
            other => {
                return Err(Error::invalid(
                    FIELD,
                    format!("{other:?} is not a field of Tenant: use display_name, state or *"),
                ));
            }
        }
    }
    if !(display_name || state) {
        return Err(Error::invalid(
            FIELD,
            "names no field to update: set update_mask or a field's new value",
        ));
    }
    if display_name {
        check_label(
            "tenant.display_name",
            &tenant.display_name,
            MAX_DISPLAY_NAME_CHARS,
        )?;
    }
    let state = if state {
        Some(match pb::TenantState::try_from(tenant.state) {
            Ok(pb::TenantState::Active) => TenantState::Active,
            Ok(pb::TenantState::Suspended) => TenantState::Suspended,
            _ => {
                return Err(Error::invalid(
                    "tenant.state",
                    "must be TENANT_STATE_ACTIVE or TENANT_STATE_SUSPENDED",
                ));
            }
        })
    } else {
        None
    };
    Ok(TenantChanges {
        display_name: display_name.then_some(tenant.display_name),
        state,
    })
}

fn key_to_pb(key: &ApiKeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        id: key.id.hyphenated().to_string(),
        tenant_id: key.tenant_id.to_string(),
        description: key.description.clone(),
        secret: String::new(),
        create_time: Some(to_timestamp(key.create_time)),
        revoke_time: key.revoke_time.map(to_timestamp),
    }
}

fn report_to_pb(report: MigrationReport) -> pb::MigrateTenantsResponse {
    let (ok, error_code, error_message) = match report.result {
        Ok(()) => (true, String::new(), String::new()),
        Err(error) => {
            let status = Status::from(error);
            (
                false,
                code_name(status.code()).to_owned(),
                status.message().to_owned(),
            )
        }
    };
    pb::MigrateTenantsResponse {
        tenant_id: report.tenant_id.to_string(),
        from_version: report.from_version,
        to_version: report.to_version,
        ok,
        error_code,
        error_message,
    }
}

fn backup_to_pb(snapshot: &Snapshot, path: String) -> pb::Backup {
    pb::Backup {
        tenant_id: snapshot.tenant_id.to_string(),
        path,
        size_bytes: snapshot.summary.size_bytes,
        sha256: snapshot.summary.sha256.clone(),
        schema_version: snapshot.summary.schema_version,
        create_time: Some(to_timestamp(snapshot.time)),
    }
}

fn restored_to_pb(restored: &Restored) -> pb::RestoreTenantResponse {
    pb::RestoreTenantResponse {
        tenant_id: restored.tenant_id.to_string(),
        from_version: restored.from_version,
        to_version: restored.to_version,
        size_bytes: restored.size_bytes,
        sha256: restored.sha256.clone(),
    }
}

fn operation_to_pb(op: &crate::catalog::OperationRecord) -> pb::Operation {
    let state = match op.outcome.as_deref() {
        None => pb::OperationState::Running,
        Some("OK") => pb::OperationState::Succeeded,
        Some(_) => pb::OperationState::Failed,
    };
    pb::Operation {
        id: op.id.to_string(),
        tenant_id: op.tenant_id.to_string(),
        action: op.action.clone(),
        state: state.into(),
        outcome: op.outcome.clone().unwrap_or_default(),
        error_message: op.message.clone(),
        start_time: Some(to_timestamp(op.start_time)),
        end_time: op.end_time.map(to_timestamp),
        request_id: op.request_id.map(|id| id.to_string()).unwrap_or_default(),
    }
}

/// The answer of a call that ran operation `id`, naming it in the
/// `tenantry-operation-id` metadata.
fn of_operation<T>(id: uuid::Uuid, message: T) -> Response<T> {
    let mut response = Response::new(message);
    response.metadata_mut().insert(
        OPERATION_METADATA,
        id.to_string().parse().expect("a UUID is a metadata value"),
    );
    response
}

/// A client's optional `request_id` (AIP-155): empty, or a canonical UUID.
fn parse_request_id(text: &str) -> Result<Option<uuid::Uuid>> {
    if text.is_empty() {
        return Ok(None);
    }
    parse_canonical_uuid("request_id", text).map(Some)
}

/// Sends `header`, then the file's bytes in chunks, until the end, the
/// call's deadline, or the client stopping; `Some` says why it stopped.
async fn stream_file(
    path: &Path,
    header: pb::Backup,
    producer: &stream::Producer<pb::ExportTenantResponse>,
    deadline: Option<std::sync::Arc<crate::deadline::Deadline>>,
) -> Result<Option<stream::Stopped>> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .context(|| format!("opening {}", path.display()))?;
    let mut header = Some(header);
    loop {
        crate::deadline::check(deadline.as_deref())?;
        let mut chunk = vec![0u8; EXPORT_CHUNK];
        let mut filled = 0;
        while filled < chunk.len() {
            let read = file
                .read(&mut chunk[filled..])
                .await
                .context(|| format!("reading {}", path.display()))?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        chunk.truncate(filled);
        if filled == 0 && header.is_none() {
            return Ok(None);
        }
        let message = pb::ExportTenantResponse {
            backup: header.take(),
            chunk,
        };
        if let Err(stopped) = producer.send(message).await {
            return Ok(Some(stopped));
        }
        if filled < EXPORT_CHUNK {
            return Ok(None);
        }
    }
}

/// Writes an ImportTenant upload to `staged`, checking its size and, when
/// given, its SHA-256. Returns the tenant it is for, the upload's size and
/// digest, and the client's request id.
async fn receive_upload(
    upload: &mut Streaming<pb::ImportTenantRequest>,
    staged: &mut crate::storage::staging::StagedFile,
    max_bytes: u64,
) -> Result<(TenantId, u64, String, Option<uuid::Uuid>)> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncWriteExt;
    let first = upload
        .message()
        .await
        .map_err(|status| {
            Error::invalid("chunk", format!("the upload failed: {}", status.message()))
        })?
        .ok_or_else(|| Error::invalid("id", "is required in the first message"))?;
    let id = TenantId::parse("id", &first.id)?;
    let request_id = parse_request_id(&first.request_id)?;
    let expected = first.sha256.to_ascii_lowercase();
    if !expected.is_empty()
        && (expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Error::invalid("sha256", "must be 64 hex digits when set"));
    }
    let path = staged.path().to_owned();
    let mut file = tokio::fs::File::create(&path)
        .await
        .context(|| format!("creating {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut next = Some(first);
    while let Some(message) = next {
        if !message.id.is_empty() && message.id != id.to_string() {
            return Err(Error::invalid(
                "id",
                "must be empty or the same in every message of an upload",
            ));
        }
        size += message.chunk.len() as u64;
        if size > max_bytes {
            return Err(Error::ResourceExhausted(format!(
                "the upload is larger than the {max_bytes} bytes this server accepts (--max-import-bytes)"
            )));
        }
        staged.grow(message.chunk.len() as u64)?;
        hasher.update(&message.chunk);
        file.write_all(&message.chunk)
            .await
            .context(|| format!("writing {}", path.display()))?;
        next = upload.message().await.map_err(|status| {
            Error::invalid("chunk", format!("the upload failed: {}", status.message()))
        })?;
    }
    file.flush()
        .await
        .context(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .await
        .context(|| format!("syncing {}", path.display()))?;
    let digest = hex::encode(hasher.finalize());
    if !expected.is_empty() && expected != digest {
        return Err(Error::invalid(
            "sha256",
            format!(
                "does not match the upload (received {size} bytes with SHA-256 {digest}): nothing was changed"
            ),
        ));
    }
    Ok((id, size, digest, request_id))
}

//! The admin API as served: [`TenantApi`] with every call recorded in the
//! audit trail (who, what, which target, when, how it ended).
//!
//! A change that succeeds records itself, in the transaction that makes it
//! (see [`crate::tenant::lifecycle`]), so that no change is ever committed
//! without its record. Everything else is recorded here, when the call ends:
//! reads, and every call that failed or was refused. A failure to record is
//! logged and does not change the call's answer.

use tonic::{Code, Request, Response, Status, Streaming};

use crate::api::tenants::TenantApi;
use crate::catalog::{Catalog, store};
use crate::clock::now_micros;
use crate::pb::{self, tenant_service_server::TenantService};

pub struct AuditedTenantApi {
    inner: TenantApi,
    catalog: Catalog,
}

impl AuditedTenantApi {
    pub fn new(inner: TenantApi, catalog: Catalog) -> Self {
        AuditedTenantApi { inner, catalog }
    }

    /// Records a call that did not record itself: a read (`changes` false),
    /// or any call that failed.
    async fn record<T>(
        &self,
        action: &'static str,
        target: String,
        changes: bool,
        result: &Result<Response<T>, Status>,
    ) {
        let outcome = match result {
            Ok(_) if changes => return,
            Ok(_) => "OK".to_owned(),
            Err(status) => code_name(status.code()).to_owned(),
        };
        let recorded = self
            .catalog
            .write(move |tx| {
                store::record_admin_event(
                    tx,
                    &store::AdminEvent {
                        time: now_micros(),
                        actor: "admin",
                        action,
                        target: &target,
                        outcome: &outcome,
                        detail: "",
                    },
                )
            })
            .await;
        if let Err(error) = recorded {
            tracing::error!(action, error = %crate::error::error_chain(&error), "could not record an admin call in the audit trail");
        }
    }
}

/// A target naming a tenant by the id a client sent: kept short, since the
/// id may be anything until it is parsed.
fn tenant_target(id: &str) -> String {
    format!("tenants/{}", clip(id))
}

fn clip(text: &str) -> String {
    const MAX: usize = 64;
    let mut clipped: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        clipped.push('…');
    }
    clipped.escape_debug().to_string()
}

/// The canonical name of a gRPC status code, as in the gRPC specification.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl TenantService for AuditedTenantApi {
    async fn create_tenant(&self, request: Request<pb::CreateTenantRequest>) -> Answer<pb::Tenant> {
        let name = request.get_ref().tenant.as_ref().map(|t| clip(&t.name));
        let target = format!("tenants (name {})", name.unwrap_or_default());
        let result = self.inner.create_tenant(request).await;
        self.record("CreateTenant", target, true, &result).await;
        result
    }

    async fn get_tenant(&self, request: Request<pb::GetTenantRequest>) -> Answer<pb::Tenant> {
        let target = tenant_target(&request.get_ref().id);
        let result = self.inner.get_tenant(request).await;
        self.record("GetTenant", target, false, &result).await;
        result
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Answer<pb::ListTenantsResponse> {
        let result = self.inner.list_tenants(request).await;
        self.record("ListTenants", "tenants".into(), false, &result)
            .await;
        result
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Answer<pb::ApiKey> {
        let target = format!("{}/keys", tenant_target(&request.get_ref().tenant_id));
        let result = self.inner.create_api_key(request).await;
        self.record("CreateApiKey", target, true, &result).await;
        result
    }

    async fn update_tenant(&self, request: Request<pb::UpdateTenantRequest>) -> Answer<pb::Tenant> {
        let id = request.get_ref().tenant.as_ref().map(|t| t.id.as_str());
        let target = tenant_target(id.unwrap_or_default());
        let result = self.inner.update_tenant(request).await;
        self.record("UpdateTenant", target, true, &result).await;
        result
    }

    async fn delete_tenant(&self, request: Request<pb::DeleteTenantRequest>) -> Answer<()> {
        let target = tenant_target(&request.get_ref().id);
        let result = self.inner.delete_tenant(request).await;
        self.record("DeleteTenant", target, true, &result).await;
        result
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Answer<pb::ListApiKeysResponse> {
        let target = format!("{}/keys", tenant_target(&request.get_ref().tenant_id));
        let result = self.inner.list_api_keys(request).await;
        self.record("ListApiKeys", target, false, &result).await;
        result
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Answer<pb::ApiKey> {
        let target = format!("keys/{}", clip(&request.get_ref().id));
        let result = self.inner.revoke_api_key(request).await;
        self.record("RevokeApiKey", target, true, &result).await;
        result
    }

    type MigrateTenantsStream = <TenantApi as TenantService>::MigrateTenantsStream;

    async fn migrate_tenants(
        &self,
        request: Request<pb::MigrateTenantsRequest>,
    ) -> Answer<Self::MigrateTenantsStream> {
        let result = self.inner.migrate_tenants(request).await;
        self.record("MigrateTenants", "tenants".into(), true, &result)
            .await;
        result
    }

    async fn backup_tenant(&self, request: Request<pb::BackupTenantRequest>) -> Answer<pb::Backup> {
        let target = tenant_target(&request.get_ref().id);
        let result = self.inner.backup_tenant(request).await;
        self.record("BackupTenant", target, true, &result).await;
        result
    }

    type ExportTenantStream = <TenantApi as TenantService>::ExportTenantStream;

    async fn export_tenant(
        &self,
        request: Request<pb::ExportTenantRequest>,
    ) -> Answer<Self::ExportTenantStream> {
        let target = tenant_target(&request.get_ref().id);
        let result = self.inner.export_tenant(request).await;
        self.record("ExportTenant", target, true, &result).await;
        result
    }

    async fn restore_tenant(
        &self,
        request: Request<pb::RestoreTenantRequest>,
    ) -> Answer<pb::RestoreTenantResponse> {
        let target = tenant_target(&request.get_ref().id);
        let result = self.inner.restore_tenant(request).await;
        self.record("RestoreTenant", target, true, &result).await;
        result
    }

    async fn import_tenant(
        &self,
        request: Request<Streaming<pb::ImportTenantRequest>>,
    ) -> Answer<pb::RestoreTenantResponse> {
        // The tenant is named inside the upload; a failed import is recorded
        // against the tenants as a whole.
        let result = self.inner.import_tenant(request).await;
        self.record("ImportTenant", "tenants".into(), true, &result)
            .await;
        result
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Answer<pb::ListAuditEventsResponse> {
        let tenant = &request.get_ref().tenant_id;
        let target = if tenant.is_empty() {
            "tenants".to_owned()
        } else {
            tenant_target(tenant)
        };
        let result = self.inner.list_audit_events(request).await;
        self.record("ListAuditEvents", target, false, &result).await;
        result
    }

    async fn get_tenant_usage(
        &self,
        request: Request<pb::GetTenantUsageRequest>,
    ) -> Answer<pb::TenantUsage> {
        let target = tenant_target(&request.get_ref().id);
        let result = self.inner.get_tenant_usage(request).await;
        self.record("GetTenantUsage", target, false, &result).await;
        result
    }

    type SearchItemsStream = <TenantApi as TenantService>::SearchItemsStream;

    /// A search records itself when its stream ends, naming the tenants it
    /// read; only a search refused before it starts is recorded here.
    async fn search_items(
        &self,
        request: Request<pb::SearchItemsRequest>,
    ) -> Answer<Self::SearchItemsStream> {
        let result = self.inner.search_items(request).await;
        // The stream is not `Sync`: only its status is kept across the await.
        let refused = result.as_ref().err().cloned().map(Err::<Response<()>, _>);
        if let Some(refused) = refused {
            self.record("SearchItems", "tenants".into(), true, &refused)
                .await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_supplied_id_is_clipped_and_escaped_in_a_target() {
        assert_eq!(tenant_target("abc"), "tenants/abc");
        let long = "x".repeat(1000);
        assert_eq!(tenant_target(&long).chars().count(), "tenants/".len() + 65);
        assert_eq!(tenant_target("a\nb\0"), "tenants/a\\nb\\0");
    }
}

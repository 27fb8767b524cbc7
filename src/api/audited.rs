//! The services as served, with every admin call recorded in the audit
//! trail (who, what, which target, when, how it ended):
//!
//! - [`AuditedTenantApi`], the admin API. A change that succeeds records
//!   itself, in the transaction that makes it (see
//!   [`crate::tenant::lifecycle`]), so that no change is ever committed
//!   without its record. Everything else is recorded here, when the call
//!   ends: reads, and every call that failed or was refused.
//! - [`AuditedItemApi`], the item API, where the administrator may act for a
//!   tenant: each such call is recorded as an admin call on that tenant,
//!   with its outcome. (Its writes are also recorded in the tenant's own
//!   trail, like every write, with the actor `admin`.) Calls made with the
//!   tenant's own keys are not recorded here.
//!
//! A failure to record is logged and does not change the call's answer.

use tonic::{Request, Response, Status, Streaming};

use crate::api::tenants::TenantApi;
use crate::audit::{AdminCall, clip, record_admin_call};
use crate::auth::{Acting, verified_tenant};
use crate::catalog::Catalog;
use crate::error::{OPERATION_METADATA, code_name};
use crate::pb::{self, item_service_server::ItemService, tenant_service_server::TenantService};
use crate::resources::items::service::ItemApi;

fn outcome_of<T>(result: &Result<Response<T>, Status>) -> String {
    match result {
        Ok(_) => "OK".to_owned(),
        Err(status) => code_name(status.code()).to_owned(),
    }
}

pub struct AuditedTenantApi {
    inner: TenantApi,
    catalog: Catalog,
}

impl AuditedTenantApi {
    pub fn new(inner: TenantApi, catalog: Catalog) -> Self {
        AuditedTenantApi { inner, catalog }
    }

    /// Runs an admin call and records it when it ends, unless it recorded
    /// itself: a change that succeeded, or an operation (which records how
    /// it ended). `changes` says whether the call changes anything. A call
    /// that never ends (its deadline passed, its client went away) is
    /// recorded as such when it is dropped.
    async fn audited<T>(
        &self,
        action: &'static str,
        target: String,
        changes: bool,
        call: impl Future<Output = Answer<T>>,
    ) -> Answer<T> {
        let mut pending = Pending {
            catalog: self.catalog.clone(),
            call: Some(AdminCall {
                action: action.into(),
                target,
                outcome: String::new(),
                detail: String::new(),
            }),
            deadline: crate::deadline::current(),
        };
        let result = call.await;
        let recorded = match &result {
            Ok(_) => changes,
            Err(status) => status.metadata().contains_key(OPERATION_METADATA),
        };
        let call = pending.call.take().expect("taken once");
        if !recorded {
            let call = AdminCall {
                outcome: outcome_of(&result),
                ..call
            };
            // Written whatever the call's deadline: it records what happened.
            crate::deadline::scope(None, record_admin_call(&self.catalog, call)).await;
        }
        result
    }
}

/// An admin call under way, recorded if it is dropped before it ends.
struct Pending {
    catalog: Catalog,
    call: Option<AdminCall>,
    deadline: Option<std::sync::Arc<crate::deadline::Deadline>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        use crate::deadline::Expiry;
        let outcome = match self.deadline.as_ref().map(|d| (d.expire(), d.at())) {
            // An operation it started records how it ends.
            Some((Expiry::Operation(_), _)) => return,
            Some((_, at)) if tokio::time::Instant::now() >= at => "DEADLINE_EXCEEDED",
            _ => "CANCELLED",
        };
        let call = AdminCall {
            outcome: outcome.into(),
            ..call
        };
        let catalog = self.catalog.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { record_admin_call(&catalog, call).await });
        }
    }
}

/// A target naming a tenant by the id a client sent: kept short, since the
/// id may be anything until it is parsed.
fn tenant_target(id: &str) -> String {
    format!("tenants/{}", clip(id))
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl TenantService for AuditedTenantApi {
    async fn create_tenant(&self, request: Request<pb::CreateTenantRequest>) -> Answer<pb::Tenant> {
        let name = request.get_ref().tenant.as_ref().map(|t| clip(&t.name));
        let target = format!("tenants (name {})", name.unwrap_or_default());
        self.audited(
            "CreateTenant",
            target,
            true,
            self.inner.create_tenant(request),
        )
        .await
    }

    async fn get_tenant(&self, request: Request<pb::GetTenantRequest>) -> Answer<pb::Tenant> {
        let target = tenant_target(&request.get_ref().id);
        self.audited("GetTenant", target, false, self.inner.get_tenant(request))
            .await
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Answer<pb::ListTenantsResponse> {
        self.audited(
            "ListTenants",
            "tenants".into(),
            false,
            self.inner.list_tenants(request),
        )
        .await
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Answer<pb::ApiKey> {
        let target = format!("{}/keys", tenant_target(&request.get_ref().tenant_id));
        self.audited(
            "CreateApiKey",
            target,
            true,
            self.inner.create_api_key(request),
        )
        .await
    }

    async fn update_tenant(&self, request: Request<pb::UpdateTenantRequest>) -> Answer<pb::Tenant> {
        let id = request.get_ref().tenant.as_ref().map(|t| t.id.as_str());
        let target = tenant_target(id.unwrap_or_default());
        self.audited(
            "UpdateTenant",
            target,
            true,
            self.inner.update_tenant(request),
        )
        .await
    }

    async fn delete_tenant(&self, request: Request<pb::DeleteTenantRequest>) -> Answer<()> {
        let target = tenant_target(&request.get_ref().id);
        self.audited(
            "DeleteTenant",
            target,
            true,
            self.inner.delete_tenant(request),
        )
        .await
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Answer<pb::ListApiKeysResponse> {
        let target = format!("{}/keys", tenant_target(&request.get_ref().tenant_id));
        self.audited(
            "ListApiKeys",
            target,
            false,
            self.inner.list_api_keys(request),
        )
        .await
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Answer<pb::ApiKey> {
        let target = format!("keys/{}", clip(&request.get_ref().id));
        self.audited(
            "RevokeApiKey",
            target,
            true,
            self.inner.revoke_api_key(request),
        )
        .await
    }

    type MigrateTenantsStream = <TenantApi as TenantService>::MigrateTenantsStream;

    async fn migrate_tenants(
        &self,
        request: Request<pb::MigrateTenantsRequest>,
    ) -> Answer<Self::MigrateTenantsStream> {
        self.audited(
            "MigrateTenants",
            "tenants".into(),
            true,
            self.inner.migrate_tenants(request),
        )
        .await
    }

    async fn backup_tenant(&self, request: Request<pb::BackupTenantRequest>) -> Answer<pb::Backup> {
        let target = tenant_target(&request.get_ref().id);
        self.audited(
            "BackupTenant",
            target,
            true,
            self.inner.backup_tenant(request),
        )
        .await
    }

    type ExportTenantStream = <TenantApi as TenantService>::ExportTenantStream;

    async fn export_tenant(
        &self,
        request: Request<pb::ExportTenantRequest>,
    ) -> Answer<Self::ExportTenantStream> {
        let target = tenant_target(&request.get_ref().id);
        self.audited(
            "ExportTenant",
            target,
            true,
            self.inner.export_tenant(request),
        )
        .await
    }

    async fn restore_tenant(
        &self,
        request: Request<pb::RestoreTenantRequest>,
    ) -> Answer<pb::RestoreTenantResponse> {
        let target = tenant_target(&request.get_ref().id);
        self.audited(
            "RestoreTenant",
            target,
            true,
            self.inner.restore_tenant(request),
        )
        .await
    }

    async fn import_tenant(
        &self,
        request: Request<Streaming<pb::ImportTenantRequest>>,
    ) -> Answer<pb::RestoreTenantResponse> {
        // The tenant is named inside the upload; a failed import is recorded
        // against the tenants as a whole.
        self.audited(
            "ImportTenant",
            "tenants".into(),
            true,
            self.inner.import_tenant(request),
        )
        .await
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
        self.audited(
            "ListAuditEvents",
            target,
            false,
            self.inner.list_audit_events(request),
        )
        .await
    }

    async fn get_tenant_usage(
        &self,
        request: Request<pb::GetTenantUsageRequest>,
    ) -> Answer<pb::TenantUsage> {
        let target = tenant_target(&request.get_ref().id);
        self.audited(
            "GetTenantUsage",
            target,
            false,
            self.inner.get_tenant_usage(request),
        )
        .await
    }

    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Answer<pb::Operation> {
        let target = format!("operations/{}", clip(&request.get_ref().id));
        self.audited(
            "GetOperation",
            target,
            false,
            self.inner.get_operation(request),
        )
        .await
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
        if let Some(status) = result.as_ref().err().cloned() {
            let call = AdminCall {
                action: "SearchItems".into(),
                target: "tenants".into(),
                outcome: code_name(status.code()).into(),
                detail: String::new(),
            };
            record_admin_call(&self.catalog, call).await;
        }
        result
    }
}

/// The item API, with the calls the administrator makes for a tenant
/// recorded as admin calls on that tenant.
pub struct AuditedItemApi {
    inner: ItemApi,
    catalog: Catalog,
}

impl AuditedItemApi {
    pub fn new(inner: ItemApi, catalog: Catalog) -> Self {
        AuditedItemApi { inner, catalog }
    }

    /// Runs an item call; if the administrator made it, records it (see
    /// [`acting_call`]).
    async fn call<Q, T>(
        &self,
        action: &'static str,
        request: Request<Q>,
        item: impl FnOnce(&Q) -> Option<String>,
        created: impl FnOnce(&T) -> Option<String>,
        run: impl AsyncFnOnce(Request<Q>) -> Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        acting_call(&self.catalog, action, "items", request, item, created, run).await
    }
}

/// Runs a call to a resource; if the administrator made it, acting for a
/// tenant, records it against `tenants/<id>/<collection>[/<id>]`, with its
/// outcome. `named` names the row the request names, if any; `created` the
/// row a successful call answered with. Calls made with the tenant's own
/// keys are not recorded here (their writes are in the tenant's own trail).
pub async fn acting_call<Q, T>(
    catalog: &Catalog,
    action: &'static str,
    collection: &str,
    request: Request<Q>,
    named: impl FnOnce(&Q) -> Option<String>,
    created: impl FnOnce(&T) -> Option<String>,
    run: impl AsyncFnOnce(Request<Q>) -> Result<Response<T>, Status>,
) -> Result<Response<T>, Status> {
    let admin = verified_tenant(&request)
        .ok()
        .filter(|tenant| tenant.acting == Acting::Admin);
    let Some(tenant) = admin else {
        return run(request).await;
    };
    let mut target = format!("tenants/{}/{collection}", tenant.id);
    if let Some(id) = named(request.get_ref()) {
        target = format!("{target}/{}", clip(&id));
    }
    let result = run(request).await;
    if let Ok(response) = &result
        && let Some(id) = created(response.get_ref())
    {
        target = format!("{target}/{id}");
    }
    let call = AdminCall {
        action: action.into(),
        target,
        outcome: outcome_of(&result),
        detail: String::new(),
    };
    record_admin_call(catalog, call).await;
    result
}

fn no_item<Q>(_: &Q) -> Option<String> {
    None
}

#[tonic::async_trait]
impl ItemService for AuditedItemApi {
    async fn create_item(&self, request: Request<pb::CreateItemRequest>) -> Answer<pb::Item> {
        let created = |item: &pb::Item| Some(item.id.clone());
        self.call("CreateItem", request, no_item, created, async |r| {
            self.inner.create_item(r).await
        })
        .await
    }

    async fn get_item(&self, request: Request<pb::GetItemRequest>) -> Answer<pb::Item> {
        let item = |q: &pb::GetItemRequest| Some(q.id.clone());
        self.call("GetItem", request, item, no_item, async |r| {
            self.inner.get_item(r).await
        })
        .await
    }

    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Answer<pb::ListItemsResponse> {
        self.call("ListItems", request, no_item, no_item, async |r| {
            self.inner.list_items(r).await
        })
        .await
    }

    async fn update_item(&self, request: Request<pb::UpdateItemRequest>) -> Answer<pb::Item> {
        let item = |q: &pb::UpdateItemRequest| q.item.as_ref().map(|i| i.id.clone());
        self.call("UpdateItem", request, item, no_item, async |r| {
            self.inner.update_item(r).await
        })
        .await
    }

    async fn delete_item(&self, request: Request<pb::DeleteItemRequest>) -> Answer<()> {
        let item = |q: &pb::DeleteItemRequest| Some(q.id.clone());
        self.call("DeleteItem", request, item, no_item, async |r| {
            self.inner.delete_item(r).await
        })
        .await
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

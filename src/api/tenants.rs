//! `tenantry.v1.TenantService`: the admin API over tenants and their keys.

use tonic::{Request, Response, Status};

use crate::auth::NewApiKey;
use crate::catalog::{ApiKeyRecord, Catalog, TenantRecord, TenantState, store};
use crate::clock::{now_micros, to_timestamp};
use crate::error::{Error, Result};
use crate::ids::{TenantId, TenantName};
use crate::pagination;
use crate::pb::{self, tenant_service_server::TenantService};
use crate::tenant::Registry;

const MAX_DISPLAY_NAME_CHARS: usize = 200;
const MAX_KEY_DESCRIPTION_CHARS: usize = 200;
const LIST_SCOPE: &[u8] = b"tenants/by-name";

pub struct TenantApi {
    catalog: Catalog,
    registry: Registry,
}

impl TenantApi {
    pub fn new(catalog: Catalog, registry: Registry) -> Self {
        TenantApi { catalog, registry }
    }
}

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

fn tenant_not_found(id: TenantId) -> Error {
    Error::NotFound(format!("tenant {id} does not exist"))
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let tenant = request
            .into_inner()
            .tenant
            .ok_or_else(|| Error::invalid("tenant", "is required"))?;
        let name = TenantName::parse("tenant.name", &tenant.name)?;
        check_label(
            "tenant.display_name",
            &tenant.display_name,
            MAX_DISPLAY_NAME_CHARS,
        )?;
        let created = self
            .registry
            .create_tenant(name, tenant.display_name)
            .await?;
        tracing::info!(tenant = %created.id, name = created.name, "created tenant");
        Ok(Response::new(to_pb(&created)))
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
            _ => Err(tenant_not_found(id).into()),
        }
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let query = request.into_inner();
        let page_size = pagination::page_size(query.page_size)?;
        let after = match pagination::decode(LIST_SCOPE, &query.page_token)? {
            None => None,
            Some(bytes) => Some(String::from_utf8(bytes).map_err(|_| {
                Error::invalid(
                    "page_token",
                    "is damaged: pass the next_page_token of the previous page unchanged",
                )
            })?),
        };
        let mut page = self
            .catalog
            .read(move |conn| store::list_tenants(conn, after.as_deref(), page_size + 1))
            .await?;
        let next_page_token = if page.len() > page_size {
            page.truncate(page_size);
            let last = page.last().expect("a full page has a last tenant");
            pagination::encode(LIST_SCOPE, last.name.as_bytes())
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: page.iter().map(to_pb).collect(),
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
        };
        let row = record.clone();
        self.catalog
            .write(move |tx| {
                match store::get_tenant(tx, tenant_id)? {
                    Some(tenant) if tenant.state.is_visible() => {}
                    _ => return Err(tenant_not_found(tenant_id)),
                }
                store::insert_api_key(tx, &row)?;
                store::record_admin_event(
                    tx,
                    &store::AdminEvent {
                        time: row.create_time,
                        actor: "admin",
                        action: "CreateApiKey",
                        target: &format!("tenants/{}/keys/{}", row.tenant_id, row.id),
                        outcome: "ok",
                    },
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
        }))
    }
}

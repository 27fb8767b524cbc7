//! `tenantry tenants …` and `tenantry keys …`: tenants and their API keys.

use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};
use tonic::Status;

use super::Outcome;
use super::connect::{AdminClient, ClientArgs, admin};
use super::output::{Format, Record, print_list, print_one, size_cell, time_cell, time_json};
use tenantry::pb;

/// Most entries one page of a list asks for: the server's largest page.
const PAGE_SIZE: usize = 1000;

#[derive(clap::Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    command: TenantCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and its database file; prints it with its id.
    Create {
        /// Unique name: a lower-case letter, then lower-case letters, digits
        /// and hyphens (2 to 63 characters).
        name: String,
        /// A name for people.
        #[arg(long, default_value = "")]
        display_name: String,
        /// Start with a consistent copy of this tenant's data (by id).
        #[arg(long, value_name = "TENANT_ID")]
        copy_of: Option<String>,
    },
    /// List tenants by name, every page.
    List {
        /// Also show each tenant's item count, size on disk, schema version,
        /// last access and whether it is open (reads each tenant's file).
        #[arg(long)]
        usage: bool,
        /// At most this many tenants.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one tenant.
    Get { id: String },
    /// Refuse the tenant's item calls (FAILED_PRECONDITION) from the next call
    /// on; its data is kept.
    Suspend { id: String },
    /// Serve a suspended tenant again.
    Resume { id: String },
    /// Delete a tenant: its keys stop working at once and its file moves to
    /// the trash folder of the data directory.
    Delete {
        id: String,
        /// Erase the tenant's file, its trash copies and its backups for good.
        #[arg(long)]
        purge: bool,
    },
}

#[derive(clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeyCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create an API key for a tenant; its secret is shown this once only.
    Create {
        tenant_id: String,
        /// What the key is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List a tenant's API keys, revoked ones included, oldest first.
    List {
        tenant_id: String,
        /// At most this many keys.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Revoke an API key: it is refused from the next call on.
    Revoke { key_id: String },
}

pub async fn tenants(args: TenantsArgs, deadline: Option<Duration>) -> Outcome {
    let format = args.client.server.output;
    let mut admin = admin(&args.client.server, &args.client.token, deadline).await?;
    match args.command {
        TenantCommand::Create {
            name,
            display_name,
            copy_of,
        } => {
            let request = pb::CreateTenantRequest {
                tenant: Some(pb::Tenant {
                    name,
                    display_name,
                    ..Default::default()
                }),
                source_tenant_id: copy_of.unwrap_or_default(),
                ..Default::default()
            };
            let tenant = admin.create_tenant(request).await?.into_inner();
            print_one(format, &tenant)
        }
        TenantCommand::List { usage, limit } => {
            let tenants = list_tenants(&admin, usage, limit).await?;
            print_list(format, &tenants)
        }
        TenantCommand::Get { id } => {
            let tenant = admin
                .get_tenant(pb::GetTenantRequest { id })
                .await?
                .into_inner();
            print_one(format, &tenant)
        }
        TenantCommand::Suspend { id } => {
            set_state(&mut admin, format, id, pb::TenantState::Suspended).await
        }
        TenantCommand::Resume { id } => {
            set_state(&mut admin, format, id, pb::TenantState::Active).await
        }
        TenantCommand::Delete { id, purge } => {
            admin
                .delete_tenant(pb::DeleteTenantRequest {
                    id: id.clone(),
                    purge,
                    ..Default::default()
                })
                .await?;
            print_one(format, &Deleted { id, purge })
        }
    }
}

pub async fn keys(args: KeysArgs, deadline: Option<Duration>) -> Outcome {
    let format = args.client.server.output;
    let mut admin = admin(&args.client.server, &args.client.token, deadline).await?;
    match args.command {
        KeyCommand::Create {
            tenant_id,
            description,
        } => {
            let key = admin
                .create_api_key(pb::CreateApiKeyRequest {
                    tenant_id,
                    description,
                })
                .await?
                .into_inner();
            if format == Format::Table {
                eprintln!("Keep the secret now: the server keeps only a hash of it.");
            }
            print_one(format, &key)
        }
        KeyCommand::List { tenant_id, limit } => {
            let keys = list_keys(&admin, tenant_id, limit).await?;
            print_list(format, &keys)
        }
        KeyCommand::Revoke { key_id } => {
            let key = admin
                .revoke_api_key(pb::RevokeApiKeyRequest { id: key_id })
                .await?
                .into_inner();
            print_one(format, &key)
        }
    }
}

async fn set_state(
    admin: &mut AdminClient,
    format: Format,
    id: String,
    state: pb::TenantState,
) -> Outcome {
    let request = pb::UpdateTenantRequest {
        tenant: Some(pb::Tenant {
            id,
            state: state.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["state".into()],
        }),
    };
    let tenant = admin.update_tenant(request).await?.into_inner();
    print_one(format, &tenant)
}

/// Every tenant, page after page, up to `limit`.
async fn list_tenants(
    admin: &AdminClient,
    include_usage: bool,
    limit: Option<usize>,
) -> Outcome<Vec<pb::Tenant>> {
    all_pages(limit, |page_size, page_token| {
        let mut admin = admin.clone();
        async move {
            let page = admin
                .list_tenants(pb::ListTenantsRequest {
                    page_size,
                    page_token,
                    include_usage,
                })
                .await?
                .into_inner();
            Ok((page.tenants, page.next_page_token))
        }
    })
    .await
}

/// Every key of a tenant, page after page, up to `limit`.
async fn list_keys(
    admin: &AdminClient,
    tenant_id: String,
    limit: Option<usize>,
) -> Outcome<Vec<pb::ApiKey>> {
    all_pages(limit, |page_size, page_token| {
        let mut admin = admin.clone();
        let tenant_id = tenant_id.clone();
        async move {
            let page = admin
                .list_api_keys(pb::ListApiKeysRequest {
                    tenant_id,
                    page_size,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.api_keys, page.next_page_token))
        }
    })
    .await
}

/// Every entry of a list, asking for page after page (`fetch` takes a page
/// size and a page token, and answers entries and the next token), up to
/// `limit` entries.
async fn all_pages<T, Page>(
    limit: Option<usize>,
    mut fetch: impl FnMut(i32, String) -> Page,
) -> Outcome<Vec<T>>
where
    Page: Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let wanted = match limit {
            Some(limit) if all.len() >= limit => return Ok(all),
            Some(limit) => (limit - all.len()).min(PAGE_SIZE),
            None => PAGE_SIZE,
        };
        let page_size = i32::try_from(wanted).expect("a page size fits an i32");
        let (entries, next_page_token) = fetch(page_size, page_token).await?;
        all.extend(entries);
        all.truncate(limit.unwrap_or(usize::MAX));
        if next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = next_page_token;
    }
}

/// What `tenants delete` did.
struct Deleted {
    id: String,
    purge: bool,
}

impl Record for Deleted {
    fn fields(&self) -> Vec<(&'static str, String)> {
        let data = if self.purge {
            "erased"
        } else {
            "moved to the trash folder"
        };
        vec![("deleted", self.id.clone()), ("data", data.into())]
    }

    fn to_json(&self) -> Value {
        json!({"id": self.id, "deleted": true, "purged": self.purge})
    }
}

fn state_name(state: i32) -> &'static str {
    match pb::TenantState::try_from(state) {
        Ok(pb::TenantState::Active) => "active",
        Ok(pb::TenantState::Suspended) => "suspended",
        Ok(pb::TenantState::Unspecified) | Err(_) => "unspecified",
    }
}

impl Record for pb::Tenant {
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("display name", self.display_name.clone()),
            ("state", state_name(self.state).into()),
            ("created", time_cell(self.create_time.as_ref())),
        ];
        if let Some(usage) = &self.usage {
            fields.extend([
                ("items", usage.item_count.to_string()),
                ("size", size_cell(usage.size_bytes)),
                ("schema", usage.schema_version.to_string()),
                ("last access", time_cell(usage.last_access_time.as_ref())),
                ("open", if usage.open { "yes" } else { "no" }.into()),
            ]);
        }
        fields
    }

    fn to_json(&self) -> Value {
        let mut tenant = json!({
            "id": self.id,
            "name": self.name,
            "display_name": self.display_name,
            "state": state_name(self.state),
            "create_time": time_json(self.create_time.as_ref()),
            "update_time": time_json(self.update_time.as_ref()),
        });
        if let Some(usage) = &self.usage {
            tenant["usage"] = json!({
                "size_bytes": usage.size_bytes,
                "database_bytes": usage.database_bytes,
                "wal_bytes": usage.wal_bytes,
                "item_count": usage.item_count,
                "schema_version": usage.schema_version,
                "last_access_time": time_json(usage.last_access_time.as_ref()),
                "open": usage.open,
            });
        }
        tenant
    }
}

impl Record for pb::ApiKey {
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("id", self.id.clone()),
            ("description", self.description.clone()),
            ("created", time_cell(self.create_time.as_ref())),
            ("revoked", time_cell(self.revoke_time.as_ref())),
        ];
        if !self.secret.is_empty() {
            fields.push(("secret", self.secret.clone()));
        }
        fields
    }

    fn to_json(&self) -> Value {
        let mut key = json!({
            "id": self.id,
            "tenant_id": self.tenant_id,
            "description": self.description,
            "create_time": time_json(self.create_time.as_ref()),
            "revoke_time": time_json(self.revoke_time.as_ref()),
        });
        if !self.secret.is_empty() {
            key["secret"] = Value::String(self.secret.clone());
        }
        key
    }
}

//! `tenantry.v1.ItemService`: one tenant's items, served from its own database.

use tonic::{Request, Response, Status};

use crate::audit;
use crate::auth::{VerifiedTenant, verified_tenant};
use crate::clock::{Micros, from_timestamp, to_timestamp};
use crate::error::{Error, Result};
use crate::ids::parse_canonical_uuid;
use crate::pagination;
use crate::pb::{self, item_service_server::ItemService};
use crate::resources::items::store::{
    self as items, Cursor, Item, ItemChanges, NewItem, check_description, check_title,
};
use crate::tenant::Registry;

pub struct ItemApi {
    registry: Registry,
}

impl ItemApi {
    pub fn new(registry: Registry) -> Self {
        ItemApi { registry }
    }
}

pub fn to_pb(item: &Item) -> pb::Item {
    pb::Item {
        id: item.id.hyphenated().to_string(),
        title: item.title.clone(),
        description: item.description.clone(),
        completed: item.completed,
        create_time: Some(to_timestamp(item.create_time)),
        update_time: Some(to_timestamp(item.update_time)),
        etag: item.etag(),
        due_time: item.due_time.map(to_timestamp),
    }
}

fn due_time(
    field: &'static str,
    timestamp: Option<&prost_types::Timestamp>,
) -> Result<Option<Micros>> {
    timestamp
        .map(|t| {
            from_timestamp(t).ok_or_else(|| {
                Error::invalid(
                    field,
                    "must be a valid timestamp between 0001-01-01 and 9999-12-31",
                )
            })
        })
        .transpose()
}

/// The scope a ListItems page token is valid in: this tenant, this filter.
fn list_scope(tenant: &VerifiedTenant, completed: Option<bool>) -> Vec<u8> {
    let filter = match completed {
        None => "all",
        Some(true) => "completed",
        Some(false) => "open",
    };
    format!("items/{}/{filter}", tenant.id).into_bytes()
}

#[tonic::async_trait]
impl ItemService for ItemApi {
    async fn create_item(
        &self,
        request: Request<pb::CreateItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        let tenant = verified_tenant(&request)?;
        let item = request
            .into_inner()
            .item
            .ok_or_else(|| Error::invalid("item", "is required"))?;
        check_title("item.title", &item.title)?;
        check_description("item.description", &item.description)?;
        let new = NewItem {
            due_time: due_time("item.due_time", item.due_time.as_ref())?,
            title: item.title,
            description: item.description,
            completed: item.completed,
        };
        let actor = tenant.actor();
        let created = self
            .registry
            .write(tenant.id, move |tx| {
                let item = items::insert(tx, new)?;
                audit::record_write(tx, "CreateItem", item.id, &actor)?;
                Ok(item)
            })
            .await?;
        Ok(Response::new(to_pb(&created)))
    }

    async fn get_item(
        &self,
        request: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        let tenant = verified_tenant(&request)?;
        let id = parse_canonical_uuid("id", &request.get_ref().id)?;
        let item = self
            .registry
            .read(tenant.id, move |conn| items::get(conn, id))
            .await?;
        let item = item.ok_or_else(|| Error::NotFound(format!("item {id} does not exist")))?;
        Ok(Response::new(to_pb(&item)))
    }

    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        let tenant = verified_tenant(&request)?;
        let query = request.into_inner();
        let page_size = pagination::page_size(query.page_size)?;
        let scope = list_scope(&tenant, query.completed);
        let after = pagination::decode_with(&scope, &query.page_token, |bytes| {
            Cursor::from_bytes(&bytes)
        })?;
        let listing = items::Listing::new(query.completed, after, page_size + 1);
        let mut page = self
            .registry
            .read_in_steps(tenant.id, listing, |conn, listing| listing.step(conn))
            .await?
            .items;
        let next_page_token = pagination::cut_page(&mut page, page_size, &scope, |last| {
            Cursor {
                create_time: last.create_time,
                id: last.id,
            }
            .to_bytes()
        });
        Ok(Response::new(pb::ListItemsResponse {
            items: page.iter().map(to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_item(
        &self,
        request: Request<pb::UpdateItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        let tenant = verified_tenant(&request)?;
        let pb::UpdateItemRequest { item, update_mask } = request.into_inner();
        let item = item.ok_or_else(|| Error::invalid("item", "is required"))?;
        let id = parse_canonical_uuid("item.id", &item.id)?;
        let paths = update_mask.map(|mask| mask.paths).unwrap_or_default();
        let expected_etag = (!item.etag.is_empty()).then(|| item.etag.clone());
        let changes = changes_from(item, &paths)?;
        let actor = tenant.actor();
        let updated = self
            .registry
            .write(tenant.id, move |tx| {
                let item = items::update(tx, id, changes, expected_etag.as_deref())?;
                audit::record_write(tx, "UpdateItem", id, &actor)?;
                Ok(item)
            })
            .await?;
        Ok(Response::new(to_pb(&updated)))
    }

    async fn delete_item(
        &self,
        request: Request<pb::DeleteItemRequest>,
    ) -> Result<Response<()>, Status> {
        let tenant = verified_tenant(&request)?;
        let id = parse_canonical_uuid("id", &request.get_ref().id)?;
        let actor = tenant.actor();
        self.registry
            .write(tenant.id, move |tx| {
                items::delete(tx, id)?;
                audit::record_write(tx, "DeleteItem", id, &actor)
            })
            .await?;
        Ok(Response::new(()))
    }
}

/// The changes an UpdateItem asks for (AIP-134): the fields named in the
/// mask, `*` for every updatable field, or, with no mask, every field set to
/// a non-default value.
fn changes_from(item: pb::Item, paths: &[String]) -> Result<ItemChanges> {
    const FIELD: &str = "update_mask";
    let (mut title, mut description, mut completed, mut due) = (false, false, false, false);
    if paths.is_empty() {
        title = !item.title.is_empty();
        description = !item.description.is_empty();
        completed = item.completed;
        due = item.due_time.is_some();
    }
    for path in paths {
        match path.as_str() {
            "*" => (title, description, completed, due) = (true, true, true, true),
            "title" => title = true,
            "description" => description = true,
            "completed" => completed = true,
            "due_time" => due = true,
            "id" | "create_time" | "update_time" | "etag" => {
                return Err(Error::invalid(
                    FIELD,
                    format!("{path:?} is output only and cannot be updated"),
                ));
            }
            other => {
                return Err(Error::invalid(
                    FIELD,
                    format!(
                        "{other:?} is not a field of Item: use title, description, completed, due_time or *"
                    ),
                ));
            }
        }
    }
    if !(title || description || completed || due) {
        return Err(Error::invalid(
            FIELD,
            "names no field to update: set update_mask or a field's new value",
        ));
    }
    if title {
        check_title("item.title", &item.title)?;
    }
    if description {
        check_description("item.description", &item.description)?;
    }
    let due_time = if due {
        Some(due_time("item.due_time", item.due_time.as_ref())?)
    } else {
        None
    };
    Ok(ItemChanges {
        due_time,
        title: title.then_some(item.title),
        description: description.then_some(item.description),
        completed: completed.then_some(item.completed),
    })
}

//! Items: their share of the tenant database ([`schema`]), the store
//! ([`store`], SQL over one tenant's connection) and the gRPC service
//! `tenantry.v1.ItemService` ([`service`]).

pub mod schema;
pub mod service;
pub mod store;

use tonic::server::NamedService;
use tonic::service::Routes;

use crate::api::audited::AuditedItemApi;
use crate::pb::item_service_server::ItemServiceServer;
use crate::resources::{Resource, Serving};
use service::ItemApi;

pub const RESOURCE: Resource = Resource {
    service: <ItemServiceServer<ItemApi> as NamedService>::NAME,
    schema: &schema::SCHEMA,
    serve,
};

fn serve(routes: Routes, serving: &Serving) -> Routes {
    let api = AuditedItemApi::new(
        ItemApi::new(serving.registry.clone()),
        serving.registry.catalog().clone(),
    );
    routes.add_service(
        ItemServiceServer::new(api).max_decoding_message_size(serving.max_message_bytes),
    )
}

//! Notes: a test-only resource beside items, compiled only with the
//! `test-resource` feature (`tests/resource.rs` exercises it). It is here
//! to prove that a resource is added in one place: this folder, its proto
//! (`proto/tenantry/v1/notes.proto`) and its line in
//! [`crate::resources::RESOURCES`].

pub mod schema;
pub mod service;
pub mod store;

use tonic::server::NamedService;
use tonic::service::Routes;

use crate::pb::note_service_server::NoteServiceServer;
use crate::resources::{Resource, Serving};
use service::NoteApi;

pub const RESOURCE: Resource = Resource {
    service: <NoteServiceServer<NoteApi> as NamedService>::NAME,
    schema: &schema::SCHEMA,
    serve,
};

fn serve(routes: Routes, serving: &Serving) -> Routes {
    let api = NoteApi::new(serving.registry.clone());
    routes.add_service(
        NoteServiceServer::new(api).max_decoding_message_size(serving.max_message_bytes),
    )
}

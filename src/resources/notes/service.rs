//! `tenantry.v1.NoteService`: one tenant's notes, served from its own
//! database. Calls the administrator makes for a tenant are recorded as
//! admin calls, as item calls are.

use tonic::{Request, Response, Status};

use crate::api::audited::acting_call;
use crate::audit;
use crate::auth::verified_tenant;
use crate::clock::to_timestamp;
use crate::error::Error;
use crate::ids::parse_canonical_uuid;
use crate::pb::{self, note_service_server::NoteService};
use crate::resources::notes::store::{self as notes, Note, check_body};
use crate::tenant::Registry;

pub struct NoteApi {
    registry: Registry,
}

impl NoteApi {
    pub fn new(registry: Registry) -> Self {
        NoteApi { registry }
    }
}

fn to_pb(note: &Note) -> pb::Note {
    pb::Note {
        id: note.id.hyphenated().to_string(),
        body: note.body.clone(),
        create_time: Some(to_timestamp(note.create_time)),
    }
}

#[tonic::async_trait]
impl NoteService for NoteApi {
    async fn create_note(
        &self,
        request: Request<pb::CreateNoteRequest>,
    ) -> Result<Response<pb::Note>, Status> {
        let catalog = self.registry.catalog();
        let created = |note: &pb::Note| Some(note.id.clone());
        acting_call(
            catalog,
            "CreateNote",
            "notes",
            request,
            |_| None,
            created,
            async |request| {
                let tenant = verified_tenant(&request)?;
                let note = request
                    .into_inner()
                    .note
                    .ok_or_else(|| Error::invalid("note", "is required"))?;
                check_body("note.body", &note.body)?;
                let actor = tenant.actor();
                let created = self
                    .registry
                    .write(tenant.id, move |tx| {
                        let note = notes::insert(tx, note.body)?;
                        audit::record_write(tx, "CreateNote", note.id, &actor)?;
                        Ok(note)
                    })
                    .await?;
                Ok(Response::new(to_pb(&created)))
            },
        )
        .await
    }

    async fn get_note(
        &self,
        request: Request<pb::GetNoteRequest>,
    ) -> Result<Response<pb::Note>, Status> {
        let catalog = self.registry.catalog();
        let named = |q: &pb::GetNoteRequest| Some(q.id.clone());
        acting_call(
            catalog,
            "GetNote",
            "notes",
            request,
            named,
            |_| None,
            async |request| {
                let tenant = verified_tenant(&request)?;
                let id = parse_canonical_uuid("id", &request.get_ref().id)?;
                let note = self
                    .registry
                    .read(tenant.id, move |conn| notes::get(conn, id))
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("note {id} does not exist")))?;
                Ok(Response::new(to_pb(&note)))
            },
        )
        .await
    }
}

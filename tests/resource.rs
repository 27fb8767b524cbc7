//! The test-only resource (notes, built with `--features test-resource`)
//! served beside items: registered by one line, it is served, admitted
//! only with its tenant's credentials, stored in the tenant's own file at
//! the schema version after items', audited, and carried by backups.

#[allow(dead_code)]
#[path = "api/common.rs"]
mod common;

use common::{TestTenant, as_admin_for, expect_code, spawn};
use tenantry::pb::note_service_client::NoteServiceClient;
use tenantry::pb::{self, CreateNoteRequest, GetNoteRequest, ListAuditEventsRequest};
use tonic::Code;
use tonic::transport::Channel;

async fn notes(server: &common::TestServer) -> NoteServiceClient<Channel> {
    NoteServiceClient::new(common::connect(server.addr).await)
}

fn new_note(body: &str) -> CreateNoteRequest {
    CreateNoteRequest {
        note: Some(pb::Note {
            body: body.into(),
            ..Default::default()
        }),
    }
}

async fn create(
    client: &mut NoteServiceClient<Channel>,
    tenant: &TestTenant,
    body: &str,
) -> pb::Note {
    client
        .create_note(tenant.call(new_note(body)))
        .await
        .expect("a note is created")
        .into_inner()
}

#[tokio::test]
async fn a_note_is_served_to_its_tenant_and_to_no_other() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;
    let mut client = notes(&server).await;
    let note = create(&mut client, &acme, "Acme's plan").await;

    let read = client
        .get_note(acme.call(GetNoteRequest {
            id: note.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, note);

    // Globex's own credentials reach Globex's file, which has no such note.
    expect_code(
        client
            .get_note(globex.call(GetNoteRequest {
                id: note.id.clone(),
            }))
            .await,
        Code::NotFound,
    );
    // Globex's key naming Acme is refused before any file is read.
    expect_code(
        client
            .get_note(globex.call_for(
                &acme.id,
                GetNoteRequest {
                    id: note.id.clone(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        client.create_note(acme.call(new_note(""))).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn notes_live_in_the_tenant_s_file_at_the_version_after_the_served_resources() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut client = notes(&server).await;
    let note = create(&mut client, &acme, "in the file").await;
    let schema = tenantry::resources::tenant_schema();
    assert_eq!(
        schema.latest(),
        6,
        "items 1, 2 and 4, the trail 3 and 5, notes 6"
    );
    let dir = server.stop().await;
    let file = dir
        .path()
        .join("data")
        .join("tenants")
        .join(format!("{}.db", acme.id));
    let conn = rusqlite::Connection::open(&file).unwrap();
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, 6);
    let body: String = conn
        .query_row("SELECT body FROM notes WHERE id = ?1", [&note.id], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(body, "in the file");
}

#[tokio::test]
async fn a_note_s_write_is_in_the_tenant_s_trail_and_an_admin_call_for_it_in_the_admin_trail() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut client = notes(&server).await;
    let note = create(&mut client, &acme, "audited").await;
    client
        .get_note(as_admin_for(
            &acme.id,
            GetNoteRequest {
                id: note.id.clone(),
            },
        ))
        .await
        .unwrap();

    let events = server
        .admin()
        .await
        .list_audit_events(common::as_admin(ListAuditEventsRequest {
            tenant_id: acme.id.clone(),
            page_size: 100,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .events;
    let write = events
        .iter()
        .find(|e| e.action == "CreateNote")
        .expect("the write is in the trail");
    assert_eq!(write.target, format!("notes/{}", note.id));
    let read = events
        .iter()
        .find(|e| e.action == "GetNote")
        .expect("the admin's call is in the trail");
    assert_eq!(
        read.target,
        format!("tenants/{}/notes/{}", acme.id, note.id)
    );
    assert_eq!(read.outcome, "OK");
}

#[tokio::test]
async fn a_backup_carries_the_notes_and_a_crafted_note_is_refused_on_restore() {
    use tenantry::pb::restore_tenant_request::Source;
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut client = notes(&server).await;
    let kept = create(&mut client, &acme, "kept").await;
    let mut admin = server.admin().await;
    let backup = admin
        .backup_tenant(common::as_admin(pb::BackupTenantRequest {
            id: acme.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let later = create(&mut client, &acme, "after the backup").await;

    let restore = |path: &str| {
        common::as_admin(pb::RestoreTenantRequest {
            request_id: String::new(),
            id: acme.id.clone(),
            source: Some(Source::BackupPath(path.into())),
        })
    };
    admin.restore_tenant(restore(&backup.path)).await.unwrap();
    let get = |id: &str| acme.call(GetNoteRequest { id: id.into() });
    assert_eq!(
        client.get_note(get(&kept.id)).await.unwrap().into_inner(),
        kept
    );
    expect_code(client.get_note(get(&later.id)).await, Code::NotFound);

    // The same backup with a note the API could never have written,
    // imported as an upload.
    let crafted = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(server.data_dir().join(&backup.path), crafted.path()).unwrap();
    let conn = rusqlite::Connection::open(crafted.path()).unwrap();
    conn.execute("UPDATE notes SET body = ''", []).unwrap();
    drop(conn);
    let bytes = std::fs::read(crafted.path()).unwrap();
    let upload = pb::ImportTenantRequest {
        id: acme.id.clone(),
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        chunk: bytes,
        ..Default::default()
    };
    let refused = expect_code(
        admin
            .import_tenant(common::as_admin(futures::stream::iter([upload])))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        refused
            .message()
            .contains("is not one the API could have stored"),
        "{}",
        refused.message()
    );
    assert_eq!(
        client.get_note(get(&kept.id)).await.unwrap().into_inner(),
        kept
    );
}

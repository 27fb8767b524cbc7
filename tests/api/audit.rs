//! The audit trail: every admin call is recorded with its outcome, every
//! write to a tenant's data is recorded in the tenant's own file, and
//! ListAuditEvents reads both as one list, page by page. Refused calls are
//! logged with the key id, never the secret.

use std::collections::HashSet;

use tempfile::TempDir;
use tenantry::pb::{
    self, AuditEvent, AuditSource, GetTenantRequest, ListApiKeysRequest, ListAuditEventsRequest,
    UpdateTenantRequest,
};
use tonic::Code;

use crate::common::{
    ServerProcess, TestServer, TestTenant, as_admin, create_tenant, expect_code, new_item, spawn,
};

/// Every event of a trail, newest first, across pages of `page_size`.
pub async fn trail(server: &TestServer, tenant_id: &str, page_size: i32) -> Vec<AuditEvent> {
    let mut admin = server.admin().await;
    let (mut events, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = admin
            .list_audit_events(as_admin(ListAuditEventsRequest {
                tenant_id: tenant_id.into(),
                page_size,
                page_token,
            }))
            .await
            .expect("lists audit events")
            .into_inner();
        assert!(page.events.len() <= page_size as usize);
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

fn summary(events: &[AuditEvent]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| (e.action.clone(), e.actor.clone(), e.outcome.clone()))
        .collect()
}

async fn key_id(server: &TestServer, tenant: &TestTenant) -> String {
    let keys = server
        .admin()
        .await
        .list_api_keys(as_admin(ListApiKeysRequest {
            tenant_id: tenant.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    keys.api_keys[0].id.clone()
}

#[tokio::test]
async fn admin_calls_and_tenant_writes_are_one_trail_newest_first() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let other = server.tenant("other").await;
    let key = key_id(&server, &acme).await;
    let mut items = server.items().await;
    let item = items
        .create_item(acme.call(new_item("audited")))
        .await
        .unwrap()
        .into_inner();
    items
        .update_item(acme.call(pb::UpdateItemRequest {
            item: Some(pb::Item {
                id: item.id.clone(),
                completed: true,
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap();
    // A write that fails changes nothing, and records nothing.
    expect_code(
        items
            .delete_item(acme.call(pb::DeleteItemRequest {
                id: uuid::Uuid::now_v7().to_string(),
            }))
            .await,
        Code::NotFound,
    );
    items
        .delete_item(acme.call(pb::DeleteItemRequest {
            id: item.id.clone(),
        }))
        .await
        .unwrap();
    items
        .create_item(other.call(new_item("not in acme's trail")))
        .await
        .unwrap();
    let mut admin = server.admin().await;
    admin
        .get_tenant(as_admin(GetTenantRequest {
            id: acme.id.clone(),
        }))
        .await
        .unwrap();
    // A failed admin call is recorded with its outcome.
    expect_code(
        admin
            .update_tenant(as_admin(UpdateTenantRequest {
                tenant: Some(pb::Tenant {
                    id: acme.id.clone(),
                    ..Default::default()
                }),
                update_mask: None,
            }))
            .await,
        Code::InvalidArgument,
    );

    let events = trail(&server, &acme.id, 2).await;
    let actor = format!("keys/{key}");
    let s = |action: &str, actor: &str, outcome: &str| {
        (action.to_owned(), actor.to_owned(), outcome.to_owned())
    };
    assert_eq!(
        summary(&events),
        [
            s("UpdateTenant", "admin", "INVALID_ARGUMENT"),
            s("GetTenant", "admin", "OK"),
            s("DeleteItem", &actor, "OK"),
            s("UpdateItem", &actor, "OK"),
            s("CreateItem", &actor, "OK"),
            s("ListApiKeys", "admin", "OK"),
            s("CreateApiKey", "admin", "OK"),
            s("CreateTenant", "admin", "OK"),
        ]
    );
    for event in &events {
        assert_eq!(event.tenant_id, acme.id, "{event:?}");
        let expected = if event.actor == "admin" {
            AuditSource::Admin
        } else {
            assert_eq!(event.target, format!("items/{}", item.id));
            AuditSource::Tenant
        };
        assert_eq!(event.source, expected as i32, "{event:?}");
    }
    let times: Vec<_> = events.iter().map(|e| e.time.unwrap()).collect();
    assert!(
        times
            .windows(2)
            .all(|w| (w[0].seconds, w[0].nanos) >= (w[1].seconds, w[1].nanos)),
        "newest first"
    );
    // Every page size walks the same trail, each event once (reading the
    // trail is an admin call too, and adds to it).
    for page_size in [1, 3, 1000] {
        let mut again = trail(&server, &acme.id, page_size).await;
        again.retain(|e| e.action != "ListAuditEvents");
        assert_eq!(again, events);
    }
    // Without a tenant: every admin call, of every tenant, and no item writes.
    let all = trail(&server, "", 1000).await;
    assert!(all.iter().all(|e| e.source == AuditSource::Admin as i32));
    let tenants: HashSet<_> = all.iter().map(|e| e.tenant_id.as_str()).collect();
    assert!(tenants.contains(acme.id.as_str()) && tenants.contains(other.id.as_str()));
}

#[tokio::test]
async fn the_writes_trail_is_in_the_tenant_file_and_page_tokens_stay_in_their_trail() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let other = server.tenant("other").await;
    let mut items = server.items().await;
    for n in 0..3 {
        items
            .create_item(acme.call(new_item(&format!("item {n}"))))
            .await
            .unwrap();
    }
    server.close_tenants().await;
    let conn = rusqlite::Connection::open(server.tenant_file(&acme.id)).unwrap();
    let recorded: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit_events WHERE action = 'CreateItem'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(recorded, 3, "the trail travels with the tenant's file");
    // Let go of the file: tenantry alone opens it while it serves.
    drop(conn);

    let mut admin = server.admin().await;
    let page = admin
        .list_audit_events(as_admin(ListAuditEventsRequest {
            tenant_id: acme.id.clone(),
            page_size: 1,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    for (tenant_id, token) in [
        (other.id.clone(), page.next_page_token.clone()),
        (String::new(), page.next_page_token.clone()),
        (acme.id.clone(), format!("{}x", page.next_page_token)),
    ] {
        let status = expect_code(
            admin
                .list_audit_events(as_admin(ListAuditEventsRequest {
                    tenant_id,
                    page_size: 1,
                    page_token: token,
                }))
                .await,
            Code::InvalidArgument,
        );
        assert!(status.message().contains("page_token"), "{status:?}");
    }
    expect_code(
        admin
            .list_audit_events(as_admin(ListAuditEventsRequest {
                tenant_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            }))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn refused_calls_are_logged_with_the_key_id_and_never_the_secret() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(&dir, &[]);
    let mut admin = server.admin().await;
    let acme = create_tenant(&mut admin, "acme").await;
    let other = create_tenant(&mut admin, "other").await;
    let keys = admin
        .list_api_keys(as_admin(ListApiKeysRequest {
            tenant_id: acme.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let key_id = keys.api_keys[0].id.clone();
    let mut items = server.items().await;
    // Acme's key, for another tenant.
    expect_code(
        items
            .list_items(acme.call_for(&other.id, pb::ListItemsRequest::default()))
            .await,
        Code::PermissionDenied,
    );
    // Acme's key id with a wrong secret.
    let (prefix, secret) = acme.key.rsplit_once('_').unwrap();
    let forged = TestTenant {
        id: acme.id.clone(),
        key: format!("{prefix}_{}", "A".repeat(secret.len())),
    };
    assert_ne!(forged.key, acme.key);
    expect_code(
        items
            .list_items(forged.call(pb::ListItemsRequest::default()))
            .await,
        Code::Unauthenticated,
    );

    drop((admin, items));
    // Stopped from a blocking thread, so that this runtime can close the
    // clients' connections meanwhile.
    let log = tokio::task::spawn_blocking(move || server.stop_and_read_log())
        .await
        .unwrap();
    let warnings: Vec<_> = log
        .iter()
        .filter(|line| line.contains("WARN") && line.contains(&key_id))
        .collect();
    assert!(
        warnings.len() >= 2,
        "each refusal is a warning naming key {key_id}: {log:#?}"
    );
    for line in &log {
        assert!(
            !line.contains(&acme.key) && !line.contains(&forged.key),
            "a secret was logged: {line}"
        );
        assert!(
            !line.contains(crate::common::ADMIN_TOKEN),
            "the admin token was logged: {line}"
        );
    }
}

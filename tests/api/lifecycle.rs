//! Suspend and resume, delete and purge, API key revocation, and clones.

use prost_types::FieldMask;
use tenantry::pb::{
    self, BackupTenantRequest, CreateTenantRequest, DeleteTenantRequest, GetItemRequest,
    GetTenantRequest, ListApiKeysRequest, ListItemsRequest, ListTenantsRequest,
    RevokeApiKeyRequest, TenantState, UpdateTenantRequest,
};
use tonic::Code;

use crate::common::{
    TestServer, TestTenant, all_titles, as_admin, expect_code, files_under, integrity, new_item,
    spawn, spawn_with, suspend, titles_in_file,
};

fn set_state(id: &str, state: TenantState) -> UpdateTenantRequest {
    UpdateTenantRequest {
        tenant: Some(pb::Tenant {
            id: id.into(),
            state: state.into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["state".into()],
        }),
    }
}

async fn create_items(server: &TestServer, tenant: &crate::common::TestTenant, titles: &[&str]) {
    let mut items = server.items().await;
    for title in titles {
        items
            .create_item(tenant.call(new_item(title)))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_suspended_tenant_is_refused_from_the_next_call_and_served_again_after_resume() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let other = server.tenant("other").await;
    create_items(&server, &acme, &["kept"]).await;
    let mut admin = server.admin().await;
    let mut items = server.items().await;
    // The key is verified and cached, the tenant open.
    items
        .list_items(acme.call(ListItemsRequest::default()))
        .await
        .unwrap();

    let suspended = admin
        .update_tenant(as_admin(set_state(&acme.id, TenantState::Suspended)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.state(), TenantState::Suspended);
    let seconds = |t: &Option<prost_types::Timestamp>| {
        let t = t.unwrap();
        (t.seconds, t.nanos)
    };
    assert!(seconds(&suspended.update_time) > seconds(&suspended.create_time));
    let status = expect_code(
        items
            .list_items(acme.call(ListItemsRequest::default()))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(status.message(), "tenant is suspended");
    expect_code(
        items.create_item(acme.call(new_item("refused"))).await,
        Code::FailedPrecondition,
    );
    // Other tenants do not notice.
    items
        .create_item(other.call(new_item("fine")))
        .await
        .unwrap();
    // A suspended tenant is still listed, with its state.
    let listed = admin
        .list_tenants(as_admin(ListTenantsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let acme_listed = listed.tenants.iter().find(|t| t.id == acme.id).unwrap();
    assert_eq!(acme_listed.state(), TenantState::Suspended);

    admin
        .update_tenant(as_admin(set_state(&acme.id, TenantState::Active)))
        .await
        .unwrap();
    assert_eq!(all_titles(&server, &acme).await, ["kept"]);
}

#[tokio::test]
async fn update_tenant_changes_the_display_name_and_refuses_what_it_cannot_change() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut admin = server.admin().await;
    let renamed = admin
        .update_tenant(as_admin(UpdateTenantRequest {
            tenant: Some(pb::Tenant {
                id: acme.id.clone(),
                display_name: "Acme Corporation".into(),
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.display_name, "Acme Corporation");
    assert_eq!(
        renamed.state(),
        TenantState::Active,
        "no mask: unset fields are kept"
    );

    let with_mask = |tenant: pb::Tenant, paths: &[&str]| UpdateTenantRequest {
        tenant: Some(tenant),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let acme_tenant = || pb::Tenant {
        id: acme.id.clone(),
        ..Default::default()
    };
    for (request, field) in [
        (with_mask(acme_tenant(), &["name"]), "update_mask"),
        (with_mask(acme_tenant(), &["colour"]), "update_mask"),
        (with_mask(acme_tenant(), &["state"]), "tenant.state"),
        (with_mask(acme_tenant(), &[]), "update_mask"),
        (
            with_mask(
                pb::Tenant {
                    state: 7,
                    ..acme_tenant()
                },
                &["state"],
            ),
            "tenant.state",
        ),
        (
            with_mask(
                pb::Tenant {
                    id: "ACME".into(),
                    ..Default::default()
                },
                &["display_name"],
            ),
            "tenant.id",
        ),
    ] {
        let status = expect_code(
            admin.update_tenant(as_admin(request)).await,
            Code::InvalidArgument,
        );
        assert!(status.message().starts_with(field), "{field}: {status:?}");
    }
    expect_code(
        admin
            .update_tenant(as_admin(set_state(
                &uuid::Uuid::new_v4().to_string(),
                TenantState::Suspended,
            )))
            .await,
        Code::NotFound,
    );
    let read = admin
        .get_tenant(as_admin(GetTenantRequest {
            id: acme.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, renamed, "refused updates changed nothing");
}

#[tokio::test]
async fn a_deleted_tenant_is_gone_its_file_is_in_the_trash_and_its_name_is_free() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let other = server.tenant("other").await;
    create_items(&server, &acme, &["a1", "a2"]).await;
    create_items(&server, &other, &["o1"]).await;
    let mut admin = server.admin().await;
    let mut items = server.items().await;
    items
        .list_items(acme.call(ListItemsRequest::default()))
        .await
        .unwrap();

    admin
        .delete_tenant(as_admin(DeleteTenantRequest {
            request_id: String::new(),
            id: acme.id.clone(),
            purge: false,
        }))
        .await
        .unwrap();

    // The key stops working at once, whatever was cached.
    let status = expect_code(
        items
            .list_items(acme.call(ListItemsRequest::default()))
            .await,
        Code::NotFound,
    );
    assert!(status.message().contains("does not exist"), "{status:?}");
    expect_code(
        admin
            .get_tenant(as_admin(GetTenantRequest {
                id: acme.id.clone(),
            }))
            .await,
        Code::NotFound,
    );
    expect_code(
        admin
            .delete_tenant(as_admin(DeleteTenantRequest {
                request_id: String::new(),
                id: acme.id.clone(),
                purge: false,
            }))
            .await,
        Code::NotFound,
    );
    assert!(!server.tenant_file(&acme.id).exists());
    let trash: Vec<_> = files_under(&server.data_dir().join("trash"));
    assert_eq!(trash.len(), 1, "{trash:?}");
    let trashed = server.data_dir().join("trash").join(&trash[0]);
    assert!(trash[0].to_string_lossy().starts_with(&acme.id));
    assert_eq!(titles_in_file(&trashed), ["a1", "a2"]);
    assert_eq!(integrity(&trashed), "ok");

    // The other tenant is untouched, and the name can be used again.
    assert_eq!(all_titles(&server, &other).await, ["o1"]);
    let again = server.tenant("acme").await;
    assert_ne!(again.id, acme.id);
    assert!(all_titles(&server, &again).await.is_empty());
    let listed = admin
        .list_tenants(as_admin(ListTenantsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = listed.tenants.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [again.id.as_str(), other.id.as_str()]);
}

#[tokio::test]
async fn a_purge_removes_the_file_its_trash_copies_and_its_backups() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let beta = server.tenant("beta").await;
    create_items(&server, &acme, &["secret"]).await;
    create_items(&server, &beta, &["kept"]).await;
    let mut admin = server.admin().await;
    for tenant in [&acme, &beta] {
        admin
            .backup_tenant(as_admin(BackupTenantRequest {
                id: tenant.id.clone(),
            }))
            .await
            .unwrap();
    }

    // Soft delete first, then erase what was kept.
    admin
        .delete_tenant(as_admin(DeleteTenantRequest {
            request_id: String::new(),
            id: acme.id.clone(),
            purge: false,
        }))
        .await
        .unwrap();
    admin
        .delete_tenant(as_admin(DeleteTenantRequest {
            request_id: String::new(),
            id: acme.id.clone(),
            purge: true,
        }))
        .await
        .unwrap();
    let left: Vec<_> = files_under(&server.data_dir())
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(&acme.id))
        .collect();
    assert!(
        left.is_empty(),
        "files of the purged tenant remain: {left:?}"
    );
    // The other tenant's file and backup are still there.
    assert!(server.tenant_file(&beta.id).exists());
    assert_eq!(
        files_under(&server.data_dir().join("backups").join(&beta.id)).len(),
        1
    );

    // A direct purge of a live tenant.
    admin
        .delete_tenant(as_admin(DeleteTenantRequest {
            request_id: String::new(),
            id: beta.id.clone(),
            purge: true,
        }))
        .await
        .unwrap();
    let left: Vec<_> = files_under(&server.data_dir())
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(&beta.id))
        .collect();
    assert!(
        left.is_empty(),
        "files of the purged tenant remain: {left:?}"
    );
}

#[tokio::test]
async fn a_delete_waits_for_writes_in_flight_and_loses_none_of_them() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut admin = server.admin().await;
    let mut writers = Vec::new();
    for w in 0..8 {
        let acme = acme.clone();
        let mut items = server.items().await;
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0.. {
                let title = format!("w{w}-{n}");
                match items.create_item(acme.call(new_item(&title))).await {
                    Ok(_) => acknowledged.push(title),
                    Err(status) => {
                        assert!(
                            matches!(status.code(), Code::NotFound | Code::Unauthenticated),
                            "a write during a delete failed with {status:?}"
                        );
                        return acknowledged;
                    }
                }
            }
            unreachable!()
        }));
    }
    // Let the writers get going, then delete under them.
    let mut items = server.items().await;
    loop {
        let count = items
            .list_items(acme.call(ListItemsRequest {
                page_size: 100,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .items
            .len();
        if count >= 50 {
            break;
        }
    }
    admin
        .delete_tenant(as_admin(DeleteTenantRequest {
            request_id: String::new(),
            id: acme.id.clone(),
            purge: false,
        }))
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    acknowledged.sort();
    let trash = files_under(&server.data_dir().join("trash"));
    assert_eq!(trash.len(), 1);
    let trashed = server.data_dir().join("trash").join(&trash[0]);
    let mut stored = titles_in_file(&trashed);
    stored.sort();
    assert!(acknowledged.len() >= 50);
    assert_eq!(
        stored, acknowledged,
        "every acknowledged write is in the trashed file, and only those"
    );
    assert_eq!(integrity(&trashed), "ok");
}

#[tokio::test]
async fn keys_are_listed_without_secrets_and_a_revoked_key_is_refused_on_the_next_call() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut admin = server.admin().await;
    let second = admin
        .create_api_key(as_admin(pb::CreateApiKeyRequest {
            tenant_id: acme.id.clone(),
            description: "second".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let mut items = server.items().await;
    // Both keys verified, so both are cached.
    items
        .list_items(acme.call(ListItemsRequest::default()))
        .await
        .unwrap();
    let second_tenant = crate::common::TestTenant {
        id: acme.id.clone(),
        key: second.secret.clone(),
    };
    items
        .list_items(second_tenant.call(ListItemsRequest::default()))
        .await
        .unwrap();

    let listed = admin
        .list_api_keys(as_admin(ListApiKeysRequest {
            tenant_id: acme.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.api_keys.len(), 2);
    assert!(listed.api_keys.iter().all(|k| k.secret.is_empty()));
    assert!(listed.api_keys.iter().all(|k| k.revoke_time.is_none()));
    assert_eq!(listed.api_keys[1].id, second.id, "oldest first");

    let revoked = admin
        .revoke_api_key(as_admin(RevokeApiKeyRequest {
            id: second.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoke_time.is_some());
    assert!(revoked.secret.is_empty());
    expect_code(
        items
            .list_items(second_tenant.call(ListItemsRequest::default()))
            .await,
        Code::Unauthenticated,
    );
    // The other key still works; revoking again changes nothing.
    items
        .list_items(acme.call(ListItemsRequest::default()))
        .await
        .unwrap();
    let again = admin
        .revoke_api_key(as_admin(RevokeApiKeyRequest {
            id: second.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.revoke_time, revoked.revoke_time);
    expect_code(
        admin
            .revoke_api_key(as_admin(RevokeApiKeyRequest {
                id: uuid::Uuid::new_v4().to_string(),
            }))
            .await,
        Code::NotFound,
    );

    // Pages of one key each cover both keys once.
    let first_page = admin
        .list_api_keys(as_admin(ListApiKeysRequest {
            tenant_id: acme.id.clone(),
            page_size: 1,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let second_page = admin
        .list_api_keys(as_admin(ListApiKeysRequest {
            tenant_id: acme.id.clone(),
            page_size: 1,
            page_token: first_page.next_page_token.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_page.api_keys[0].id, listed.api_keys[0].id);
    assert_eq!(second_page.api_keys[0].id, second.id);
    assert!(second_page.next_page_token.is_empty());
    // A token of one tenant's keys is not valid for another's.
    let other = server.tenant("other").await;
    expect_code(
        admin
            .list_api_keys(as_admin(ListApiKeysRequest {
                tenant_id: other.id.clone(),
                page_size: 1,
                page_token: first_page.next_page_token,
            }))
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn a_clone_starts_with_a_copy_of_its_source_and_then_lives_apart() {
    // Without spare files, so that every tenant file is a tenant's.
    let server = spawn_with(|config| config.spare_tenant_files = 0).await;
    let template = server.tenant("template").await;
    create_items(&server, &template, &["welcome", "read the docs"]).await;
    let mut admin = server.admin().await;
    let clone = admin
        .create_tenant(as_admin(CreateTenantRequest {
            request_id: String::new(),
            tenant: Some(pb::Tenant {
                name: "newcomer".into(),
                ..Default::default()
            }),
            source_tenant_id: template.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let key = admin
        .create_api_key(as_admin(pb::CreateApiKeyRequest {
            tenant_id: clone.id.clone(),
            description: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let newcomer = crate::common::TestTenant {
        id: clone.id.clone(),
        key: key.secret,
    };
    assert_eq!(
        all_titles(&server, &newcomer).await,
        ["read the docs", "welcome"]
    );

    create_items(&server, &newcomer, &["mine"]).await;
    assert_eq!(
        all_titles(&server, &template).await,
        ["read the docs", "welcome"]
    );
    // The copy keeps the items' ids: a GetItem by id works in the clone.
    let mut items = server.items().await;
    let first = items
        .list_items(template.call(ListItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items
        .remove(0);
    let copied = items
        .get_item(newcomer.call(GetItemRequest {
            id: first.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(copied.title, first.title);

    for source in [uuid::Uuid::new_v4().to_string(), "nope".to_string()] {
        let status = admin
            .create_tenant(as_admin(CreateTenantRequest {
                request_id: String::new(),
                tenant: Some(pb::Tenant {
                    name: "orphan".into(),
                    ..Default::default()
                }),
                source_tenant_id: source,
            }))
            .await
            .unwrap_err();
        assert!(
            matches!(status.code(), Code::NotFound | Code::InvalidArgument),
            "{status:?}"
        );
    }
    let names: Vec<_> = admin
        .list_tenants(as_admin(ListTenantsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tenants
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        names,
        ["newcomer", "template"],
        "failed clones left nothing"
    );
    let databases = files_under(&server.data_dir().join("tenants"))
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "db"))
        .count();
    assert_eq!(databases, 2);
}

/// Every descriptor of this process open on a file under `dir`.
fn descriptors_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .collect()
}

/// Writes, a suspend and a resume, more writes: the tenant's file has been
/// opened twice, and closed once by the suspend.
async fn written_across_a_suspend(server: &TestServer, name: &str) -> TestTenant {
    let tenant = server.tenant(name).await;
    create_items(server, &tenant, &["before000", "before001", "before002"]).await;
    suspend(server, &tenant.id).await;
    server
        .admin()
        .await
        .update_tenant(as_admin(set_state(&tenant.id, pb::TenantState::Active)))
        .await
        .unwrap();
    create_items(server, &tenant, &["after000", "after001"]).await;
    tenant
}

#[tokio::test]
async fn after_a_suspend_and_resume_the_trash_copy_is_one_complete_file_nobody_holds() {
    let server = spawn().await;
    let deleted = written_across_a_suspend(&server, "deleted").await;
    let restored = written_across_a_suspend(&server, "restored").await;
    let mut admin = server.admin().await;
    let backup = admin
        .backup_tenant(as_admin(pb::BackupTenantRequest {
            id: restored.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    create_items(&server, &restored, &["late000"]).await;

    admin
        .delete_tenant(as_admin(pb::DeleteTenantRequest {
            request_id: String::new(),
            id: deleted.id.clone(),
            purge: false,
        }))
        .await
        .unwrap();
    admin
        .restore_tenant(as_admin(pb::RestoreTenantRequest {
            request_id: String::new(),
            id: restored.id.clone(),
            source: Some(pb::restore_tenant_request::Source::BackupPath(backup.path)),
        }))
        .await
        .unwrap();

    let trash = server.data_dir().join("trash");
    let files = files_under(&trash);
    assert_eq!(
        files.len(),
        2,
        "one file per tenant, nothing beside: {files:?}"
    );
    let of = |tenant: &TestTenant| {
        let name = files
            .iter()
            .find(|f| f.to_string_lossy().starts_with(&tenant.id))
            .unwrap();
        assert!(name.to_string_lossy().ends_with(".db"), "{name:?}");
        titles_in_file(&trash.join(name))
    };
    assert_eq!(
        of(&deleted),
        [
            "after000",
            "after001",
            "before000",
            "before001",
            "before002"
        ]
    );
    assert_eq!(
        of(&restored),
        [
            "after000",
            "after001",
            "before000",
            "before001",
            "before002",
            "late000"
        ]
    );
    assert_eq!(descriptors_under(&trash), Vec::<std::path::PathBuf>::new());
}

//! Tenants cannot reach each other's data, and every credential or tenant
//! mismatch gets its own status without touching a file.

use tenantry::pb::{self, GetItemRequest, ListItemsRequest, ListTenantsRequest, UpdateItemRequest};
use tonic::Code;

use crate::common::{
    as_admin, expect_code, files_under, new_item, spawn, spawn_with, with_metadata,
};

#[tokio::test]
async fn tenants_with_identical_titles_see_only_their_own_items() {
    let server = spawn().await;
    let (acme, globex) = (server.tenant("acme").await, server.tenant("globex").await);
    let mut items = server.items().await;
    let mut ids = Vec::new();
    for tenant in [&acme, &globex] {
        for title in ["Quarterly report", "Payroll"] {
            ids.push(
                items
                    .create_item(tenant.call(new_item(title)))
                    .await
                    .unwrap()
                    .into_inner()
                    .id,
            );
        }
    }
    let (acme_ids, globex_ids) = ids.split_at(2);

    for (tenant, own) in [(&acme, acme_ids), (&globex, globex_ids)] {
        let listed = items
            .list_items(tenant.call(ListItemsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .items;
        let mut listed_ids: Vec<_> = listed.into_iter().map(|i| i.id).collect();
        listed_ids.sort();
        let mut own = own.to_vec();
        own.sort();
        assert_eq!(listed_ids, own);
    }
}

#[tokio::test]
async fn an_item_id_of_one_tenant_is_not_found_through_another() {
    let server = spawn().await;
    let (acme, globex) = (server.tenant("acme").await, server.tenant("globex").await);
    let mut items = server.items().await;
    let secret = items
        .create_item(acme.call(new_item("Acme secret plan")))
        .await
        .unwrap()
        .into_inner();

    expect_code(
        items
            .get_item(globex.call(GetItemRequest {
                id: secret.id.clone(),
            }))
            .await,
        Code::NotFound,
    );
    let overwrite = UpdateItemRequest {
        item: Some(pb::Item {
            id: secret.id.clone(),
            title: "pwned".into(),
            ..Default::default()
        }),
        update_mask: None,
    };
    expect_code(
        items.update_item(globex.call(overwrite)).await,
        Code::NotFound,
    );
    expect_code(
        items
            .delete_item(globex.call(pb::DeleteItemRequest {
                id: secret.id.clone(),
            }))
            .await,
        Code::NotFound,
    );

    let still = items
        .get_item(acme.call(GetItemRequest {
            id: secret.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still, secret, "the other tenant's attempts changed nothing");
}

#[tokio::test]
async fn a_key_of_one_tenant_is_denied_for_another_whether_or_not_it_exists() {
    // Without spare files, which are made in the background meanwhile.
    let server = spawn_with(|config| config.spare_tenant_files = 0).await;
    let (acme, globex) = (server.tenant("acme").await, server.tenant("globex").await);
    let mut items = server.items().await;
    items
        .create_item(globex.call(new_item("Globex only")))
        .await
        .unwrap();
    let before = files_under(&server.data_dir());

    let existing = expect_code(
        items
            .list_items(acme.call_for(&globex.id, ListItemsRequest::default()))
            .await,
        Code::PermissionDenied,
    );
    let unknown_id = uuid::Uuid::new_v4().to_string();
    let unknown = expect_code(
        items
            .list_items(acme.call_for(&unknown_id, ListItemsRequest::default()))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(
        existing.message(),
        unknown.message(),
        "the answer does not reveal whether the tenant exists"
    );
    expect_code(
        items
            .create_item(acme.call_for(&globex.id, new_item("planted")))
            .await,
        Code::PermissionDenied,
    );

    assert_eq!(
        files_under(&server.data_dir()),
        before,
        "no file was created"
    );
    let globex_items = items
        .list_items(globex.call(ListItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(globex_items.len(), 1, "nothing was planted");
}

#[tokio::test]
async fn a_tenant_key_cannot_use_the_admin_api() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut admin = server.admin().await;

    expect_code(
        admin
            .list_tenants(acme.call(ListTenantsRequest::default()))
            .await,
        Code::PermissionDenied,
    );
    let create = pb::CreateTenantRequest {
        tenant: Some(pb::Tenant {
            name: "evil".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    expect_code(
        admin.create_tenant(acme.call(create)).await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn missing_or_bad_credentials_are_unauthenticated() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;
    let mut admin = server.admin().await;

    let wrong_secret = format!(
        "{}{}",
        &acme.key[..acme.key.len() - 1],
        if acme.key.ends_with('0') { '1' } else { '0' }
    );
    let unknown_key = format!(
        "tenantry_{}_{}",
        uuid::Uuid::new_v4().simple(),
        "ab".repeat(32)
    );
    let headers: Vec<Vec<(&'static str, String)>> = vec![
        vec![],
        vec![("authorization", "Basic dXNlcjpwYXNz".into())],
        vec![("authorization", "Bearer".into())],
        vec![("authorization", "Bearer not-a-token".into())],
        vec![("authorization", format!("Bearer {wrong_secret}"))],
        vec![("authorization", format!("Bearer {unknown_key}"))],
        vec![
            ("authorization", format!("Bearer {}", acme.key)),
            ("authorization", format!("Bearer {}", acme.key)),
        ],
    ];
    for entries in headers {
        let mut metadata: Vec<(&'static str, &str)> =
            entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
        metadata.push(("x-tenant-id", &acme.id));
        let status = expect_code(
            items
                .list_items(with_metadata(ListItemsRequest::default(), &metadata))
                .await,
            Code::Unauthenticated,
        );
        assert!(
            !status.message().contains(&acme.key),
            "the answer does not echo the key"
        );
        expect_code(
            admin
                .list_tenants(with_metadata(ListTenantsRequest::default(), &metadata))
                .await,
            Code::Unauthenticated,
        );
    }
    // The admin API with a wrong admin token, and with the right one.
    let wrong_admin = with_metadata(
        ListTenantsRequest::default(),
        &[("authorization", "Bearer test-admin-token-0123456789abcdeX")],
    );
    expect_code(admin.list_tenants(wrong_admin).await, Code::Unauthenticated);
    admin
        .list_tenants(as_admin(ListTenantsRequest::default()))
        .await
        .expect("the admin token works");
}

#[tokio::test]
async fn malformed_tenant_ids_are_invalid_and_touch_no_file() {
    // Without spare files, which are made in the background meanwhile.
    let server = spawn_with(|config| config.spare_tenant_files = 0).await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;
    let before = files_under(&server.data_dir());
    let authorization = format!("Bearer {}", acme.key);

    let malformed = [
        "../catalog".to_string(),
        "../../etc/passwd".to_string(),
        "catalog".to_string(),
        String::new(),
        acme.id.to_uppercase(),
        format!("{{{}}}", acme.id),
        format!("urn:uuid:{}", acme.id),
        acme.id.replace('-', ""),
        format!(" {}", acme.id),
        format!("{}.db", acme.id),
    ];
    for value in &malformed {
        let request = with_metadata(
            ListItemsRequest::default(),
            &[("authorization", &authorization), ("x-tenant-id", value)],
        );
        let status = expect_code(items.list_items(request).await, Code::InvalidArgument);
        assert!(status.message().contains("x-tenant-id"), "{status:?}");
    }
    let missing = with_metadata(
        ListItemsRequest::default(),
        &[("authorization", &authorization)],
    );
    expect_code(items.list_items(missing).await, Code::InvalidArgument);
    let twice = with_metadata(
        ListItemsRequest::default(),
        &[
            ("authorization", &authorization),
            ("x-tenant-id", &acme.id),
            ("x-tenant-id", &acme.id),
        ],
    );
    expect_code(items.list_items(twice).await, Code::InvalidArgument);

    assert_eq!(
        files_under(&server.data_dir()),
        before,
        "no file was created or removed"
    );
    items
        .list_items(acme.call(ListItemsRequest::default()))
        .await
        .expect("the well-formed id still works");
}

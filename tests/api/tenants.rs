//! The admin API over tenants and keys.

use std::os::unix::fs::PermissionsExt;

use tenantry::pb::{
    self, CreateApiKeyRequest, CreateTenantRequest, GetTenantRequest, ListTenantsRequest,
};
use tonic::Code;

use crate::common::{
    as_admin, expect_code, files_under, new_item, spawn, spawn_with, with_metadata,
};

fn create(name: &str, display_name: &str) -> CreateTenantRequest {
    CreateTenantRequest {
        tenant: Some(pb::Tenant {
            name: name.into(),
            display_name: display_name.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_created_tenant_is_active_with_its_own_file_and_can_be_read_back() {
    let server = spawn().await;
    let mut admin = server.admin().await;
    let tenant = admin
        .create_tenant(as_admin(create("acme", "Acme Corp.")))
        .await
        .unwrap()
        .into_inner();

    assert!(uuid::Uuid::parse_str(&tenant.id).is_ok());
    assert_eq!(
        (tenant.name.as_str(), tenant.display_name.as_str()),
        ("acme", "Acme Corp.")
    );
    assert_eq!(tenant.state(), pb::TenantState::Active);
    assert!(tenant.create_time.is_some() && tenant.create_time == tenant.update_time);
    assert!(
        server.tenant_file(&tenant.id).is_file(),
        "the tenant's database file exists"
    );

    let read = admin
        .get_tenant(as_admin(GetTenantRequest {
            id: tenant.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, tenant);
    expect_code(
        admin
            .get_tenant(as_admin(GetTenantRequest {
                id: uuid::Uuid::new_v4().to_string(),
            }))
            .await,
        Code::NotFound,
    );
    expect_code(
        admin
            .get_tenant(as_admin(GetTenantRequest { id: "acme".into() }))
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn names_are_unique_slugs() {
    // Without spare files, so that every tenant file is a tenant's.
    let server = spawn_with(|config| config.spare_tenant_files = 0).await;
    let mut admin = server.admin().await;
    admin
        .create_tenant(as_admin(create("acme", "")))
        .await
        .unwrap();
    let before = files_under(&server.data_dir());

    expect_code(
        admin.create_tenant(as_admin(create("acme", "again"))).await,
        Code::AlreadyExists,
    );
    for bad in [
        "",
        "a",
        "Acme",
        "1acme",
        "acme_corp",
        "acme corp",
        &"a".repeat(64),
    ] {
        expect_code(
            admin.create_tenant(as_admin(create(bad, ""))).await,
            Code::InvalidArgument,
        );
    }
    expect_code(
        admin
            .create_tenant(as_admin(create("acme-2", &"d".repeat(201))))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        admin
            .create_tenant(as_admin(CreateTenantRequest::default()))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        files_under(&server.data_dir()).len(),
        before.len(),
        "refused creations left no file"
    );
}

#[tokio::test]
async fn tenants_are_listed_by_name_a_page_at_a_time() {
    let server = spawn().await;
    let mut admin = server.admin().await;
    let names = ["delta", "alpha", "echo", "charlie", "bravo"];
    for name in names {
        admin
            .create_tenant(as_admin(create(name, "")))
            .await
            .unwrap();
    }

    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_tenants(as_admin(ListTenantsRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.tenants.len() <= 2);
        listed.extend(page.tenants.into_iter().map(|t| t.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed, ["alpha", "bravo", "charlie", "delta", "echo"]);
    expect_code(
        admin
            .list_tenants(as_admin(ListTenantsRequest {
                page_size: -5,
                page_token: String::new(),
                ..Default::default()
            }))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        admin
            .list_tenants(as_admin(ListTenantsRequest {
                page_size: 1,
                page_token: "xyz".into(),
                ..Default::default()
            }))
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn an_api_key_secret_is_shown_once_and_stored_only_as_a_hash() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    assert!(acme.key.starts_with("tenantry_"));
    let secret_part = acme.key.rsplit('_').next().unwrap().to_string();
    assert_eq!(secret_part.len(), 64, "256 bits of secret");

    let mut items = server.items().await;
    items
        .create_item(acme.call(new_item("proves the key works")))
        .await
        .unwrap();
    let dir = server.stop().await;

    for file in files_under(&dir.path().join("data")) {
        let bytes = std::fs::read(dir.path().join("data").join(&file)).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&secret_part),
            "{} holds the secret",
            file.display()
        );
    }
}

#[tokio::test]
async fn keys_are_made_only_for_tenants_that_exist() {
    let server = spawn().await;
    let mut admin = server.admin().await;
    let unknown = CreateApiKeyRequest {
        tenant_id: uuid::Uuid::new_v4().to_string(),
        description: String::new(),
    };
    expect_code(
        admin.create_api_key(as_admin(unknown)).await,
        Code::NotFound,
    );
    let malformed = CreateApiKeyRequest {
        tenant_id: "../catalog".into(),
        description: String::new(),
    };
    expect_code(
        admin.create_api_key(as_admin(malformed)).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn without_a_configured_token_one_is_generated_into_a_private_file() {
    let server = spawn_with(|config| config.admin_token = None).await;
    let token_file = server.data_dir().join("admin.token");
    let mode = std::fs::metadata(&token_file)
        .expect("admin.token exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(token.len() >= 32);
    let mut admin = server.admin().await;
    let request = with_metadata(
        ListTenantsRequest::default(),
        &[("authorization", &format!("Bearer {token}"))],
    );
    admin
        .list_tenants(request)
        .await
        .expect("the generated token is the admin token");
    expect_code(
        admin
            .list_tenants(as_admin(ListTenantsRequest::default()))
            .await,
        Code::Unauthenticated,
    );
}

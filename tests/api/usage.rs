//! Usage figures: GetTenantUsage, and ListTenants with include_usage. They
//! match what is on disk, reading them opens no tenant and is no access, and
//! the last access time survives a restart without a catalog write per call.

use std::path::Path;
use std::sync::Arc;

use tempfile::TempDir;
use tenantry::ids::TenantId;
use tenantry::pb::{self, DeleteItemRequest, GetTenantUsageRequest, ListTenantsRequest};
use tonic::Code;

use crate::common::{TestServer, as_admin, expect_code, new_item, spawn, spawn_in};

async fn usage(server: &TestServer, id: &str) -> pb::TenantUsage {
    server
        .admin()
        .await
        .get_tenant_usage(as_admin(GetTenantUsageRequest { id: id.into() }))
        .await
        .expect("usage")
        .into_inner()
}

async fn listed_usage(server: &TestServer) -> Vec<(String, Option<pb::TenantUsage>)> {
    server
        .admin()
        .await
        .list_tenants(as_admin(ListTenantsRequest {
            include_usage: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .tenants
        .into_iter()
        .map(|t| (t.name, t.usage))
        .collect()
}

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn wal_of(path: &Path) -> std::path::PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

fn tenant_id(text: &str) -> TenantId {
    TenantId::parse("id", text).unwrap()
}

#[tokio::test]
async fn usage_matches_what_is_on_disk_and_reading_it_opens_nothing() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let file = server.tenant_file(&acme.id);

    // Never called: closed, empty, and asking twice does not open it.
    for _ in 0..2 {
        let fresh = usage(&server, &acme.id).await;
        assert_eq!(fresh.tenant_id, acme.id);
        assert_eq!(fresh.item_count, 0);
        assert!(!fresh.open);
        assert!(fresh.last_access_time.is_none());
        assert_eq!(fresh.database_bytes, size_of(&file));
        assert_eq!(fresh.wal_bytes, 0);
        assert!(!server.registry.is_open(tenant_id(&acme.id)));
    }

    let mut items = server.items().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let item = items
            .create_item(acme.call(new_item(&format!("item {n}"))))
            .await
            .unwrap()
            .into_inner();
        ids.push(item.id);
    }
    for id in &ids[..2] {
        items
            .delete_item(acme.call(DeleteItemRequest { id: id.clone() }))
            .await
            .unwrap();
    }

    // Open, with a write-ahead log: the sizes are the files' sizes.
    let open = usage(&server, &acme.id).await;
    assert!(open.open);
    assert_eq!(open.item_count, 3);
    assert_eq!(
        open.schema_version,
        tenantry::resources::tenant_schema().latest()
    );
    assert_eq!(open.database_bytes, size_of(&file));
    assert_eq!(open.wal_bytes, size_of(&wal_of(&file)));
    assert!(open.wal_bytes > 0, "writes went to the log");
    assert_eq!(open.size_bytes, open.database_bytes + open.wal_bytes);

    // Closed: checkpointed into one file, and still three items.
    server.registry.close_all().await;
    let closed = usage(&server, &acme.id).await;
    assert!(!closed.open);
    assert_eq!(closed.item_count, 3);
    assert_eq!(closed.wal_bytes, 0);
    assert_eq!(closed.database_bytes, size_of(&file));
    assert_eq!(closed.size_bytes, closed.database_bytes);
    assert!(!server.registry.is_open(tenant_id(&acme.id)));
}

#[tokio::test]
async fn the_last_access_is_an_item_call_not_an_admin_read_and_survives_a_restart() {
    let server = spawn_in(Arc::new(TempDir::new().unwrap()), |_| {}).await;
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;

    // Admin reads are not accesses.
    usage(&server, &acme.id).await;
    listed_usage(&server).await;
    assert!(usage(&server, &acme.id).await.last_access_time.is_none());

    let before = std::time::SystemTime::now();
    server
        .items()
        .await
        .create_item(acme.call(new_item("an access")))
        .await
        .unwrap();
    let after = std::time::SystemTime::now();
    let seen = usage(&server, &acme.id)
        .await
        .last_access_time
        .expect("an item call is an access");
    // Compared in whole microseconds, the server's resolution.
    let micros = |time: std::time::SystemTime| {
        time.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64
    };
    let seen_micros = seen.seconds * 1_000_000 + i64::from(seen.nanos) / 1000;
    assert!(
        micros(before) <= seen_micros && seen_micros <= micros(after),
        "{seen:?}"
    );
    assert!(usage(&server, &globex.id).await.last_access_time.is_none());
    let listed = listed_usage(&server).await;
    assert_eq!(listed[0].1.as_ref().unwrap().last_access_time, Some(seen));

    // The time is kept in memory, not written per call: the catalog has it
    // after a flush (every --access-flush-secs, and at shutdown).
    let catalog = server.data_dir().join("catalog.db");
    let flushed = |id: &str| -> Option<i64> {
        let conn = rusqlite::Connection::open_with_flags(
            &catalog,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.query_row(
            "SELECT last_access_time FROM tenants WHERE id = ?1",
            [id],
            |row| row.get(0),
        )
        .unwrap()
    };
    assert_eq!(flushed(&acme.id), None);
    assert_eq!(server.registry.flush_accesses().await.unwrap(), 1);
    assert_eq!(flushed(&acme.id), Some(seen_micros));
    assert_eq!(flushed(&globex.id), None);
    // Nothing new to write.
    assert_eq!(server.registry.flush_accesses().await.unwrap(), 0);

    // Shutdown writes what is pending.
    server
        .items()
        .await
        .create_item(acme.call(new_item("a later access")))
        .await
        .unwrap();
    let seen = usage(&server, &acme.id).await.last_access_time.unwrap();
    let dir = server.stop().await;
    let server = spawn_in(dir, |_| {}).await;
    let restarted = usage(&server, &acme.id).await;
    assert_eq!(restarted.last_access_time, Some(seen));
    assert!(usage(&server, &globex.id).await.last_access_time.is_none());
}

#[tokio::test]
async fn list_tenants_reports_usage_only_when_asked_and_survives_a_damaged_file() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let broken = server.tenant("broken").await;
    let mut items = server.items().await;
    for tenant in [&acme, &broken] {
        items
            .create_item(tenant.call(new_item("one item")))
            .await
            .unwrap();
    }
    let plain = server
        .admin()
        .await
        .list_tenants(as_admin(ListTenantsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(plain.tenants.iter().all(|t| t.usage.is_none()));

    server.registry.close_all().await;
    let garbage = b"this is not a database ".repeat(500);
    std::fs::write(server.tenant_file(&broken.id), &garbage).unwrap();

    // The damaged tenant's own usage is DATA_LOSS ...
    let status = expect_code(
        server
            .admin()
            .await
            .get_tenant_usage(as_admin(GetTenantUsageRequest {
                id: broken.id.clone(),
            }))
            .await,
        Code::DataLoss,
    );
    assert!(status.message().contains(&broken.id), "{status:?}");
    // ... while the page answers for every tenant, with what is known of it.
    let listed = listed_usage(&server).await;
    let names: Vec<&str> = listed.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["acme", "broken"]);
    let acme_usage = listed[0].1.as_ref().unwrap();
    assert_eq!(acme_usage.item_count, 1);
    assert_eq!(acme_usage.tenant_id, acme.id);
    let broken_usage = listed[1].1.as_ref().unwrap();
    assert_eq!(broken_usage.item_count, 0);
    assert_eq!(broken_usage.database_bytes, garbage.len() as u64);
    assert!(broken_usage.last_access_time.is_some());
}

#[tokio::test]
async fn usage_of_a_bad_or_unknown_id_is_refused() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut admin = server.admin().await;
    let status = expect_code(
        admin
            .get_tenant_usage(as_admin(GetTenantUsageRequest {
                id: acme.id.to_uppercase(),
            }))
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("id"), "{status:?}");
    let nobody = uuid::Uuid::new_v4().to_string();
    expect_code(
        admin
            .get_tenant_usage(as_admin(GetTenantUsageRequest { id: nobody }))
            .await,
        Code::NotFound,
    );
    expect_code(
        admin
            .get_tenant_usage(acme.call(GetTenantUsageRequest {
                id: acme.id.clone(),
            }))
            .await,
        Code::PermissionDenied,
    );
}

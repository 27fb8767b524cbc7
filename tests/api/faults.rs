//! Faults and quotas stay with the tenant they hit: a tenant whose file is
//! damaged, removed or made read-only, or whose storage quota is used up,
//! gets a status that says so, while every other tenant keeps working and
//! nothing already stored is lost. A catalog that cannot be read stops the
//! server before it serves anything.

use std::os::unix::fs::PermissionsExt;

use tenantry::ids::TenantId;
use tenantry::pb;
use tenantry::{Application, Config};
use tonic::Code;

use crate::common::{
    TestServer, TestTenant, all_titles, expect_code, integrity, new_item, spawn, spawn_with,
};

/// Creates `count` items titled `{prefix}{n}` and returns their titles.
async fn fill(server: &TestServer, tenant: &TestTenant, prefix: &str, count: usize) -> Vec<String> {
    let mut items = server.items().await;
    let mut titles = Vec::new();
    for n in 0..count {
        let title = format!("{prefix}{n}");
        items
            .create_item(tenant.call(new_item(&title)))
            .await
            .expect("creates an item");
        titles.push(title);
    }
    titles
}

/// The tenant still serves reads and writes.
async fn still_works(server: &TestServer, tenant: &TestTenant, expected: &[String]) {
    let mut titles = all_titles(server, tenant).await;
    titles.sort();
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(titles, expected, "the tenant's data is intact");
    server
        .items()
        .await
        .create_item(tenant.call(new_item("still writable")))
        .await
        .expect("the tenant still takes writes");
}

/// Closes the tenant's database, as an idle timeout would.
async fn close(server: &TestServer, tenant: &TestTenant) {
    let id = TenantId::parse("id", &tenant.id).unwrap();
    server.registry.evict(id).await;
    server.registry.open_count().await;
    assert!(!server.registry.is_open(id));
}

fn list(tenant: &TestTenant) -> tonic::Request<pb::ListItemsRequest> {
    tenant.call(pb::ListItemsRequest::default())
}

#[tokio::test]
async fn a_write_past_the_quota_is_refused_and_deleting_makes_room() {
    let server = spawn_with(|config| config.tenant_quota_kib = 256).await;
    let full = server.tenant("full").await;
    let other = server.tenant("other").await;
    let other_titles = fill(&server, &other, "other ", 3).await;
    let mut items = server.items().await;
    let description = "x".repeat(9_000);
    let mut stored = Vec::new();
    let refusal = loop {
        assert!(stored.len() < 100, "256 KiB cannot hold 100 items of 9 KB");
        let mut request = new_item(&format!("big {}", stored.len()));
        request.item.as_mut().unwrap().description = description.clone();
        match items.create_item(full.call(request)).await {
            Ok(item) => stored.push(item.into_inner()),
            Err(status) => break status,
        }
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("quota of 256 KiB"),
        "{refusal:?}"
    );
    assert!(stored.len() >= 10, "only {} items fit", stored.len());

    // Everything acknowledged is there, and the file is sound.
    let mut titles: Vec<_> = stored.iter().map(|i| i.title.clone()).collect();
    titles.sort();
    let mut listed = all_titles(&server, &full).await;
    listed.sort();
    assert_eq!(listed, titles);
    server.close_tenants().await;
    assert_eq!(integrity(&server.tenant_file(&full.id)), "ok");
    // Another tenant is not limited by this one's quota.
    still_works(&server, &other, &other_titles).await;

    // Deleting data makes room again.
    for item in &stored[..3] {
        items
            .delete_item(full.call(pb::DeleteItemRequest {
                id: item.id.clone(),
            }))
            .await
            .expect("deletes an item of a full tenant");
    }
    let mut request = new_item("fits again");
    request.item.as_mut().unwrap().description = description.clone();
    items
        .create_item(full.call(request))
        .await
        .expect("a deletion made room");
}

#[tokio::test]
async fn a_tenant_file_overwritten_with_garbage_answers_data_loss_for_that_tenant_only() {
    let server = spawn().await;
    let broken = server.tenant("broken").await;
    let healthy = server.tenant("healthy").await;
    fill(&server, &broken, "lost ", 3).await;
    let kept = fill(&server, &healthy, "kept ", 3).await;
    close(&server, &broken).await;
    std::fs::write(
        server.tenant_file(&broken.id),
        b"this is not a database ".repeat(500),
    )
    .unwrap();
    check_damaged(&server, &broken).await;
    still_works(&server, &healthy, &kept).await;
}

/// Reads and writes of the tenant answer DATA_LOSS, every time.
async fn check_damaged(server: &TestServer, broken: &TestTenant) {
    let mut items = server.items().await;
    for _ in 0..2 {
        let status = expect_code(items.list_items(list(broken)).await, Code::DataLoss);
        assert!(status.message().contains("damaged"), "{status:?}");
        assert!(status.message().contains(&broken.id), "{status:?}");
        let status = expect_code(
            items
                .create_item(broken.call(new_item("into garbage")))
                .await,
            Code::DataLoss,
        );
        assert!(
            status.message().contains("restore it from a backup"),
            "{status:?}"
        );
    }
}

#[tokio::test]
async fn a_tenant_file_removed_while_open_answers_data_loss_for_that_tenant_only() {
    let server = spawn().await;
    let removed = server.tenant("removed").await;
    let healthy = server.tenant("healthy").await;
    fill(&server, &removed, "gone ", 3).await;
    let kept = fill(&server, &healthy, "kept ", 3).await;
    let mut items = server.items().await;
    items.list_items(list(&removed)).await.expect("open");
    std::fs::remove_file(server.tenant_file(&removed.id)).unwrap();

    // The open connections still see the removed file, but a write to it
    // would be lost: it is refused, and the tenant is closed.
    let status = expect_code(
        items
            .create_item(removed.call(new_item("into the void")))
            .await,
        Code::DataLoss,
    );
    assert!(status.message().contains("moved or removed"), "{status:?}");
    let status = expect_code(items.list_items(list(&removed)).await, Code::DataLoss);
    assert!(status.message().contains("missing"), "{status:?}");
    still_works(&server, &healthy, &kept).await;
}

#[tokio::test]
async fn a_read_only_tenant_file_is_refused_until_it_is_writable_again() {
    let server = spawn().await;
    let frozen = server.tenant("frozen").await;
    let healthy = server.tenant("healthy").await;
    let frozen_titles = fill(&server, &frozen, "frozen ", 3).await;
    let kept = fill(&server, &healthy, "kept ", 3).await;
    close(&server, &frozen).await;
    let path = server.tenant_file(&frozen.id);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();

    let mut items = server.items().await;
    let status = expect_code(items.list_items(list(&frozen)).await, Code::Internal);
    assert!(status.message().contains("read-only"), "{status:?}");
    still_works(&server, &healthy, &kept).await;

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    still_works(&server, &frozen, &frozen_titles).await;
}

#[tokio::test]
async fn an_unreadable_catalog_stops_the_server_at_start_up() {
    let server = spawn().await;
    server.tenant("someone").await;
    let dir = server.stop().await;
    let catalog = dir.path().join("data").join("catalog.db");
    std::fs::write(&catalog, b"garbage, not a catalog ".repeat(500)).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join("data").join(format!("catalog.db{suffix}")));
    }
    let mut config = Config::with_data_dir(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    let error = match Application::build(config).await {
        Ok(_) => panic!("a server started on a damaged catalog"),
        Err(error) => tenantry::error::error_chain(&error),
    };
    assert!(error.contains("catalog"), "{error}");
    assert!(error.contains("not a database"), "{error}");
}

/// Every folder under `data` is 0700 and every file 0600; how many files.
fn private(data: &std::path::Path, moment: &str) -> usize {
    let mut pending = vec![data.to_path_buf()];
    let mut files = 0;
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let mode = metadata.permissions().mode() & 0o777;
        if metadata.is_dir() {
            assert_eq!(mode, 0o700, "{moment}: {} is {mode:o}", path.display());
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{moment}: {} is {mode:o}", path.display());
            files += 1;
        }
    }
    files
}

#[tokio::test]
async fn whatever_the_umask_the_data_directory_is_private() {
    let dir = tempfile::TempDir::new().unwrap();
    let server = crate::common::ServerProcess::start_after(&dir, "umask 000", &[]);
    let mut admin = server.admin().await;
    let acme = crate::common::create_tenant(&mut admin, "acme").await;
    let gone = crate::common::create_tenant(&mut admin, "gone").await;
    let mut items = server.items().await;
    for tenant in [&acme, &gone] {
        items
            .create_item(tenant.call(new_item("private")))
            .await
            .unwrap();
    }
    admin
        .backup_tenant(crate::common::as_admin(pb::BackupTenantRequest {
            id: acme.id.clone(),
        }))
        .await
        .unwrap();
    admin
        .delete_tenant(crate::common::as_admin(pb::DeleteTenantRequest {
            id: gone.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let data = dir.path().join("data");
    // While it serves, with -wal and -shm files, and once it has stopped.
    assert!(private(&data, "serving") >= 8);
    drop((admin, items));
    tokio::task::spawn_blocking(move || server.stop_and_read_log())
        .await
        .unwrap();
    assert!(private(&data, "stopped") >= 5);
}

#[tokio::test]
async fn a_tenant_file_that_is_a_link_to_another_is_refused() {
    let server = spawn().await;
    let a = server.tenant("tenant-a").await;
    let b = server.tenant("tenant-b").await;
    let c = server.tenant("tenant-c").await;
    fill(&server, &a, "a", 2).await;
    for tenant in [&a, &b, &c] {
        close(&server, tenant).await;
    }
    // b's file becomes a symbolic link to a's, c's a hard link to it.
    std::fs::remove_file(server.tenant_file(&b.id)).unwrap();
    std::os::unix::fs::symlink(server.tenant_file(&a.id), server.tenant_file(&b.id)).unwrap();
    std::fs::remove_file(server.tenant_file(&c.id)).unwrap();
    std::fs::hard_link(server.tenant_file(&a.id), server.tenant_file(&c.id)).unwrap();
    let mut items = server.items().await;
    for tenant in [&b, &c] {
        let status = expect_code(items.list_items(list(tenant)).await, Code::Internal);
        assert!(status.message().contains("own file"), "{status:?}");
    }
    // a itself is linked from elsewhere too now; with the link gone, it is
    // served again, and nothing of it was read through b or c.
    std::fs::remove_file(server.tenant_file(&c.id)).unwrap();
    assert_eq!(all_titles(&server, &a).await, ["a1", "a0"]);
}

#[tokio::test]
async fn a_tenant_file_truncated_while_open_takes_no_more_writes() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    fill(&server, &acme, "before", 50).await;
    let other = server.tenant("other").await;
    let kept = fill(&server, &other, "kept", 2).await;
    // Checkpointed into the file (as a backup does), then cut to nothing
    // behind the server.
    server
        .admin()
        .await
        .backup_tenant(crate::common::as_admin(pb::BackupTenantRequest {
            id: acme.id.clone(),
        }))
        .await
        .unwrap();
    let file = server.tenant_file(&acme.id);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut items = server.items().await;
    for attempt in 0..2 {
        expect_code(
            items
                .create_item(acme.call(new_item(&format!("after {attempt}"))))
                .await,
            Code::DataLoss,
        );
    }
    expect_code(items.list_items(list(&acme)).await, Code::DataLoss);
    still_works(&server, &other, &kept).await;
}

//! What a restart keeps, and what a stopped tenant's file holds on its own.

use rusqlite::{Connection, OpenFlags};
use tenantry::pb::{GetTenantRequest, ListItemsRequest};

use crate::common::{as_admin, new_item, spawn, spawn_in};

#[tokio::test]
async fn tenants_keys_and_items_survive_a_restart() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;
    for title in ["one", "two", "three"] {
        items.create_item(acme.call(new_item(title))).await.unwrap();
    }
    let dir = server.stop().await;

    let server = spawn_in(dir, |_| {}).await;
    let mut admin = server.admin().await;
    let tenant = admin
        .get_tenant(as_admin(GetTenantRequest {
            id: acme.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tenant.name, "acme");
    let mut items = server.items().await;
    let listed = items
        .list_items(acme.call(ListItemsRequest::default()))
        .await
        .expect("the key still works");
    let titles: Vec<_> = listed
        .into_inner()
        .items
        .into_iter()
        .map(|i| i.title)
        .collect();
    assert_eq!(titles, ["three", "two", "one"]);
}

#[tokio::test]
async fn after_a_graceful_stop_a_tenant_file_alone_is_a_complete_copy_of_that_tenant() {
    let server = spawn().await;
    let (acme, globex) = (server.tenant("acme").await, server.tenant("globex").await);
    let mut items = server.items().await;
    for n in 0..20 {
        items
            .create_item(acme.call(new_item(&format!("acme item {n}"))))
            .await
            .unwrap();
        items
            .create_item(globex.call(new_item(&format!("globex item {n}"))))
            .await
            .unwrap();
    }
    let acme_file = server.tenant_file(&acme.id);
    let dir = server.stop().await;

    for suffix in ["-wal", "-shm"] {
        let companion = format!("{}{suffix}", acme_file.display());
        assert!(
            !std::path::Path::new(&companion).exists(),
            "{companion} is left behind"
        );
    }
    let elsewhere = tempfile::TempDir::new().unwrap();
    let copy = elsewhere.path().join("acme-backup.db");
    std::fs::copy(&acme_file, &copy).unwrap();
    drop(dir);

    let conn = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut titles: Vec<String> = conn
        .prepare("SELECT title FROM items")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    titles.sort();
    let mut expected: Vec<String> = (0..20).map(|n| format!("acme item {n}")).collect();
    expected.sort();
    assert_eq!(
        titles, expected,
        "all of acme's items, and nothing of globex's"
    );
}

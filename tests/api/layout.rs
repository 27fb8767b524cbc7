//! The tenant file's layout since schema versions 4 and 5: items keyed by
//! their id, the audit trail by time. A file made at version 3 that holds
//! data keeps, once migrated, its item ids, its list order (page by page,
//! with and without the completed filter) and its audit trail, whether or
//! not its ids and creation times agree in order.

use std::collections::BTreeSet;
use std::path::Path;

use tenantry::pb::{self, ListAuditEventsRequest, ListItemsRequest};

use crate::common::{TestServer, TestTenant, as_admin, new_item, spawn, spawn_in};
use crate::migrations::record_version;

/// One item of a version 3 file: its id, creation time and flag.
struct Old {
    id: uuid::Uuid,
    create_time: i64,
    completed: bool,
}

/// Writes a tenant database at schema version 3 at `path`, holding `items`
/// and an audit event for each (two in the same microsecond, as a batch of
/// writes could record them), in place of whatever is there.
fn write_v3_tenant(path: &Path, items: &[Old]) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::fs::remove_file(&name).ok();
    }
    let mut conn = rusqlite::Connection::open(path).unwrap();
    tenantry::storage::schema::migrate(
        &mut conn,
        &tenantry::resources::tenant_schema().migrations()[..3],
        "v3",
    )
    .unwrap();
    for (n, item) in items.iter().enumerate() {
        conn.execute(
            "INSERT INTO items (id, title, description, completed, create_time, update_time, revision)
             VALUES (?1, ?2, '', ?3, ?4, ?4, 1)",
            rusqlite::params![
                item.id.hyphenated().to_string(),
                format!("item {n}"),
                item.completed,
                item.create_time
            ],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO audit_events (time, action, item_id, actor) VALUES (?1, 'CreateItem', ?2, 'admin')",
            rusqlite::params![item.create_time - (n as i64 % 2), item.id.hyphenated().to_string()],
        )
        .unwrap();
    }
}

/// The ids of a version 3 file's items in list order (newest first: time,
/// then id), with a filter on `completed` if given.
fn v3_order(items: &[Old], completed: Option<bool>) -> Vec<String> {
    let mut listed: Vec<&Old> = items
        .iter()
        .filter(|i| completed.is_none_or(|c| i.completed == c))
        .collect();
    listed.sort_by_key(|i| std::cmp::Reverse((i.create_time, i.id)));
    listed
        .iter()
        .map(|i| i.id.hyphenated().to_string())
        .collect()
}

/// Every item id the API lists, page by page of `page_size`.
async fn listed(
    server: &TestServer,
    tenant: &TestTenant,
    completed: Option<bool>,
    page_size: i32,
) -> Vec<String> {
    let mut items = server.items().await;
    let (mut ids, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = items
            .list_items(tenant.call(ListItemsRequest {
                page_size,
                page_token: page_token.clone(),
                completed,
            }))
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.items.into_iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

/// The item targets of the tenant's audit trail, newest first.
async fn trail(server: &TestServer, tenant: &TestTenant) -> Vec<String> {
    let events = server
        .admin()
        .await
        .list_audit_events(as_admin(ListAuditEventsRequest {
            tenant_id: tenant.id.clone(),
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .events;
    events
        .into_iter()
        .filter(|e| e.action == "CreateItem")
        .map(|e| e.target)
        .collect()
}

/// The names of the item indexes a closed tenant's file has.
fn item_indexes(path: &Path) -> BTreeSet<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'items'")
        .unwrap();
    statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// A server whose tenant `acme` holds a version 3 file of `items`.
async fn server_with_v3(items: &[Old]) -> (TestServer, TestTenant) {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let dir = server.stop().await;
    write_v3_tenant(
        &dir.path().join(format!("data/tenants/{}.db", acme.id)),
        items,
    );
    record_version(&dir, &[&acme], 3);
    (spawn_in(dir, |_| {}).await, acme)
}

/// Checks that the migrated tenant lists, pages and audits as the version 3
/// file did, and that a new item is listed first.
async fn keeps_what_it_had(server: &TestServer, acme: &TestTenant, items: &[Old]) {
    for completed in [None, Some(false), Some(true)] {
        let expected = v3_order(items, completed);
        for page_size in [3, 1000] {
            assert_eq!(
                listed(server, acme, completed, page_size).await,
                expected,
                "completed {completed:?}, pages of {page_size}"
            );
        }
    }
    let mut by_trail: Vec<&Old> = items.iter().collect();
    // Events were recorded at the item's time, every other one a
    // microsecond earlier; newest first, the later recorded first on a tie.
    by_trail.sort_by_key(|i| {
        let n = items.iter().position(|o| o.id == i.id).unwrap() as i64;
        std::cmp::Reverse((i.create_time - n % 2, n))
    });
    let expected_trail: Vec<String> = by_trail
        .iter()
        .map(|i| format!("items/{}", i.id.hyphenated()))
        .collect();
    assert_eq!(trail(server, acme).await, expected_trail);
    let created = server
        .items()
        .await
        .create_item(acme.call(new_item("newest")))
        .await
        .unwrap()
        .into_inner();
    let listed = listed(server, acme, None, 2).await;
    assert_eq!(listed[0], created.id, "a new item is the newest");
    assert_eq!(listed.len(), items.len() + 1);
    // A point read finds old and new items by their ids.
    let mut client = server.items().await;
    for id in [created.id, items[0].id.hyphenated().to_string()] {
        let got = client
            .get_item(acme.call(pb::GetItemRequest { id: id.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.id, id);
    }
}

/// Items made a few milliseconds apart, some completed, some at the same
/// microsecond; their ids follow their times.
fn agreeing(count: usize) -> Vec<Old> {
    (0..count)
        .map(|n| {
            let create_time = 1_700_000_000_000_000 + (n as i64 / 3) * 2_500;
            Old {
                id: tenantry::clock::id_at(create_time + n as i64 % 3),
                create_time,
                completed: n % 4 == 1,
            }
        })
        .collect()
}

#[tokio::test]
async fn a_version_3_file_keeps_its_ids_order_pages_and_trail_once_keyed_by_id() {
    let items = agreeing(40);
    let (server, acme) = server_with_v3(&items).await;
    keeps_what_it_had(&server, &acme, &items).await;
    server.close_tenants().await;
    let file = server.tenant_file(&acme.id);
    assert_eq!(
        item_indexes(&file),
        BTreeSet::from(["items_completed".to_owned(), "items_due".to_owned()]),
        "listed by its key, it keeps no index for the list order"
    );
    let conn = rusqlite::Connection::open(&file).unwrap();
    let (version, blobs): (u32, i64) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version),
                    (SELECT count(*) FROM items WHERE typeof(id) = 'blob')",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(version, tenantry::resources::tenant_schema().latest());
    assert_eq!(blobs, items.len() as i64 + 1);
}

#[tokio::test]
async fn a_file_whose_ids_and_times_disagree_keeps_its_time_order_and_restores() {
    // A clock set back, or a file imported from elsewhere: in id order, the
    // times go back here and there.
    let mut items = agreeing(30);
    for (n, item) in items.iter_mut().enumerate() {
        if n % 7 == 3 {
            item.create_time -= 60_000_000;
        }
    }
    let (server, acme) = server_with_v3(&items).await;
    keeps_what_it_had(&server, &acme, &items).await;
    server.close_tenants().await;
    assert_eq!(
        item_indexes(&server.tenant_file(&acme.id)),
        BTreeSet::from([
            "items_completed".to_owned(),
            "items_completed_newest".to_owned(),
            "items_due".to_owned(),
            "items_newest".to_owned()
        ]),
        "it keeps indexes in the time order"
    );
    // Its backup is a file of tenantry's schema, which restores.
    let mut admin = server.admin().await;
    let backup = admin
        .backup_tenant(as_admin(pb::BackupTenantRequest {
            id: acme.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    admin
        .restore_tenant(as_admin(pb::RestoreTenantRequest {
            id: acme.id.clone(),
            source: Some(pb::restore_tenant_request::Source::BackupPath(backup.path)),
            ..Default::default()
        }))
        .await
        .expect("a file in the time order restores");
    assert_eq!(
        listed(&server, &acme, None, 1000).await.len(),
        items.len() + 1
    );
}

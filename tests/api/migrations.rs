//! Schema migrations of tenant databases: lazy on open, eager with
//! MigrateTenants, offline with `tenantry migrate --offline`, never downward.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use futures::StreamExt;
use prost_types::FieldMask;
use tempfile::TempDir;
use tenantry::pb::{self, ListItemsRequest, MigrateTenantsRequest, UpdateItemRequest};
use tonic::Code;

use crate::common::{
    TestServer, TestTenant, all_titles, as_admin, expect_code, spawn, spawn_in, spawn_with,
};

/// The schema version this server creates and serves.
fn latest() -> u32 {
    tenantry::resources::tenant_schema().latest()
}

/// Writes a tenant database at schema version 1 (items without due times)
/// holding `titles`, in place of whatever is at `path`.
pub fn write_v1_tenant(path: &Path, titles: &[&str]) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::fs::remove_file(&name).ok();
    }
    let mut conn = rusqlite::Connection::open(path).unwrap();
    tenantry::storage::schema::migrate(
        &mut conn,
        &tenantry::resources::tenant_schema().migrations()[..1],
        "v1",
    )
    .unwrap();
    for (n, title) in titles.iter().enumerate() {
        conn.execute(
            "INSERT INTO items (id, title, description, completed, create_time, update_time, revision)
             VALUES (?1, ?2, '', 0, ?3, ?3, 1)",
            rusqlite::params![uuid::Uuid::now_v7().to_string(), title, 1_700_000_000_000_000i64 + n as i64],
        )
        .unwrap();
    }
}

/// Records `version` as the schema version of these tenants in the catalog
/// of a stopped server.
pub fn record_version(dir: &TempDir, tenants: &[&TestTenant], version: u32) {
    let conn = rusqlite::Connection::open(dir.path().join("data/catalog.db")).unwrap();
    for tenant in tenants {
        let changed = conn
            .execute(
                "UPDATE tenants SET schema_version = ?2 WHERE id = ?1",
                rusqlite::params![tenant.id, version],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
}

fn file_version(path: &Path) -> u32 {
    let conn = rusqlite::Connection::open(path).unwrap();
    tenantry::storage::schema::version(&conn).unwrap()
}

async fn migrate_all(server: &TestServer) -> Vec<pb::MigrateTenantsResponse> {
    let mut admin = server.admin().await;
    let mut stream = admin
        .migrate_tenants(as_admin(MigrateTenantsRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut reports = Vec::new();
    while let Some(report) = stream.next().await {
        reports.push(report.expect("the stream does not fail"));
    }
    reports
}

#[tokio::test]
async fn tenants_at_version_1_migrate_eagerly_keep_their_items_and_gain_due_times() {
    let server = spawn().await;
    let old = server.tenant("old").await;
    let older = server.tenant("older").await;
    let current = server.tenant("current").await;
    let dir = server.stop().await;
    write_v1_tenant(
        &dir.path().join(format!("data/tenants/{}.db", old.id)),
        &["o1", "o2"],
    );
    write_v1_tenant(
        &dir.path().join(format!("data/tenants/{}.db", older.id)),
        &["x"],
    );
    record_version(&dir, &[&old, &older], 1);

    let server = spawn_in(dir, |_| {}).await;
    let mut reports = migrate_all(&server).await;
    reports.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
    let mut expected = vec![old.id.clone(), older.id.clone()];
    expected.sort();
    let ids: Vec<_> = reports.iter().map(|r| r.tenant_id.clone()).collect();
    assert_eq!(ids, expected, "only the tenants behind are migrated");
    for report in &reports {
        assert!(report.ok, "{report:?}");
        assert_eq!((report.from_version, report.to_version), (1, latest()));
    }
    assert_eq!(
        server.registry.opens(),
        0,
        "migrations do not fill the cache"
    );
    assert!(migrate_all(&server).await.is_empty(), "nothing left to do");

    assert_eq!(all_titles(&server, &old).await, ["o2", "o1"]);
    assert_eq!(all_titles(&server, &older).await, ["x"]);
    assert!(all_titles(&server, &current).await.is_empty());
    // The new column works on migrated data.
    let mut items = server.items().await;
    let item = items
        .list_items(old.call(ListItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items
        .remove(0);
    let due = prost_types::Timestamp {
        seconds: 1_900_000_000,
        nanos: 0,
    };
    let updated = items
        .update_item(old.call(UpdateItemRequest {
            item: Some(pb::Item {
                id: item.id,
                due_time: Some(due),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["due_time".into()],
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.due_time, Some(due));
    assert_eq!(updated.title, "o2", "other fields kept");

    let dir = server.stop().await;
    for tenant in [&old, &older, &current] {
        let path = dir.path().join(format!("data/tenants/{}.db", tenant.id));
        assert_eq!(file_version(&path), latest());
    }
}

#[tokio::test]
async fn a_tenant_at_version_1_migrates_on_its_first_call() {
    let server = spawn().await;
    let old = server.tenant("old").await;
    let dir = server.stop().await;
    write_v1_tenant(
        &dir.path().join(format!("data/tenants/{}.db", old.id)),
        &["kept"],
    );
    record_version(&dir, &[&old], 1);

    let server = spawn_in(dir, |_| {}).await;
    assert_eq!(all_titles(&server, &old).await, ["kept"]);
    assert!(
        migrate_all(&server).await.is_empty(),
        "the open recorded the new version in the catalog"
    );
}

#[tokio::test]
async fn a_file_newer_than_the_server_is_refused_and_never_downgraded() {
    let server = spawn().await;
    let future = server.tenant("future").await;
    let fine = server.tenant("fine").await;
    let dir = server.stop().await;
    let path = dir.path().join(format!("data/tenants/{}.db", future.id));
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    record_version(&dir, &[&future], 1);

    let server = spawn_in(dir, |_| {}).await;
    let reports = migrate_all(&server).await;
    assert_eq!(reports.len(), 1);
    assert!(!reports[0].ok);
    assert_eq!(reports[0].tenant_id, future.id);
    assert_eq!(reports[0].error_code, "FAILED_PRECONDITION");
    assert!(reports[0].error_message.contains("newer"), "{reports:?}");
    let mut items = server.items().await;
    let status = expect_code(
        items
            .list_items(future.call(ListItemsRequest::default()))
            .await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("upgrade tenantry"), "{status:?}");
    assert!(
        all_titles(&server, &fine).await.is_empty(),
        "others are served"
    );
    let _dir = server.stop().await;
    assert_eq!(file_version(&path), 99, "never downgraded");
}

#[tokio::test]
async fn migrating_200_tenants_with_one_broken_file_reports_199_ok_and_1_error() {
    let server = spawn_with(|c| c.max_open_tenants = 16).await;
    let mut tenants = Vec::new();
    for n in 0..200 {
        tenants.push(server.tenant(&format!("t{n:03}")).await);
    }
    let dir = server.stop().await;
    let template = dir.path().join("v1-template.db");
    write_v1_tenant(&template, &["a", "b", "c"]);
    for tenant in &tenants {
        let path = dir.path().join(format!("data/tenants/{}.db", tenant.id));
        std::fs::copy(&template, &path).unwrap();
    }
    let broken = &tenants[137];
    std::fs::write(
        dir.path().join(format!("data/tenants/{}.db", broken.id)),
        b"this is not a database, it is a shopping list".repeat(100),
    )
    .unwrap();
    record_version(&dir, &tenants.iter().collect::<Vec<_>>(), 1);

    let server = spawn_in(dir, |c| c.max_open_tenants = 16).await;
    let reports = migrate_all(&server).await;
    assert_eq!(reports.len(), 200);
    let failed: Vec<_> = reports.iter().filter(|r| !r.ok).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].tenant_id, broken.id);
    assert!(!failed[0].error_code.is_empty() && !failed[0].error_message.is_empty());
    assert_eq!(
        reports
            .iter()
            .filter(|r| r.ok && r.from_version == 1 && r.to_version == latest())
            .count(),
        199
    );
    assert_eq!(all_titles(&server, &tenants[0]).await, ["c", "b", "a"]);
    // Only the broken one is left to do.
    let again = migrate_all(&server).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].tenant_id, broken.id);
}

#[tokio::test]
async fn tenantry_migrate_runs_offline_and_refuses_a_directory_in_use() {
    let server = spawn().await;
    let old = server.tenant("old").await;
    let fine = server.tenant("fine").await;
    let busy = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["migrate", "--offline", "--data-dir"])
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(!busy.status.success());
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(
        stderr.contains("in use by another tenantry process"),
        "{stderr}"
    );

    let dir: Arc<TempDir> = server.stop().await;
    write_v1_tenant(
        &dir.path().join(format!("data/tenants/{}.db", old.id)),
        &["kept"],
    );
    record_version(&dir, &[&old], 1);
    let ran = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["migrate", "--offline", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "{} migrated from version 1 to {}",
            old.id,
            latest()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("1 tenants migrated, 0 failed"), "{stdout}");
    assert!(
        !stdout.contains(&fine.id),
        "a current tenant is not touched: {stdout}"
    );

    let server = spawn_in(dir, |_| {}).await;
    assert!(migrate_all(&server).await.is_empty());
    assert_eq!(server.registry.opens(), 0);
    assert_eq!(all_titles(&server, &old).await, ["kept"]);
}

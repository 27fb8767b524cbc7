//! Spare tenant files: made ahead in the background, taken by CreateTenant
//! in one catalog commit, and never a tenant by themselves. A tenant made
//! from a spare survives a crash right after its creation was answered; a
//! stop while spares are made leaves nothing of them after the next start.

use std::path::Path;
use std::sync::Arc;

use tempfile::TempDir;
use tenantry::pb::{self, CreateTenantRequest, ListTenantsRequest};
use tonic::Code;

use crate::common::{ServerProcess, as_admin, create_tenant, expect_code, files_under, new_item};

/// The spares the catalog of a data directory records, by state.
fn spares(data: &Path) -> (usize, usize) {
    let conn = rusqlite::Connection::open(data.join("catalog.db")).unwrap();
    let count = |state: &str| -> usize {
        conn.query_row(
            "SELECT count(*) FROM spare_tenants WHERE state = ?1",
            [state],
            |row| row.get::<_, i64>(0),
        )
        .unwrap() as usize
    };
    (count("ready"), count("making"))
}

/// The tenant files in a data directory.
fn tenant_files(data: &Path) -> Vec<String> {
    files_under(&data.join("tenants"))
        .into_iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect()
}

/// Waits until the server has `count` spares ready: they are made in the
/// background after it starts (a few milliseconds each batch).
async fn until_ready(data: &Path, count: usize) {
    let started = std::time::Instant::now();
    while spares(data).0 < count {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{count} spares were not made in 30 s: {:?}",
            spares(data)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_tenant_made_from_a_spare_serves_at_once_and_survives_a_crash() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&dir, &[("TENANTRY_SPARE_TENANT_FILES", "8")]);
    until_ready(&data, 8).await;
    let before = tenant_files(&data);
    let mut admin = server.admin().await;
    let acme = create_tenant(&mut admin, "acme").await;
    assert!(
        before.contains(&format!("{}.db", acme.id)),
        "the tenant took a spare's file"
    );
    let mut items = server.items().await;
    items
        .create_item(acme.call(new_item("first")))
        .await
        .unwrap();
    // A spare is not a tenant: its id is refused like any other unknown
    // tenant's, and never served.
    let spare = before
        .iter()
        .find(|f| !f.starts_with(&acme.id))
        .unwrap()
        .trim_end_matches(".db")
        .to_owned();
    expect_code(
        admin
            .get_tenant(as_admin(pb::GetTenantRequest { id: spare }))
            .await,
        Code::NotFound,
    );
    // Answered, then killed: the tenant and its item are there after it.
    server.kill();
    let server = ServerProcess::start(&dir, &[("TENANTRY_SPARE_TENANT_FILES", "8")]);
    let listed = server
        .admin()
        .await
        .list_tenants(as_admin(ListTenantsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tenants;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, acme.id);
    assert_eq!(listed[0].state(), pb::TenantState::Active);
    let mut items = server.items().await;
    let page = items
        .list_items(acme.call(pb::ListItemsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.items.len(), 1);
    // After a stop that was not clean every spare is made anew: none of
    // those made before it is left.
    until_ready(&data, 8).await;
    let after = tenant_files(&data);
    assert!(
        after
            .iter()
            .all(|f| f.starts_with(&acme.id) || !before.contains(f)),
        "{before:?} {after:?}"
    );
}

#[tokio::test]
async fn after_a_clean_stop_the_spares_are_kept_and_made_again_once_a_quarter_is_taken() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let env = [("TENANTRY_SPARE_TENANT_FILES", "8")];
    let server = ServerProcess::start(&dir, &env);
    until_ready(&data, 8).await;
    let before = tenant_files(&data);
    server.stop_and_read_log();
    // An offline command in between leaves the clean stop as it found it.
    let migrated = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["migrate", "--offline", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    let server = ServerProcess::start(&dir, &env);
    let mut admin = server.admin().await;
    // Created at once: the spares are ready from the start.
    create_tenant(&mut admin, "acme").await;
    assert_eq!(tenant_files(&data), before);
    // One of 8 taken is not yet a quarter, two are.
    assert_eq!(spares(&data), (7, 0));
    create_tenant(&mut admin, "beta").await;
    until_ready(&data, 8).await;
    assert_eq!(tenant_files(&data).len(), 10);
}

/// Copies the catalog's files from `from` to `to`, replacing what is there.
fn copy_catalog(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(to.join(name));
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }
}

/// A creation is answered before the catalog syncs it, so a power cut may
/// take it back: the catalog then says its spare is ready, while its file
/// (written to since) and its id were handed out. Such a stop is never
/// clean, and after it no spare of before is handed out again.
#[tokio::test]
async fn a_creation_lost_with_the_catalog_never_hands_its_tenant_out_again() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let synced = dir.path().join("synced");
    let env = [("TENANTRY_SPARE_TENANT_FILES", "4")];
    let server = ServerProcess::start(&dir, &env);
    until_ready(&data, 4).await;
    server.stop_and_read_log();
    // The catalog as last synced before the creation.
    copy_catalog(&data, &synced);
    let server = ServerProcess::start(&dir, &env);
    let first = create_tenant(&mut server.admin().await, "customer-a").await;
    server
        .items()
        .await
        .create_item(first.call(new_item("secret of A")))
        .await
        .unwrap();
    server.kill();
    // The power cut: the commit that was not synced is gone, the tenant's
    // file is not.
    copy_catalog(&synced, &data);
    let server = ServerProcess::start(&dir, &env);
    let second = create_tenant(&mut server.admin().await, "customer-b").await;
    assert_ne!(first.id, second.id, "one id handed out twice");
    assert!(all_titles_empty(&server, &second).await);
    expect_code(
        server
            .items()
            .await
            .list_items(first.call(pb::ListItemsRequest::default()))
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn a_creation_refused_for_its_name_leaves_the_spares_as_they_were() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&dir, &[("TENANTRY_SPARE_TENANT_FILES", "4")]);
    until_ready(&data, 4).await;
    let mut admin = server.admin().await;
    create_tenant(&mut admin, "acme").await;
    until_ready(&data, 4).await;
    let files = tenant_files(&data);
    let refused = admin
        .create_tenant(as_admin(CreateTenantRequest {
            tenant: Some(pb::Tenant {
                name: "acme".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await;
    expect_code(refused, Code::AlreadyExists);
    assert_eq!(spares(&data), (4, 0), "the spare it took was given back");
    assert_eq!(tenant_files(&data), files);
}

#[tokio::test]
async fn a_stop_while_spares_are_made_leaves_nothing_of_them() {
    for point in ["spares.after-record", "spares.after-files"] {
        let dir = TempDir::new().unwrap();
        let data = dir.path().join("data");
        let crashing = ServerProcess::start(
            &dir,
            &[
                ("TENANTRY_SPARE_TENANT_FILES", "16"),
                (tenantry::fault::ENV, point),
            ],
        );
        let status = crashing.wait();
        assert!(!status.success(), "{point}: the server crashed: {status}");
        let (ready, making) = spares(&data);
        assert_eq!((ready, making), (0, 16), "{point}");
        let left = tenant_files(&data).len();
        assert_eq!(
            left,
            if point == "spares.after-files" { 16 } else { 0 },
            "{point}"
        );

        // Without spares, to see the start-up alone.
        let server = ServerProcess::start(&dir, &[("TENANTRY_SPARE_TENANT_FILES", "0")]);
        let acme = create_tenant(&mut server.admin().await, "acme").await;
        assert_eq!(spares(&data), (0, 0), "{point}");
        assert_eq!(
            tenant_files(&data),
            [format!("{}.db", acme.id)],
            "{point}: only the tenant's file is left"
        );
        assert!(all_titles_empty(&server, &acme).await, "{point}");
    }
}

async fn all_titles_empty(server: &ServerProcess, tenant: &crate::common::TestTenant) -> bool {
    let mut items = server.items().await;
    items
        .list_items(tenant.call(pb::ListItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items
        .is_empty()
}

#[tokio::test]
async fn spares_of_an_older_schema_are_removed_at_start_up_and_made_anew() {
    let dir = Arc::new(TempDir::new().unwrap());
    let data = dir.path().join("data");
    let server = ServerProcess::start(&dir, &[("TENANTRY_SPARE_TENANT_FILES", "4")]);
    until_ready(&data, 4).await;
    server.stop_and_read_log();
    // As if an older server had made them.
    let old: Vec<String> = tenant_files(&data);
    rusqlite::Connection::open(data.join("catalog.db"))
        .unwrap()
        .execute(
            "UPDATE spare_tenants SET schema_version = schema_version - 1",
            [],
        )
        .unwrap();
    let server = ServerProcess::start(&dir, &[("TENANTRY_SPARE_TENANT_FILES", "4")]);
    until_ready(&data, 4).await;
    let new = tenant_files(&data);
    assert_eq!(new.len(), 4);
    assert!(
        new.iter().all(|f| !old.contains(f)),
        "the old spares' files are gone: {old:?} {new:?}"
    );
    let acme = create_tenant(&mut server.admin().await, "acme").await;
    assert!(new.contains(&format!("{}.db", acme.id)));
    assert!(all_titles_empty(&server, &acme).await);
}

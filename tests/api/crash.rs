//! Crash recovery: the real binary is killed (it aborts at a crash point,
//! as `kill -9` or a power cut would stop it) in the middle of a lifecycle
//! operation, and a new server on the same data directory must find every
//! tenant either as it was or as asked, never half done.

use std::path::Path;
use std::sync::Arc;

use tempfile::TempDir;
use tenantry::pb::{
    self, BackupTenantRequest, CreateTenantRequest, DeleteTenantRequest, GetTenantRequest,
    ListTenantsRequest, RestoreTenantRequest, restore_tenant_request::Source,
};
use tonic::Code;

use crate::common::{
    ServerProcess, TestServer, TestTenant, all_files_intact, all_titles, as_admin, expect_code,
    files_under, new_item, spawn_in, titles_in_file,
};

/// The server binary, started on `dir` with a crash point armed.
fn start_crashing_at(dir: &TempDir, point: &str) -> ServerProcess {
    ServerProcess::start(
        dir,
        &[
            (tenantry::fault::ENV, point),
            ("TENANTRY_SPARE_TENANT_FILES", "0"),
        ],
    )
}

/// The servers here make no spare tenant files, so that the tenant files
/// are the tenants' (spares have crash tests of their own).
fn without_spares(config: &mut tenantry::Config) {
    config.spare_tenant_files = 0;
}

/// Waits for the process to end, and checks it ended by crashing.
fn crashed(server: ServerProcess) {
    let status = server.wait();
    assert!(
        !status.success(),
        "the server was to crash, it exited with {status}"
    );
}

/// Sets up a data directory with an in-process server, then stops it.
async fn prepared<T>(setup: impl AsyncFnOnce(&TestServer) -> T) -> (Arc<TempDir>, T) {
    let server = spawn_in(Arc::new(TempDir::new().unwrap()), without_spares).await;
    let made = setup(&server).await;
    (server.stop().await, made)
}

async fn create_items(server: &TestServer, tenant: &TestTenant, titles: &[&str]) {
    let mut items = server.items().await;
    for title in titles {
        items
            .create_item(tenant.call(new_item(title)))
            .await
            .unwrap();
    }
}

fn files_of(data: &Path, tenant_id: &str) -> Vec<std::path::PathBuf> {
    files_under(data)
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(tenant_id))
        .collect()
}

#[tokio::test]
async fn a_creation_cut_short_is_rolled_back_and_its_name_is_free() {
    let (dir, source) = prepared(async |server| {
        let source = server.tenant("template").await;
        create_items(server, &source, &["kept"]).await;
        source
    })
    .await;

    for (name, source_tenant_id) in [("fresh", String::new()), ("copy", source.id.clone())] {
        let crashing = start_crashing_at(&dir, "create.after-file");
        let failed = crashing
            .admin()
            .await
            .create_tenant(as_admin(CreateTenantRequest {
                request_id: String::new(),
                tenant: Some(pb::Tenant {
                    name: name.into(),
                    ..Default::default()
                }),
                source_tenant_id,
            }))
            .await;
        assert!(
            failed.is_err(),
            "{name}: the call cannot succeed: {failed:?}"
        );
        crashed(crashing);
        let databases = files_under(&dir.path().join("data/tenants"))
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "db"))
            .count();
        assert_eq!(
            databases, 2,
            "{name}: the half-made file is on disk before recovery"
        );

        let server = spawn_in(dir.clone(), without_spares).await;
        let mut admin = server.admin().await;
        let names: Vec<_> = admin
            .list_tenants(as_admin(ListTenantsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .tenants
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["template"], "{name}");
        let tenants = files_under(&server.data_dir().join("tenants"));
        assert_eq!(
            tenants,
            [std::path::PathBuf::from(format!("{}.db", source.id))],
            "{name}: the half-made file is gone"
        );
        assert_eq!(all_titles(&server, &source).await, ["kept"]);
        server.close_tenants().await;
        all_files_intact(&server.data_dir());
        server.stop().await;
    }

    // The names are free again.
    let server = spawn_in(dir, without_spares).await;
    server.tenant("fresh").await;
    server.tenant("copy").await;
}

#[tokio::test]
async fn a_delete_cut_short_is_finished_at_start_up() {
    for point in ["delete.after-mark", "delete.after-move"] {
        let (dir, (doomed, other)) = prepared(async |server| {
            let doomed = server.tenant("doomed").await;
            let other = server.tenant("other").await;
            create_items(server, &doomed, &["d1", "d2"]).await;
            create_items(server, &other, &["o1"]).await;
            (doomed, other)
        })
        .await;

        let crashing = start_crashing_at(&dir, point);
        let failed = crashing
            .admin()
            .await
            .delete_tenant(as_admin(DeleteTenantRequest {
                request_id: String::new(),
                id: doomed.id.clone(),
                purge: false,
            }))
            .await;
        assert!(failed.is_err(), "{point}: {failed:?}");
        crashed(crashing);

        let server = spawn_in(dir, without_spares).await;
        let mut admin = server.admin().await;
        expect_code(
            admin
                .get_tenant(as_admin(GetTenantRequest {
                    id: doomed.id.clone(),
                }))
                .await,
            Code::NotFound,
        );
        let mut items = server.items().await;
        expect_code(
            items
                .list_items(doomed.call(pb::ListItemsRequest::default()))
                .await,
            Code::NotFound,
        );
        assert!(!server.tenant_file(&doomed.id).exists(), "{point}");
        let trash = files_under(&server.data_dir().join("trash"));
        assert_eq!(trash.len(), 1, "{point}: {trash:?}");
        assert!(trash[0].to_string_lossy().starts_with(&doomed.id));
        assert_eq!(
            titles_in_file(&server.data_dir().join("trash").join(&trash[0])),
            ["d1", "d2"],
            "{point}"
        );
        assert_eq!(all_titles(&server, &other).await, ["o1"], "{point}");
        server.tenant("doomed").await;
        server.close_tenants().await;
        all_files_intact(&server.data_dir());
        // Nothing is left recorded: the new tenant can be deleted at once.
        admin
            .delete_tenant(as_admin(DeleteTenantRequest {
                request_id: String::new(),
                id: other.id.clone(),
                purge: true,
            }))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_purge_cut_short_erases_everything_at_start_up() {
    let (dir, (doomed, other)) = prepared(async |server| {
        let doomed = server.tenant("doomed").await;
        let other = server.tenant("other").await;
        create_items(server, &doomed, &["secret"]).await;
        let mut admin = server.admin().await;
        for tenant in [&doomed, &other] {
            admin
                .backup_tenant(as_admin(BackupTenantRequest {
                    id: tenant.id.clone(),
                }))
                .await
                .unwrap();
        }
        (doomed, other)
    })
    .await;
    assert_eq!(
        files_of(&dir.path().join("data"), &doomed.id).len(),
        2,
        "its file and its backup"
    );

    let crashing = start_crashing_at(&dir, "delete.after-mark");
    let failed = crashing
        .admin()
        .await
        .delete_tenant(as_admin(DeleteTenantRequest {
            request_id: String::new(),
            id: doomed.id.clone(),
            purge: true,
        }))
        .await;
    assert!(failed.is_err());
    crashed(crashing);

    let server = spawn_in(dir, without_spares).await;
    assert!(
        files_of(&server.data_dir(), &doomed.id).is_empty(),
        "{:?}",
        files_of(&server.data_dir(), &doomed.id)
    );
    assert!(server.tenant_file(&other.id).exists());
    assert_eq!(
        files_under(&server.data_dir().join("backups").join(&other.id)).len(),
        1
    );
    server.close_tenants().await;
    all_files_intact(&server.data_dir());
}

#[tokio::test]
async fn a_restore_cut_short_is_finished_at_start_up() {
    for point in [
        "restore.after-record",
        "restore.after-trash",
        "restore.after-swap",
    ] {
        let (dir, (acme, backup)) = prepared(async |server| {
            let acme = server.tenant("acme").await;
            create_items(server, &acme, &["a1", "a2"]).await;
            let backup = server
                .admin()
                .await
                .backup_tenant(as_admin(BackupTenantRequest {
                    id: acme.id.clone(),
                }))
                .await
                .unwrap()
                .into_inner();
            create_items(server, &acme, &["b1"]).await;
            (acme, backup)
        })
        .await;

        let crashing = start_crashing_at(&dir, point);
        let failed = crashing
            .admin()
            .await
            .restore_tenant(as_admin(RestoreTenantRequest {
                request_id: String::new(),
                id: acme.id.clone(),
                source: Some(Source::BackupPath(backup.path.clone())),
            }))
            .await;
        assert!(failed.is_err(), "{point}: {failed:?}");
        crashed(crashing);

        let server = spawn_in(dir, without_spares).await;
        assert_eq!(all_titles(&server, &acme).await, ["a2", "a1"], "{point}");
        let trash = files_under(&server.data_dir().join("trash"));
        assert_eq!(trash.len(), 1, "{point}: {trash:?}");
        assert_eq!(
            titles_in_file(&server.data_dir().join("trash").join(&trash[0])),
            ["a1", "a2", "b1"],
            "{point}: the replaced data is kept"
        );
        assert!(
            files_under(&server.data_dir().join("staging")).is_empty(),
            "{point}"
        );
        server.close_tenants().await;
        all_files_intact(&server.data_dir());
        // Nothing is left recorded: another restore works.
        server
            .admin()
            .await
            .restore_tenant(as_admin(RestoreTenantRequest {
                request_id: String::new(),
                id: acme.id.clone(),
                source: Some(Source::BackupPath(backup.path.clone())),
            }))
            .await
            .unwrap();
        server.stop().await;
    }
}

//! Backups, exports, restores and imports of live tenants.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tenantry::pb::{
    self, BackupTenantRequest, ExportTenantRequest, ImportTenantRequest, RestoreTenantRequest,
    restore_tenant_request::Source,
};
use tonic::Code;

use crate::common::{
    TestServer, TestTenant, all_titles, as_admin, expect_code, files_under, integrity, new_item,
    spawn, titles_in_file,
};
use crate::migrations::write_v1_tenant;

/// The schema version this server creates and serves.
fn latest() -> u32 {
    tenantry::resources::tenant_schema().latest()
}

async fn create_items(server: &TestServer, tenant: &TestTenant, prefix: &str, count: usize) {
    let mut items = server.items().await;
    for n in 0..count {
        items
            .create_item(tenant.call(new_item(&format!("{prefix}{n:03}"))))
            .await
            .unwrap();
    }
}

async fn backup(server: &TestServer, tenant: &TestTenant) -> pb::Backup {
    server
        .admin()
        .await
        .backup_tenant(as_admin(BackupTenantRequest {
            id: tenant.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
}

fn restore_from(tenant: &TestTenant, path: &str) -> RestoreTenantRequest {
    RestoreTenantRequest {
        request_id: String::new(),
        id: tenant.id.clone(),
        source: Some(Source::BackupPath(path.into())),
    }
}

async fn export(server: &TestServer, tenant: &TestTenant) -> (pb::Backup, Vec<u8>) {
    let mut stream = server
        .admin()
        .await
        .export_tenant(as_admin(ExportTenantRequest {
            id: tenant.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let header = first
        .backup
        .expect("the first message describes the snapshot");
    let mut bytes = first.chunk;
    while let Some(message) = stream.next().await {
        let message = message.unwrap();
        assert!(message.backup.is_none());
        bytes.extend(message.chunk);
    }
    (header, bytes)
}

async fn import(
    server: &TestServer,
    tenant: &TestTenant,
    bytes: &[u8],
    sha256: &str,
) -> Result<tonic::Response<pb::RestoreTenantResponse>, tonic::Status> {
    let mut messages: Vec<_> = bytes
        .chunks(64 * 1024)
        .map(|chunk| ImportTenantRequest {
            chunk: chunk.to_vec(),
            ..Default::default()
        })
        .collect();
    if messages.is_empty() {
        messages.push(ImportTenantRequest::default());
    }
    messages[0].id = tenant.id.clone();
    messages[0].sha256 = sha256.into();
    server
        .admin()
        .await
        .import_tenant(as_admin(futures::stream::iter(messages)))
        .await
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn a_backup_is_one_self_contained_file_with_the_tenant_s_items() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let other = server.tenant("other").await;
    create_items(&server, &acme, "a", 3).await;
    create_items(&server, &other, "o", 2).await;

    let made = backup(&server, &acme).await;
    assert_eq!(made.tenant_id, acme.id);
    assert!(
        made.path.starts_with(&format!("backups/{}/", acme.id)) && made.path.ends_with(".db"),
        "{}",
        made.path
    );
    assert_eq!(made.schema_version, latest());
    let file = server.data_dir().join(&made.path);
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(made.size_bytes, bytes.len() as u64);
    assert_eq!(made.sha256, sha256_hex(&bytes));
    // Alone in a folder of its own, read-only: no -wal is needed.
    let elsewhere = tempfile::TempDir::new().unwrap();
    let copy = elsewhere.path().join("copy.db");
    std::fs::copy(&file, &copy).unwrap();
    assert_eq!(integrity(&copy), "ok");
    assert_eq!(titles_in_file(&copy), ["a000", "a001", "a002"]);
    assert_eq!(files_under(elsewhere.path()).len(), 1);
    assert!(files_under(&server.data_dir().join("staging")).is_empty());

    expect_code(
        server
            .admin()
            .await
            .backup_tenant(as_admin(BackupTenantRequest {
                id: uuid::Uuid::new_v4().to_string(),
            }))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn a_backup_taken_during_writes_holds_every_write_acknowledged_before_it_began() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (acme, acknowledged, stop) = (acme.clone(), acknowledged.clone(), stop.clone());
        let mut items = server.items().await;
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let title = format!("w{w}-{n:05}");
                items
                    .create_item(acme.call(new_item(&title)))
                    .await
                    .unwrap();
                acknowledged.lock().unwrap().push(title);
                n += 1;
            }
        }));
    }
    while acknowledged.lock().unwrap().len() < 200 {
        tokio::task::yield_now().await;
    }
    let before: Vec<String> = acknowledged.lock().unwrap().clone();
    let made = backup(&server, &acme).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let all: Vec<String> = acknowledged.lock().unwrap().clone();

    let file = server.data_dir().join(&made.path);
    assert_eq!(integrity(&file), "ok");
    let stored = titles_in_file(&file);
    for title in &before {
        assert!(
            stored.binary_search(title).is_ok(),
            "{title} is missing from the backup"
        );
    }
    for title in &stored {
        assert!(all.contains(title), "{title} was never written");
    }
    assert!(
        all.len() > before.len(),
        "writes went on while the backup ran, or after it"
    );
}

#[tokio::test]
async fn restore_brings_back_the_backup_and_keeps_the_replaced_data_in_the_trash() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let other = server.tenant("other").await;
    create_items(&server, &acme, "a", 3).await;
    create_items(&server, &other, "o", 1).await;
    let made = backup(&server, &acme).await;
    create_items(&server, &acme, "b", 2).await;

    let mut admin = server.admin().await;
    let restored = admin
        .restore_tenant(as_admin(restore_from(&acme, &made.path)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(restored.sha256, made.sha256);
    assert_eq!(
        (restored.from_version, restored.to_version),
        (latest(), latest())
    );
    assert_eq!(all_titles(&server, &acme).await, ["a002", "a001", "a000"]);
    assert_eq!(all_titles(&server, &other).await, ["o000"]);
    let trash = files_under(&server.data_dir().join("trash"));
    assert_eq!(trash.len(), 1, "{trash:?}");
    let replaced = server.data_dir().join("trash").join(&trash[0]);
    assert_eq!(
        titles_in_file(&replaced),
        ["a000", "a001", "a002", "b000", "b001"]
    );
    assert!(files_under(&server.data_dir().join("staging")).is_empty());
    // The backup itself is untouched, and an absolute path works too.
    let absolute = std::path::absolute(server.data_dir().join(&made.path)).unwrap();
    assert_eq!(sha256_hex(&std::fs::read(&absolute).unwrap()), made.sha256);
    admin
        .restore_tenant(as_admin(restore_from(&acme, absolute.to_str().unwrap())))
        .await
        .unwrap();
    // Writes go on after a restore.
    create_items(&server, &acme, "c", 1).await;
    assert_eq!(all_titles(&server, &acme).await.len(), 4);
}

#[tokio::test]
async fn an_export_streams_the_snapshot_and_an_import_of_it_restores_the_tenant() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let copy = server.tenant("copy").await;
    let mut items = server.items().await;
    for n in 0..300 {
        let mut request = new_item(&format!("a{n:03}"));
        request.item.as_mut().unwrap().description = "lorem ipsum ".repeat(100);
        items.create_item(acme.call(request)).await.unwrap();
    }
    let (header, bytes) = export(&server, &acme).await;
    assert_eq!(header.size_bytes, bytes.len() as u64);
    assert!(bytes.len() > 256 * 1024, "several chunks: {}", bytes.len());
    assert_eq!(header.sha256, sha256_hex(&bytes));
    assert!(header.path.is_empty());
    assert!(files_under(&server.data_dir().join("staging")).is_empty());

    create_items(&server, &acme, "b", 2).await;
    let imported = import(&server, &acme, &bytes, &header.sha256)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(imported.size_bytes, bytes.len() as u64);
    assert_eq!(all_titles(&server, &acme).await.len(), 300);
    // The same snapshot can seed another tenant.
    import(&server, &copy, &bytes, "").await.unwrap();
    assert_eq!(all_titles(&server, &copy).await.len(), 300);
}

#[tokio::test]
async fn a_bad_snapshot_is_refused_and_the_tenant_keeps_its_data() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    create_items(&server, &acme, "a", 2).await;
    let (header, good) = export(&server, &acme).await;
    let scratch = tempfile::TempDir::new().unwrap();
    let sqlite_file = |name: &str, sql: &str| {
        let path = scratch.path().join(name);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(sql).unwrap();
        drop(conn);
        std::fs::read(&path).unwrap()
    };
    let with_trigger = {
        let path = scratch.path().join("trigger.db");
        std::fs::write(&path, &good).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER sneaky AFTER INSERT ON items BEGIN DELETE FROM items; END;",
        )
        .unwrap();
        drop(conn);
        std::fs::read(&path).unwrap()
    };
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let mut flipped = good.clone();
    let middle = flipped.len() - 100;
    flipped[middle] ^= 0xff;

    let cases: Vec<(&str, Vec<u8>, String, Code)> = vec![
        ("empty", Vec::new(), String::new(), Code::InvalidArgument),
        (
            "text",
            b"hello, world".repeat(1000),
            String::new(),
            Code::InvalidArgument,
        ),
        ("truncated", truncated, String::new(), Code::InvalidArgument),
        (
            "no schema",
            sqlite_file("empty.db", "CREATE TABLE x (a);"),
            String::new(),
            Code::InvalidArgument,
        ),
        (
            "wrong tables",
            sqlite_file(
                "other.db",
                "CREATE TABLE items (a); PRAGMA user_version = 1;",
            ),
            String::new(),
            Code::InvalidArgument,
        ),
        (
            "trigger",
            with_trigger,
            String::new(),
            Code::InvalidArgument,
        ),
        (
            "newer",
            sqlite_file("newer.db", "PRAGMA user_version = 99;"),
            String::new(),
            Code::FailedPrecondition,
        ),
        (
            "wrong sha",
            good.clone(),
            "0".repeat(64),
            Code::InvalidArgument,
        ),
        ("bad sha", good.clone(), "xyz".into(), Code::InvalidArgument),
        (
            "flipped byte",
            flipped.clone(),
            sha256_hex(&flipped),
            Code::InvalidArgument,
        ),
    ];
    let mut accepted = 0;
    for (name, bytes, sha, code) in cases {
        let status = match import(&server, &acme, &bytes, &sha).await {
            Err(status) => status,
            // A flipped byte may land in unused space: the file is then valid.
            Ok(_) if name == "flipped byte" => {
                accepted += 1;
                continue;
            }
            Ok(answer) => panic!("{name} was accepted: {answer:?}"),
        };
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(!status.message().is_empty());
        assert_eq!(all_titles(&server, &acme).await, ["a001", "a000"], "{name}");
    }
    let mut admin = server.admin().await;
    std::fs::write(server.data_dir().join("catalog-copy.db"), &good).unwrap();
    for path in [
        "catalog.db",
        "catalog-copy.db",
        "../catalog.db",
        "backups/../catalog.db",
        "/etc/passwd",
        "tenants/x.db",
        "",
    ] {
        let status = expect_code(
            admin
                .restore_tenant(as_admin(restore_from(&acme, path)))
                .await,
            Code::InvalidArgument,
        );
        assert!(
            status.message().starts_with("backup_path"),
            "{path}: {status:?}"
        );
    }
    expect_code(
        admin
            .restore_tenant(as_admin(restore_from(
                &acme,
                &format!("backups/{}/nope.db", acme.id),
            )))
            .await,
        Code::NotFound,
    );
    expect_code(
        admin
            .restore_tenant(as_admin(RestoreTenantRequest {
                request_id: String::new(),
                id: acme.id.clone(),
                source: None,
            }))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(all_titles(&server, &acme).await, ["a001", "a000"]);
    assert!(files_under(&server.data_dir().join("staging")).is_empty());
    assert_eq!(
        files_under(&server.data_dir().join("trash")).len(),
        accepted
    );
    assert_eq!(header.tenant_id, acme.id);
}

#[tokio::test]
async fn an_older_snapshot_is_migrated_up_when_imported() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let scratch = tempfile::TempDir::new().unwrap();
    let old = scratch.path().join("old.db");
    write_v1_tenant(&old, &["from", "the past"]);
    let bytes = std::fs::read(&old).unwrap();
    let imported = import(&server, &acme, &bytes, &sha256_hex(&bytes))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((imported.from_version, imported.to_version), (1, latest()));
    assert_eq!(all_titles(&server, &acme).await, ["the past", "from"]);
}

#[tokio::test]
async fn a_backup_is_restored_only_into_its_own_tenant_and_only_as_made() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;
    let gone = server.tenant("gone").await;
    create_items(&server, &acme, "a", 2).await;
    create_items(&server, &globex, "g", 1).await;
    create_items(&server, &gone, "x", 1).await;
    let acme_backup = backup(&server, &acme).await;
    let gone_backup = backup(&server, &gone).await;
    let mut admin = server.admin().await;
    admin
        .delete_tenant(as_admin(pb::DeleteTenantRequest {
            id: gone.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let acme_dir = server.data_dir().join("backups").join(&acme.id);
    let refused = |path: String| restore_from(&globex, &path);
    // Another tenant's backup, a deleted tenant's, or one named through
    // the other tenant's folder: refused, with a way out named.
    for path in [acme_backup.path.clone(), gone_backup.path.clone()] {
        let status = expect_code(
            admin.restore_tenant(as_admin(refused(path))).await,
            Code::InvalidArgument,
        );
        assert!(status.message().contains("ImportTenant"), "{status:?}");
    }
    // In acme's own folder: a hard link to a live tenant file, a symbolic
    // link, a file put there by hand, a backup changed since it was made.
    std::fs::hard_link(server.tenant_file(&globex.id), acme_dir.join("linked.db")).unwrap();
    std::os::unix::fs::symlink(
        server.tenant_file(&globex.id),
        acme_dir.join("symlinked.db"),
    )
    .unwrap();
    std::fs::copy(
        server.data_dir().join(&acme_backup.path),
        acme_dir.join("by-hand.db"),
    )
    .unwrap();
    for name in ["linked.db", "symlinked.db", "by-hand.db"] {
        let status = expect_code(
            admin
                .restore_tenant(as_admin(restore_from(
                    &acme,
                    &format!("backups/{}/{name}", acme.id),
                )))
                .await,
            Code::InvalidArgument,
        );
        assert!(
            status.message().starts_with("backup_path"),
            "{name}: {status:?}"
        );
    }
    let mut tampered = std::fs::read(server.data_dir().join(&acme_backup.path)).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    std::fs::write(server.data_dir().join(&acme_backup.path), &tampered).unwrap();
    let status = expect_code(
        admin
            .restore_tenant(as_admin(restore_from(&acme, &acme_backup.path)))
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("changed since"), "{status:?}");
    assert_eq!(all_titles(&server, &globex).await, ["g000"]);
    assert_eq!(all_titles(&server, &acme).await, ["a001", "a000"]);
    // Moving data between tenants stays possible as an explicit copy.
    let (_, bytes) = export(&server, &acme).await;
    import(&server, &globex, &bytes, "").await.unwrap();
    assert_eq!(all_titles(&server, &globex).await, ["a001", "a000"]);
}

#[tokio::test]
async fn a_restore_during_reads_never_serves_a_mix() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    create_items(&server, &acme, "a", 30).await;
    let made = backup(&server, &acme).await;
    create_items(&server, &acme, "b", 20).await;
    let restored = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (acme, restored) = (acme.clone(), restored.clone());
        let mut items = server.items().await;
        readers.push(tokio::spawn(async move {
            let (mut before, mut after) = (0, 0);
            // Read until this reader has seen the restored data a few times.
            while after < 20 {
                let done = restored.load(Ordering::SeqCst);
                let page = items
                    .list_items(acme.call(pb::ListItemsRequest {
                        page_size: 1000,
                        ..Default::default()
                    }))
                    .await
                    .expect("reads never fail during a restore")
                    .into_inner();
                let titles: Vec<_> = page.items.iter().map(|i| i.title.as_str()).collect();
                let b_count = titles.iter().filter(|t| t.starts_with('b')).count();
                match (titles.len(), b_count) {
                    (50, 20) => {
                        assert!(!done, "old data served after the restore returned");
                        before += 1;
                    }
                    (30, 0) => after += 1,
                    other => panic!("a mix was served: {other:?}"),
                }
            }
            before
        }));
    }
    let mut admin = server.admin().await;
    admin
        .restore_tenant(as_admin(restore_from(&acme, &made.path)))
        .await
        .unwrap();
    restored.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    assert_eq!(all_titles(&server, &acme).await.len(), 30);
}

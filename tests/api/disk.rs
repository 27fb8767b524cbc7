//! A full disk: the data directory on a small file system of its own,
//! filled by a tenant's writes. An operator can still revoke a key, suspend
//! a tenant and purge one to free space, each answered only once it is
//! recorded; an upload is refused saying the disk is full; and no write
//! that was acknowledged is lost.
//!
//! Needs a file system to fill: a tmpfs mounted for the test, which takes
//! the right to mount (root, as in CI). Without it the test says so and
//! checks nothing.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tempfile::TempDir;
use tenantry::pb;
use tonic::Code;

use crate::common::{
    TestServer, TestTenant, all_titles, as_admin, expect_code, new_item, spawn_in, suspend,
};

/// A tmpfs of `megabytes`, mounted on a fresh folder until dropped.
struct SmallDisk {
    dir: Arc<TempDir>,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<Self> {
        let dir = TempDir::new().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|output| output.status.success());
        if !mounted {
            eprintln!(
                "skipped: cannot mount a {megabytes} MiB tmpfs here (it takes root); \
                 the full-disk behaviour is not checked"
            );
            return None;
        }
        Some(SmallDisk { dir: Arc::new(dir) })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes items of about 8 KB to `tenant` until the server refuses one; the
/// titles acknowledged, and the refusal.
async fn fill(server: &TestServer, tenant: &TestTenant) -> (Vec<String>, tonic::Status) {
    let mut items = server.items().await;
    let mut acknowledged = Vec::new();
    for n in 0.. {
        let mut request = new_item(&format!("filler {n:06}"));
        request.item.as_mut().unwrap().description = "x".repeat(8000);
        match items.create_item(tenant.call(request)).await {
            Ok(_) => acknowledged.push(format!("filler {n:06}")),
            Err(status) => return (acknowledged, status),
        }
        assert!(n < 100_000, "the disk never filled");
    }
    unreachable!()
}

fn free_mib(path: &Path) -> u64 {
    let output = Command::new("df")
        .args(["--output=avail", "-m"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn on_a_full_disk_the_operator_still_revokes_suspends_and_purges() {
    let Some(disk) = SmallDisk::mount(48) else {
        return;
    };
    let server = spawn_in(disk.dir.clone(), |config| {
        config.disk_reserve_mib = 8;
        config.tenant_quota_kib = 0;
        // A few spare files, so that the space a purge frees is not taken
        // again at once by spares made in its place.
        config.spare_tenant_files = 4;
    })
    .await;
    let mut admin = server.admin().await;
    let kept = server.tenant("kept").await;
    let mut items = server.items().await;
    for title in ["one", "two"] {
        items.create_item(kept.call(new_item(title))).await.unwrap();
    }
    let hog = server.tenant("hog").await;
    let (acknowledged, refused) = fill(&server, &hog).await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("full"), "{refused:?}");
    assert!(acknowledged.len() > 100, "{}", acknowledged.len());

    // A revoke and a suspension, recorded in the reserve.
    let key = admin
        .list_api_keys(as_admin(pb::ListApiKeysRequest {
            tenant_id: kept.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .api_keys
        .remove(0);
    admin
        .revoke_api_key(as_admin(pb::RevokeApiKeyRequest { id: key.id }))
        .await
        .expect("a revoke on a full disk");
    expect_code(
        items
            .list_items(kept.call(pb::ListItemsRequest::default()))
            .await,
        Code::Unauthenticated,
    );
    suspend(&server, &hog.id).await;
    expect_code(
        items
            .list_items(hog.call(pb::ListItemsRequest::default()))
            .await,
        Code::FailedPrecondition,
    );
    // An upload says why it is refused.
    let other = server.tenant("other").await;
    let upload = vec![pb::ImportTenantRequest {
        id: other.id.clone(),
        chunk: vec![7u8; 1 << 20],
        ..Default::default()
    }];
    let status = expect_code(
        admin
            .import_tenant(as_admin(futures::stream::iter(upload)))
            .await,
        Code::ResourceExhausted,
    );
    assert!(status.message().contains("disk"), "{status:?}");

    // A purge frees the space; then everything works again.
    let before = free_mib(disk.path());
    admin
        .delete_tenant(as_admin(pb::DeleteTenantRequest {
            id: hog.id.clone(),
            purge: true,
            ..Default::default()
        }))
        .await
        .expect("a purge on a full disk");
    assert!(
        free_mib(disk.path()) > before + 20,
        "the purge freed the space"
    );
    let fresh = server.tenant("fresh").await;
    items
        .create_item(fresh.call(new_item("room again")))
        .await
        .expect("writes once there is room");

    // Nothing acknowledged is lost, across a restart.
    drop((admin, items));
    let dir = server.stop().await;
    let server = spawn_in(dir, |_| {}).await;
    assert_eq!(all_titles(&server, &fresh).await, ["room again"]);
    let mut admin = server.admin().await;
    let newer = admin
        .create_api_key(as_admin(pb::CreateApiKeyRequest {
            tenant_id: kept.id.clone(),
            description: "after the disk filled".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let kept = TestTenant {
        id: kept.id.clone(),
        key: newer.secret,
    };
    assert_eq!(all_titles(&server, &kept).await, ["two", "one"]);
    expect_code(
        admin
            .get_tenant(as_admin(pb::GetTenantRequest { id: hog.id.clone() }))
            .await,
        Code::NotFound,
    );
    drop(server);
}

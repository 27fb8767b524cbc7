//! Figures for SearchItems, the admin search across tenants, over real gRPC
//! on loopback:
//!
//! - the time to search `tenants` tenants of `items` items each (one tenant
//!   filled through the API, the others cloned from it with CreateTenant's
//!   `source_tenant_id`), with every tenant closed first, so that each one is
//!   read on a connection of its own;
//! - the most tenant database files the process had open at once during the
//!   search, and the most file descriptors, sampled from `/proc/self/fd`
//!   every 200 µs by a thread of its own.
//!
//! The server runs in this process on 127.0.0.1:0 with a temporary data
//! directory and the default settings (`--search-parallelism` 4).
//!
//! ```sh
//! cargo run --release --example fanout -- [tenants] [items]
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tenantry::auth::Secret;
use tenantry::pb::item_service_client::ItemServiceClient;
use tenantry::pb::tenant_service_client::TenantServiceClient;
use tenantry::pb::{self, CreateTenantRequest, SearchItemsRequest};
use tenantry::{Application, Config};
use tokio::sync::oneshot;
use tonic::Request;
use tonic::transport::Channel;

const ADMIN: &str = "fanout-admin-token-0123456789";

fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    request
}

fn admin_for<T>(tenant: &str, message: T) -> Request<T> {
    let mut request = admin(message);
    request
        .metadata_mut()
        .insert("x-tenant-id", tenant.parse().unwrap());
    request
}

async fn create_tenant(
    admin_client: &mut TenantServiceClient<Channel>,
    name: String,
    source: &str,
) -> String {
    admin_client
        .create_tenant(admin(CreateTenantRequest {
            tenant: Some(pb::Tenant {
                name,
                ..Default::default()
            }),
            source_tenant_id: source.into(),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .id
}

/// Open file descriptors of this process, and how many are tenant
/// database files (not their `-wal` or `-shm`).
fn open_files(tenants_dir: &Path) -> (usize, usize) {
    let mut fds = 0;
    let mut databases = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        fds += 1;
        if let Ok(target) = std::fs::read_link(entry.path())
            && target.starts_with(tenants_dir)
            && target.extension().is_some_and(|e| e == "db")
        {
            databases += 1;
        }
    }
    (fds, databases)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let tenants: usize = args.next().map_or(1000, |a| a.parse().unwrap());
    let items: usize = args.next().map_or(1000, |a| a.parse().unwrap());

    let dir = tempfile::TempDir::new().unwrap();
    let data: PathBuf = dir.path().join("data");
    let mut config = Config::with_data_dir(&data);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_token = Some(Secret::new(ADMIN));
    let parallelism = config.search_parallelism;
    let app = Application::build(config).await.unwrap();
    let addr = app.local_addr();
    let registry = app.registry();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        app.run_until(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin_client = TenantServiceClient::new(channel.clone());

    // One tenant filled through the API: one item in a hundred matches.
    let started = Instant::now();
    let template = create_tenant(&mut admin_client, "tenant-00000".into(), "").await;
    futures::stream::iter(0..items)
        .map(|n| {
            let mut client = ItemServiceClient::new(channel.clone());
            let template = template.clone();
            async move {
                let title = if n % 100 == 0 {
                    format!("needle {n}")
                } else {
                    format!("item {n}")
                };
                let item = pb::Item {
                    title,
                    ..Default::default()
                };
                client
                    .create_item(admin_for(
                        &template,
                        pb::CreateItemRequest { item: Some(item) },
                    ))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    // The others cloned from it.
    futures::stream::iter(1..tenants)
        .map(|n| {
            let mut client = admin_client.clone();
            let template = template.clone();
            async move { create_tenant(&mut client, format!("tenant-{n:05}"), &template).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    println!(
        "set-up: {tenants} tenants of {items} items in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    registry.close_all().await;
    let tenants_dir = data.join("tenants");
    let (fds_before, databases_before) = open_files(&tenants_dir);
    let sampling = Arc::new(AtomicBool::new(true));
    let peak_fds = Arc::new(AtomicUsize::new(fds_before));
    let peak_databases = Arc::new(AtomicUsize::new(databases_before));
    let sampler = {
        let (sampling, peak_fds, peak_databases) =
            (sampling.clone(), peak_fds.clone(), peak_databases.clone());
        let tenants_dir = tenants_dir.clone();
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let (fds, databases) = open_files(&tenants_dir);
                peak_fds.fetch_max(fds, Ordering::Relaxed);
                peak_databases.fetch_max(databases, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    let aside_before = registry.aside_reads();
    let started = Instant::now();
    let mut stream = admin_client
        .search_items(admin(SearchItemsRequest {
            title_contains: "needle".into(),
            limit_per_tenant: 1000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let (mut matches, mut errors) = (0usize, 0usize);
    let mut first = None;
    while let Some(response) = stream.message().await.unwrap() {
        first.get_or_insert_with(|| started.elapsed());
        if response.error_code.is_empty() {
            matches += 1;
        } else {
            errors += 1;
        }
    }
    let took = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();

    let expected = tenants * items.div_ceil(100);
    assert_eq!(matches, expected, "every tenant's matches");
    assert_eq!(errors, 0);
    println!(
        "search: {tenants} tenants of {items} items (all closed, {parallelism} read at once): \
         {:.0} ms, {:.0} tenants/s, {matches} matches, first match after {:.1} ms",
        took.as_secs_f64() * 1e3,
        tenants as f64 / took.as_secs_f64(),
        first.unwrap_or_default().as_secs_f64() * 1e3,
    );
    println!(
        "read aside: {} tenants; open in the cache after the search: {}",
        registry.aside_reads() - aside_before,
        registry.open_count().await
    );
    println!(
        "peak open tenant database files: {} (before: {databases_before}); \
         peak file descriptors: {} (before: {fds_before})",
        peak_databases.load(Ordering::Relaxed),
        peak_fds.load(Ordering::Relaxed),
    );

    stop.send(()).unwrap();
    task.await.unwrap();
}

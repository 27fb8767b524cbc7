//! Figures for the lifecycle operations, over real gRPC on loopback:
//!
//! - creating tenants, and migrating `tenants` of them from schema version 1
//!   to the current one with MigrateTenants (then again, with nothing to do);
//! - backing up, exporting, restoring and importing one tenant of `items`
//!   items, each checked against the data.
//!
//! The server runs in this process on 127.0.0.1:0 with a temporary data
//! directory, exactly as the tests start it.
//!
//! ```sh
//! cargo run --release --example lifecycle -- [tenants] [items]
//! ```

use std::time::{Duration, Instant};

use futures::StreamExt;
use tenantry::auth::Secret;
use tenantry::pb::item_service_client::ItemServiceClient;
use tenantry::pb::tenant_service_client::TenantServiceClient;
use tenantry::pb::{
    self, BackupTenantRequest, CreateApiKeyRequest, CreateTenantRequest, ExportTenantRequest,
    ImportTenantRequest, ListItemsRequest, MigrateTenantsRequest, RestoreTenantRequest,
};
use tenantry::resources::tenant_schema;
use tenantry::{Application, Config};
use tokio::sync::oneshot;
use tonic::Request;
use tonic::transport::Channel;

const ADMIN: &str = "lifecycle-admin-token-0123456789";

fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    request
}

fn call<T>(id: &str, key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
        .metadata_mut()
        .insert("x-tenant-id", id.parse().unwrap());
    request
}

struct Running {
    channel: Channel,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(dir: &std::path::Path) -> Running {
    let mut config = Config::with_data_dir(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_token = Some(Secret::new(ADMIN));
    let app = Application::build(config).await.unwrap();
    let addr = app.local_addr();
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
    Running {
        channel,
        stop,
        task,
    }
}

impl Running {
    fn admin(&self) -> TenantServiceClient<Channel> {
        TenantServiceClient::new(self.channel.clone()).max_decoding_message_size(16 << 20)
    }

    fn items(&self) -> ItemServiceClient<Channel> {
        ItemServiceClient::new(self.channel.clone())
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap();
    }
}

fn rate(count: usize, took: Duration) -> String {
    format!("{:.0}/s", count as f64 / took.as_secs_f64())
}

/// A tenant database at schema version 1 holding a few items.
fn write_v1_template(path: &std::path::Path) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    tenantry::storage::schema::migrate(&mut conn, &tenant_schema().migrations()[..1], "template")
        .unwrap();
    for n in 0..10i64 {
        conn.execute(
            "INSERT INTO items (id, title, description, completed, create_time, update_time, revision)
             VALUES (?1, ?2, '', 0, ?3, ?3, 1)",
            rusqlite::params![uuid::Uuid::now_v7().to_string(), format!("item {n}"), 1_700_000_000_000_000 + n],
        )
        .unwrap();
    }
}

async fn migrate_all(admin: &mut TenantServiceClient<Channel>) -> (Duration, usize, usize) {
    let started = Instant::now();
    let mut stream = admin
        .migrate_tenants(admin_request())
        .await
        .unwrap()
        .into_inner();
    let (mut ok, mut failed) = (0, 0);
    while let Some(report) = stream.next().await {
        let report = report.unwrap();
        if report.ok && report.to_version == tenant_schema().latest() {
            ok += 1;
        } else {
            failed += 1;
            eprintln!("failed: {report:?}");
        }
    }
    (started.elapsed(), ok, failed)
}

fn admin_request() -> Request<MigrateTenantsRequest> {
    admin(MigrateTenantsRequest {})
}

async fn count_items(items: &mut ItemServiceClient<Channel>, id: &str, key: &str) -> usize {
    let mut count = 0;
    let mut page_token = String::new();
    loop {
        let page = items
            .list_items(call(
                id,
                key,
                ListItemsRequest {
                    page_size: 1000,
                    page_token,
                    completed: None,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        count += page.items.len();
        if page.next_page_token.is_empty() {
            return count;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("numbers"));
    let tenant_count = args.next().unwrap_or(1000);
    let item_count = args.next().unwrap_or(100_000);
    let work = tempfile::TempDir::new().unwrap();
    let data = work.path().join("data");
    let mut summary = Vec::new();

    // Tenants, made through the API.
    let server = start(&data).await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for n in 0..tenant_count {
        let tenant = server
            .admin()
            .create_tenant(admin(CreateTenantRequest {
                tenant: Some(pb::Tenant {
                    name: format!("tenant-{n:06}"),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        ids.push(tenant.id);
    }
    let took = started.elapsed();
    summary.push(format!(
        "create {tenant_count} tenants: {took:.2?} ({})",
        rate(tenant_count, took)
    ));
    server.stop().await;

    // Every tenant back at schema version 1, holding data.
    let template = work.path().join("v1.db");
    write_v1_template(&template);
    for id in &ids {
        let path = data.join("tenants").join(format!("{id}.db"));
        std::fs::copy(&template, &path).unwrap();
    }
    rusqlite::Connection::open(data.join("catalog.db"))
        .unwrap()
        .execute("UPDATE tenants SET schema_version = 1", [])
        .unwrap();

    let server = start(&data).await;
    let mut tenants = server.admin();
    let (took, ok, failed) = migrate_all(&mut tenants).await;
    summary.push(format!(
        "MigrateTenants, {tenant_count} tenants from version 1 to {}: {took:.2?} ({}), {ok} ok, {failed} failed",
        tenant_schema().latest(),
        rate(ok, took)
    ));
    let (took, ok, failed) = migrate_all(&mut tenants).await;
    summary.push(format!(
        "MigrateTenants again, nothing to do: {took:.2?}, {} answers",
        ok + failed
    ));

    // One big tenant.
    let big = tenants
        .create_tenant(admin(CreateTenantRequest {
            tenant: Some(pb::Tenant {
                name: "big".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .id;
    let key = tenants
        .create_api_key(admin(CreateApiKeyRequest {
            tenant_id: big.clone(),
            description: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let started = Instant::now();
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let (mut items, big, key) = (server.items(), big.clone(), key.clone());
            tokio::spawn(async move {
                for n in (w..item_count).step_by(32) {
                    items
                        .create_item(call(
                            &big,
                            &key,
                            pb::CreateItemRequest {
                                item: Some(pb::Item {
                                    title: format!("item {n:06}"),
                                    description: "a short description of the item".into(),
                                    ..Default::default()
                                }),
                            },
                        ))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let took = started.elapsed();
    summary.push(format!(
        "fill one tenant with {item_count} items (CreateItem, 32 in flight): {took:.2?} ({})",
        rate(item_count, took)
    ));

    let started = Instant::now();
    let backup = tenants
        .backup_tenant(admin(BackupTenantRequest { id: big.clone() }))
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    summary.push(format!(
        "BackupTenant, {item_count} items, {:.1} MiB: {took:.2?}",
        backup.size_bytes as f64 / (1 << 20) as f64
    ));

    let started = Instant::now();
    let mut stream = tenants
        .export_tenant(admin(ExportTenantRequest { id: big.clone() }))
        .await
        .unwrap()
        .into_inner();
    let mut exported = Vec::new();
    while let Some(message) = stream.next().await {
        exported.extend(message.unwrap().chunk);
    }
    let took = started.elapsed();
    assert_eq!(exported.len() as u64, backup.size_bytes);
    summary.push(format!(
        "ExportTenant, {:.1} MiB streamed: {took:.2?}",
        exported.len() as f64 / (1 << 20) as f64
    ));

    let mut items = server.items();
    let first = items
        .list_items(call(&big, &key, ListItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items;
    for item in &first {
        items
            .delete_item(call(
                &big,
                &key,
                pb::DeleteItemRequest {
                    id: item.id.clone(),
                },
            ))
            .await
            .unwrap();
    }
    assert_eq!(
        count_items(&mut items, &big, &key).await,
        item_count - first.len()
    );

    let started = Instant::now();
    tenants
        .restore_tenant(admin(RestoreTenantRequest {
            id: big.clone(),
            source: Some(pb::restore_tenant_request::Source::BackupPath(
                backup.path.clone(),
            )),
            request_id: String::new(),
        }))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(count_items(&mut items, &big, &key).await, item_count);
    summary.push(format!(
        "RestoreTenant, {item_count} items: {took:.2?} (checked: every item back)"
    ));

    let started = Instant::now();
    let mut chunks: Vec<_> = exported
        .chunks(1 << 20)
        .map(|chunk| ImportTenantRequest {
            chunk: chunk.to_vec(),
            ..Default::default()
        })
        .collect();
    chunks[0].id = big.clone();
    chunks[0].sha256 = backup.sha256.clone();
    tenants
        .import_tenant(admin(futures::stream::iter(chunks)))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(count_items(&mut items, &big, &key).await, item_count);
    summary.push(format!(
        "ImportTenant, 1 MiB chunks: {took:.2?} (checked: every item there)"
    ));
    server.stop().await;

    // The checks ImportTenant and RestoreTenant make, against the one
    // alternative that would also leave nothing of an upload's schema: a
    // new file made by tenantry, the rows copied into it. The copy alone
    // already costs more than the checks, which it would still need (the
    // upload's schema must be tenantry's before its rows are read, and
    // every row must be one the API could have written).
    let scratch = tempfile::TempDir::new().unwrap();
    let upload = scratch.path().join("upload.db");
    std::fs::write(&upload, &exported).unwrap();
    let started = Instant::now();
    tenantry::tenant::snapshot::check_and_upgrade(&upload, tenant_schema(), None).unwrap();
    let checked = started.elapsed();
    let rebuilt = scratch.path().join("rebuilt.db");
    let started = Instant::now();
    {
        let mut conn = rusqlite::Connection::open(&rebuilt).unwrap();
        tenantry::storage::schema::migrate(&mut conn, tenant_schema().migrations(), "a rebuild")
            .unwrap();
        conn.execute_batch(&format!(
            "ATTACH '{}' AS upload;
             BEGIN;
             INSERT INTO main.items SELECT * FROM upload.items;
             INSERT INTO main.audit_events SELECT * FROM upload.audit_events;
             COMMIT;",
            upload.display()
        ))
        .unwrap();
    }
    let copied = started.elapsed();
    let conn = rusqlite::Connection::open(&upload).unwrap();
    let started = Instant::now();
    let _: String = conn
        .query_row("PRAGMA integrity_check(5)", [], |row| row.get(0))
        .unwrap();
    let integrity = started.elapsed();

    summary.push(format!(
        "checking a {item_count}-item snapshot in place (schema, integrity, every row): \
         {checked:.2?}, of which integrity_check {integrity:.2?}; copying its rows into a new \
         file instead: {copied:.2?} before any check"
    ));

    println!("lifecycle figures (one run, in-process server, loopback, release build)");
    for line in summary {
        println!("  {line}");
    }
}

//! Rough figures for the two paths of a call, over real gRPC on loopback:
//!
//! - latency of a GetItem that must open its tenant (first call after a
//!   restart) against one whose tenant is already open;
//! - GetItem calls per second on open tenants, next to `grpc.health.v1`
//!   Check calls per second measured the same way in the same run (the
//!   transport's ceiling), and their ratio.
//!
//! The server runs in this process on 127.0.0.1:0 with a temporary data
//! directory, exactly as the tests start it.
//!
//! ```sh
//! cargo run --release --example figures -- [tenants] [seconds] [in-flight]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantry::auth::Secret;
use tenantry::pb::item_service_client::ItemServiceClient;
use tenantry::pb::tenant_service_client::TenantServiceClient;
use tenantry::pb::{self, CreateApiKeyRequest, CreateTenantRequest, GetItemRequest};
use tenantry::{Application, Config};
use tokio::sync::oneshot;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const ADMIN: &str = "figures-admin-token-0123456789";

struct Tenant {
    id: String,
    key: String,
    item: String,
}

fn call<T>(tenant: &Tenant, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let bearer: MetadataValue<_> = format!("Bearer {}", tenant.key).parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    request
        .metadata_mut()
        .insert("x-tenant-id", tenant.id.parse().unwrap());
    request
}

fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    request
}

async fn start(
    dir: &std::path::Path,
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
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
    (addr, stop, task)
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p50 = percentile(&samples, 0.5);
    println!(
        "{name:<28} n={:<6} p50={:>8.1?} p90={:>8.1?} p99={:>8.1?}",
        samples.len(),
        p50,
        percentile(&samples, 0.9),
        percentile(&samples, 0.99)
    );
    p50
}

/// Runs `in_flight` loops of `op` for `duration`, returns calls per second.
async fn throughput<F, Fut>(in_flight: usize, duration: Duration, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..in_flight)
        .map(|worker| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut calls = 0u64;
                while Instant::now() < deadline {
                    op(worker + calls as usize).await;
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.unwrap();
    }
    total as f64 / duration.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("numbers"));
    let tenant_count = args.next().unwrap_or(200) as usize;
    let seconds = args.next().unwrap_or(5);
    let in_flight = args.next().unwrap_or(32) as usize;
    let dir = tempfile::TempDir::new().unwrap();

    // Set up tenants, a key and an item each, then restart so none is open.
    let (addr, stop, task) = start(dir.path()).await;
    let mut tenants_api = TenantServiceClient::new(channel(addr).await);
    let mut items_api = ItemServiceClient::new(channel(addr).await);
    let mut tenants = Vec::new();
    for n in 0..tenant_count {
        let tenant = tenants_api
            .create_tenant(admin(CreateTenantRequest {
                tenant: Some(pb::Tenant {
                    name: format!("tenant-{n}"),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let key = tenants_api
            .create_api_key(admin(CreateApiKeyRequest {
                tenant_id: tenant.id.clone(),
                description: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        let mut t = Tenant {
            id: tenant.id,
            key: key.secret,
            item: String::new(),
        };
        let item = pb::Item {
            title: format!("item of tenant {n}"),
            ..Default::default()
        };
        t.item = items_api
            .create_item(call(&t, pb::CreateItemRequest { item: Some(item) }))
            .await
            .unwrap()
            .into_inner()
            .id;
        tenants.push(t);
    }
    stop.send(()).unwrap();
    task.await.unwrap();

    let (addr, stop, task) = start(dir.path()).await;
    let channel = channel(addr).await;
    let mut items_api = ItemServiceClient::new(channel.clone());
    // Warm the credential cache, so that the cold figure is the tenant open alone.
    let mut health = HealthClient::new(channel.clone());
    health.check(HealthCheckRequest::default()).await.unwrap();

    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for tenant in &tenants {
        for samples in [&mut cold, &mut warm] {
            let started = Instant::now();
            items_api
                .get_item(call(
                    tenant,
                    GetItemRequest {
                        id: tenant.item.clone(),
                    },
                ))
                .await
                .unwrap();
            samples.push(started.elapsed());
        }
    }
    println!("{tenant_count} tenants, one GetItem each after a restart, then a second one:");
    let cold_p50 = summary("first call (opens tenant)", cold);
    let warm_p50 = summary("second call (tenant open)", warm);
    println!(
        "first/second p50 ratio: {:.1}",
        cold_p50.as_secs_f64() / warm_p50.as_secs_f64()
    );

    let duration = Duration::from_secs(seconds);
    println!("\n{in_flight} calls in flight on one HTTP/2 connection, {seconds} s each:");
    let health_rate = {
        let health = HealthClient::new(channel.clone());
        throughput(in_flight, duration, move |_| {
            let mut health = health.clone();
            async move {
                health.check(HealthCheckRequest::default()).await.unwrap();
            }
        })
        .await
    };
    let tenants = Arc::new(tenants);
    let get_rate = {
        let items = ItemServiceClient::new(channel.clone());
        let tenants = tenants.clone();
        throughput(in_flight, duration, move |n| {
            let mut items = items.clone();
            let tenant = &tenants[n % tenants.len()];
            let request = call(
                tenant,
                GetItemRequest {
                    id: tenant.item.clone(),
                },
            );
            async move {
                items.get_item(request).await.unwrap();
            }
        })
        .await
    };
    println!("Health/Check: {health_rate:>9.0} calls/s");
    println!(
        "GetItem:      {get_rate:>9.0} calls/s  ({:.2} of Health/Check)",
        get_rate / health_rate
    );

    stop.send(()).unwrap();
    task.await.unwrap();
}

//! Seeding tenants, and driving calls at a server: `in_flight` loops spread
//! over `connections` HTTP/2 connections, each picking a tenant by the spread
//! and an operation by the mix, timing every call into a histogram.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::target::{Target, bearer};
use super::{Failure, Mix, Op, Spread};
use tenantry::pb::item_service_client::ItemServiceClient;
use tenantry::pb::tenant_service_client::TenantServiceClient;
use tenantry::pb::{self, CreateApiKeyRequest, CreateTenantRequest};

/// A tenant the benchmark made, with what its calls need.
pub struct Seeded {
    pub id: MetadataValue<Ascii>,
    pub key: MetadataValue<Ascii>,
    pub items: Vec<String>,
}

pub fn request<T>(
    message: T,
    key: &MetadataValue<Ascii>,
    tenant: Option<&MetadataValue<Ascii>>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", key.clone());
    if let Some(tenant) = tenant {
        request.metadata_mut().insert("x-tenant-id", tenant.clone());
    }
    request
}

/// Creates `count` tenants, each with an API key (unless `keys` is false)
/// and `items` items, `parallelism` tenants at a time. Prints progress.
pub async fn seed(
    target: &Target,
    count: usize,
    items: usize,
    keys: bool,
    parallelism: usize,
) -> Result<(Vec<Seeded>, Duration), Failure> {
    let started = Instant::now();
    let channel = target.channel().await?;
    let admin = target.admin.clone();
    let mut seeded = Vec::with_capacity(count);
    let mut made = futures::stream::iter(0..count)
        .map(|n| seed_one(channel.clone(), admin.clone(), n, items, keys))
        .buffer_unordered(parallelism.max(1));
    let step = (count / 10).max(1000);
    while let Some(tenant) = made.next().await {
        seeded.push(tenant?);
        if seeded.len() % step == 0 && seeded.len() < count {
            eprintln!(
                "  seeded {} of {count} tenants ({:.0}/s)",
                seeded.len(),
                seeded.len() as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    Ok((seeded, started.elapsed()))
}

/// A CreateTenant call for a tenant of that name, as the admin.
pub fn create_tenant(
    name: String,
    admin: &MetadataValue<Ascii>,
) -> tonic::Request<CreateTenantRequest> {
    request(
        CreateTenantRequest {
            tenant: Some(pb::Tenant {
                name,
                ..Default::default()
            }),
            ..Default::default()
        },
        admin,
        None,
    )
}

async fn seed_one(
    channel: Channel,
    admin: MetadataValue<Ascii>,
    n: usize,
    items: usize,
    keys: bool,
) -> Result<Seeded, Failure> {
    let mut tenants = TenantServiceClient::new(channel.clone());
    let tenant = tenants
        .create_tenant(create_tenant(format!("bench-{n}"), &admin))
        .await
        .map_err(|s| format!("CreateTenant: {s}"))?
        .into_inner();
    let id: MetadataValue<Ascii> = tenant.id.parse().map_err(|_| "a tenant id is ASCII")?;
    let key = if keys {
        let key = tenants
            .create_api_key(request(
                CreateApiKeyRequest {
                    tenant_id: tenant.id.clone(),
                    description: "bench".into(),
                },
                &admin,
                None,
            ))
            .await
            .map_err(|s| format!("CreateApiKey: {s}"))?
            .into_inner();
        bearer(&key.secret)?
    } else {
        admin.clone()
    };
    let mut client = ItemServiceClient::new(channel);
    let mut ids = Vec::with_capacity(items);
    for i in 0..items {
        let item = client
            .create_item(request(
                pb::CreateItemRequest {
                    item: Some(pb::Item {
                        title: format!("item {i} of tenant {n}"),
                        description: "seeded by the benchmark".into(),
                        ..Default::default()
                    }),
                },
                &key,
                Some(&id),
            ))
            .await
            .map_err(|s| format!("CreateItem: {s}"))?
            .into_inner();
        ids.push(item.id);
    }
    Ok(Seeded {
        id,
        key,
        items: ids,
    })
}

/// How calls are driven.
#[derive(Clone, Debug)]
pub struct Load {
    pub connections: usize,
    pub in_flight: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one phase measured.
pub struct Measured {
    pub duration: Duration,
    /// CPU time the server used during the measurement, if it runs here.
    pub server_cpu: Option<Duration>,
    pub latencies: BTreeMap<Op, Histogram<u64>>,
    /// Failed calls by operation and status code.
    pub errors: BTreeMap<(Op, i32), u64>,
}

impl Measured {
    fn new(duration: Duration) -> Self {
        Measured {
            duration,
            server_cpu: None,
            latencies: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, op: Op, latency: Duration) {
        self.latencies
            .entry(op)
            .or_insert_with(histogram)
            .saturating_record(latency.as_nanos() as u64);
    }

    fn merge(&mut self, other: Measured) {
        for (op, h) in other.latencies {
            self.latencies
                .entry(op)
                .or_insert_with(histogram)
                .add(h)
                .expect("histograms of the same bounds add up");
        }
        for (key, n) in other.errors {
            *self.errors.entry(key).or_default() += n;
        }
    }

    /// Successful calls per second of one operation.
    pub fn rate(&self, op: Op) -> f64 {
        self.latencies.get(&op).map_or(0.0, |h| h.len() as f64) / self.duration.as_secs_f64()
    }

    pub fn total_rate(&self) -> f64 {
        self.latencies.values().map(|h| h.len() as f64).sum::<f64>() / self.duration.as_secs_f64()
    }

    /// A latency quantile of one operation's successful calls.
    pub fn quantile(&self, op: Op, q: f64) -> Option<Duration> {
        let h = self.latencies.get(&op)?;
        (!h.is_empty()).then(|| Duration::from_nanos(h.value_at_quantile(q)))
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The server's CPU time per call answered (successfully or not): what
    /// a call costs the server, whatever else the machine does meanwhile.
    pub fn server_cpu_per_call(&self) -> Option<Duration> {
        let calls = self.latencies.values().map(|h| h.len()).sum::<u64>() + self.error_count();
        let cpu = self.server_cpu?;
        (calls > 0).then(|| cpu / calls as u32)
    }
}

/// Latencies from 1 µs to 60 s, in nanoseconds, to 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Drives `in_flight` loops of calls over `connections` connections:
/// Health/Check only when `mix` is `None`, else item calls on `tenants`
/// picked by `spread`. Calls that start during the warm-up are not counted.
pub async fn drive(
    target: &Target,
    load: &Load,
    tenants: Arc<Vec<Seeded>>,
    spread: &Spread,
    mix: Option<&Mix>,
) -> Result<Measured, Failure> {
    let mut channels = Vec::with_capacity(load.connections);
    for _ in 0..load.connections.max(1) {
        channels.push(target.channel().await?);
    }
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let end = measure_from + load.duration;
    let picker = Arc::new(Picker::new(tenants.len(), spread)?);
    let mut loops = Vec::with_capacity(load.in_flight);
    for worker in 0..load.in_flight.max(1) {
        let channel = channels[worker % channels.len()].clone();
        let tenants = tenants.clone();
        let picker = picker.clone();
        let mix = mix.cloned();
        let duration = load.duration;
        loops.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(worker as u64 * 7919 + 1);
            let mut health = HealthClient::new(channel.clone());
            let mut items = ItemServiceClient::new(channel);
            let mut measured = Measured::new(duration);
            let mut counter = 0u64;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let (op, outcome) = match &mix {
                    None => (
                        Op::Health,
                        health
                            .check(HealthCheckRequest::default())
                            .await
                            .map(|_| ())
                            .map_err(|status| status.code()),
                    ),
                    Some(mix) => {
                        let op = mix.pick(&mut rng);
                        let tenant = &tenants[picker.pick(&mut rng)];
                        counter += 1;
                        (
                            op,
                            item_call(&mut items, op, tenant, &mut rng, worker, counter).await,
                        )
                    }
                };
                if began >= measure_from {
                    match outcome {
                        Ok(()) => measured.record(op, began.elapsed()),
                        Err(code) => *measured.errors.entry((op, code as i32)).or_default() += 1,
                    }
                }
            }
            measured
        }));
    }
    let cpu = async {
        tokio::time::sleep_until(measure_from.into()).await;
        let before = target.cpu_time();
        tokio::time::sleep_until(end.into()).await;
        let after = target.cpu_time();
        before.zip(after).map(|(b, a)| a.saturating_sub(b))
    };
    let collect = async {
        let mut total = Measured::new(load.duration);
        for l in loops {
            total.merge(l.await.map_err(|e| format!("a load loop failed: {e}"))?);
        }
        Ok::<_, Failure>(total)
    };
    let (cpu, total) = tokio::join!(cpu, collect);
    let mut total = total?;
    total.server_cpu = cpu;
    Ok(total)
}

/// One item call; the status code if it failed.
pub async fn item_call(
    client: &mut ItemServiceClient<Channel>,
    op: Op,
    tenant: &Seeded,
    rng: &mut SmallRng,
    worker: usize,
    counter: u64,
) -> Result<(), Code> {
    let mut item_id = || {
        tenant
            .items
            .get(rng.random_range(0..tenant.items.len().max(1)))
            .cloned()
            .unwrap_or_default()
    };
    let key = &tenant.key;
    let id = Some(&tenant.id);
    let answer = match op {
        Op::Health => unreachable!("health is not an item call"),
        Op::Get => client
            .get_item(request(pb::GetItemRequest { id: item_id() }, key, id))
            .await
            .map(|_| ()),
        Op::List => client
            .list_items(request(
                pb::ListItemsRequest {
                    page_size: 10,
                    ..Default::default()
                },
                key,
                id,
            ))
            .await
            .map(|_| ()),
        Op::Create => client
            .create_item(request(
                pb::CreateItemRequest {
                    item: Some(pb::Item {
                        title: format!("bench item {worker}-{counter}"),
                        description: "written by the benchmark".into(),
                        ..Default::default()
                    }),
                },
                key,
                id,
            ))
            .await
            .map(|_| ()),
        Op::Update => client
            .update_item(request(
                pb::UpdateItemRequest {
                    item: Some(pb::Item {
                        id: item_id(),
                        title: format!("updated {worker}-{counter}"),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["title".into()],
                    }),
                },
                key,
                id,
            ))
            .await
            .map(|_| ()),
    };
    answer.map_err(|status| status.code())
}

/// Picks tenant indexes: uniformly, or by a Zipf law (index 0 the hottest).
pub struct Picker {
    count: usize,
    zipf: Option<Zipf<f64>>,
}

impl Picker {
    pub fn new(count: usize, spread: &Spread) -> Result<Self, Failure> {
        if count == 0 {
            return Err("no tenants to call".into());
        }
        let zipf = match spread {
            Spread::Uniform => None,
            Spread::Zipf(s) => {
                Some(Zipf::new(count as f64, *s).map_err(|e| format!("--spread zipf:{s}: {e}"))?)
            }
        };
        Ok(Picker { count, zipf })
    }

    pub fn pick(&self, rng: &mut SmallRng) -> usize {
        match &self.zipf {
            None => rng.random_range(0..self.count),
            Some(zipf) => (zipf.sample(rng) as usize).clamp(1, self.count) - 1,
        }
    }
}

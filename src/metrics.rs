//! Prometheus metrics, served as text on their own address
//! (`--metrics-listen`, off unless set; see [`crate::server::metrics_endpoint`]).
//!
//! No metric has a tenant label: the number of series must not grow with the
//! number of tenants. Methods are labelled by their gRPC path only when the
//! server knows the method; any other path is `unknown`, so that a client
//! cannot make series up either.

use std::collections::HashSet;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as MetricRegistry;
use prost::Message;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// 100 µs to about 3.3 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric of one server.
pub struct Metrics {
    registry: MetricRegistry,
    known_methods: HashSet<String>,
    pub calls: Family<CallLabels, Counter>,
    pub call_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub open_tenants: Gauge,
    pub registry_hits: Counter,
    pub registry_misses: Counter,
    pub registry_evictions: Counter,
    pub tenant_open_duration: Histogram,
    pub migrations: Family<OutcomeLabels, Counter>,
    pub backups: Family<KindLabels, Counter>,
    pub restores: Family<KindLabels, Counter>,
    pub tenants_created: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = MetricRegistry::with_prefix("tenantry");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "calls",
            "gRPC calls finished, by method and status code",
            calls.clone(),
        );
        let call_duration =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "call_duration_seconds",
            "gRPC call latency, from the request's arrival to its last frame, by method",
            call_duration.clone(),
        );
        let open_tenants = Gauge::default();
        registry.register(
            "open_tenants",
            "tenant databases open in the registry now",
            open_tenants.clone(),
        );
        let registry_hits = Counter::default();
        registry.register(
            "registry_hits",
            "tenant lookups that found the tenant open",
            registry_hits.clone(),
        );
        let registry_misses = Counter::default();
        registry.register(
            "registry_misses",
            "tenant lookups that had to open the tenant's file",
            registry_misses.clone(),
        );
        let registry_evictions = Counter::default();
        registry.register(
            "registry_evictions",
            "tenants closed because the registry was full or they were idle",
            registry_evictions.clone(),
        );
        let tenant_open_duration = latency_histogram();
        registry.register(
            "tenant_open_duration_seconds",
            "time to open a tenant's file (and migrate it if needed)",
            tenant_open_duration.clone(),
        );
        let migrations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "migrations",
            "tenant schema migrations, lazy or eager, by outcome (ok, failed)",
            migrations.clone(),
        );
        let backups = Family::<KindLabels, Counter>::default();
        registry.register(
            "backups",
            "snapshots taken, by kind (backup, export)",
            backups.clone(),
        );
        let restores = Family::<KindLabels, Counter>::default();
        registry.register(
            "restores",
            "tenants restored, by kind (restore, import)",
            restores.clone(),
        );
        let tenants_created = Family::<KindLabels, Counter>::default();
        registry.register(
            "tenants_created",
            "tenants created, by how their file was made (spare: made ahead, new: made \
             at the creation, copy: a clone)",
            tenants_created.clone(),
        );
        Metrics {
            registry,
            tenants_created,
            known_methods: known_methods(),
            calls,
            call_duration,
            open_tenants,
            registry_hits,
            registry_misses,
            registry_evictions,
            tenant_open_duration,
            migrations,
            backups,
            restores,
        }
    }

    /// A method as labelled: its path if the server serves it, else
    /// `unknown`.
    pub fn method_label(&self, path: &str) -> String {
        if self.known_methods.contains(path) {
            path.to_owned()
        } else {
            "unknown".to_owned()
        }
    }

    /// Counts one finished call.
    pub fn call_finished(&self, path: &str, code: &str, duration: Duration) {
        let method = self.method_label(path);
        self.calls
            .get_or_create(&CallLabels {
                method: method.clone(),
                code: code.to_owned(),
            })
            .inc();
        self.call_duration
            .get_or_create(&MethodLabels { method })
            .observe(duration.as_secs_f64());
    }

    /// The exposition text (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}

/// The gRPC paths the server serves: every method of `proto/`, health and
/// reflection.
fn known_methods() -> HashSet<String> {
    let mut known: HashSet<String> = [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let files = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
        .expect("the compiled descriptor set decodes");
    for file in files.file {
        let package = file.package();
        for service in &file.service {
            for method in &service.method {
                known.insert(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    known
}

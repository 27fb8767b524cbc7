//! Micro-benchmarks of the steps every item call takes, in the order a
//! GetItem takes them (see `src/lib.rs`): the credential check, admission
//! (routing), the registry lookup of an open tenant, and one point read.
//!
//! ```sh
//! cargo bench --bench hot_path
//! ```
//!
//! Everything runs in this process on a real data directory in a temporary
//! folder: a catalog with one tenant and one API key, and that tenant's
//! database holding 10,000 items. There is no server and no network here; the
//! figures of whole calls over gRPC come from `examples/figures.rs`. No log
//! subscriber is installed: the warning a server writes for a refused
//! credential costs nothing here.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use rand::seq::SliceRandom;
use tempfile::TempDir;
use tenantry::Config;
use tenantry::auth::{Authenticator, Caller, NewApiKey, Secret};
use tenantry::catalog::{ApiKeyRecord, store};
use tenantry::clock::now_micros;
use tenantry::ids::{TenantId, TenantName};
use tenantry::layers::routing::{AdmissionLayer, TENANT_HEADER};
use tenantry::resources::items::store::{self as items, NewItem};
use tenantry::server::OpenData;
use tenantry::storage::sqlite::{self, PoolSettings};
use tenantry::tenant::{Lifecycle, Registry, RegistrySettings};
use tokio::runtime::Runtime;
use tonic::body::Body;
use tower::{Layer, ServiceExt};
use uuid::Uuid;

const ITEMS: usize = 10_000;
const ADMIN_TOKEN: &str = "hot-path-admin-token-0123456789";

/// One data directory, set up as a server would find it after a tenant was
/// created, given a key and filled with items.
struct Fixture {
    runtime: Runtime,
    config: Config,
    data: OpenData,
    auth: Authenticator,
    tenant: TenantId,
    key: Secret,
    /// Every item's id, in random order, so that consecutive reads land on
    /// different pages of the file as a tenant's calls would.
    items: Vec<Uuid>,
    _dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("building the tokio runtime");
        let dir = tempfile::tempdir().expect("making a temporary directory");
        let mut config = Config::with_data_dir(dir.path());
        // The default, set here so that TENANTRY_INLINE_READS in the
        // environment cannot change what is measured.
        config.inline_reads = true;
        let data = OpenData::open(&config).expect("opening the data directory");
        // Longer than the whole run: what is measured is the common case, a
        // key whose grant is cached.
        let auth = Authenticator::new(
            &Secret::new(ADMIN_TOKEN),
            data.catalog.clone(),
            Duration::from_secs(3600),
        );
        let (tenant, key, mut items) = runtime.block_on(populate(&data, &auth));
        items.shuffle(&mut rand::rng());
        Fixture {
            runtime,
            config,
            data,
            auth,
            tenant,
            key,
            items,
            _dir: dir,
        }
    }
}

/// The `authorization` header value of a token.
fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Creates a tenant as CreateTenant does, gives it an API key as
/// CreateApiKey does, and writes its items.
async fn populate(data: &OpenData, auth: &Authenticator) -> (TenantId, Secret, Vec<Uuid>) {
    let lifecycle = Lifecycle::new(data.registry.clone(), auth.clone(), data.spares.clone());
    let name = TenantName::parse("name", "hot-path").expect("a valid name");
    let tenant = lifecycle
        .create_tenant(name, "Hot path".into(), None, None)
        .await
        .expect("creating a tenant")
        .1
        .id;
    let key = NewApiKey::generate();
    let record = ApiKeyRecord {
        id: key.id,
        tenant_id: tenant,
        description: "micro-benchmarks".into(),
        secret_sha256: key.secret_sha256,
        create_time: now_micros(),
        revoke_time: None,
    };
    data.catalog
        .write(move |tx| store::insert_api_key(tx, &record))
        .await
        .expect("creating an api key");
    let items = data
        .registry
        .write(tenant, |tx| {
            (0..ITEMS)
                .map(|n| {
                    let new = NewItem {
                        title: format!("Item {n}"),
                        description: format!("The description of item {n}."),
                        completed: n % 3 == 0,
                        due_time: None,
                    };
                    items::insert(tx, new).map(|item| item.id)
                })
                .collect()
        })
        .await
        .expect("writing items");
    (tenant, key.token, items)
}

/// Each call of the returned closure gives the next item id, round the list.
fn item_ids(items: &[Uuid]) -> impl FnMut() -> Uuid + '_ {
    let mut ids = items.iter().cycle();
    move || *ids.next().expect("the list is not empty")
}

/// The credential check of a call with one `authorization` header.
async fn check(auth: &Authenticator, header: &str) -> tenantry::error::Result<Caller> {
    let (caller, _grant) = auth
        .authenticate(std::iter::once(header.as_bytes()))
        .await?;
    Ok(caller)
}

fn credential_check(c: &mut Criterion, f: &Fixture) {
    let auth = &f.auth;
    let key = bearer(f.key.expose());
    let admin = bearer(ADMIN_TOKEN);
    let wrong = {
        let token = f.key.expose();
        let flipped = if token.ends_with('0') { '1' } else { '0' };
        bearer(&format!("{}{flipped}", &token[..token.len() - 1]))
    };
    let caller = f.runtime.block_on(check(auth, &key));
    assert!(matches!(caller, Ok(Caller::Tenant { tenant_id, .. }) if tenant_id == f.tenant));
    let caller = f.runtime.block_on(check(auth, &admin));
    assert!(matches!(caller, Ok(Caller::Admin)));
    assert!(f.runtime.block_on(check(auth, &wrong)).is_err());

    let mut group = c.benchmark_group("credential check");
    group.bench_function("api key, cached grant", |b| {
        b.to_async(&f.runtime)
            .iter(|| async { check(auth, &key).await.expect("accepted") });
    });
    group.bench_function("admin token", |b| {
        b.to_async(&f.runtime)
            .iter(|| async { check(auth, &admin).await.expect("accepted") });
    });
    group.bench_function("api key, wrong secret (refused)", |b| {
        b.to_async(&f.runtime)
            .iter(|| async { check(auth, &wrong).await.expect_err("refused") });
    });
    group.finish();
}

fn tenant_routing(c: &mut Criterion, f: &Fixture) {
    // A stand-in for the services behind the layer, so that only admission
    // is measured.
    let inner = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let admission =
        AdmissionLayer::new(f.auth.clone(), f.config.tenant_max_concurrent_calls).layer(inner);
    let authorization = bearer(f.key.expose());
    let tenant = f.tenant.to_string();
    let request = || {
        Request::post("/tenantry.v1.ItemService/GetItem")
            .header(http::header::AUTHORIZATION, &authorization)
            .header(TENANT_HEADER, &tenant)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(Body::empty())
            .expect("a valid request")
    };
    let admitted = |response: Response<Body>| {
        // A refusal is an HTTP 200 with a grpc-status header; admitted calls
        // reach the stand-in, which sets none.
        assert!(
            !response.headers().contains_key("grpc-status"),
            "admission refused the call: {:?}",
            response.headers()
        );
    };
    admitted(
        f.runtime
            .block_on(admission.clone().oneshot(request()))
            .expect("infallible"),
    );

    let mut group = c.benchmark_group("tenant routing");
    group.bench_function("admission of a GetItem (api key, x-tenant-id)", |b| {
        b.to_async(&f.runtime).iter_batched(
            request,
            |request| {
                let admission = admission.clone();
                async move { admitted(admission.oneshot(request).await.expect("infallible")) }
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("TenantId::parse", |b| {
        b.iter(|| TenantId::parse(TENANT_HEADER, black_box(&tenant)).expect("canonical"));
    });
    group.finish();
}

fn registry_lookup(c: &mut Criterion, f: &Fixture) {
    let registry = &f.data.registry;
    assert!(
        registry.is_open(f.tenant),
        "the items were written through it"
    );
    let mut group = c.benchmark_group("registry lookup");
    // A lookup and a turn, with a read that does nothing.
    group.bench_function("Registry::read of nothing, tenant open", |b| {
        b.to_async(&f.runtime)
            .iter(|| async { registry.read(f.tenant, |_| Ok(())).await.expect("open") });
    });
    group.finish();
}

fn point_read(c: &mut Criterion, f: &Fixture) {
    let registry = &f.data.registry;
    // The same tenant file, behind a registry that hands every read to a
    // blocking thread, as `--inline-reads false` does.
    let handed_off = Registry::new(
        f.data.catalog.clone(),
        f.data.data_dir.clone(),
        RegistrySettings {
            max_open: f.config.max_open_tenants,
            idle: f.config.tenant_idle(),
            max_staging_bytes: f.config.max_staging_mib << 20,
            schema: registry.schema(),
            pool: PoolSettings {
                inline_reads: false,
                ..registry.pool_settings().clone()
            },
        },
    );
    // An open tenant's one connection owns its file (locking_mode
    // EXCLUSIVE): the bare connection and the two registries take it in
    // turn, each closing it before the next opens it.
    f.runtime.block_on(registry.close_all());
    let conn = sqlite::open_connection(
        &f.data.data_dir.tenant_file(f.tenant),
        registry.pool_settings(),
    )
    .expect("opening a connection");
    let first = f.items[0];
    assert!(items::get(&conn, first).expect("read").is_some());

    let mut group = c.benchmark_group("point read, 1 of 10,000 items");
    group.bench_function("items::get on a connection", |b| {
        let mut next = item_ids(&f.items);
        b.iter(|| items::get(&conn, next()).expect("read"));
    });
    drop(conn);
    for (name, registry) in [
        ("Registry::read, inline (default)", registry),
        ("Registry::read, on a blocking thread", &handed_off),
    ] {
        let found = f
            .runtime
            .block_on(registry.read(f.tenant, move |conn| items::get(conn, first)));
        assert!(found.expect("read").is_some());
        group.bench_function(name, |b| {
            let mut next = item_ids(&f.items);
            b.to_async(&f.runtime).iter(|| {
                let id = next();
                async move {
                    registry
                        .read(f.tenant, move |conn| items::get(conn, id))
                        .await
                        .expect("read")
                }
            });
        });
        f.runtime.block_on(registry.close_all());
    }
    group.finish();
}

fn hot_path(c: &mut Criterion) {
    let fixture = Fixture::new();
    credential_check(c, &fixture);
    tenant_routing(c, &fixture);
    registry_lookup(c, &fixture);
    point_read(c, &fixture);
}

criterion_group! {
    name = benches;
    // Short, so that the whole suite takes about a minute; pass
    // `-- --measurement-time 10` for steadier figures.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = hot_path
}
criterion_main!(benches);

//! Assembles the server: opens the data directory, builds the layers and
//! services, binds the listener, serves until told to stop, then shuts down
//! in order: stop accepting, let in-flight calls finish, close every tenant
//! database.

pub mod metrics_endpoint;
pub mod shutdown;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::api::audited::AuditedTenantApi;
use crate::api::tenants::{AdminSettings, TenantApi};
use crate::auth::{self, Authenticator};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::{Context, Error, Result};
use crate::layers::calls::CallLogLayer;
use crate::layers::limits::LimitsLayer;
use crate::layers::routing::AdmissionLayer;
use crate::pb::{self, tenant_service_server::TenantServiceServer};
use crate::resources::{RESOURCES, Serving};
use crate::storage::data_dir::DataDir;
use crate::storage::disk::Disk;
use crate::storage::sqlite::{PoolSettings, run_blocking};
use crate::tenant::spares::Spares;
use crate::tenant::{Lifecycle, Registry, RegistrySettings};
use crate::transport::log_summary::Summaries;

/// File descriptors kept free for the listener, the catalog, searches,
/// snapshots and metrics, beyond those of open tenants and of client
/// connections.
pub const RESERVED_FDS: u64 = 256;
/// The most client connections chosen when `--max-connections` is 0.
const AUTO_MAX_CONNECTIONS: u64 = 4096;
/// Fewer connections than this left by the open-file limit is a
/// configuration error.
const MIN_CONNECTIONS: u64 = 16;
/// Connections the metrics listener serves at once (scrapers are few).
const METRICS_CONNECTIONS: usize = 16;
/// A SQLite connection in WAL mode holds up to three descriptors: the
/// database, its `-wal` and its `-shm`.
pub const FDS_PER_CONNECTION: u64 = 3;
/// An open tenant's one connection owns its file and has no `-shm`: two.
pub const FDS_PER_TENANT: u64 = 2;

/// A server that is bound and ready to serve.
pub struct Application {
    listener: TcpListener,
    max_connections: usize,
    metrics_listener: Option<TcpListener>,
    config: Config,
    registry: Registry,
    spares: Spares,
    auth: Authenticator,
    _lock: std::fs::File,
}

/// The data directory opened for use: locked, catalog migrated, crashes
/// recovered from. What the server and the offline commands start from.
pub struct OpenData {
    pub data_dir: DataDir,
    pub catalog: Catalog,
    pub registry: Registry,
    pub spares: Spares,
    lock: std::fs::File,
}

impl OpenData {
    /// Locks the data directory, opens and migrates the catalog, and
    /// finishes or rolls back whatever a crash interrupted. Blocking.
    pub fn open(config: &Config) -> Result<Self> {
        let data_dir = DataDir::create(&config.data_dir)?;
        let lock = data_dir.lock()?;
        // The catalog is read through a memory map (shared by its
        // connections, and by the kernel's page cache) and 16 MiB of page
        // cache per connection, grown only as used: with 100,000 tenants a
        // lookup by id costs about what it costs with 100 (without the map,
        // a fifth more: a read call per page not yet cached).
        let catalog_pool = PoolSettings {
            mmap_bytes: 1 << 30,
            durable: true,
            // Only writes answered before their sync (a tenant's creation)
            // commit on an async thread; the others wait for the disk on a
            // blocking thread.
            inline_writes: config.inline_writes,
            // 32 MiB of WAL: every creation touches the same few pages of
            // the tenants, operations and audit tables, which a checkpoint
            // writes once however often they changed.
            checkpoint_pages: 8000,
            // Replicated, its WAL is checkpointed only once shipped.
            keep_wal_on_close: config.replica.is_some(),
            ..PoolSettings::new(4, 16 * 1024, config.busy_timeout())
        };
        let disk = Arc::new(Disk::new(data_dir.root(), config.disk_reserve_mib << 20));
        let catalog = Catalog::open(&data_dir, &catalog_pool, disk)?;
        let schema = crate::resources::tenant_schema();
        crate::tenant::recover(&catalog, &data_dir, schema)?;
        let registry = Registry::new(
            catalog.clone(),
            data_dir.clone(),
            RegistrySettings {
                max_open: config.max_open_tenants,
                idle: config.tenant_idle(),
                max_staging_bytes: config.max_staging_mib << 20,
                schema,
                pool: PoolSettings {
                    max_bytes: config.tenant_quota_bytes(),
                    inline_reads: config.inline_reads,
                    inline_writes: config.inline_writes,
                    // One switch stops the statements of both.
                    stopping: catalog_pool.stopping.clone(),
                    ..PoolSettings::owning(config.tenant_cache_kib, config.busy_timeout())
                },
            },
        );
        let spares = Spares::new(
            catalog.clone(),
            data_dir.clone(),
            schema,
            registry.pool_settings(),
            config.spare_tenant_files,
            config.sync_creations,
        )?;
        Ok(OpenData {
            data_dir,
            catalog,
            registry,
            spares,
            lock,
        })
    }
}

impl Application {
    /// Opens the data directory and the catalog, recovers from any crash,
    /// loads the admin token and binds the listen address.
    pub async fn build(config: Config) -> Result<Self> {
        let max_connections = check_file_limit(&config)?;
        if config.tenant_max_concurrent_calls > config.max_concurrent_calls {
            return Err(Error::FailedPrecondition(format!(
                "--tenant-max-concurrent-calls {} is above --max-concurrent-calls {}: \
                 one tenant could take every call slot of the server",
                config.tenant_max_concurrent_calls, config.max_concurrent_calls
            )));
        }
        if config.admin_reserved_calls >= config.max_concurrent_calls {
            return Err(Error::FailedPrecondition(format!(
                "--admin-reserved-calls {} leaves none of --max-concurrent-calls {} to the \
                 tenants: reserve fewer",
                config.admin_reserved_calls, config.max_concurrent_calls
            )));
        }
        let setup = config.clone();
        let (data, admin_token) = run_blocking(move || {
            let data = OpenData::open(&setup)?;
            let token = auth::admin_token(
                setup.admin_token.as_ref(),
                setup.admin_token_file.as_deref(),
                &data.data_dir,
            )?;
            // Here, not in `OpenData::open`: only a server takes spares, and
            // only its clean stop records that it stopped cleanly.
            crate::tenant::spares::recover(
                &data.catalog,
                &data.data_dir,
                crate::resources::tenant_schema().latest(),
                setup.spare_tenant_files,
            )?;
            Ok((data, token))
        })
        .await?;
        if let Some(settings) = config.replica() {
            let replica = crate::replica::Replica::start(&settings, &data.data_dir).await?;
            replica.attach_catalog(data.catalog.database());
            data.registry.replicate_to(replica);
        }
        let auth = Authenticator::new(
            &admin_token,
            data.catalog.clone(),
            config.credential_cache_ttl(),
        );
        let listener = TcpListener::bind(config.listen)
            .await
            .context(|| format!("binding {}", config.listen))?;
        let metrics_listener = metrics_endpoint::bind(config.metrics_listen).await?;
        Ok(Application {
            listener,
            max_connections,
            metrics_listener,
            config,
            registry: data.registry,
            spares: data.spares,
            auth,
            _lock: data.lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address metrics are served on, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// The registry of open tenants, for inspection.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Serves until `shutdown` completes, then drains in-flight calls (for at
    /// most the configured grace period) and closes every tenant database.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let Application {
            listener,
            max_connections,
            metrics_listener,
            config,
            registry,
            spares,
            auth,
            _lock,
        } = self;
        let admin_settings = AdminSettings {
            stream_stall: config.stream_stall(),
            migrate_workers: config.migrate_workers,
            max_import_bytes: config.max_import_bytes,
            search_parallelism: config.search_parallelism,
        };
        let summaries = Arc::new(Summaries::default());
        let lifecycle = Lifecycle::new(registry.clone(), auth.clone(), spares.clone());
        let operations = lifecycle.operations().clone();
        let (health, health_service) = tonic_health::server::health_reporter();
        for resource in RESOURCES {
            health
                .set_service_status(resource.service, tonic_health::ServingStatus::Serving)
                .await;
        }
        health
            .set_serving::<TenantServiceServer<AuditedTenantApi>>()
            .await;
        // Both versions describe every service, themselves included.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .include_reflection_service(false)
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
        };
        let reflection_v1 = reflection()
            .build_v1()
            .context(|| "building reflection v1".into())?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context(|| "building reflection v1alpha".into())?;

        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; waiting for calls in flight");
            // Watchers of the health service (load balancers, orchestrators)
            // hear that this instance is going away before it does.
            for resource in RESOURCES {
                health
                    .set_service_status(resource.service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            health
                .set_not_serving::<TenantServiceServer<AuditedTenantApi>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        };
        let serving = Serving {
            registry: registry.clone(),
            max_message_bytes: config.max_message_bytes,
        };
        let routes = Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                TenantServiceServer::new(AuditedTenantApi::new(
                    TenantApi::new(lifecycle, admin_settings),
                    registry.catalog().clone(),
                ))
                .max_decoding_message_size(config.max_message_bytes),
            );
        let routes = RESOURCES
            .iter()
            .fold(routes, |routes, resource| {
                (resource.serve)(routes, &serving)
            })
            .prepare();
        let service = tower::ServiceBuilder::new()
            .layer(CallLogLayer::new(
                registry.metrics().clone(),
                summaries.clone(),
            ))
            .layer(LimitsLayer::new(config.limits()))
            .layer(AdmissionLayer::new(
                auth,
                config.tenant_max_concurrent_calls,
            ))
            .service(routes);

        let flushing = tokio::spawn(flush_accesses(registry.clone(), config.access_flush()));
        let making_spares = tokio::spawn(spares.keep_ready());
        let syncing = tokio::spawn(sync_catalog(registry.catalog().clone()));
        let summarizing = tokio::spawn(summaries.clone().run(config.log_summary()));
        let metrics = metrics_listener.map(|listener| {
            tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving metrics at /metrics");
            tokio::spawn(metrics_endpoint::serve(
                crate::transport::connections::Acceptor::new(
                    listener,
                    summaries.clone(),
                    "refused metrics connection",
                ),
                METRICS_CONNECTIONS,
                registry.metrics().clone(),
                registry.clone(),
            ))
        });
        let drained = crate::transport::connections::serve(
            listener,
            service,
            config.connections(max_connections),
            summaries.clone(),
            signal,
            config.shutdown_grace(),
        )
        .await;
        flushing.abort();
        // A batch of spares half made is finished on its blocking thread, or
        // removed at the next start.
        making_spares.abort();
        syncing.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
            let _ = metrics.await;
        }
        // Gone, with the handles on the catalog they hold, before the
        // catalog is closed below: an aborted task is dropped only once the
        // runtime gets to it.
        let _ = flushing.await;
        let _ = syncing.await;
        // Operations whose callers are gone still run: let them end.
        let finished = operations.drain(config.shutdown_grace()).await;
        let mut clean = drained && finished;
        if !(drained && finished) {
            // Past the grace period, no statement may hold up the stop.
            registry.pool_settings().interrupt();
        }
        registry.close_all().await;
        registry.pool_settings().resume();
        tracing::info!("every tenant database is closed");
        if let Err(error) = registry.flush_accesses().await {
            tracing::error!(error = %crate::error::error_chain(&error), "could not record the last accesses of tenants");
        }
        let catalog = registry.catalog().clone();
        if let Err(error) = run_blocking(move || catalog.sync_now()).await {
            tracing::error!(error = %crate::error::error_chain(&error), "could not sync the catalog's last commits");
            clean = false;
        }
        if clean {
            let data_dir = registry.data_dir().clone();
            if let Err(error) =
                run_blocking(move || crate::tenant::spares::stopped_cleanly(&data_dir)).await
            {
                tracing::warn!(error = %crate::error::error_chain(&error), "could not record the clean stop; the spare tenant files are made anew at the next start");
            }
        }
        if registry.replica().is_some() {
            // Its last commits shipped, and its file closed.
            registry.catalog().database().retire().await;
        }
        summarizing.abort();
        summaries.flush(config.log_summary());
        Ok(())
    }
}

/// Syncs the catalog's commits made without a sync ([`Catalog::write_unsynced`])
/// every second, until aborted: what such a commit risks in a power cut is
/// at most the last second.
async fn sync_catalog(catalog: Catalog) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let syncing = catalog.clone();
        if let Err(error) = run_blocking(move || syncing.sync_unsynced()).await {
            tracing::warn!(error = %crate::error::error_chain(&error), "could not sync the catalog's last commits; trying again in a second");
        }
    }
}

/// Writes the tenants' last access times to the catalog every `every`, in
/// one batch, until aborted.
async fn flush_accesses(registry: Registry, every: std::time::Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match registry.flush_accesses().await {
            Ok(0) => {}
            Ok(tenants) => tracing::debug!(tenants, "recorded the last accesses of tenants"),
            Err(error) => {
                tracing::warn!(error = %crate::error::error_chain(&error), "could not record the last accesses of tenants; will retry");
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit, and refuses a
/// configuration whose open tenants and client connections could not all
/// get their descriptors. Returns the connection cap: `--max-connections`,
/// or, if it is 0, what the limit leaves (at most 4,096).
fn check_file_limit(config: &Config) -> Result<usize> {
    let limit =
        rlimit::increase_nofile_limit(u64::MAX).context(|| "raising the open-file limit".into())?;
    if let Some(connections) = config.tenant_connections {
        tracing::warn!(
            connections,
            "--tenant-connections (TENANTRY_TENANT_CONNECTIONS) is ignored: an open tenant has \
             one connection, which owns its file; remove the setting"
        );
    }
    let tenants = config.max_open_tenants * FDS_PER_TENANT;
    let left = limit.saturating_sub(tenants + RESERVED_FDS);
    let connections = match config.max_connections as u64 {
        // Too few left over fails below, as an explicit cap would.
        0 => left.clamp(MIN_CONNECTIONS, AUTO_MAX_CONNECTIONS),
        n => n,
    };
    if connections > left {
        return Err(Error::FailedPrecondition(format!(
            "--max-open-tenants {} needs up to {tenants} open files ({FDS_PER_TENANT} a \
             tenant), and {connections} client connections (--max-connections) and a reserve \
             of {RESERVED_FDS} need more, but this process may open only {limit}: lower them, \
             or raise the hard limit (ulimit -Hn)",
            config.max_open_tenants
        )));
    }
    tracing::debug!(limit, tenants, connections, "open-file limit");
    Ok(connections as usize)
}

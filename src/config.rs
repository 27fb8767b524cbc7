//! Every setting of the server, from command-line flags and `TENANTRY_*`
//! environment variables, with defaults that run on a laptop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::auth::Secret;

/// Settings of `tenantry serve`.
#[derive(Parser, Clone, Debug)]
pub struct Config {
    /// Address to listen on for gRPC (HTTP/2, plaintext).
    #[arg(long, env = "TENANTRY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory holding the catalog and every tenant's database.
    #[arg(long, env = "TENANTRY_DATA_DIR", default_value = "tenants-data")]
    pub data_dir: PathBuf,

    /// File holding the admin token. Without it and without
    /// TENANTRY_ADMIN_TOKEN, a token is generated into admin.token in the data
    /// directory.
    #[arg(long, env = "TENANTRY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// The admin token itself, from the TENANTRY_ADMIN_TOKEN environment
    /// variable only: a flag would show it to every user of `ps`.
    #[arg(skip = admin_token_from_env())]
    pub admin_token: Option<Secret>,

    /// Most tenant databases kept open at once; the least recently used are
    /// closed beyond it.
    #[arg(long, env = "TENANTRY_MAX_OPEN_TENANTS", default_value_t = 1000)]
    pub max_open_tenants: u64,

    /// Seconds a tenant may go unused before its database is closed.
    #[arg(long, env = "TENANTRY_TENANT_IDLE_SECS", default_value_t = 300)]
    pub tenant_idle_secs: u64,

    /// No longer used: an open tenant has exactly one SQLite connection,
    /// which owns its file. Accepted so that existing configurations still
    /// start; a value is logged as ignored.
    #[arg(long, env = "TENANTRY_TENANT_CONNECTIONS", hide = true)]
    pub tenant_connections: Option<u32>,

    /// Empty tenant files kept made ahead, so that creating a tenant is one
    /// catalog commit and no file work; 0 makes every file when its tenant
    /// is created.
    #[arg(long, env = "TENANTRY_SPARE_TENANT_FILES", default_value_t = 256)]
    pub spare_tenant_files: usize,

    /// Answer a CreateTenant served from a spare file only once its catalog
    /// commit is synced to disk. By default it is answered once committed
    /// (it survives a crash of the process at once, and a power cut once
    /// the catalog syncs, within a second): a creation lost to a power cut
    /// leaves no tenant, and its spare file is never handed out again.
    #[arg(
        long,
        env = "TENANTRY_SYNC_CREATIONS",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub sync_creations: bool,

    /// Page cache of an open tenant's connection, in KiB.
    #[arg(long, env = "TENANTRY_TENANT_CACHE_KIB", default_value_t = 512)]
    pub tenant_cache_kib: u32,

    /// Run a tenant's point reads and list pages on the async threads when
    /// its connection is idle (a point read costs a few microseconds,
    /// handing it to a blocking thread several times that); `false` sends
    /// every read to a blocking thread, which suits storage so slow that a
    /// read may wait on the disk for long.
    #[arg(
        long,
        env = "TENANTRY_INLINE_READS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub inline_reads: bool,

    /// Commit a tenant's write on the async thread when nothing else of the
    /// tenant is queued or being written and its connection is idle (a
    /// commit without a sync is a few writes into the page cache); `false`
    /// hands every write to the tenant's writer on a blocking thread.
    /// Checkpoints run on blocking threads either way.
    #[arg(
        long,
        env = "TENANTRY_INLINE_WRITES",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub inline_writes: bool,

    /// Most storage one tenant's database may use, in KiB (its file, without
    /// the write-ahead log); a write past it fails with RESOURCE_EXHAUSTED.
    /// 0 for no limit.
    #[arg(long, env = "TENANTRY_TENANT_QUOTA_KIB", default_value_t = 1 << 20)]
    pub tenant_quota_kib: u64,

    /// How long a statement waits for a locked database before failing, in
    /// milliseconds.
    #[arg(long, env = "TENANTRY_BUSY_TIMEOUT_MS", default_value_t = 5000)]
    pub busy_timeout_ms: u64,

    /// Seconds a verified API key is remembered before the catalog is asked
    /// again. Admin changes take effect at once regardless.
    #[arg(long, env = "TENANTRY_CREDENTIAL_CACHE_SECS", default_value_t = 60)]
    pub credential_cache_secs: u64,

    /// Tenants migrated at once by MigrateTenants and `tenantry migrate`.
    #[arg(long, env = "TENANTRY_MIGRATE_WORKERS", default_value_t = 4)]
    pub migrate_workers: usize,

    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) on this
    /// address. Off unless set.
    #[arg(long, env = "TENANTRY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log lines as `text` for people, or `json` (one object per line, with
    /// the call's span fields) for log shippers. `RUST_LOG` filters either.
    #[arg(long, env = "TENANTRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How often the last access time of each tenant called is written to
    /// the catalog, in one batch (and at shutdown). Usage figures are exact
    /// regardless; this bounds what a crash can lose.
    #[arg(long, env = "TENANTRY_ACCESS_FLUSH_SECS", default_value_t = 30)]
    pub access_flush_secs: u64,

    /// Tenants one SearchItems call reads at once (each one that is not open
    /// costs a file open and three file descriptors while it is read).
    #[arg(long, env = "TENANTRY_SEARCH_PARALLELISM", default_value_t = 4)]
    pub search_parallelism: usize,

    /// Most MiB of snapshots and uploads being made in the staging folder
    /// at once (exports, backups, copies, restores, imports); one more is
    /// refused with RESOURCE_EXHAUSTED until others are done.
    #[arg(long, env = "TENANTRY_MAX_STAGING_MIB", default_value_t = 8192)]
    pub max_staging_mib: u64,

    /// MiB of disk kept in reserve (the file `reserve` in the data
    /// directory) and given back when the disk fills up, so that the
    /// catalog can still record a revoke, a suspension or a purge. 0 for
    /// none.
    #[arg(long, env = "TENANTRY_DISK_RESERVE_MIB", default_value_t = 64)]
    pub disk_reserve_mib: u64,

    /// The largest snapshot ImportTenant accepts, in bytes.
    #[arg(long, env = "TENANTRY_MAX_IMPORT_BYTES", default_value_t = 4 << 30)]
    pub max_import_bytes: u64,

    /// Most calls in flight at once; more are refused with UNAVAILABLE
    /// (load shedding). Health checks do not count.
    #[arg(long, env = "TENANTRY_MAX_CONCURRENT_CALLS", default_value_t = 512)]
    pub max_concurrent_calls: usize,

    /// How many of --max-concurrent-calls only the admin API may use, so
    /// that an operator can always suspend a tenant or revoke a key however
    /// many calls the tenants send.
    #[arg(long, env = "TENANTRY_ADMIN_RESERVED_CALLS", default_value_t = 16)]
    pub admin_reserved_calls: usize,

    /// Most open streams that need no credential at once: health watches
    /// (grpc.health.v1.Health/Watch) and reflection streams (what grpcurl
    /// asks for). More are refused with RESOURCE_EXHAUSTED; they never take
    /// the call slots of --max-concurrent-calls. Health checks are not
    /// bounded.
    #[arg(long, env = "TENANTRY_MAX_OPEN_STREAMS", default_value_t = 256)]
    pub max_open_streams: usize,

    /// Milliseconds a call's request may take to arrive whole (an upload:
    /// the longest pause between its messages); a slower one is ended, and
    /// its call slot freed.
    #[arg(
        long,
        env = "TENANTRY_REQUEST_BODY_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub request_body_timeout_ms: u64,

    /// Milliseconds a refused call (over a limit, or with a bad credential)
    /// waits before its answer is sent, holding no call slot: a client that
    /// retries at once is slowed instead of spinning the server.
    #[arg(long, env = "TENANTRY_REFUSAL_DELAY_MS", default_value_t = 100)]
    pub refusal_delay_ms: u64,

    /// Milliseconds a streamed answer (SearchItems, ExportTenant,
    /// MigrateTenants) waits for its client to read before it is ended; a
    /// stream waiting for its reader holds no tenant, file or lock meanwhile.
    #[arg(long, env = "TENANTRY_STREAM_STALL_MS", default_value_t = 30_000)]
    pub stream_stall_ms: u64,

    /// Most calls in flight at once for one tenant; more are refused with
    /// RESOURCE_EXHAUSTED, so that a busy tenant cannot starve the others.
    #[arg(
        long,
        env = "TENANTRY_TENANT_MAX_CONCURRENT_CALLS",
        default_value_t = 32
    )]
    pub tenant_max_concurrent_calls: usize,

    /// Milliseconds a call may run when its client sets no earlier deadline
    /// (ImportTenant uploads are bounded by the client's deadline only).
    #[arg(long, env = "TENANTRY_CALL_TIMEOUT_MS", default_value_t = 30_000)]
    pub call_timeout_ms: u64,

    /// Largest request message, in bytes; a larger one is refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "TENANTRY_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    pub max_message_bytes: usize,

    /// Seconds to wait for in-flight calls at shutdown before giving up on them.
    #[arg(long, env = "TENANTRY_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Most client connections open at once; one more is closed as soon as
    /// it is accepted. 0 picks what the open-file limit leaves after the
    /// tenants' databases and a reserve, at most 4096.
    #[arg(long, env = "TENANTRY_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Milliseconds a new connection has to send the HTTP/2 preface and its
    /// first frame before it is closed.
    #[arg(long, env = "TENANTRY_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Seconds a connection may stay open with no call before the server
    /// asks it to go away (GOAWAY) and closes it.
    #[arg(long, env = "TENANTRY_CONNECTION_IDLE_SECS", default_value_t = 300)]
    pub connection_idle_secs: u64,

    /// Most calls (HTTP/2 streams) open at once on one connection, as the
    /// server advertises it; a client cannot open more.
    #[arg(
        long,
        env = "TENANTRY_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 100
    )]
    pub max_streams_per_connection: u32,

    /// Seconds without a frame from a client before the server pings it; a
    /// ping unanswered for --keepalive-timeout-secs closes the connection.
    #[arg(long, env = "TENANTRY_KEEPALIVE_SECS", default_value_t = 60)]
    pub keepalive_secs: u64,

    /// Seconds a keep-alive ping may go unanswered.
    #[arg(long, env = "TENANTRY_KEEPALIVE_TIMEOUT_SECS", default_value_t = 20)]
    pub keepalive_timeout_secs: u64,

    /// Largest block of request headers (metadata), in bytes.
    #[arg(long, env = "TENANTRY_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: u32,

    /// Seconds between the summary lines that count refused calls and
    /// connections (and failures beyond the per-second log budget) instead
    /// of logging each one.
    #[arg(long, env = "TENANTRY_LOG_SUMMARY_SECS", default_value_t = 10)]
    pub log_summary_secs: u64,

    /// Where every tenant's WAL is replicated: `s3://BUCKET/PREFIX` (any
    /// S3-compatible store; credentials and region from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY and AWS_REGION) or `file:///PATH` (a directory,
    /// for example on another disk). Off when not set.
    #[arg(long, env = "TENANTRY_REPLICA")]
    pub replica: Option<String>,

    /// The endpoint of an S3-compatible store that is not AWS, such as
    /// `http://127.0.0.1:8333`.
    #[arg(long, env = "TENANTRY_REPLICA_ENDPOINT")]
    pub replica_endpoint: Option<String>,

    /// At most this many milliseconds between a commit and the upload of
    /// the WAL frames that hold it.
    #[arg(long, env = "TENANTRY_REPLICA_SYNC_MS", default_value_t = 1000)]
    pub replica_sync_ms: u64,
}

fn admin_token_from_env() -> Option<Secret> {
    std::env::var("TENANTRY_ADMIN_TOKEN").ok().map(Secret::new)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The defaults, with the data in `data_dir`: what a test or an embedding
    /// program starts from.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Config::parse_from(["tenantry"]);
        config.data_dir = data_dir.into();
        config
    }

    /// Where and how tenants are replicated, if they are.
    pub fn replica(&self) -> Option<crate::replica::Settings> {
        let url = self.replica.clone()?;
        Some(crate::replica::Settings {
            url,
            endpoint: self.replica_endpoint.clone(),
            sync_interval: Duration::from_millis(self.replica_sync_ms.max(1)),
        })
    }

    pub fn tenant_idle(&self) -> Duration {
        Duration::from_secs(self.tenant_idle_secs)
    }

    /// The per-tenant storage quota in bytes, if there is one.
    pub fn tenant_quota_bytes(&self) -> Option<u64> {
        (self.tenant_quota_kib > 0).then(|| self.tenant_quota_kib * 1024)
    }

    pub fn busy_timeout(&self) -> Duration {
        Duration::from_millis(self.busy_timeout_ms)
    }

    pub fn credential_cache_ttl(&self) -> Duration {
        Duration::from_secs(self.credential_cache_secs)
    }

    pub fn limits(&self) -> crate::layers::limits::Limits {
        crate::layers::limits::Limits {
            max_calls: self.max_concurrent_calls.max(1),
            admin_reserved: self.admin_reserved_calls,
            max_open_streams: self.max_open_streams,
            default_timeout: Duration::from_millis(self.call_timeout_ms),
            max_message_bytes: self.max_message_bytes,
            body_timeout: Duration::from_millis(self.request_body_timeout_ms.max(1)),
            refusal_delay: Duration::from_millis(self.refusal_delay_ms),
        }
    }

    pub fn stream_stall(&self) -> Duration {
        Duration::from_millis(self.stream_stall_ms.max(1))
    }

    pub fn access_flush(&self) -> Duration {
        Duration::from_secs(self.access_flush_secs.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn log_summary(&self) -> Duration {
        Duration::from_secs(self.log_summary_secs.max(1))
    }

    /// How connections are accepted and served; `max_connections` as
    /// resolved against the open-file limit at start-up.
    pub fn connections(
        &self,
        max_connections: usize,
    ) -> crate::transport::connections::ConnectionSettings {
        crate::transport::connections::ConnectionSettings {
            max_connections,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            idle_timeout: Duration::from_secs(self.connection_idle_secs),
            max_streams_per_connection: self.max_streams_per_connection.max(1),
            keepalive_interval: Duration::from_secs(self.keepalive_secs.max(1)),
            keepalive_timeout: Duration::from_secs(self.keepalive_timeout_secs.max(1)),
            max_header_list_bytes: self.max_header_bytes,
        }
    }
}

//! tenantry: a gRPC service that gives every tenant its own SQLite database.
//!
//! # The story of one call
//!
//! A client calls `tenantry.v1.ItemService/GetItem` with two metadata
//! entries: `authorization: Bearer <api key>` and `x-tenant-id: <uuid>`.
//!
//! 0. **The front end** ([`transport::connections`]) has accepted the connection within
//!    a cap that leaves tenant files their descriptors, and times out
//!    connections that never finish their handshake or sit idle; HTTP/2
//!    bounds the streams and headers of each.
//!    **The call's span** ([`layers::calls`]), outermost, names the method (and,
//!    once admitted, the tenant and key id) in every log line of the call,
//!    and logs its status code and latency when it ends (refusals are
//!    counted and summed up instead, [`transport::log_summary`]).
//!    **Limits** ([`layers::limits`]) sheds the call with
//!    UNAVAILABLE if the server already runs as many calls as it may, sets
//!    its [`deadline`] (which decides, once, whether its work committed in
//!    time), and bounds the size of its messages and the time they take.
//! 1. **Admission** ([`layers::routing`]), a tower layer in front of every service,
//!    authenticates the bearer token ([`auth`]): the key id inside it finds
//!    the key in the [`catalog`], and a constant-time comparison of hashes
//!    proves the secret. The credential decides who the caller is. Then
//!    `x-tenant-id` must parse as a canonical UUID and name the key's own
//!    tenant, which must be active; otherwise the call ends here, with a
//!    status and without touching any file. A tenant already running as many
//!    calls as one tenant may is refused with RESOURCE_EXHAUSTED, so that no
//!    tenant can take every slot from the others.
//! 2. **The service method** ([`resources::items::service`]; the admin
//!    API is in [`api`]) receives a verified tenant from the
//!    request's extensions, validates the request, and asks the
//!    [`tenant::Registry`] for that tenant's database.
//! 3. **The registry** keeps open tenants in a bounded cache. On a miss it
//!    opens the tenant's file, `tenants/<uuid>.db` ([`storage::data_dir`]),
//!    once, no matter how many calls wait for it, and brings its schema up
//!    to date ([`storage::schema`]).
//! 4. **The store** ([`resources::items::store`]) runs its SQL on a pooled
//!    connection of that file ([`storage::sqlite`]): a point read inline on the async thread
//!    when a connection is idle, anything longer and every write on a
//!    blocking thread. There is no tenant filter in any query, and none to
//!    forget: the connection belongs to one tenant.
//! 5. **Errors** from any step become a gRPC status in one place ([`error`]).
//!
//! Admin calls (`tenantry.v1.TenantService`) take the admin token instead and
//! work on the catalog and on whole tenant files: suspending, deleting,
//! migrating, backing up and restoring tenants ([`tenant::lifecycle`],
//! [`tenant::migrate`], [`tenant::snapshot`]). An operation that moves or
//! replaces a tenant's file holds that tenant's gate in the registry, so no
//! call ever sees a file half moved; it is recorded in the catalog once it
//! holds the gate, then runs to its end whatever its caller does
//! ([`tenant::operations`]), so start-up can finish it after a crash.
//! Snapshots being made live in a bounded staging folder ([`storage::staging`]);
//! streamed answers never make their reader's pace anybody else's problem
//! ([`api::stream`]); a reserve keeps room for the catalog when the disk
//! fills ([`storage::disk`]). Health and reflection need no credential.
//!
//! The `tenantry` binary is also the admin client of a running server and
//! its load generator: that code (`src/cli/`, `src/bench/`) is part of the
//! binary only, and calls the server through the generated client, as any
//! other client does.

#![deny(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod deadline;
pub mod error;
pub mod fault;
pub mod ids;
pub mod layers;
pub mod metrics;
pub mod pagination;
pub mod replica;
pub mod resources;
pub mod server;
pub mod storage;
pub mod tenant;
pub mod transport;
pub mod weak_map;

/// The generated protobuf and gRPC code of `proto/tenantry/v1`.
pub mod pb {
    tonic::include_proto!("tenantry.v1");

    /// The encoded descriptors of every file in `proto/`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tenantry_descriptor");
}

pub use config::Config;
pub use server::Application;

//! Items: the store ([`store`], SQL over one tenant's connection) and the
//! gRPC service `tenantry.v1.ItemService` ([`service`]). Their tables are in
//! the tenant database's migrations ([`crate::tenant::migrations`]).

pub mod service;
pub mod store;

//! Tenant databases: their schema, their lifecycle, and the registry that
//! keeps the busy ones open.

pub mod lifecycle;
pub mod migrate;
pub mod operations;
pub mod rebuild;
mod registry;
pub mod snapshot;
pub mod spares;
pub mod usage;

pub use lifecycle::{Lifecycle, recover};
pub use registry::{Exclusive, Registry, RegistrySettings, Shared, Stage};

//! Tenant databases: their schema, their lifecycle, and the registry that
//! keeps the busy ones open.

pub mod migrations;
mod registry;

pub use registry::{Registry, RegistrySettings};

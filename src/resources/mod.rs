//! The resources a tenant's database holds, each in a folder of its own:
//! its store (SQL over one tenant's connection, below the tenant registry)
//! and its service (the gRPC methods, above it). Items are the one resource
//! today.

pub mod items;

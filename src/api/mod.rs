//! The gRPC services. Each method has the same shape: read the verified
//! caller, validate the request, call the store, map the result. Errors turn
//! into statuses in one place, [`crate::error`].

pub mod audited;
pub mod search;
pub mod stream;
pub mod tenants;

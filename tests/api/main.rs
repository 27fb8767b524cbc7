//! End-to-end tests: each starts a real server on an ephemeral port with a
//! temporary data directory and talks to it through the generated clients.

mod common;
mod discovery;
mod isolation;
mod items;
mod registry;
mod restart;
mod tenants;

//! End-to-end tests: each starts a real server on an ephemeral port with a
//! temporary data directory and talks to it through the generated clients.

mod acting;
mod audit;
mod backups;
mod cli;
mod common;
mod connections;
mod crash;
mod discovery;
mod disk;
mod faults;
mod health;
mod hostile;
mod isolation;
mod items;
mod killloop;
mod layout;
mod lifecycle;
mod limits;
mod logs;
mod metrics;
mod migrations;
mod operations;
mod registry;
mod replication;
mod restart;
mod search;
mod snapshots;
mod spares;
mod streams;
mod tenants;
mod usage;

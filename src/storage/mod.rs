//! Storage: one SQLite database and its writer ([`sqlite`]), the schema
//! migrations every database runs ([`schema`]), where files live in the data
//! directory ([`data_dir`]), the reserve that keeps room on a full disk
//! ([`disk`]), and the bounded folder snapshots are made in ([`staging`]).
//! SQLite's C interface, where rusqlite does not wrap it, is reached only
//! through [`ffi`], the one module allowed `unsafe`. Nothing here knows of
//! tenants' lifecycles, calls or the API.

pub mod data_dir;
pub mod disk;
pub mod ffi;
pub mod schema;
pub mod sqlite;
pub mod staging;

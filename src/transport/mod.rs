//! The front end below the call layers: accepting connections and serving
//! HTTP/2 within bounds ([`connections`]), and the summaries that stand in
//! for a log line per refused call or connection ([`log_summary`]).

pub mod connections;
pub mod log_summary;

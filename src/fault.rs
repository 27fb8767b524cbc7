//! Crash points for testing crash recovery.
//!
//! Each step of a lifecycle operation that leaves the data directory in a new
//! state calls [`point`] with its name. When the `TENANTRY_CRASH_AT`
//! environment variable names that point, the process aborts right there, the
//! way a power cut or `kill -9` would stop it, and the next start-up must
//! finish or roll back what was interrupted. Unset, which is how tenantry
//! runs in production, a point costs one comparison.
//!
//! The points: `create.after-file`, `delete.after-mark`, `delete.after-move`,
//! `restore.after-record`, `restore.after-trash`, `restore.after-swap`.

use std::sync::OnceLock;

pub const ENV: &str = "TENANTRY_CRASH_AT";

fn configured() -> Option<&'static str> {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    AT.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Aborts the process if `TENANTRY_CRASH_AT` names this point.
pub fn point(name: &str) {
    if configured() == Some(name) {
        tracing::error!(point = name, "crashing on purpose ({ENV})");
        std::process::abort();
    }
}

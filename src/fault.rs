//! Crash points and pause points, for testing what happens between the
//! steps of a lifecycle operation.
//!
//! Each step that leaves the data directory in a new state calls [`point`]
//! (or, in async code, [`reached`]) with its name. When the
//! `TENANTRY_CRASH_AT` environment variable names that point, the process
//! aborts right there, the way a power cut or `kill -9` would stop it, and
//! the next start-up must finish or roll back what was interrupted. When
//! `TENANTRY_PAUSE_AT` is `<point>=<milliseconds>`, an async point waits
//! that long, so that a test can let a caller's deadline pass while the
//! operation it started goes on. Unset, which is how tenantry runs in
//! production, a point costs one comparison.
//!
//! The points: `operation.after-record` (any operation, between its record
//! and its steps), `create.after-file`, `delete.after-mark`,
//! `delete.after-move`, `restore.after-record`, `restore.after-trash`,
//! `restore.after-swap`.

use std::sync::OnceLock;
use std::time::Duration;

pub const ENV: &str = "TENANTRY_CRASH_AT";
pub const PAUSE_ENV: &str = "TENANTRY_PAUSE_AT";

fn configured() -> Option<&'static str> {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    AT.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

fn pause() -> Option<&'static (String, Duration)> {
    static AT: OnceLock<Option<(String, Duration)>> = OnceLock::new();
    AT.get_or_init(|| {
        let text = std::env::var(PAUSE_ENV).ok()?;
        let (name, millis) = text.split_once('=')?;
        Some((name.to_owned(), Duration::from_millis(millis.parse().ok()?)))
    })
    .as_ref()
}

/// Aborts the process if `TENANTRY_CRASH_AT` names this point.
pub fn point(name: &str) {
    if configured() == Some(name) {
        tracing::error!(point = name, "crashing on purpose ({ENV})");
        std::process::abort();
    }
}

/// [`point`], in async code: also waits if `TENANTRY_PAUSE_AT` names it.
pub async fn reached(name: &str) {
    point(name);
    if let Some((at, wait)) = pause()
        && at == name
    {
        tracing::warn!(point = name, ?wait, "pausing on purpose ({PAUSE_ENV})");
        tokio::time::sleep(*wait).await;
    }
}

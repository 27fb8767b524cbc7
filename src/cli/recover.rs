//! `tenantry recover`: a data directory rebuilt from a replica, here, with
//! no server running (see [`tenantry::tenant::rebuild`]).

use std::path::PathBuf;

use tenantry::replica::store::Store;

use super::progress::Progress;
use super::{Failure, Outcome};

#[derive(clap::Args)]
pub struct RecoverArgs {
    /// The replica to rebuild from, as the lost server's --replica named it.
    #[arg(long, env = "TENANTRY_REPLICA")]
    replica: String,
    /// The endpoint of an S3-compatible store that is not AWS.
    #[arg(long, env = "TENANTRY_REPLICA_ENDPOINT")]
    replica_endpoint: Option<String>,
    /// The data directory to make; it must not hold a catalog yet.
    #[arg(long, env = "TENANTRY_DATA_DIR", default_value = "tenants-data")]
    data_dir: PathBuf,
    /// Rebuild everything as it was at this moment (RFC 3339, such as
    /// 2026-12-01T10:15:00Z) instead of as it is.
    #[arg(long, value_parser = super::snapshots::parse_time)]
    time: Option<prost_types::Timestamp>,
}

pub async fn recover(args: RecoverArgs) -> Outcome {
    let store = Store::open(&args.replica, args.replica_endpoint.as_deref())
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let until = args
        .time
        .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000));
    let progress = std::sync::Mutex::new(Progress::tenants("rebuilding"));
    let done = std::sync::atomic::AtomicUsize::new(0);
    let rebuilt = tenantry::tenant::rebuild::rebuild_data_dir(
        &store,
        &args.data_dir,
        until,
        |now, _total| {
            let before = done.swap(now, std::sync::atomic::Ordering::Relaxed);
            progress
                .lock()
                .expect("never poisoned")
                .advance(now.saturating_sub(before) as u64);
        },
    )
    .await
    .map_err(|e| Failure::Failed(format!("recovering {}: {e}", args.data_dir.display())))?;
    let progress = progress.into_inner().expect("never poisoned");
    for (tenant, why) in &rebuilt.missing {
        progress.print(&format!("tenant {tenant} was not recovered: {why}\n"))?;
    }
    progress.finish();
    println!(
        "recovered the catalog and {} tenants into {}",
        rebuilt.tenants.len(),
        args.data_dir.display()
    );
    if rebuilt.missing.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "{} tenants the catalog lists were not recovered (above); the others are in place",
            rebuilt.missing.len()
        )))
    }
}

//! Rebuilding a whole data directory from a replica (`tenantry recover`):
//! the catalog first, then the file of every tenant it lists with data,
//! each to the latest state or to one moment.
//!
//! The catalog and the tenants come from the same moment, so a key revoked
//! or a tenant purged after it is not brought back. The directory must be
//! new or empty: nothing of a directory in use is touched. The
//! rebuilt directory takes over the replica's writer id, so the server
//! started on it goes on writing the same replica (each file opens in a
//! new generation).

use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::catalog::TenantState;
use crate::catalog::store;
use crate::clock::Micros;
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::replica::manifest::Subject;
use crate::replica::store::Store;
use crate::storage::data_dir::DataDir;
use crate::storage::sqlite::run_blocking;

/// Tenants rebuilt at once.
const AT_ONCE: usize = 8;

/// What a rebuild did.
#[derive(Debug, Default)]
pub struct Rebuilt {
    /// Tenants whose file was rebuilt.
    pub tenants: Vec<TenantId>,
    /// Tenants the catalog lists with data whose file could not be, and why.
    pub missing: Vec<(TenantId, String)>,
}

/// Rebuilds the data directory `dir` from the replica `store` as it was at
/// `until` (Unix microseconds), or as it is. `progress` hears how many
/// tenants are done, of how many.
pub async fn rebuild_data_dir(
    store: &Store,
    dir: &Path,
    until: Option<Micros>,
    progress: impl Fn(usize, usize),
) -> Result<Rebuilt> {
    let in_use = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if in_use {
        return Err(Error::FailedPrecondition(format!(
            "{} is not empty: recover rebuilds a new data directory, and leaves one in use as \
             it is; give it a new or empty directory",
            dir.display()
        )));
    }
    let data_dir = DataDir::create(dir)?;
    let _lock = data_dir.lock()?;
    let node = crate::replica::writer_of(store).await?;
    let catalog = data_dir.catalog();
    crate::replica::restore(store, Subject::Catalog, until, &catalog).await?;
    let tenants = {
        let catalog = catalog.clone();
        run_blocking(move || tenants_with_data(&catalog)).await?
    };
    let total = tenants.len();
    progress(0, total);
    let mut rebuilt = Rebuilt::default();
    let mut done = futures::stream::iter(tenants)
        .map(|id| {
            let path = data_dir.tenant_file(id);
            async move {
                let restored =
                    crate::replica::restore(store, Subject::Tenant(id), until, &path).await;
                (id, restored)
            }
        })
        .buffer_unordered(AT_ONCE);
    while let Some((id, restored)) = done.next().await {
        match restored {
            Ok(_) => rebuilt.tenants.push(id),
            Err(error) => rebuilt
                .missing
                .push((id, crate::error::error_chain(&error))),
        }
        progress(rebuilt.tenants.len() + rebuilt.missing.len(), total);
    }
    crate::replica::adopt_writer(dir, &node).await?;
    Ok(rebuilt)
}

/// The tenants a catalog lists whose data is in a file: active and
/// suspended ones. Blocking.
fn tenants_with_data(catalog: &PathBuf) -> Result<Vec<TenantId>> {
    let conn = rusqlite::Connection::open_with_flags(
        catalog,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::internal(format!("opening {}", catalog.display()), e))?;
    let mut tenants = Vec::new();
    for state in [TenantState::Active, TenantState::Suspended] {
        tenants.extend(
            store::tenants_in_state(&conn, state)?
                .into_iter()
                .map(|tenant| tenant.id),
        );
    }
    Ok(tenants)
}

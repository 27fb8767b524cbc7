//! Spare tenant files: empty tenant databases at the current schema, made
//! ahead in the background at their final place (`tenants/<id>.db`), so
//! that creating a tenant is one catalog commit and no file work.
//!
//! Every new tenant file is a copy of one template, made once per process
//! by running the tenant migrations on a scratch file, instead of running
//! every migration on every new file. A spare is made in three steps, a
//! batch at a time: recorded in the catalog as `making`, its file written
//! and synced (and the directory synced), then recorded `ready`. A stop in
//! between leaves `making` spares, which start-up removes with their files.
//! CreateTenant takes a `ready` spare in the transaction that inserts the
//! tenant, active at once: the file was durable before the commit, and the
//! commit (synced, as every catalog commit) makes the tenant durable, so a
//! tenant answered as created survives a crash or a power cut. With no
//! spare ready (a burst faster than the background keeps up with), a
//! creation goes the way of a clone: a `provisioning` tenant, then its file,
//! then `active` (see [`crate::tenant::lifecycle`]).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::catalog::{Catalog, spares};
use crate::clock::now_micros;
use crate::error::{Context, Result};
use crate::ids::TenantId;
use crate::storage::data_dir::{self, DataDir};
use crate::storage::schema::{self, Schema};
use crate::storage::sqlite::{Database, PoolSettings, run_blocking};

/// Spares made in one batch at most: two catalog commits and a directory
/// sync for all of them.
const BATCH: usize = 64;

/// A cheap, clone-able handle on the spare tenant files.
#[derive(Clone)]
pub struct Spares {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Catalog,
    data_dir: DataDir,
    /// The schema version of the template, and so of every spare made here.
    version: u32,
    /// An empty tenant database at `version`, closed (one self-contained
    /// file): every new tenant file is a copy of it.
    template: Vec<u8>,
    /// How many spares to keep ready; 0 for none.
    target: usize,
    /// Whether a creation from a spare is answered only once synced.
    synced: bool,
    /// How many are ready, as far as this process knows: counted in the
    /// catalog when the background task starts, then kept here.
    ready: std::sync::atomic::AtomicUsize,
    /// Wakes the task that makes spares.
    wanted: tokio::sync::Notify,
}

impl Spares {
    /// Makes the template, a scratch file in the staging folder migrated to
    /// the latest schema and read back. Blocking; at start-up.
    pub fn new(
        catalog: Catalog,
        data_dir: DataDir,
        schema: &Schema,
        pool: &PoolSettings,
        target: usize,
        synced: bool,
    ) -> Result<Self> {
        let scratch = data_dir
            .staging_dir()
            .join(format!("template.{}.db", uuid::Uuid::new_v4()));
        let made = Database::create(&scratch, pool, |conn| {
            schema::migrate(conn, schema.migrations(), "the tenant template").map(|_| ())
        })
        .and_then(|()| {
            std::fs::read(&scratch).context(|| format!("reading {}", scratch.display()))
        });
        data_dir::remove_database_files(&scratch)?;
        Ok(Spares {
            inner: Arc::new(Inner {
                catalog,
                data_dir,
                version: schema.latest(),
                template: made?,
                target,
                synced,
                ready: Default::default(),
                wanted: tokio::sync::Notify::new(),
            }),
        })
    }

    /// Writes an empty tenant database at `path`, which must not exist, and
    /// syncs it (not its directory). Blocking.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        let file = self.write_unsynced(path)?;
        file.sync_all()
            .context(|| format!("syncing {}", path.display()))
    }

    /// [`Spares::write_file`] without the sync. Blocking.
    fn write_unsynced(&self, path: &Path) -> Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .context(|| format!("creating {}", path.display()))?;
        file.write_all(&self.inner.template)
            .context(|| format!("writing {}", path.display()))?;
        Ok(file)
    }

    /// Whether a creation from a spare is answered only once its catalog
    /// commit is synced (`--sync-creations`).
    pub fn synced(&self) -> bool {
        self.inner.synced
    }

    /// The schema version of the files made here.
    pub fn version(&self) -> u32 {
        self.inner.version
    }

    /// Takes a ready spare, in the catalog transaction of the tenant it
    /// becomes (its id is the tenant's), if one is ready. The background
    /// task is asked to make another once this commits: [`Spares::taken`].
    pub fn take(&self, tx: &rusqlite::Connection) -> Result<Option<TenantId>> {
        if self.inner.target == 0 {
            return Ok(None);
        }
        spares::take_ready(tx, self.inner.version)
    }

    /// Tells the background task a spare was taken.
    pub fn taken(&self) {
        let _ = self
            .inner
            .ready
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        self.inner.wanted.notify_one();
    }

    /// Keeps the target number of spares ready, until aborted: once a
    /// quarter of them are taken, makes batches until all are ready again,
    /// and waits to be told one was taken. A failed batch (a full disk, say)
    /// is tried again a second later.
    pub async fn keep_ready(self) {
        self.recount().await;
        loop {
            // Refilled once a quarter is gone, in batches: so that a burst
            // of creations is not slowed by spares made one by one.
            let ready = self.inner.ready.load(Ordering::Relaxed);
            let target = self.inner.target;
            let missing = match ready > target - target.div_ceil(4) {
                true => 0,
                false => target - ready,
            };
            if missing == 0 {
                self.inner.wanted.notified().await;
                continue;
            }
            let mut made = Ok(());
            let mut left = missing;
            while left > 0 && made.is_ok() {
                let batch = left.min(BATCH);
                made = self.make(batch).await;
                left -= batch;
            }
            if let Err(error) = made {
                tracing::warn!(error = %crate::error::error_chain(&error), "could not make spare tenant files; trying again in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // What the catalog holds, not what was counted on the way: a
            // spare taken while the count was read, or a retried creation
            // counted as taking one, does not leave the count wrong.
            self.recount().await;
        }
    }

    /// Reads how many spares are ready from the catalog, trying again each
    /// second until it can.
    async fn recount(&self) {
        let version = self.inner.version;
        loop {
            match self
                .inner
                .catalog
                .read(move |conn| spares::count_ready(conn, version))
                .await
            {
                Ok(counted) => return self.inner.ready.store(counted, Ordering::Relaxed),
                Err(error) => {
                    tracing::warn!(error = %crate::error::error_chain(&error), "could not count the spare tenant files; trying again in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Makes `count` spares. Its catalog changes go through the catalog's
    /// writer, with the commits of the calls (each synced); its files are
    /// written on a blocking thread.
    async fn make(&self, count: usize) -> Result<()> {
        let catalog = &self.inner.catalog;
        // Looked at now, not as last seen: a batch must not eat into the
        // reserve the catalog was just given.
        catalog.disk().check();
        catalog.disk().refuse_if_full()?;
        let ids: Vec<TenantId> = (0..count).map(|_| TenantId::new_random()).collect();
        let version = self.inner.version;
        let recorded = ids.clone();
        catalog
            .write(move |tx| spares::insert_making(tx, &recorded, version, now_micros()))
            .await?;
        crate::fault::reached("spares.after-record").await;
        let spares = self.clone();
        let written = ids.clone();
        let made = run_blocking(move || spares.write_batch(&written)).await;
        if let Err(error) = made {
            // Nothing of the batch stays: not its files, not its records.
            let (data_dir, removed) = (self.inner.data_dir.clone(), ids.clone());
            run_blocking(move || {
                for id in &removed {
                    data_dir::remove_database_files(&data_dir.tenant_file(*id)).ok();
                }
                Ok(())
            })
            .await
            .ok();
            catalog
                .write(move |tx| ids.iter().try_for_each(|id| spares::remove(tx, *id)))
                .await
                .ok();
            return Err(error);
        }
        crate::fault::reached("spares.after-files").await;
        catalog
            .write(move |tx| spares::mark_ready(tx, &ids))
            .await?;
        self.inner.ready.fetch_add(count, Ordering::Relaxed);
        tracing::debug!(count, "made spare tenant files");
        Ok(())
    }

    /// Writes the files of a batch of spares, then syncs them all at once:
    /// one flush of the file system for the batch (files, their inodes and
    /// the directory), where a sync of each file would flush the file
    /// system's journal once a file. Blocking.
    fn write_batch(&self, ids: &[TenantId]) -> Result<()> {
        for id in ids {
            self.write_unsynced(&self.inner.data_dir.tenant_file(*id))?;
        }
        let tenants = self.inner.data_dir.tenants_dir();
        let dir =
            std::fs::File::open(&tenants).context(|| format!("opening {}", tenants.display()))?;
        rustix::fs::syncfs(&dir)
            .map_err(std::io::Error::from)
            .context(|| format!("syncing the file system of {}", tenants.display()))
    }
}

/// The file whose presence says the last stop was clean, its catalog
/// synced: written at the end of a clean stop, removed at start-up.
const CLEAN_STOP: &str = "stopped-cleanly";

/// Removes, at start-up, the spares a stop interrupted (`making`), those of
/// another schema version than `latest` (an upgrade; new ones are made at
/// the new version), the records of spares whose file is gone, and every
/// spare if none are wanted (`target` 0), with their files. After a stop
/// that was not clean, every spare goes: a creation answered before the
/// catalog synced it may have been lost in a power cut, its spare recorded
/// ready again while its file, and its id, were already handed out.
/// Blocking.
pub fn recover(catalog: &Catalog, data_dir: &DataDir, latest: u32, target: usize) -> Result<()> {
    let marker = data_dir.root().join(CLEAN_STOP);
    let clean = marker.is_file();
    let all = catalog.read_now(spares::all)?;
    let mut removed = Vec::new();
    for spare in all {
        let file = data_dir.tenant_file(spare.id);
        let keep =
            clean && target > 0 && spare.ready && spare.schema_version == latest && file.is_file();
        if keep {
            continue;
        }
        if !spare.ready {
            tracing::info!(spare = %spare.id, "removing a spare tenant file a stop interrupted");
        }
        data_dir::remove_database_files(&file)?;
        removed.push(spare.id);
    }
    if !clean && !removed.is_empty() {
        tracing::info!(
            count = removed.len(),
            "the last stop was not clean: removed the spare tenant files, which a creation lost with the catalog's last second may have taken"
        );
    }
    // Files first: a record whose file is gone is removed at the next start.
    if !removed.is_empty() {
        catalog.write_now(move |tx| removed.iter().try_for_each(|id| spares::remove(tx, *id)))?;
    }
    if clean {
        std::fs::remove_file(&marker).context(|| format!("removing {}", marker.display()))?;
        data_dir::sync_parent(&marker)?;
    }
    Ok(())
}

/// Records that the server stopped cleanly, every creation synced in the
/// catalog: its spares are kept at the next start. Blocking.
pub fn stopped_cleanly(data_dir: &DataDir) -> Result<()> {
    let marker = data_dir.root().join(CLEAN_STOP);
    let file =
        std::fs::File::create(&marker).context(|| format!("creating {}", marker.display()))?;
    file.sync_all()
        .context(|| format!("syncing {}", marker.display()))?;
    data_dir::sync_parent(&marker)
}

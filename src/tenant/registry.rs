//! The registry of open tenant databases.
//!
//! A bounded moka cache maps a tenant id to its open [`Database`] (a small
//! r2d2 pool). The first call for a tenant opens its file, sets its pragmas and
//! runs its pending migrations; `try_get_with` makes that single flight, so a
//! hundred concurrent first calls open the file once. The least recently used
//! tenants beyond `max_open`, and those idle longer than `idle`, are evicted:
//! their pool is dropped once the last in-flight call lets go of it, SQLite
//! checkpoints the WAL into the main file, and the tenant is again exactly one
//! self-contained file.
//!
//! # Gates
//!
//! Operations that move or replace a tenant's file (delete, restore) must not
//! race with a call opening it. Each tenant has a gate, a read-write lock made
//! on demand: opening a tenant holds it shared until the open database is in
//! the cache, and so does anything else that reads the file directly (a
//! backup, an eager migration); an operation that moves the file holds it
//! exclusively ([`Registry::exclusive`]). A call that finds its tenant open
//! never touches the gate, so the hot path costs one cache lookup.
//!
//! A database that leaves the cache, for any reason, is closed as soon as
//! the calls running on it are done, not whenever the cache drops its copy;
//! until then it is listed as closing, and an exclusive hold waits for it.
//! So when an operation moves a tenant's file, no connection of this
//! process has it open, and the file is whole, with nothing beside it.
//!
//! # Lifecycle
//!
//! A tenant's database in this process is in one [`Stage`] at a time; its
//! definition lists the stages and every transition between them, and
//! [`Registry::stage`] reports it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;
use rusqlite::{Connection, Transaction};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::catalog::{Catalog, TenantState, store};
use crate::clock::{Micros, now_micros};
use crate::error::{Context, Error, Result};
use crate::ids::TenantId;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::storage::data_dir::DataDir;
use crate::storage::schema::{self, Migrated, Schema};
use crate::storage::sqlite::{self, Database, PoolSettings, Step, Turn, run_blocking};
use crate::storage::staging::{StagedFile, Staging};
use crate::tenant::snapshot::FileSummary;
use crate::weak_map::WeakMap;

#[derive(Clone)]
pub struct RegistrySettings {
    pub max_open: u64,
    pub idle: Duration,
    pub pool: PoolSettings,
    /// Most bytes of snapshots and uploads in the staging folder at once.
    pub max_staging_bytes: u64,
    /// The tenant database's schema.
    pub schema: &'static Schema,
}

/// A cheap, clone-able handle on the open tenants.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    open: Cache<TenantId, Arc<Database>>,
    slots: Arc<Slots>,
    catalog: Catalog,
    data_dir: DataDir,
    staging: Arc<Staging>,
    pool: PoolSettings,
    schema: &'static Schema,
    opens: AtomicU64,
    aside_reads: AtomicU64,
    /// The last item call of each tenant called since the last flush to the
    /// catalog: see [`Registry::flush_accesses`].
    accesses: std::sync::Mutex<HashMap<TenantId, Micros>>,
    /// The file (device, inode) each open database has open, and whose.
    files: std::sync::Mutex<HashMap<(u64, u64), OpenFile>>,
    metrics: Arc<Metrics>,
    /// Where every database opened from now on is replicated, if anywhere.
    replica: std::sync::OnceLock<Arc<crate::replica::Replica>>,
}

const MIGRATED_OK: OutcomeLabels = OutcomeLabels { outcome: "ok" };

/// Where one tenant's database stands in this process.
///
/// ```text
///             first call (gate shared)         in the cache
///   Closed ──────────────────────────▶ Opening ────────────▶ Open
///     ▲  │                                │ the open failed    │ left the cache: evicted
///     │  │ an operation (gate exclusive)  ▼                    │ (capacity, idle), closed
///     │  └──────────▶ Held            Closed                   │ after a storage fault,
///     │                 │ released                             │ or taken by an operation
///     │                 ▼                                      ▼
///     └─────────────  Closed  ◀──── last call done ──────── Closing
/// ```
///
/// - **Closed**: no database of the tenant is open here; its file is one
///   self-contained file on disk.
/// - **Opening**: a call found the tenant closed and opens its file, holding
///   the tenant's gate shared; concurrent first calls wait for this one open
///   (moka's single flight). A failed open leaves the tenant closed.
/// - **Open**: the database is in the cache and serves calls; a call that
///   finds it there takes a turn on it without touching the gate (the hot
///   path).
/// - **Closing**: the database left the cache. Its closer first passes the
///   tenant's door (see below), then waits for the calls already running on
///   it and closes its connections (which checkpoints the file); calls that
///   come later are refused a turn.
/// - **Held**: an operation that moves or replaces the file holds the gate
///   exclusively ([`Registry::exclusive`]); nothing opens the tenant or
///   reads its file until the hold is released.
///
/// A call that finds its database closing after it looked it up (the one
/// case where a turn is refused), or does not find it, takes the gate
/// shared (waiting for an operation that holds the file) and then the
/// tenant's *door* shared, and finds or opens the tenant again through it,
/// taking its turn before it lets go of the door. A closer passes the door
/// (takes it exclusively, and lets go at once) before it starts closing, so
/// every call that found the database through the door has its turn by
/// then, and the closer waits for it; a call that comes later cannot find
/// that database any more, since it left the cache before its closer ran.
/// So the second look always gets a turn: a call looks at most twice. The
/// door is held only while a database is found or opened and a turn taken,
/// never while a file is read, so a closer waits for nothing long, and
/// neither does a call behind it.
///
/// The stages can overlap for a moment (a database still closing while a
/// new one of the same tenant opens); [`Registry::stage`] reports the one a
/// new call meets, in the order Held, Open, Opening, Closing, Closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Closed,
    Opening,
    Open,
    Closing,
    Held,
}

/// Exclusive hold on a tenant's file: while it lives, the tenant is not open
/// and nothing can open it or read its file. See [`Registry::exclusive`].
pub struct Exclusive {
    _gate: OwnedRwLockWriteGuard<()>,
    slot: Arc<Slot>,
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        self.slot.held.store(false, Ordering::Relaxed);
    }
}

/// Shared hold on a tenant's file: it will not be moved or replaced while
/// this lives. See [`Registry::shared`].
pub struct Shared {
    _gate: OwnedRwLockReadGuard<()>,
    slot: Arc<Slot>,
}

impl Registry {
    pub fn new(catalog: Catalog, data_dir: DataDir, settings: RegistrySettings) -> Self {
        let metrics = Arc::new(Metrics::new());
        let slots = Arc::new(Slots::default());
        let staging = Staging::new(
            data_dir.staging_dir(),
            settings.max_staging_bytes,
            catalog.disk().clone(),
        );
        let closing_slots = slots.clone();
        let open = Cache::builder()
            .max_capacity(settings.max_open)
            .time_to_idle(settings.idle)
            .eviction_listener({
                let metrics = metrics.clone();
                move |tenant: Arc<TenantId>, database: Arc<Database>, cause| {
                    tracing::debug!(tenant = %tenant, ?cause, "closing tenant database");
                    if cause.was_evicted() {
                        metrics.registry_evictions.inc();
                    }
                    // Whatever took it out of the cache (an eviction, an
                    // invalidation, an operation), the database is closed
                    // now, not when the cache lets go of its copy: once the
                    // calls running on it are done, its connections close,
                    // which checkpoints the file and removes its -wal and
                    // -shm. Until then it is listed as closing, so that an
                    // operation that moves the file waits for it.
                    // The closer passes the tenant's door first: a call that
                    // found the database through it (one that opened the
                    // tenant, or looks for it a second time) gets its turn
                    // before the database closes. See [`Stage`].
                    let slot = closing_slots.get_or_make(*tenant, Slot::default);
                    slot.closing().push(database.clone());
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        runtime.spawn(async move {
                            drop(slot.door.write().await);
                            database.retire().await;
                            slot.closing().retain(|d| !Arc::ptr_eq(d, &database));
                        });
                    }
                }
            })
            .build();
        Registry {
            inner: Arc::new(Inner {
                open,
                slots,
                catalog,
                staging,
                data_dir,
                pool: settings.pool,
                schema: settings.schema,
                replica: std::sync::OnceLock::new(),
                opens: AtomicU64::new(0),
                aside_reads: AtomicU64::new(0),
                accesses: Default::default(),
                files: Default::default(),
                metrics,
            }),
        }
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.inner.data_dir
    }

    /// The staging folder's budget, for snapshots and uploads being made.
    pub fn staging(&self) -> &Arc<Staging> {
        &self.inner.staging
    }

    /// The tenant database's schema.
    pub fn schema(&self) -> &'static Schema {
        self.inner.schema
    }

    pub fn pool_settings(&self) -> &PoolSettings {
        &self.inner.pool
    }

    /// Runs `f` on a connection of an active tenant's database: for the
    /// tenant's own calls, which count as an access to it. `f` must be a
    /// read bounded by an index (see [`Database::read_bounded_in`]).
    pub async fn read<T, F>(&self, tenant: TenantId, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.touch(tenant);
        let (database, turn) = self.turn(tenant).await?;
        let result = database.read_bounded_in(turn, f).await;
        self.checked(tenant, result).await
    }

    /// Runs `f` in a write transaction on an active tenant's database: for
    /// the tenant's own calls, which count as an access to it.
    pub async fn write<T, F>(&self, tenant: TenantId, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
    {
        // The room left on a full disk is for the catalog.
        self.inner.catalog.disk().refuse_if_full()?;
        self.touch(tenant);
        let (database, turn) = self.turn(tenant).await?;
        let result = database.write_in(turn, f).await;
        self.checked(tenant, result).await
    }

    /// The open database of an active tenant, opened on first use, and a
    /// turn on it. A database found open takes one cache lookup; one found
    /// closing, or not found, is looked for again through the tenant's door,
    /// which no closer passes before the turn is taken (see [`Stage`]).
    async fn turn<K: Turn>(&self, tenant: TenantId) -> Result<(Arc<Database>, K)> {
        match self.inner.open.get(&tenant).await {
            Some(database) => {
                self.inner.metrics.registry_hits.inc();
                if let Ok(turn) = K::take(&database).await {
                    return Ok((database, turn));
                }
            }
            None => {
                self.inner.metrics.registry_misses.inc();
            }
        }
        // Open → Closing happened after the lookup, or the tenant is
        // Closed: wait for an operation holding the file, then find or open
        // the tenant through the door. A database of the tenant still
        // closing has the file open, and its connection owns it: its closer
        // is let finish first (it passes the door before it closes).
        // If the file is still locked (a database of the tenant began to
        // close after that wait), the door is let go, so that its closer
        // can pass it, and the open is tried again.
        let shared = self.shared(tenant).await;
        let mut tries = 0;
        loop {
            shared.slot.closers_done().await;
            let door = shared.slot.door.read().await;
            let database = match self.open_under(tenant, &shared).await {
                Err(error) if is_locked(&error) && tries < LOCKED_TRIES => {
                    tries += 1;
                    continue;
                }
                opened => opened.map_err(|error| self.locked_fault(tenant, error))?,
            };
            let turn = K::take(&database)
                .await
                .map_err(|_| closed_under_gate(tenant))?;
            drop(door);
            return Ok((database, turn));
        }
    }

    /// The error of a tenant's file found locked however often its open was
    /// tried: another program has it open.
    fn locked_fault(&self, tenant: TenantId, error: Error) -> Error {
        if !is_locked(&error) {
            return error;
        }
        tracing::error!(%tenant, error = %crate::error::error_chain(&error), "a tenant's file is locked by another program");
        Error::Storage(format!(
            "tenant {tenant}'s database file is locked by another program (an sqlite3 shell?): \
             an operator must close it; tenantry alone may open the files of its data directory"
        ))
    }

    /// The open database of an active tenant, opened now if it is not open,
    /// for a caller holding the tenant's gate shared: held until the opened
    /// database is in the cache, so that an exclusive operation either sees
    /// it there or opens nothing.
    async fn open_under(&self, tenant: TenantId, shared: &Shared) -> Result<Arc<Database>> {
        if let Some(database) = self.inner.open.get(&tenant).await {
            return Ok(database);
        }
        let _opening = Opening::new(&shared.slot);
        let database = self
            .inner
            .open
            .try_get_with(tenant, async {
                self.database(tenant, &shared.slot, Use::Calls)
                    .await
                    .map(|(database, _)| database)
            })
            .await?;
        Ok(database)
    }

    /// The database of a tenant's file, for calls (the cache takes it) or
    /// for a read aside: the one this process has open already, or one
    /// opened now. A file has one connection, which owns it, so a tenant
    /// has one database at a time: an admin's read aside shares the cache's,
    /// and the cache takes over one opened aside when a call needs it. The
    /// caller holds the tenant's gate shared. Fails as SQLite's
    /// "database is locked" if a database of the tenant that is still
    /// closing has the file: see [`is_locked`].
    async fn database(
        &self,
        tenant: TenantId,
        slot: &Slot,
        purpose: Use,
    ) -> Result<(Arc<Database>, Migrated)> {
        let mut owner = slot.file.lock().await;
        let latest = self.inner.schema.latest();
        let unchanged = Migrated {
            from: latest,
            to: latest,
        };
        if purpose == Use::Aside
            && let Some(database) = self.inner.open.get(&tenant).await
        {
            return Ok((database, unchanged));
        }
        // A database opened aside is shared, or taken over by the cache. The
        // cache's own, if it is not in the cache any more, is closing (or
        // about to be: it left the cache, and its closer is on its way), and
        // is never taken again.
        if let Some(database) = owner
            .database
            .upgrade()
            .filter(|d| !owner.for_calls && slot.is_live(d))
        {
            owner.for_calls = purpose == Use::Calls;
            return Ok((database, unchanged));
        }
        let (database, migrated) = self
            .open_file(tenant, purpose)
            .await
            .map_err(|error| self.storage_fault(tenant, error))?;
        tracing::debug!(%tenant, ?migrated, ?purpose, "opened tenant database");
        let database = Arc::new(database);
        self.claim_file(tenant, &database)?;
        if let Some(replica) = self.inner.replica.get() {
            replica.attach(tenant, &database);
        }
        *owner = FileOwner {
            database: Arc::downgrade(&database),
            for_calls: purpose == Use::Calls,
        };
        Ok((database, migrated))
    }

    /// Lets go of a database taken for a read aside: closed once its last
    /// reader is done, unless calls have taken it over meanwhile.
    async fn release_aside(&self, slot: &Slot, database: Arc<Database>) {
        let owner = slot.file.lock().await;
        let ours = std::ptr::eq(owner.database.as_ptr(), Arc::as_ptr(&database));
        if ours && !owner.for_calls && Arc::strong_count(&database) == 1 {
            // Under the lock: nothing takes it, or opens the file, meanwhile.
            database.retire().await;
        }
        drop(database);
        drop(owner);
    }

    /// Replicates every tenant database opened from now on to `replica`.
    pub fn replicate_to(&self, replica: Arc<crate::replica::Replica>) {
        if self.inner.replica.set(replica).is_err() {
            tracing::error!("the registry's replica was set twice");
        }
    }

    /// Tenant `tenant`'s database if it is open for calls, without opening it.
    pub async fn if_open(&self, tenant: TenantId) -> Option<Arc<Database>> {
        self.inner.open.get(&tenant).await
    }

    /// Where tenant databases are replicated, if anywhere.
    pub fn replica(&self) -> Option<&Arc<crate::replica::Replica>> {
        self.inner.replica.get()
    }

    /// Records which file `database` has open, and refuses it if another
    /// tenant has the same file open: one file never serves two tenants.
    fn claim_file(&self, tenant: TenantId, database: &Arc<Database>) -> Result<()> {
        let mut files = self.inner.files.lock().expect("never poisoned");
        if let Some((owner, open)) = files.get(&database.file())
            && *owner != tenant
            && open.upgrade().is_some_and(|other| !other.is_retired())
        {
            tracing::error!(%tenant, other = %owner, "a tenant's file is another tenant's open file");
            return Err(Error::Storage(format!(
                "tenant {tenant}'s database file is the file of another tenant: an operator must \
                 put the tenant's own file in its place"
            )));
        }
        if files.len() > 2 * self.inner.open.entry_count() as usize + 1024 {
            files.retain(|_, (_, open)| open.strong_count() > 0);
        }
        files.insert(database.file(), (tenant, Arc::downgrade(database)));
        Ok(())
    }

    /// Opens a tenant's file and migrates it if needed, recording its new
    /// version. Admission has already found the tenant active; a failure is
    /// explained by [`explain_failed_open`].
    async fn open_file(&self, tenant: TenantId, purpose: Use) -> Result<(Database, Migrated)> {
        if purpose == Use::Aside {
            crate::deadline::check(crate::deadline::current().as_deref())?;
            self.inner.aside_reads.fetch_add(1, Ordering::Relaxed);
        }
        let path = self.inner.data_dir.tenant_file(tenant);
        let pool = self.inner.pool.clone();
        let catalog = self.inner.catalog.clone();
        let schema = self.inner.schema;
        let started = std::time::Instant::now();
        let opened = run_blocking(move || {
            let opened = check_file(tenant, &path)
                .and_then(|()| Database::open(&path, &pool, |conn| prepare(conn, schema, tenant)));
            match opened {
                Ok((database, migrated)) => {
                    record_version(&catalog, tenant, migrated)?;
                    Ok((database, migrated))
                }
                Err(error) if is_locked(&error) => Err(error),
                Err(error) => Err(explain_failed_open(
                    &catalog,
                    tenant,
                    error,
                    purpose == Use::Aside,
                )?),
            }
        })
        .await;
        if purpose == Use::Calls {
            self.inner.opens.fetch_add(1, Ordering::Relaxed);
        }
        let metrics = &self.inner.metrics;
        metrics
            .tenant_open_duration
            .observe(started.elapsed().as_secs_f64());
        if let Ok((_, migrated)) = &opened
            && migrated.from != migrated.to
        {
            metrics.migrations.get_or_create(&MIGRATED_OK).inc();
        }
        if let Err(error) = &opened
            && matches!(error, Error::Internal { .. })
        {
            tracing::error!(%tenant, error = %crate::error::error_chain(error), "could not open tenant database");
        }
        opened
    }

    /// Runs `f` on a tenant's data without opening the tenant in the cache:
    /// on its database if it is open, or else on one opened for this read
    /// (migrating an old file first, as any open does) and closed after it,
    /// which leaves the tenant one file again. Admin views across tenants
    /// read this way, so that reading a thousand idle tenants does not push
    /// the busy ones out of the cache; a call that needs the tenant
    /// meanwhile takes the same database over. The tenant may be suspended;
    /// the caller decides whether that matters. The call's deadline
    /// ([`crate::deadline::current`]) is checked before a file is opened.
    pub async fn read_aside<T, F>(&self, tenant: TenantId, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let mut f = Some(f);
        let (value, _) = self
            .read_aside_in_steps(tenant, None, move |conn, value: &mut Option<T>| {
                let f = f.take().expect("a read of one step runs once");
                *value = Some(f(conn)?);
                Ok(Step::Done)
            })
            .await?;
        Ok(value.expect("a read's one step ran"))
    }

    /// [`Registry::read_aside`] of a read made in steps, each given the
    /// state the last one left, until one is [`Step::Done`]. Each step takes
    /// a turn of its own on the tenant's database, so a long read (a search
    /// of a big tenant) never keeps the tenant's calls waiting for more than
    /// a step. Returns the last state and the step function.
    pub async fn read_aside_in_steps<S, F>(
        &self,
        tenant: TenantId,
        state: S,
        step: F,
    ) -> Result<(S, F)>
    where
        S: Send + 'static,
        F: FnMut(&Connection, &mut S) -> Result<Step> + Send + 'static,
    {
        let mut carried = (state, step);
        if let Some(database) = self.inner.open.get(&tenant).await {
            match self.steps_on(tenant, &database, carried).await {
                Stepped::Done(result) => return result,
                Stepped::Closed(back) => carried = back,
            }
        }
        for _ in 0..LOCKED_TRIES {
            let (hold, _) = self.take_aside(tenant).await?;
            let stepped = self.steps_on(tenant, hold.database(), carried).await;
            hold.release().await;
            match stepped {
                Stepped::Done(result) => return result,
                Stepped::Closed(back) => carried = back,
            }
        }
        Err(closed_again(tenant))
    }

    /// The tenant's database for reads aside, with its gate held shared:
    /// the cache's if the tenant is open, else one opened aside (or shared
    /// with other reads aside), and what opening it migrated. See
    /// [`Registry::database`].
    async fn take_aside(&self, tenant: TenantId) -> Result<(AsideHold, Migrated)> {
        let shared = self.shared(tenant).await;
        let mut tries = 0;
        loop {
            crate::deadline::check(crate::deadline::current().as_deref())?;
            shared.slot.closers_done().await;
            match self.database(tenant, &shared.slot, Use::Aside).await {
                Err(error) if is_locked(&error) && tries < LOCKED_TRIES => tries += 1,
                Err(error) => return Err(self.locked_fault(tenant, error)),
                Ok((database, migrated)) => {
                    let hold = AsideHold {
                        registry: self.clone(),
                        shared: Some(shared),
                        database: Some(database),
                    };
                    return Ok((hold, migrated));
                }
            }
        }
    }

    /// The steps of a read on a database, each in a turn of its own; handed
    /// back if the database closes before the first one ran.
    async fn steps_on<S, F>(
        &self,
        tenant: TenantId,
        database: &Arc<Database>,
        carried: (S, F),
    ) -> Stepped<S, F>
    where
        S: Send + 'static,
        F: FnMut(&Connection, &mut S) -> Result<Step> + Send + 'static,
    {
        let mut carried = carried;
        let mut first = true;
        loop {
            let turn = match database.read_turn().await {
                Ok(turn) => turn,
                Err(_) if first => return Stepped::Closed(carried),
                Err(_) => {
                    return Stepped::Done(Err(Error::Unavailable(format!(
                        "tenant {tenant}'s database was closed during a long read: retry the call"
                    ))));
                }
            };
            first = false;
            let (mut state, mut step) = carried;
            let ran = database
                .read_in(turn, move |conn| {
                    let next = step(conn, &mut state)?;
                    Ok((next, state, step))
                })
                .await;
            match self.checked(tenant, ran).await {
                Ok((Step::Done, state, step)) => return Stepped::Done(Ok((state, step))),
                Ok((Step::More, state, step)) => carried = (state, step),
                Err(error) => return Stepped::Done(Err(error)),
            }
        }
    }

    /// Brings a tenant's file to the current schema without opening the
    /// tenant in the cache, as [`Registry::read_aside`] reads it: an open
    /// migrates, and an open tenant was brought up to date when it opened.
    pub async fn migrate_aside(&self, tenant: TenantId) -> Result<Migrated> {
        let (hold, migrated) = self.take_aside(tenant).await?;
        hold.release().await;
        Ok(migrated)
    }

    /// A consistent snapshot of a tenant's data, copied into the staging
    /// folder from its database while the tenant serves (see
    /// [`crate::tenant::snapshot::take`]), opened aside if it is not open.
    /// The tenant's gate is held meanwhile, so no restore or delete replaces
    /// the file during the copy.
    pub async fn snapshot(
        &self,
        tenant: TenantId,
        what: &str,
    ) -> Result<(StagedFile, FileSummary)> {
        for _ in 0..LOCKED_TRIES {
            let (hold, _) = self.take_aside(tenant).await?;
            let taken =
                crate::tenant::snapshot::take(hold.database(), &self.inner.staging, what).await;
            hold.release().await;
            match taken {
                Ok(taken) => return taken.map_err(|error| self.storage_fault(tenant, error)),
                // Closed before the copy began: find or open it again.
                Err(sqlite::Retired) => continue,
            }
        }
        Err(closed_again(tenant))
    }

    /// Runs `step` on an active tenant's database in turns of its own until
    /// it is [`Step::Done`], for the tenant's own calls: a long read (a big
    /// page of a list) lets the tenant's other calls run between its steps.
    pub async fn read_in_steps<S, F>(&self, tenant: TenantId, state: S, step: F) -> Result<S>
    where
        S: Send + 'static,
        F: FnMut(&Connection, &mut S) -> Result<Step> + Send + 'static,
    {
        self.touch(tenant);
        let mut carried = (state, step);
        loop {
            let (database, turn) = self.turn(tenant).await?;
            let (mut state, mut step) = carried;
            let ran = database
                .read_bounded_in(turn, move |conn| {
                    let next = step(conn, &mut state)?;
                    Ok((next, state, step))
                })
                .await;
            match self.checked(tenant, ran).await? {
                (Step::Done, state, _) => return Ok(state),
                (Step::More, state, step) => carried = (state, step),
            }
        }
    }

    /// Notes a call to a tenant's data now. A call costs a map insert, not
    /// a catalog write; [`Registry::flush_accesses`] writes them in batches.
    fn touch(&self, tenant: TenantId) {
        let now = now_micros();
        let mut accesses = self.inner.accesses.lock().expect("never poisoned");
        let last = accesses.entry(tenant).or_insert(now);
        *last = (*last).max(now);
    }

    /// The last call to a tenant's data noted since the last flush, if any.
    pub fn pending_access(&self, tenant: TenantId) -> Option<Micros> {
        let accesses = self.inner.accesses.lock().expect("never poisoned");
        accesses.get(&tenant).copied()
    }

    /// Writes the accesses noted since the last flush to the catalog, in one
    /// transaction; a time there is never moved backwards, and a tenant
    /// deleted meanwhile is skipped. An access is forgotten here only once
    /// it is in the catalog (and not newer meanwhile), so a failed write
    /// loses nothing and a reader always finds the newest time in one place
    /// or the other. Returns how many tenants it recorded.
    pub async fn flush_accesses(&self) -> Result<usize> {
        let batch: Vec<(TenantId, Micros)> = {
            let accesses = self.inner.accesses.lock().expect("never poisoned");
            accesses.iter().map(|(id, time)| (*id, *time)).collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let written = batch.clone();
        self.inner
            .catalog
            .write(move |tx| store::record_accesses(tx, &written))
            .await?;
        let mut accesses = self.inner.accesses.lock().expect("never poisoned");
        for (tenant, time) in &batch {
            if accesses.get(tenant) == Some(time) {
                accesses.remove(tenant);
            }
        }
        Ok(batch.len())
    }

    /// How many times a tenant's file was opened for reads aside (or an
    /// eager migration, or a snapshot), outside the cache, since start.
    pub fn aside_reads(&self) -> u64 {
        self.inner.aside_reads.load(Ordering::Relaxed)
    }

    fn slot(&self, tenant: TenantId) -> Arc<Slot> {
        self.inner.slots.get_or_make(tenant, Slot::default)
    }

    /// Holds a tenant's file in place (no move, no replace) until dropped.
    pub async fn shared(&self, tenant: TenantId) -> Shared {
        let slot = self.slot(tenant);
        Shared {
            _gate: slot.gate.clone().read_owned().await,
            slot,
        }
    }

    /// Takes a tenant's file for an operation that moves or replaces it:
    /// waits for opens and direct readers of the file to finish, closes
    /// every database of the tenant once the calls running on it are done
    /// (the open one, and any an eviction left closing), and keeps it closed
    /// until the returned hold is dropped. Calls that arrive in the meantime
    /// wait, then look the tenant up in the catalog again. Once this
    /// returns, nothing in this process has the tenant's file open.
    pub async fn exclusive(&self, tenant: TenantId) -> Exclusive {
        let slot = self.slot(tenant);
        let gate = slot.gate.clone().write_owned().await;
        slot.held.store(true, Ordering::Relaxed);
        // Made now, so that a hold given up while it waits (its caller went
        // away) is released, and the tenant no longer reported held.
        let held = Exclusive {
            _gate: gate,
            slot: slot.clone(),
        };
        if let Some(database) = self.inner.open.remove(&tenant).await {
            database.retire().await;
        }
        slot.closed().await;
        held
    }

    /// A call's result, with a storage failure of the tenant's file turned
    /// into an answer that says what is wrong with it. A damaged, moved or
    /// read-only file also closes the tenant, so that the next call opens the
    /// file afresh and sees it as it is now (repaired, or still broken).
    async fn checked<T>(&self, tenant: TenantId, result: Result<T>) -> Result<T> {
        match result {
            Ok(value) => Ok(value),
            Err(error) => {
                let error = self.storage_fault(tenant, error);
                if matches!(error, Error::DataLoss(_) | Error::Storage(_)) {
                    self.evict(tenant).await;
                }
                Err(error)
            }
        }
    }

    /// Names the storage failure behind `error`, if there is one: what a
    /// client can be told, and what an operator must do about it.
    fn storage_fault(&self, tenant: TenantId, error: Error) -> Error {
        use rusqlite::ffi::{ErrorCode, SQLITE_READONLY_DBMOVED};
        let Some(code) = error.sqlite_code() else {
            return error;
        };
        let fault = match code.code {
            ErrorCode::DiskFull if self.inner.catalog.disk().check() => {
                return Error::ResourceExhausted(format!(
                    "the disk holding tenant {tenant} is full: an operator must free space"
                ));
            }
            ErrorCode::DiskFull => {
                return Error::ResourceExhausted(match self.inner.pool.max_bytes {
                    Some(max) => format!(
                        "tenant {tenant} has used its storage quota of {} KiB: \
                         delete data to make room, or ask an operator for a larger quota",
                        max / 1024
                    ),
                    None => format!("the disk holding tenant {tenant} is full"),
                });
            }
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => Error::DataLoss(format!(
                "tenant {tenant}'s database file is damaged ({code}): \
                 an operator must restore it from a backup"
            )),
            ErrorCode::ReadOnly if code.extended_code == SQLITE_READONLY_DBMOVED => {
                Error::DataLoss(format!(
                    "tenant {tenant}'s database file was moved or removed while in use: \
                     an operator must put it back or restore it from a backup"
                ))
            }
            ErrorCode::ReadOnly => Error::Storage(format!(
                "tenant {tenant}'s database file is read-only: an operator must make it writable"
            )),
            ErrorCode::CannotOpen | ErrorCode::SystemIoFailure | ErrorCode::PermissionDenied => {
                Error::Storage(format!(
                    "tenant {tenant}'s database file cannot be read or written ({code}): \
                     an operator must check it and its directory"
                ))
            }
            _ => return error,
        };
        tracing::error!(%tenant, error = %crate::error::error_chain(&error), "storage failure");
        fault
    }

    /// Closes a tenant's database if it is open, once the calls running on
    /// it are done; calls after this open the file afresh.
    pub async fn evict(&self, tenant: TenantId) {
        self.inner.open.invalidate(&tenant).await;
    }

    /// Is the tenant open now?
    pub fn is_open(&self, tenant: TenantId) -> bool {
        self.inner.open.contains_key(&tenant)
    }

    /// The stage a new call for the tenant meets now (see [`Stage`]). The
    /// cache's pending work is done first, so that a tenant whose idle time
    /// ran out is reported closing (or closed), not open.
    pub async fn stage(&self, tenant: TenantId) -> Stage {
        self.inner.open.run_pending_tasks().await;
        let slot = self.inner.slots.get(&tenant);
        let flag = |f: fn(&Slot) -> bool| slot.as_deref().is_some_and(f);
        if flag(|s| s.held.load(Ordering::Relaxed)) {
            Stage::Held
        } else if self.is_open(tenant) {
            Stage::Open
        } else if flag(|s| s.opening.load(Ordering::Relaxed) > 0) {
            Stage::Opening
        } else if flag(|s| !s.closing().is_empty()) {
            Stage::Closing
        } else {
            Stage::Closed
        }
    }

    /// How many times a tenant database has been opened for calls (in the
    /// cache) since start.
    pub fn opens(&self) -> u64 {
        self.inner.opens.load(Ordering::Relaxed)
    }

    /// How many tenant databases are open now.
    pub async fn open_count(&self) -> u64 {
        self.inner.open.run_pending_tasks().await;
        self.inner.open.entry_count()
    }

    /// Closes every open tenant database: for shutdown, once no call is in
    /// flight. Each database is retired, which closes its connections now
    /// (the cache lets go of a removed value only at a later maintenance
    /// run), and the last connection of a WAL database checkpoints it, so
    /// each tenant is left as one self-contained file.
    pub async fn close_all(&self) {
        let open: Vec<TenantId> = self.inner.open.iter().map(|(id, _)| *id).collect();
        for tenant in open {
            if let Some(database) = self.inner.open.remove(&tenant).await {
                database.retire().await;
            }
        }
        self.inner.open.invalidate_all();
        self.inner.open.run_pending_tasks().await;
        for slot in self.inner.slots.values() {
            slot.closed().await;
        }
    }
}

/// Checks that a tenant's file is there, a file of its own and writable,
/// before opening it: a symbolic link or a second link (another tenant's
/// file under this tenant's name) is refused, whatever it points to. Write
/// permission is checked from the file's mode rather than left to the open:
/// a server running as root would otherwise write to a file an operator
/// made read-only on purpose. A file others may read is made private.
fn check_file(tenant: TenantId, path: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let not_its_own = |what: &str| {
        Error::Storage(format!(
            "tenant {tenant}'s database file is {what}: an operator must put the tenant's own \
             file in its place"
        ))
    };
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => Err(not_its_own("a symbolic link")),
        Ok(metadata) if !metadata.is_file() => Err(not_its_own("not a regular file")),
        Ok(metadata) if metadata.nlink() != 1 => Err(not_its_own(
            "linked from elsewhere (it has more than one name)",
        )),
        Ok(metadata) if metadata.permissions().readonly() => Err(Error::Storage(format!(
            "tenant {tenant}'s database file is read-only: an operator must make it writable"
        ))),
        Ok(metadata) => {
            if metadata.mode() & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .context(|| format!("making {} private", path.display()))?;
            }
            // SQLite takes an empty file for a new, empty database: a tenant
            // file cut to nothing must not come back as an empty tenant. A
            // database is at least one page; what SQLite finds wrong with a
            // bigger one, it says when the file is first read. (The file is
            // not opened here: closing a descriptor of it would drop the
            // lock a closing connection of this process may still hold.)
            if metadata.len() < 512 {
                return Err(Error::DataLoss(format!(
                    "tenant {tenant}'s database file is damaged (empty, or not a database): an operator \
                     must restore it from a backup"
                )));
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::DataLoss(format!(
                "tenant {tenant}'s database file is missing: an operator must restore it from a backup"
            )))
        }
        Err(error) => Err(Error::Storage(format!(
            "tenant {tenant}'s database file cannot be read ({error}): \
             an operator must check it and its directory"
        ))),
    }
}

/// What every open of a tenant file does first: WAL mode, and the pending
/// migrations.
fn prepare(conn: &mut Connection, schema: &Schema, tenant: TenantId) -> Result<Migrated> {
    sqlite::set_wal(conn)?;
    schema::migrate(conn, schema.migrations(), &format!("tenant {tenant}"))
}

/// Records in the catalog a schema version an open brought the file to.
fn record_version(catalog: &Catalog, tenant: TenantId, migrated: Migrated) -> Result<()> {
    if migrated.from != migrated.to {
        catalog.write_now(|tx| store::set_schema_version(tx, tenant, migrated.to))?;
    }
    Ok(())
}

/// The error of a tenant file that could not be opened. The catalog is asked
/// again, because a call admitted just before its tenant was deleted finds
/// the file gone, and must hear NOT_FOUND, not an internal error. A
/// suspended tenant is FAILED_PRECONDITION unless `suspended_ok`. `Err` only
/// if the catalog cannot be read.
fn explain_failed_open(
    catalog: &Catalog,
    tenant: TenantId,
    error: Error,
    suspended_ok: bool,
) -> Result<Error> {
    let state = catalog
        .read_now(|conn| store::get_tenant(conn, tenant))?
        .map(|record| record.state);
    Ok(match state {
        Some(TenantState::Active) => error,
        Some(TenantState::Suspended) if suspended_ok => error,
        Some(TenantState::Suspended) => Error::FailedPrecondition("tenant is suspended".into()),
        _ => crate::error::tenant_not_found(tenant),
    })
}

/// A database found through the tenant's door was closed: only a shutdown
/// closes one without passing the door.
fn closed_under_gate(tenant: TenantId) -> Error {
    Error::Unavailable(format!(
        "tenant {tenant}'s database was closed (the server is stopping): retry the call"
    ))
}

/// The tenant whose database has a file open, and that database.
type OpenFile = (TenantId, std::sync::Weak<Database>);

/// A tenant's database taken for reads aside, with the tenant's gate held
/// shared. Let go of with [`AsideHold::release`]; dropped instead (its
/// holder went away mid-read), it is let go of on a task of its own, which
/// keeps the gate until then, so that no operation moves the file while a
/// connection of this process may still have it open.
struct AsideHold {
    registry: Registry,
    /// Both taken when it is let go of.
    shared: Option<Shared>,
    database: Option<Arc<Database>>,
}

impl AsideHold {
    fn database(&self) -> &Arc<Database> {
        self.database.as_ref().expect("held until released")
    }

    async fn release(mut self) {
        if let (Some(shared), Some(database)) = (self.shared.take(), self.database.take()) {
            self.registry.release_aside(&shared.slot, database).await;
        }
    }
}

impl Drop for AsideHold {
    fn drop(&mut self) {
        let (Some(shared), Some(database)) = (self.shared.take(), self.database.take()) else {
            return;
        };
        let registry = self.registry.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                registry.release_aside(&shared.slot, database).await;
                drop(shared);
            });
        }
    }
}

/// A tenant's database that closed again and again before a read aside
/// could use it.
fn closed_again(tenant: TenantId) -> Error {
    Error::Unavailable(format!(
        "tenant {tenant}'s database kept closing before it could be read: retry the call"
    ))
}

/// How the steps of a read on an open database went: done (or failed), or
/// handed back because the database closed before the first step.
enum Stepped<S, F> {
    Done(Result<(S, F)>),
    Closed((S, F)),
}

/// What the registry keeps of a tenant while anything uses it: its gate,
/// and its databases that left the cache but are still closing. Made on
/// demand and forgotten once nobody holds it.
#[derive(Default)]
struct Slot {
    gate: Arc<RwLock<()>>,
    /// Held shared by a call while it finds or opens the tenant's database
    /// and takes a turn on it; passed by every closer before it closes a
    /// database (see [`Stage`]).
    door: RwLock<()>,
    closing: std::sync::Mutex<Vec<Arc<Database>>>,
    /// Whether an operation holds the gate exclusively ([`Stage::Held`]).
    held: std::sync::atomic::AtomicBool,
    /// Calls opening the tenant now ([`Stage::Opening`]).
    opening: std::sync::atomic::AtomicUsize,
    /// The tenant's database last opened here: see [`Registry::database`].
    file: tokio::sync::Mutex<FileOwner>,
}

/// The database that opened a tenant's file here last, if it is still open,
/// and whether the cache has it (else it was opened for reads aside, and is
/// closed when they are done). A slot lives while anyone holds it, which
/// those reads do; the cache's database is found in the cache.
#[derive(Default)]
struct FileOwner {
    database: std::sync::Weak<Database>,
    for_calls: bool,
}

/// What a tenant's database is opened for: the tenant's calls (it goes in
/// the cache), or an admin's read aside (it does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    Calls,
    Aside,
}

/// Opens of a tenant's file that found it locked, tried again (each waits
/// up to [`sqlite::OWNER_LOCK_WAIT`] in SQLite) before the call fails.
const LOCKED_TRIES: u32 = 50;

/// Whether `error` is SQLite's "database is locked": another connection has
/// the file, which a connection that owns its file waits for only briefly.
fn is_locked(error: &Error) -> bool {
    error
        .sqlite_code()
        .is_some_and(|code| code.code == rusqlite::ffi::ErrorCode::DatabaseBusy)
}

/// Counts a call as opening its tenant while it lives.
struct Opening<'a>(&'a Slot);

impl<'a> Opening<'a> {
    fn new(slot: &'a Slot) -> Self {
        slot.opening.fetch_add(1, Ordering::Relaxed);
        Opening(slot)
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.opening.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slot {
    fn closing(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Database>>> {
        self.closing
            .lock()
            .expect("the closing list is never poisoned")
    }

    /// Whether `database` still serves: not closed, nor closing.
    fn is_live(&self, database: &Arc<Database>) -> bool {
        !database.is_retired() && !self.closing().iter().any(|c| Arc::ptr_eq(c, database))
    }

    /// Waits until every database of the tenant that was closing has been
    /// closed by its closer. It closes none itself: a closer first lets the
    /// calls that found its database through the door take their turn.
    async fn closers_done(&self) {
        let closing: Vec<Arc<Database>> = self.closing().clone();
        for database in closing {
            database.closed().await;
        }
    }

    /// Closes every database of the tenant that was closing, and waits for
    /// them: for a holder of the gate, under which nobody is at the door.
    async fn closed(&self) {
        let closing: Vec<Arc<Database>> = self.closing().clone();
        for database in closing {
            database.retire().await;
            self.closing().retain(|d| !Arc::ptr_eq(d, &database));
        }
    }
}

type Slots = WeakMap<TenantId, Slot>;

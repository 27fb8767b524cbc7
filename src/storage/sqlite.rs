//! A pooled SQLite database: the one way tenantry talks to a database file,
//! whether it is the catalog or a tenant.
//!
//! A tenant's file has one connection, which owns it ([`PoolSettings::owning`]):
//! only one tenantry process may open a data directory, so the file needs no
//! locks between processes, and the connection holds SQLite's lock on it in
//! `EXCLUSIVE` locking mode for as long as it is open. SQLite then keeps the
//! WAL index in the connection's memory instead of a shared `-shm` file, and
//! takes no `fcntl` lock per transaction; an open tenant holds two
//! descriptors (its file and its WAL) and one page cache. Reads and writes of
//! the tenant take turns on that connection, and tenantry runs its
//! checkpoints itself ([`Database::with_still_file`] holds them off while a
//! snapshot copies the file). The catalog, which many calls read at once,
//! keeps a pool of several connections in SQLite's normal locking mode.
//!
//! rusqlite is synchronous, and no SQL may stall the async threads that
//! serve other tenants for long. A bounded read (a point read or a page of a
//! list, [`Database::read_bounded_in`]) runs inline on the calling async
//! thread when a connection is idle in the pool, by default: from the page
//! cache it takes a few microseconds, less than handing it to another
//! thread. Every other read, a bounded read that must open a connection,
//! and every write run on tokio's blocking threads. Reads run in parallel up
//! to the pool's size; writes run one at a time in `BEGIN IMMEDIATE`
//! transactions, queued in async code rather than in SQLite's busy handler
//! and committed together (group commit) by a writer on a blocking thread,
//! so two writers never deadlock on a lock upgrade and a burst of writes to
//! one database parks no threads. The permits that bound this travel into
//! the blocking work, so a call cancelled by its client still holds them
//! until its SQL is done.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use scheduled_thread_pool::ScheduledThreadPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::deadline::{self, Deadline};
use crate::error::{Context, Error, Result};

/// How every connection of a database is opened and pooled.
#[derive(Clone)]
pub struct PoolSettings {
    /// Most connections, and so most concurrent calls, for one database.
    pub connections: u32,
    /// Whether the one connection owns the file (see the module's doc):
    /// `locking_mode = EXCLUSIVE`, checkpoints run by the writer.
    pub exclusive: bool,
    pub cache_kib: u32,
    pub busy_timeout: Duration,
    /// An unused connection is closed after this long.
    pub idle_connection: Duration,
    /// Run bounded reads ([`Database::read_bounded_in`]) on the calling async
    /// thread when a connection is idle in the pool, instead of handing them
    /// to a blocking thread: a point read from the page cache takes about
    /// 5 µs, and the hand-off several times that (`cargo bench --bench
    /// hot_path` measures both). A read that finds
    /// no idle connection (one must be opened) still runs on a blocking
    /// thread, and so does every scan and every write.
    pub inline_reads: bool,
    /// Commit a write on the calling async thread when no other write of the
    /// database is under way and the connection is idle, instead of
    /// handing it to the writer on a blocking thread: with one connection
    /// that owns its file, a commit is a few `write` calls into the page
    /// cache (tens of microseconds), and the hand-off costs as much again in
    /// thread wake-ups. Checkpoints, which wait for the disk, still run on a
    /// blocking thread, and so does every write that finds others queued.
    pub inline_writes: bool,
    /// The most bytes the database file may hold (SQLite's
    /// `max_page_count`); a write that needs more fails with `SQLITE_FULL`.
    /// `None` for no limit.
    pub max_bytes: Option<u64>,
    /// Bytes of the file SQLite reads through a memory map rather than
    /// `read` calls (`PRAGMA mmap_size`); 0 for none. The map is shared by
    /// every connection through the kernel's page cache.
    pub mmap_bytes: u64,
    /// r2d2 opens connections and reaps idle ones on a thread pool; one pool
    /// shared by every database keeps thousands of open tenants from costing
    /// thousands of threads.
    pub threads: Arc<ScheduledThreadPool>,
    /// Sync every commit to disk (`synchronous = FULL`), for the catalog: a
    /// revoke or a suspension is answered only once it survives a power
    /// cut. Tenant databases sync at checkpoints only (`NORMAL`).
    pub durable: bool,
    /// The WAL is checkpointed into the file once it holds this many pages
    /// (see `Writer::checkpoint`). A checkpoint writes each page changed
    /// since the last one once, however often it changed, and syncs twice:
    /// a database whose every commit touches the same few pages (the
    /// catalog) checkpoints less often to write less.
    pub checkpoint_pages: i32,
    /// Set to interrupt every statement of these connections (at shutdown,
    /// once the grace period is over); see [`PoolSettings::interrupt`].
    pub stopping: Arc<AtomicBool>,
    /// Closing a connection never checkpoints (SQLite's last connection to
    /// a file otherwise does, and deletes the WAL): for a shared file whose
    /// WAL is replicated, so that only checkpoints its log allowed run,
    /// whenever the pool replaces its connections.
    pub keep_wal_on_close: bool,
}

impl PoolSettings {
    /// Settings for a file shared by `connections` connections.
    pub fn new(connections: u32, cache_kib: u32, busy_timeout: Duration) -> Self {
        PoolSettings {
            connections: connections.max(1),
            exclusive: false,
            cache_kib,
            busy_timeout,
            idle_connection: Duration::from_secs(60),
            inline_reads: false,
            inline_writes: false,
            max_bytes: None,
            mmap_bytes: 0,
            threads: Arc::new(
                ScheduledThreadPool::builder()
                    .num_threads(2)
                    .thread_name_pattern("sqlite-pool-{}")
                    .build(),
            ),
            durable: false,
            checkpoint_pages: CHECKPOINT_PAGES,
            stopping: Arc::default(),
            keep_wal_on_close: false,
        }
    }

    /// Settings for a file owned by one connection (a tenant's).
    pub fn owning(cache_kib: u32, busy_timeout: Duration) -> Self {
        PoolSettings {
            exclusive: true,
            ..PoolSettings::new(1, cache_kib, busy_timeout)
        }
    }

    /// Interrupts every statement running on these connections, and every
    /// one started until [`PoolSettings::resume`]: at shutdown, so that no
    /// statement outlives the grace period.
    pub fn interrupt(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub fn resume(&self) {
        self.stopping.store(false, Ordering::Relaxed);
    }

    /// Applies the per-connection settings. `journal_mode` is a property of
    /// the file and is set once, when it is created or first opened.
    fn configure(&self, conn: &Connection) -> rusqlite::Result<()> {
        if self.exclusive {
            // First, before anything reads the file, so that SQLite never
            // makes the shared-memory WAL index (`-shm`).
            conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        }
        shrink_lookaside(conn);
        if self.keep_wal_on_close {
            conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )?;
        }
        defend(conn, Some(self.stopping.clone()))?;
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
        conn.busy_timeout(match self.exclusive {
            true => OWNER_LOCK_WAIT,
            false => self.busy_timeout,
        })?;
        conn.execute_batch(&format!(
            "PRAGMA foreign_keys = ON;
             PRAGMA synchronous = {};
             PRAGMA cache_size = -{};",
            if self.durable { "FULL" } else { "NORMAL" },
            self.cache_kib
        ))?;
        // Replaces SQLite's automatic checkpoints, which would run inside a
        // commit, wherever it runs: see `Writer::checkpoint`.
        conn.wal_hook(Some(note_wal_pages));
        if self.mmap_bytes > 0 {
            conn.pragma_update(None, "mmap_size", self.mmap_bytes as i64)?;
        }
        if let Some(max_bytes) = self.max_bytes {
            // Freed pages are reused, so deleting data makes room again. A
            // file already past the limit keeps its size; only growth fails.
            let page_size: i64 = conn.pragma_query_value(None, "page_size", |row| row.get(0))?;
            let pages = (max_bytes / page_size.max(512) as u64).clamp(1, i64::MAX as u64);
            conn.pragma_update(None, "max_page_count", pages as i64)?;
        }
        Ok(())
    }
}

/// How long a connection that owns its file waits in SQLite for the file's
/// lock when it opens: only another connection of the same tenant that is
/// still closing can hold it, and whoever opens tries again in a moment
/// rather than wait here (the registry lets the closer finish first).
pub const OWNER_LOCK_WAIT: Duration = Duration::from_millis(100);

/// By default, a WAL of this many pages is checkpointed into the file after
/// the write batch that grew it there (SQLite's own default for its
/// automatic checkpoints).
const CHECKPOINT_PAGES: i32 = 1000;

thread_local! {
    /// The pages in the WAL of the database whose commit ran last on this
    /// thread, as SQLite's WAL hook reported it.
    static WAL_PAGES: Cell<i32> = const { Cell::new(0) };
}

/// The WAL hook of a connection that owns its file: it only notes the WAL's
/// size, on the committing thread, for the writer to checkpoint when the
/// commit is done. (A hook replaces SQLite's automatic checkpoints.)
fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// The largest string or blob a connection reads or writes: far above what
/// the API lets anyone store, far below what would hurt the server.
const MAX_VALUE_BYTES: i32 = 1 << 20;
/// Statements check whether to stop every this many virtual machine steps.
const PROGRESS_STEPS: i32 = 1000;

thread_local! {
    /// When statements run on this thread must stop: the deadline of the
    /// call whose SQL runs here now, set by [`bounded`].
    static STATEMENT_DEADLINE: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

/// Runs `f`, whose statements run on this thread, so that any of them still
/// running when `deadline` passes is interrupted (SQLite rolls back the
/// statement, and its transaction if it writes): no SQL outlives its call.
pub fn bounded<T>(deadline: Option<&Deadline>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<std::time::Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            STATEMENT_DEADLINE.set(self.0);
        }
    }
    let _restore = Restore(STATEMENT_DEADLINE.replace(deadline.map(|d| d.at().into_std())));
    f()
}

/// Opens a connection defensively: the file's schema is not trusted (no
/// functions with side effects from it), it cannot be written as data
/// (`writable_schema`, direct page writes), triggers and views do not run
/// (tenantry's databases have none), and statements stop when their call's
/// deadline passes ([`bounded`]) or when `stopping` is set.
pub fn defend(conn: &Connection, stopping: Option<Arc<AtomicBool>>) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false)?;
    conn.progress_handler(
        PROGRESS_STEPS,
        Some(move || {
            stopping.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
                || STATEMENT_DEADLINE
                    .get()
                    .is_some_and(|at| std::time::Instant::now() >= at)
        }),
    )
}

/// Each connection's lookaside memory (SQLite's per-connection allocator for
/// small objects): slots of this many bytes...
const LOOKASIDE_SLOT_BYTES: i32 = 256;
/// ...and this many of them, 8 KiB in all. SQLite's default (1,200 bytes by
/// 40 to 100 slots) costs 50 to 120 KiB per connection, most of the memory
/// of an idle open tenant, for a speed-up that point reads barely see.
const LOOKASIDE_SLOTS: i32 = 32;

/// Gives a new connection a small lookaside. A connection already using its
/// lookaside keeps it (SQLite answers SQLITE_BUSY), which costs only memory.
fn shrink_lookaside(conn: &Connection) {
    let code = super::ffi::set_lookaside(conn, LOOKASIDE_SLOT_BYTES, LOOKASIDE_SLOTS);
    if code != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(code, "kept the default lookaside");
    }
}

/// Makes a database's pooled connections: the one its open prepared first,
/// then new ones from the file.
pub struct Manager {
    files: SqliteConnectionManager,
    first: std::sync::Mutex<Option<Connection>>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Connection;
    type Error = rusqlite::Error;

    fn connect(&self) -> rusqlite::Result<Connection> {
        let first = self.first.lock().ok().and_then(|mut first| first.take());
        match first {
            Some(conn) => Ok(conn),
            None => self.files.connect(),
        }
    }

    fn is_valid(&self, conn: &mut Connection) -> rusqlite::Result<()> {
        self.files.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        self.files.has_broken(conn)
    }
}

/// What replication needs to hear of a database's WAL
/// ([`Database::set_wal_log`]): every commit, and every checkpoint, which
/// it may hold back until the frames it would overwrite are shipped.
pub trait WalLog: Send + Sync + 'static {
    /// A commit left the WAL `frames` frames long. Called by whoever
    /// committed, before anything else can use the connection.
    fn committed(&self, frames: u32);
    /// Whether a checkpoint may run now: no frame of the WAL is waiting to
    /// be shipped.
    fn may_checkpoint(&self) -> bool;
    /// A checkpoint copied every frame of the WAL into the file, so the
    /// next commit starts the WAL anew.
    fn checkpointed(&self);
    /// The database is about to close, which checkpoints the WAL and
    /// deletes it: the last chance to ship its frames.
    fn closing(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Ships every commit made so far, or says why it could not.
    fn ship_pending(&self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>;
    /// The database is closed: its file is whole, and nothing has it open
    /// until this returns.
    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Flags for files that must already exist: a missing tenant file is an
/// error, never a silently empty tenant; and a symbolic link is never
/// followed to whatever file it names.
pub const EXISTING: OpenFlags = OpenFlags::SQLITE_OPEN_READ_WRITE
    .union(OpenFlags::SQLITE_OPEN_NO_MUTEX)
    .union(OpenFlags::SQLITE_OPEN_NOFOLLOW);

pub struct Database {
    path: PathBuf,
    /// The file's device and inode when it was opened, and the largest size
    /// it has been seen with: see [`check_in_place`].
    identity: Arc<Identity>,
    /// `None` once the database is retired; see [`Database::retire`].
    pool: Arc<std::sync::Mutex<Option<Pool<Manager>>>>,
    connections: u32,
    inline_reads: bool,
    inline_writes: bool,
    /// Whether every commit is synced ([`PoolSettings::durable`]).
    durable: bool,
    /// One permit per connection: the calls running on this database.
    /// Closed when it is retired.
    readers: Arc<Semaphore>,
    /// One permit per write queued or running ([`QUEUED_WRITES`]). Closed
    /// when the database is retired.
    writes: Arc<Semaphore>,
    /// Writes waiting for the writer; see [`Database::write_in`].
    queue: Arc<std::sync::Mutex<WriteQueue>>,
    /// How many writes the writer's last batch held.
    last_batch: Arc<std::sync::atomic::AtomicUsize>,
    /// For a database that syncs every commit: whether commits were made
    /// without the sync since the last [`Database::sync_unsynced`].
    unsynced: Option<Arc<AtomicBool>>,
    /// Held while the log is synced, so that a sync that finds nothing to
    /// do waits for one under way (and sees its failure).
    syncing: Arc<std::sync::Mutex<()>>,
    /// [`PoolSettings::checkpoint_pages`].
    checkpoint_pages: i32,
    /// One permit: whoever commits (the writer, or a write committed on
    /// its caller's thread) holds it, so that two transactions never wait
    /// for each other in SQLite's busy handler.
    committing: Arc<Semaphore>,
    /// One permit, held while a copy of the file is made
    /// ([`Database::with_still_file`]): no checkpoint runs meanwhile, and
    /// closing waits for it.
    still: Arc<Semaphore>,
    /// Set when the server stops ([`PoolSettings::interrupt`]).
    stopping: Arc<AtomicBool>,
    /// Set once [`Database::retire`] has closed it.
    retired: tokio::sync::OnceCell<()>,
    /// Told of every commit and checkpoint, when the database is replicated.
    wal_log: Arc<std::sync::OnceLock<Arc<dyn WalLog>>>,
    /// True once it is closed, for those who wait without closing it.
    closed: tokio::sync::watch::Sender<bool>,
}

/// Most writes queued for one database at once; more wait for a turn.
const QUEUED_WRITES: u32 = 64;

#[derive(Default)]
struct WriteQueue {
    writes: Vec<Box<dyn Pending>>,
    /// Whether a writer is draining the queue on a blocking thread.
    draining: bool,
}

/// What a step of a read made in steps says: go on, or done. A long read
/// made in steps, each in a turn of its own, lets the other calls of a
/// database whose one connection owns the file run between its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    More,
    Done,
}

/// The right to run one read on a database, taken in async code before any
/// work is handed to a blocking thread.
pub struct ReadTurn {
    _permit: OwnedSemaphorePermit,
}

/// The right to queue one write.
pub struct WriteTurn {
    permit: OwnedSemaphorePermit,
}

/// The database was retired (deleted, or replaced by a restore) while the
/// call waited for it: the caller should look the tenant up again.
#[derive(Debug)]
pub struct Retired;

/// A turn of either kind, so that code which finds a database and takes a
/// turn on it is written once for reads and writes.
pub trait Turn: Sized + Send {
    /// Waits for a turn on `database`; `Err(Retired)` if it was retired.
    fn take(database: &Database) -> impl Future<Output = Result<Self, Retired>> + Send;
}

impl Turn for ReadTurn {
    fn take(database: &Database) -> impl Future<Output = Result<Self, Retired>> + Send {
        database.read_turn()
    }
}

impl Turn for WriteTurn {
    fn take(database: &Database) -> impl Future<Output = Result<Self, Retired>> + Send {
        database.write_turn()
    }
}

impl Database {
    /// Opens an existing database file: first on one connection of its own,
    /// which runs `prepare` (switching to WAL, migrating) and then becomes
    /// the pool's first connection (closing it and opening another would
    /// checkpoint the file, delete its `-wal` and `-shm`, and make them
    /// again); more are made on demand. A missing file is an
    /// error, never a new empty database; so is a file that is not a SQLite
    /// database, at once and with SQLite's own error (a pool would retry a
    /// failing connection until its timeout, and keep only the message).
    /// Blocking.
    pub fn open<T>(
        path: &Path,
        settings: &PoolSettings,
        prepare: impl FnOnce(&mut Connection) -> Result<T>,
    ) -> Result<(Self, T)> {
        if !path.is_file() {
            return Err(Error::internal(
                format!("opening {}", path.display()),
                "the database file is missing",
            ));
        }
        let mut conn = open_connection(path, settings)?;
        WAL_PAGES.set(0);
        let prepared = prepare(&mut conn)?;
        if settings.exclusive {
            remove_stale_shm(path);
            // A migration that rewrote much is checkpointed now: the writer,
            // which checkpoints, may not run for as long as the tenant is
            // only read.
            if WAL_PAGES.get() >= settings.checkpoint_pages {
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    .context(|| format!("checkpointing {}", path.display()))?;
            }
        }
        let identity = Arc::new(
            Identity::of(path)
                .context(|| format!("opening {}", path.display()))?
                .ok_or_else(|| moved(path))?,
        );
        let configured = settings.clone();
        let manager = Manager {
            files: SqliteConnectionManager::file(path)
                .with_flags(EXISTING)
                .with_init(move |conn| configured.configure(conn)),
            first: std::sync::Mutex::new(Some(conn)),
        };
        // A connection that owns its file stays until the database closes:
        // closing it would checkpoint the file and delete its WAL, which the
        // next call would make again.
        // (Nor does r2d2 replace it when it gets old: that would close it,
        // in the middle of a copy of its file, say.)
        let idle_timeout = (!settings.exclusive).then_some(settings.idle_connection);
        let max_lifetime = (!settings.exclusive).then_some(Duration::from_secs(30 * 60));
        let pool = Pool::builder()
            .max_size(settings.connections)
            .min_idle(Some(0))
            .idle_timeout(idle_timeout)
            .max_lifetime(max_lifetime)
            .connection_timeout(settings.busy_timeout)
            .test_on_check_out(false)
            .thread_pool(settings.threads.clone())
            .build_unchecked(manager);
        // Hand the first connection to the pool now, on this blocking
        // thread, so that the call that opened the tenant finds it idle.
        drop(
            pool.get()
                .context(|| format!("opening {}", path.display()))?,
        );
        let database = Database {
            path: path.to_owned(),
            identity,
            pool: Arc::new(std::sync::Mutex::new(Some(pool))),
            connections: settings.connections,
            inline_reads: settings.inline_reads,
            inline_writes: settings.inline_writes,
            durable: settings.durable,
            readers: Arc::new(Semaphore::new(settings.connections as usize)),
            writes: Arc::new(Semaphore::new(QUEUED_WRITES as usize)),
            queue: Default::default(),
            last_batch: Default::default(),
            // Unsynced at first: a process killed before may have left
            // commits that no sync has reached yet.
            unsynced: settings.durable.then(|| Arc::new(AtomicBool::new(true))),
            syncing: Default::default(),
            committing: Arc::new(Semaphore::new(1)),
            checkpoint_pages: settings.checkpoint_pages,
            still: Arc::new(Semaphore::new(1)),
            stopping: settings.stopping.clone(),
            retired: tokio::sync::OnceCell::new(),
            wal_log: Default::default(),
            closed: tokio::sync::watch::Sender::new(false),
        };
        Ok((database, prepared))
    }

    /// Creates a new database file in WAL mode (failing if it exists), runs
    /// `prepare` on it, and closes it. Blocking.
    pub fn create(
        path: &Path,
        settings: &PoolSettings,
        prepare: impl FnOnce(&mut Connection) -> Result<()>,
    ) -> Result<()> {
        if path.exists() {
            return Err(Error::internal(
                format!("creating {}", path.display()),
                "a file with that name already exists",
            ));
        }
        let mut conn = Connection::open_with_flags(path, EXISTING | OpenFlags::SQLITE_OPEN_CREATE)
            .context(|| format!("creating {}", path.display()))?;
        settings
            .configure(&conn)
            .context(|| format!("configuring {}", path.display()))?;
        set_wal(&conn)?;
        prepare(&mut conn)?;
        conn.close()
            .map_err(|(_, e)| e)
            .context(|| format!("closing {}", path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Has `log` told of every commit and checkpoint from now on; a
    /// database has one log, set once.
    pub fn set_wal_log(&self, log: Arc<dyn WalLog>) {
        if self.wal_log.set(log).is_err() {
            tracing::error!(path = %self.path.display(), "a database's WAL log was set twice");
        }
    }

    /// Ships every commit made so far to the replica, if the database is
    /// replicated.
    pub async fn replicate_pending(&self) -> Result<()> {
        match self.wal_log.get() {
            Some(log) => log.ship_pending().await,
            None => Ok(()),
        }
    }

    /// The database's write-ahead log file.
    pub fn wal_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push("-wal");
        PathBuf::from(name)
    }

    /// Checkpoints the WAL soon, on a blocking thread, in a turn of its own,
    /// if it holds `pages` past the threshold and its log lets it
    /// ([`WalLog::may_checkpoint`]).
    pub fn checkpoint_soon(&self, pages: u32) {
        if (pages as i32) < self.checkpoint_pages {
            return;
        }
        let writer = self.writer();
        tokio::task::spawn_blocking(move || writer.checkpoint_now());
    }

    /// Whether [`Database::retire`] has closed it.
    pub fn is_retired(&self) -> bool {
        self.retired.initialized()
    }

    /// The device and inode of the file this database has open.
    pub fn file(&self) -> (u64, u64) {
        (self.identity.device, self.identity.inode)
    }

    fn pool(&self) -> Result<Pool<Manager>> {
        self.pool
            .lock()
            .expect("the pool lock is never poisoned")
            .clone()
            .ok_or_else(|| Error::Unavailable("the database was closed; retry the call".into()))
    }

    /// Waits for a read turn; `Err(Retired)` if the database was retired.
    pub async fn read_turn(&self) -> Result<ReadTurn, Retired> {
        let permit = self
            .readers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Retired)?;
        Ok(ReadTurn { _permit: permit })
    }

    /// Waits for a write turn; `Err(Retired)` if the database was retired.
    pub async fn write_turn(&self) -> Result<WriteTurn, Retired> {
        let permit = self
            .writes
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Retired)?;
        Ok(WriteTurn { permit })
    }

    /// Runs `f` on a connection of this database, on a blocking thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let turn = self.read_turn().await.map_err(retired)?;
        self.read_in(turn, f).await
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committed when `f`
    /// returns `Ok` and rolled back otherwise, on a blocking thread.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
    {
        let turn = self.write_turn().await.map_err(retired)?;
        self.write_in(turn, f).await
    }

    /// [`Database::write`] whose commit, on a database that syncs every
    /// commit, need not be synced before it is answered: it survives the
    /// process being killed, and a power cut once [`Database::sync_unsynced`]
    /// has run (or the next synced commit of any write). It is committed
    /// with others that need no sync; one that does syncs them all.
    pub async fn write_unsynced<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
    {
        let turn = self.write_turn().await.map_err(retired)?;
        self.write_synced_or_not(turn, f, false).await
    }

    /// Syncs the commits made without a sync since the last time, if any
    /// were: an fdatasync of the write-ahead log, where they are, and of
    /// its directory (a log SQLite made anew since is not otherwise synced
    /// into it). Not a checkpoint: one that a reader keeps from copying the
    /// log syncs nothing. Blocking.
    pub fn sync_unsynced(&self) -> Result<()> {
        self.sync_log(false)
    }

    /// [`Database::sync_unsynced`] whether or not commits are known to be
    /// unsynced: the last sync of a stop. Blocking.
    pub fn sync_log_now(&self) -> Result<()> {
        self.sync_log(true)
    }

    fn sync_log(&self, always: bool) -> Result<()> {
        let Some(unsynced) = &self.unsynced else {
            return Ok(());
        };
        let _syncing = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        if !unsynced.swap(false, Ordering::Relaxed) && !always {
            return Ok(());
        }
        // A commit that ends after the swap sets the flag again, for the
        // next sync; one that ended before it is in the file synced here.
        // SQLite takes no lock on the log (its locks are on the database
        // and the `-shm`), so this descriptor's close drops none of them.
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let synced = match std::fs::File::open(&wal) {
            Ok(file) => file
                .sync_data()
                .context(|| format!("syncing {}", wal.display()))
                .and_then(|()| crate::storage::data_dir::sync_parent(&wal)),
            // No log: every connection closed, which checkpointed it.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error).context(|| format!("opening {}", wal.display())),
        };
        if synced.is_err() {
            unsynced.store(true, Ordering::Relaxed);
        }
        synced
    }

    /// [`Database::read`] with a turn already taken.
    pub async fn read_in<T, F>(&self, turn: ReadTurn, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.read_on(turn, f, false).await
    }

    /// [`Database::read_in`] for a read whose cost is bounded by an index (a
    /// point lookup, a page of a listing): with `inline_reads` on, it runs
    /// on the calling thread when a connection is idle. Scans must not come
    /// here.
    pub async fn read_bounded_in<T, F>(&self, turn: ReadTurn, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.read_on(turn, f, self.inline_reads).await
    }

    async fn read_on<T, F>(&self, turn: ReadTurn, f: F, inline: bool) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let pool = self.pool()?;
        let deadline = deadline::current();
        if inline && let Some(conn) = pool.try_get() {
            let result = deadline::check(deadline.as_deref())
                .and_then(|()| check_in_place_lately(&self.path, &self.identity))
                .and_then(|()| bounded(deadline.as_deref(), || f(&conn)));
            // As below: the connection and the pool handle go before the
            // turn, so a retire holding every turn has nothing left open.
            drop(conn);
            drop(pool);
            drop(turn);
            return result;
        }
        let (path, identity) = (self.path.clone(), self.identity.clone());
        run_blocking(move || {
            let result = deadline::check(deadline.as_deref())
                .and_then(|()| check_in_place_lately(&path, &identity))
                .and_then(|()| {
                    pool.get()
                        .context(|| "taking a database connection".into())
                        .and_then(|conn| bounded(deadline.as_deref(), || f(&conn)))
                });
            // The connection is back in the pool before the turn ends, so a
            // retire that holds every turn knows no connection is in use.
            drop(pool);
            drop(turn);
            result
        })
        .await
    }

    /// [`Database::write`] with a turn already taken.
    ///
    /// Writes are queued, and one writer at a time drains the queue on a
    /// blocking thread (group commit): the writes waiting when it looks run
    /// in one `BEGIN IMMEDIATE` transaction, each in a savepoint of its own,
    /// and are committed together. A write that fails, or whose deadline
    /// passes, is rolled back to its savepoint and changes nothing; the
    /// others commit. Each caller hears its answer only after the commit, so
    /// an acknowledged write is as durable as one committed alone, and a
    /// burst of writes to one tenant costs one commit and one thread hand-off
    /// per batch instead of per write.
    pub async fn write_in<T, F>(&self, turn: WriteTurn, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
    {
        self.write_synced_or_not(turn, f, true).await
    }

    async fn write_synced_or_not<T, F>(&self, turn: WriteTurn, f: F, synced: bool) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
    {
        let (turn, f) = match self.try_write_inline(turn, f, synced) {
            Ok(done) => return done,
            Err(not_now) => not_now,
        };
        self.queue_write(turn, f, synced).await
    }

    /// Queues a write for the writer; `synced`: whether its commit must be
    /// synced before it is answered, on a database that syncs commits.
    async fn queue_write<T, F>(&self, turn: WriteTurn, f: F, synced: bool) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let write = Box::new(Write {
            f: Some(f),
            value: None,
            reply,
            deadline: deadline::current(),
            span: tracing::Span::current(),
            synced,
            _turn: turn.permit,
        });
        let start = {
            let mut queue = self
                .queue
                .lock()
                .expect("the write queue is never poisoned");
            queue.writes.push(write);
            !std::mem::replace(&mut queue.draining, true)
        };
        if start {
            let writer = self.writer();
            tokio::task::spawn_blocking(move || writer.drain());
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::internal(
                "running a write",
                "the writer stopped before answering",
            ))
        })
    }

    fn writer(&self) -> Writer {
        Writer {
            queue: self.queue.clone(),
            readers: self.readers.clone(),
            runtime: tokio::runtime::Handle::current(),
            pool: self.pool.clone(),
            path: self.path.clone(),
            identity: self.identity.clone(),
            checkpoints: self.still.clone(),
            checkpoint_pages: self.checkpoint_pages,
            committing: self.committing.clone(),
            last_batch: self.last_batch.clone(),
            unsynced: self.unsynced.clone(),
            wal_log: self.wal_log.clone(),
        }
    }

    /// Commits a write on the calling thread if `inline_writes` is on, no
    /// other write of the database is under way, and the connection is idle
    /// ([`PoolSettings::inline_writes`]); hands the turn and the write back
    /// otherwise. A checkpoint the commit makes due runs on a blocking
    /// thread.
    #[allow(clippy::type_complexity)]
    fn try_write_inline<T, F>(
        &self,
        turn: WriteTurn,
        f: F,
        synced: bool,
    ) -> std::result::Result<Result<T>, (WriteTurn, F)>
    where
        F: FnOnce(&Transaction) -> Result<T>,
    {
        // A sync waits for the disk: never on an async thread.
        if !self.inline_writes || (self.durable && synced) {
            return Err((turn, f));
        }
        // Alone: no other write holds a turn (this one holds one), so none
        // is queued, being written, or about to be; writes that come
        // together are worth a group commit.
        // And a tenant whose writes came together a moment ago keeps
        // committing them in groups, which costs less a write than this.
        let alone = self.writes.available_permits() + 1 == QUEUED_WRITES as usize
            && self.last_batch.load(Ordering::Relaxed) <= 1;
        let idle = alone && {
            let queue = self
                .queue
                .lock()
                .expect("the write queue is never poisoned");
            queue.writes.is_empty() && !queue.draining
        };
        let Some((permit, committing)) = idle
            .then(|| {
                let committing = self.committing.clone().try_acquire_owned().ok()?;
                Some((self.readers.clone().try_acquire_owned().ok()?, committing))
            })
            .flatten()
        else {
            return Err((turn, f));
        };
        let Ok(pool) = self.pool() else {
            return Err((turn, f));
        };
        let Some(mut conn) = pool.try_get() else {
            return Err((turn, f));
        };
        let deadline = deadline::current();
        WAL_PAGES.set(0);
        if self.durable {
            set_synchronous(&conn, "NORMAL");
        }
        let result = check_in_place(&self.path, &self.identity).and_then(|()| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                write_now(&mut conn, deadline.as_deref(), f)
            }))
            .unwrap_or_else(|_| {
                tracing::error!(path = %self.path.display(), "a write panicked");
                Err(Error::internal("running a write", "the write panicked"))
            })
        });
        let pages = WAL_PAGES.get();
        note_commit(&self.wal_log);
        if let Some(unsynced) = self.unsynced.as_ref().filter(|_| self.durable) {
            set_synchronous(&conn, "FULL");
            unsynced.store(true, Ordering::Relaxed);
        }
        // As for reads: the connection and the pool handle go before the
        // turns, so a retire holding every turn has nothing left in use.
        drop(conn);
        drop(pool);
        drop(committing);
        drop(permit);
        drop(turn);
        if pages >= self.checkpoint_pages && may_checkpoint(&self.wal_log) {
            let writer = self.writer();
            tokio::task::spawn_blocking(move || writer.checkpoint_now());
        }
        Ok(result)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction now, on the calling
    /// thread, and checkpoints the WAL if the commit made one due: for
    /// start-up and other work that is already off the async threads.
    pub fn write_now<T>(&self, f: impl FnOnce(&Transaction) -> Result<T>) -> Result<T> {
        // As every commit: so that no checkpoint comes between a commit and
        // its note to the WAL's log.
        let _committing = futures::executor::block_on(self.committing.acquire());
        let mut conn = self
            .pool()?
            .get()
            .context(|| "taking a database connection".into())?;
        WAL_PAGES.set(0);
        let value = write_now(&mut conn, None, f)?;
        note_commit(&self.wal_log);
        if WAL_PAGES.get() >= self.checkpoint_pages
            && may_checkpoint(&self.wal_log)
            && let Ok(_still) = self.still.try_acquire()
        {
            let complete = checkpoint_passive(&conn).context(|| "checkpointing".into())?;
            note_checkpoint(&self.wal_log, complete);
        }
        Ok(value)
    }

    /// Runs `f` on a connection now, on the calling thread: for start-up and
    /// other work that is already off the async threads.
    pub fn with_connection<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self
            .pool()?
            .get()
            .context(|| "taking a database connection".into())?;
        f(&mut conn)
    }

    /// Stops this database for good: waits until the calls already running
    /// on it are done, refuses the ones still waiting (they get [`Retired`]
    /// and look the tenant up again), and closes every connection, which
    /// checkpoints the WAL. Afterwards nothing in this process has the file
    /// open through this handle, so it can be moved or replaced.
    ///
    /// Retiring twice, or from several places at once, is fine: every caller
    /// returns once the database is closed.
    pub async fn retire(&self) {
        self.retired.get_or_init(|| self.close()).await;
    }

    async fn close(&self) {
        // The semaphores are fair: this waits behind the calls already
        // queued, and every call queued after it is refused. Writes first:
        // the writer draining them takes no read turn.
        if let Ok(all) = self.writes.acquire_many(QUEUED_WRITES).await {
            self.writes.close();
            drop(all);
        }
        if let Ok(all) = self.readers.acquire_many(self.connections).await {
            self.readers.close();
            drop(all);
        }
        // A copy of the file under way ends before the close checkpoints it.
        if let Ok(still) = self.still.acquire().await {
            self.still.close();
            drop(still);
        }
        if let Some(log) = self.wal_log.get() {
            log.closing().await;
        }
        // Dropping the last handle on the pool closes its idle connections.
        // A connection r2d2 is still opening on its thread pool for a request
        // that has since been served is dropped when it arrives; it never ran
        // a statement, so it holds no WAL state of the file.
        let pool = self
            .pool
            .lock()
            .expect("the pool lock is never poisoned")
            .take();
        if let Some(pool) = pool {
            run_blocking(move || {
                drop(pool);
                Ok(())
            })
            .await
            .ok();
        }
        if let Some(log) = self.wal_log.get() {
            log.closed().await;
        }
        self.closed.send_replace(true);
    }

    /// Waits until the database is closed, by whoever closes it, without
    /// closing it: for a caller that must not open its file before then.
    pub async fn closed(&self) {
        let mut closed = self.closed.subscribe();
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// Runs `f` (on a blocking thread) with the database's file whole and
    /// still: every commit checkpointed into it, and no checkpoint until `f`
    /// returns, while calls go on (writes append to the WAL meanwhile). So
    /// a copy of the file made by `f` holds exactly the commits made before
    /// it began, without holding the database's connection while it
    /// copies. `f` reads the file through SQLite's own descriptor
    /// ([`StillFile`]): opening and closing another would drop SQLite's
    /// lock on it. One copy at a time; closing the database waits for it.
    /// `Err(Retired)` if the database was retired first.
    pub async fn with_still_file<T, F>(&self, f: F) -> Result<Result<T>, Retired>
    where
        T: Send + 'static,
        F: FnOnce(&StillFile) -> Result<T> + Send + 'static,
    {
        let still = self
            .still
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Retired)?;
        if self.connections > 1 {
            return self.with_quiet_shared_file(still, f).await;
        }
        let turn = self.read_turn().await?;
        let stopping = self.stopping.clone();
        let wal_log = self.wal_log.clone();
        let checkpointed = self
            .read_in(turn, move |conn| still_file(conn, &wal_log, stopping))
            .await;
        let file = match checkpointed {
            Ok(file) => file,
            Err(error) => return Ok(Err(error)),
        };
        // Held to the end of the copy, even if this call goes away first:
        // the connection, whose file is read, stays open until then.
        Ok(run_blocking(move || {
            let copied = f(&file);
            drop(file);
            drop(still);
            copied
        })
        .await)
    }

    /// [`Database::with_still_file`] for a file several connections share
    /// (the catalog): no commit is made while the copy is, and the copy
    /// reads through a connection held out of the pool meanwhile (which
    /// could otherwise close it) and not memory-mapped.
    async fn with_quiet_shared_file<T, F>(
        &self,
        still: OwnedSemaphorePermit,
        f: F,
    ) -> Result<Result<T>, Retired>
    where
        T: Send + 'static,
        F: FnOnce(&StillFile) -> Result<T> + Send + 'static,
    {
        let committing = self
            .committing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Retired)?;
        let Ok(pool) = self.pool() else {
            return Err(Retired);
        };
        let stopping = self.stopping.clone();
        let wal_log = self.wal_log.clone();
        Ok(run_blocking(move || {
            let conn = pool
                .get()
                .context(|| "taking a database connection".into())?;
            conn.pragma_update(None, "mmap_size", 0)
                .context(|| "reading the file before a copy".into())?;
            let file = still_file(&conn, &wal_log, stopping)?;
            let copied = f(&file);
            drop(file);
            drop(conn);
            drop(committing);
            drop(still);
            copied
        })
        .await)
    }
}

/// Checkpoints the whole WAL into the file (TRUNCATE), and gives the file
/// as SQLite has it open, to be copied while no checkpoint runs.
fn still_file(
    conn: &Connection,
    wal_log: &std::sync::OnceLock<Arc<dyn WalLog>>,
    stopping: Arc<AtomicBool>,
) -> Result<StillFile> {
    let (busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .context(|| "checkpointing the file before a copy".into())?;
    if busy != 0 {
        return Err(Error::Unavailable(
            "the database was busy and could not be copied; retry the call".into(),
        ));
    }
    note_checkpoint(wal_log, true);
    let size: i64 = conn
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |row| row.get(0),
        )
        .context(|| "measuring the file before a copy".into())?;
    let file = super::ffi::main_file(conn)
        .ok_or_else(|| Error::internal("copying a database", "it has no file"))?;
    Ok(StillFile {
        file,
        size: size.max(0) as u64,
        stopping,
    })
}

/// Removes the `-shm` file another program's connection left beside a
/// file that a connection of ours now owns (it holds the file's lock, so
/// no other connection uses that index): a closed tenant stays one file.
fn remove_stale_shm(path: &Path) {
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    match std::fs::remove_file(&shm) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed a -shm file another program left")
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "could not remove a stale -shm file")
        }
    }
}

/// A database's file while [`Database::with_still_file`] keeps it still.
pub struct StillFile {
    file: super::ffi::OpenFile,
    /// Its size: every page, checkpointed.
    pub size: u64,
    stopping: Arc<AtomicBool>,
}

impl StillFile {
    /// Copies the file into `to` (a new file), a megabyte at a time,
    /// stopping with DEADLINE_EXCEEDED once `deadline` passes, or when the
    /// server stops. Blocking.
    pub fn copy_to(&self, to: &Path, deadline: Option<&Deadline>) -> Result<()> {
        use std::io::Write;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)
            .context(|| format!("creating {}", to.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0;
        while offset < self.size {
            deadline::check(deadline)?;
            if self.stopping.load(Ordering::Relaxed) {
                return Err(Error::Unavailable(
                    "the server is stopping: the copy was not finished; retry the call".into(),
                ));
            }
            let chunk = &mut buf[..(self.size - offset).min(1 << 20) as usize];
            self.file.read_at(chunk, offset).map_err(|code| {
                Error::internal(
                    "copying a database",
                    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
                )
            })?;
            out.write_all(chunk)
                .context(|| format!("writing {}", to.display()))?;
            offset += chunk.len() as u64;
        }
        Ok(())
    }
}

/// Opens one connection to an existing database file, configured like the
/// connections of a pool. Blocking.
pub fn open_connection(path: &Path, settings: &PoolSettings) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, EXISTING)
        .context(|| format!("opening {}", path.display()))?;
    settings
        .configure(&conn)
        .context(|| format!("opening {}", path.display()))?;
    Ok(conn)
}

/// Which file a database has open, and how large it has been seen.
#[derive(Debug)]
struct Identity {
    device: u64,
    inode: u64,
    /// A tenant file only grows (freed pages are reused, never cut off), so
    /// a smaller one was truncated or replaced behind the server's back.
    largest: std::sync::atomic::AtomicU64,
    /// When the file was last found in place, in milliseconds of
    /// [`coarse_millis`].
    checked: std::sync::atomic::AtomicU64,
}

impl Identity {
    /// The identity of the file at `path`, or `None` if there is no file.
    fn of(path: &Path) -> std::io::Result<Option<Self>> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(path) {
            Ok(metadata) => Ok(Some(Identity {
                device: metadata.dev(),
                inode: metadata.ino(),
                largest: metadata.len().into(),
                checked: coarse_millis().into(),
            })),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// How long a read trusts the last finding that its file is in place.
const READ_CHECK_MILLIS: u64 = 100;

/// Milliseconds since this process first asked.
fn coarse_millis() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// [`check_in_place`] for a read: at most once every [`READ_CHECK_MILLIS`].
/// A read of a file moved away still reads what was committed to it; it is
/// a write that must never go to a file nobody will read again, and every
/// write batch checks. (A `stat` per read was a twentieth of a point
/// read's cost on the server.)
fn check_in_place_lately(path: &Path, opened: &Identity) -> Result<()> {
    let now = coarse_millis();
    if now.saturating_sub(opened.checked.load(Ordering::Relaxed)) < READ_CHECK_MILLIS {
        return Ok(());
    }
    check_in_place(path, opened)
}

/// Checks, before a call uses the database, that its file is still the one
/// that was opened, and whole. Open connections keep working on a file that
/// was removed, replaced or truncated behind the server's back, and every
/// write to it would be lost; SQLite only notices for rollback journals,
/// not in WAL mode. One `stat`, small next to a write's commit.
fn check_in_place(path: &Path, opened: &Identity) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(moved(path)),
        Err(error) => return Err(error).context(|| format!("checking {}", path.display())),
    };
    if (metadata.dev(), metadata.ino()) != (opened.device, opened.inode) {
        return Err(moved(path));
    }
    let largest = opened.largest.fetch_max(metadata.len(), Ordering::Relaxed);
    if metadata.len() >= largest {
        opened.checked.store(coarse_millis(), Ordering::Relaxed);
    }
    if metadata.len() < largest {
        return Err(Error::internal(
            format!("using {}", path.display()),
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!(
                    "the database file shrank from {largest} to {} bytes while open",
                    metadata.len()
                )),
            ),
        ));
    }
    Ok(())
}

/// The error of a file moved or removed while open: SQLite's own code for
/// it, so that it is told apart like every other storage failure.
fn moved(path: &Path) -> Error {
    Error::internal(
        format!("using {}", path.display()),
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY_DBMOVED),
            Some("the database file was moved or removed while open".into()),
        ),
    )
}

fn retired(_: Retired) -> Error {
    Error::Unavailable(
        "the tenant's database was closed while the call waited; retry the call".into(),
    )
}

/// Drains a database's write queue on a blocking thread, a batch at a time.
struct Writer {
    queue: Arc<std::sync::Mutex<WriteQueue>>,
    readers: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
    pool: Arc<std::sync::Mutex<Option<Pool<Manager>>>>,
    path: PathBuf,
    identity: Arc<Identity>,
    /// The checkpoints are the writer's; none runs while this permit is
    /// taken (a copy of the file is made).
    checkpoints: Arc<Semaphore>,
    checkpoint_pages: i32,
    committing: Arc<Semaphore>,
    last_batch: Arc<std::sync::atomic::AtomicUsize>,
    /// For a database that syncs every commit: set when a batch committed
    /// without the sync ([`Database::write_unsynced`]).
    unsynced: Option<Arc<AtomicBool>>,
    wal_log: Arc<std::sync::OnceLock<Arc<dyn WalLog>>>,
}

impl Writer {
    fn drain(self) {
        loop {
            let batch = {
                let mut queue = self
                    .queue
                    .lock()
                    .expect("the write queue is never poisoned");
                if queue.writes.is_empty() {
                    queue.draining = false;
                    return;
                }
                std::mem::take(&mut queue.writes)
            };
            self.last_batch.store(batch.len(), Ordering::Relaxed);
            // A write that panics fails its batch (whose callers hear an
            // internal error when their answers are dropped), and the writer
            // goes on with the queue: nothing queued is left unanswered.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(batch)));
            let Ok(finished) = run else {
                tracing::error!(path = %self.path.display(), "a write panicked; its batch failed");
                continue;
            };
            // Answers go out (and turns end) only once the connection and the
            // pool handle are let go, so that a retire that holds every turn
            // knows no connection is in use.
            for (write, outcome) in finished {
                write.finish(outcome);
            }
        }
    }

    /// Runs a batch; returns each write with what its caller must hear.
    fn run(&self, batch: Vec<Box<dyn Pending>>) -> Vec<(Box<dyn Pending>, Result<()>)> {
        // A connection permit, like a read's, so that the pool always has a
        // connection for whoever holds one: waiting here has no timeout,
        // waiting in the pool would.
        let permits = self.runtime.block_on(async {
            let committing = self.committing.clone().acquire_owned().await.ok()?;
            Some((self.readers.clone().acquire_owned().await.ok()?, committing))
        });
        let Some((permit, committing)) = permits else {
            return fail_all(
                batch,
                Error::Unavailable("the database was closed; retry the call".into()),
            );
        };
        let pool = self
            .pool
            .lock()
            .expect("the pool lock is never poisoned")
            .clone();
        let conn = check_in_place(&self.path, &self.identity).and_then(|()| {
            pool.ok_or_else(|| {
                Error::Unavailable("the database was closed; retry the call".into())
            })?
            .get()
            .context(|| "taking a database connection".into())
        });
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(error) => return fail_all(batch, error),
        };
        WAL_PAGES.set(0);
        // A batch of writes none of which needs its commit synced (on a
        // database that syncs every commit) commits without the sync.
        let unsynced = self
            .unsynced
            .as_ref()
            .filter(|_| batch.iter().all(|w| !w.synced()));
        if unsynced.is_some() {
            set_synchronous(&conn, "NORMAL");
        }
        let (mut finished, rest) = commit(&mut conn, batch);
        note_commit(&self.wal_log);
        if let Some(unsynced) = unsynced {
            unsynced.store(true, Ordering::Relaxed);
            set_synchronous(&conn, "FULL");
        }
        self.checkpoint(&conn, WAL_PAGES.get());
        // The rest runs as a batch of its own, which takes a permit of its
        // own: this one goes first, or a batch with several broken writes
        // would wait for permits its own earlier rounds hold.
        drop(conn);
        drop(committing);
        drop(permit);
        if !rest.is_empty() {
            finished.extend(self.run(rest));
        }
        finished
    }
}

impl Writer {
    /// Checkpoints the WAL into the file once the commits just made have
    /// grown it past its threshold ([`PoolSettings::checkpoint_pages`]), as SQLite's automatic checkpoint
    /// would, unless a copy of the file is being made: then the next batch
    /// after the copy does it. A failed checkpoint loses nothing (the WAL
    /// keeps every commit) and is tried again after the next batch.
    fn checkpoint(&self, conn: &Connection, pages: i32) {
        if pages < self.checkpoint_pages || !may_checkpoint(&self.wal_log) {
            return;
        }
        let Ok(_still) = self.checkpoints.try_acquire() else {
            return;
        };
        match checkpoint_passive(conn) {
            Ok(complete) => {
                note_checkpoint(&self.wal_log, complete);
                WAL_PAGES.set(0)
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "a checkpoint failed; the next write batch tries again")
            }
        }
    }
}

impl Writer {
    /// The checkpoint a write committed on an async thread made due, in a
    /// turn of its own, on this blocking thread.
    fn checkpoint_now(self) {
        // In the order a batch takes them: the commit's permit, then the
        // connection's.
        let Ok(_committing) = self
            .runtime
            .block_on(self.committing.clone().acquire_owned())
        else {
            return;
        };
        let Ok(_turn) = self.runtime.block_on(self.readers.clone().acquire_owned()) else {
            return;
        };
        let pool = self
            .pool
            .lock()
            .expect("the pool lock is never poisoned")
            .clone();
        if let Some(conn) = pool.and_then(|pool| pool.get().ok()) {
            self.checkpoint(&conn, self.checkpoint_pages);
        }
    }
}

/// Commits a batch of writes on `conn`: one alone in a transaction of its
/// own, several in one transaction, each in a savepoint. Returns each write
/// run, with what its caller must hear, and the writes not run yet (after
/// one that broke the transaction), for a batch of their own.
#[allow(clippy::type_complexity)]
fn commit(
    conn: &mut Connection,
    mut batch: Vec<Box<dyn Pending>>,
) -> (Vec<(Box<dyn Pending>, Result<()>)>, Vec<Box<dyn Pending>>) {
    if batch.len() == 1 {
        let mut write = batch.pop().expect("one write");
        let outcome = write.run_alone(conn);
        return (vec![(write, outcome)], Vec::new());
    }
    let tx = match conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context(|| "starting a write transaction".into())
    {
        Ok(tx) => tx,
        Err(error) => return (fail_all(batch, error), Vec::new()),
    };
    let mut finished = Vec::with_capacity(batch.len());
    let mut kept = Vec::with_capacity(batch.len());
    let mut writes = batch.into_iter();
    for mut write in writes.by_ref() {
        match write.run_in(&tx) {
            Ran::Kept => kept.push(write),
            Ran::Undone(error) => finished.push((write, Err(error))),
            Ran::Broken(error) => {
                // SQLite rolled the whole transaction back (a write past
                // the quota does that): this write fails with its error;
                // the writes kept so far are undone through no fault of
                // theirs, and fail with one their callers may retry.
                // Those not run yet get a transaction of their own.
                finished.push((write, Err(error)));
                for write in kept.drain(..) {
                    finished.push((
                        write,
                        Err(Error::Unavailable(
                            "the write was undone with another write that failed in the same \
                             transaction; retry it"
                                .into(),
                        )),
                    ));
                }
                break;
            }
        }
    }
    let rest: Vec<_> = writes.collect();
    if kept.is_empty() {
        drop(tx);
    } else {
        match tx
            .commit()
            .context(|| "committing a write transaction".into())
        {
            Ok(()) => finished.extend(kept.into_iter().map(|w| (w, Ok(())))),
            Err(error) => finished.extend(fail_all(kept, error)),
        }
    }
    (finished, rest)
}

/// Tells the WAL's log of the commit just made on this thread, if any.
fn note_commit(log: &std::sync::OnceLock<Arc<dyn WalLog>>) {
    let frames = WAL_PAGES.get();
    if let (Some(log), true) = (log.get(), frames > 0) {
        log.committed(frames as u32);
    }
}

fn may_checkpoint(log: &std::sync::OnceLock<Arc<dyn WalLog>>) -> bool {
    log.get().is_none_or(|log| log.may_checkpoint())
}

fn note_checkpoint(log: &std::sync::OnceLock<Arc<dyn WalLog>>, complete: bool) {
    if let (Some(log), true) = (log.get(), complete) {
        log.checkpointed();
    }
}

/// A passive checkpoint; whether it copied every frame of the WAL.
fn checkpoint_passive(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        let (busy, log, done): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        Ok(busy == 0 && log == done)
    })
}

/// Sets how a connection syncs its commits (`PRAGMA synchronous`); a
/// failure only costs a sync, or a sync skipped where one was due.
fn set_synchronous(conn: &Connection, level: &str) {
    if let Err(error) = conn.pragma_update(None, "synchronous", level) {
        tracing::warn!(%error, level, "could not set how commits are synced");
    }
}

fn fail_all(writes: Vec<Box<dyn Pending>>, error: Error) -> Vec<(Box<dyn Pending>, Result<()>)> {
    let error = Arc::new(error);
    writes
        .into_iter()
        .map(|w| (w, Err(Error::Shared(error.clone()))))
        .collect()
}

/// What running one write of a batch did.
enum Ran {
    /// It succeeded; it commits with the batch.
    Kept,
    /// It failed (or ran past its deadline) and was rolled back to its
    /// savepoint: nothing of it remains, the batch goes on.
    Undone(Error),
    /// The transaction itself is gone (SQLite rolls back the whole
    /// transaction on some I/O and memory errors).
    Broken(Error),
}

/// A queued write, of whatever result type.
trait Pending: Send {
    /// Whether its commit must be synced before its caller hears it.
    fn synced(&self) -> bool;
    /// Runs it in a transaction of its own.
    fn run_alone(&mut self, conn: &mut Connection) -> Result<()>;
    /// Runs it inside the batch's transaction, in a savepoint.
    fn run_in(&mut self, tx: &Transaction) -> Ran;
    /// Answers the caller: its value if `outcome` is `Ok` (committed).
    fn finish(self: Box<Self>, outcome: Result<()>);
}

struct Write<T, F> {
    f: Option<F>,
    value: Option<T>,
    reply: tokio::sync::oneshot::Sender<Result<T>>,
    deadline: Option<Arc<Deadline>>,
    span: tracing::Span,
    synced: bool,
    _turn: OwnedSemaphorePermit,
}

impl<T, F> Pending for Write<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
{
    fn synced(&self) -> bool {
        self.synced
    }

    fn run_alone(&mut self, conn: &mut Connection) -> Result<()> {
        let _in_call = self.span.enter();
        let f = self.f.take().expect("a write runs once");
        self.value = Some(write_now(conn, self.deadline.as_deref(), f)?);
        Ok(())
    }

    fn run_in(&mut self, tx: &Transaction) -> Ran {
        let _in_call = self.span.enter();
        let f = self.f.take().expect("a write runs once");
        let deadline = self.deadline.as_deref();
        if let Err(error) = deadline::check(deadline) {
            return Ran::Undone(error);
        }
        if let Err(error) = savepoint(tx, "SAVEPOINT queued_write") {
            return Ran::Broken(error);
        }
        // Kept means committed with the batch (or failed with it): from
        // here the caller hears how the commit ended, whatever the time.
        let ran = bounded(deadline, || f(tx))
            .and_then(|value| deadline::commit(deadline).map(|()| value));
        match ran {
            Ok(value) => match savepoint(tx, "RELEASE queued_write") {
                Ok(()) => {
                    self.value = Some(value);
                    Ran::Kept
                }
                Err(error) => Ran::Broken(error),
            },
            Err(error) if tx.is_autocommit() => Ran::Broken(error),
            Err(error) => match savepoint(tx, "ROLLBACK TO queued_write")
                .and_then(|()| savepoint(tx, "RELEASE queued_write"))
            {
                Ok(()) => Ran::Undone(error),
                Err(_) => Ran::Broken(error),
            },
        }
    }

    fn finish(self: Box<Self>, outcome: Result<()>) {
        let answer = match (outcome, self.value) {
            (Ok(()), Some(value)) => Ok(value),
            (Ok(()), None) => Err(Error::internal("running a write", "it left no value")),
            (Err(error), _) => Err(error),
        };
        // The caller may have gone (a cancelled call): nobody to tell.
        let _ = self.reply.send(answer);
    }
}

fn savepoint(tx: &Transaction, sql: &str) -> Result<()> {
    tx.prepare_cached(sql)
        .and_then(|mut statement| statement.execute([]))
        .map(|_| ())
        .context(|| "managing a savepoint of a queued write".into())
}

/// Runs `f` in a write transaction, committed only if it succeeds and the
/// call's deadline has not passed meanwhile: a client that has given up hears
/// DEADLINE_EXCEEDED, and so must nothing be changed. Once the commit is
/// under way, the caller hears how it ended (see [`crate::deadline`]).
fn write_now<T>(
    conn: &mut Connection,
    deadline: Option<&Deadline>,
    f: impl FnOnce(&Transaction) -> Result<T>,
) -> Result<T> {
    deadline::check(deadline)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context(|| "starting a write transaction".into())?;
    // The statements stop at the deadline; the commit, once begun, does not.
    let value = bounded(deadline, || f(&tx))?;
    deadline::commit(deadline)?;
    tx.commit()
        .context(|| "committing a write transaction".into())?;
    Ok(value)
}

/// Switches a database to write-ahead logging: readers never wait for the
/// writer, and a commit costs one append instead of a journal round trip.
pub fn set_wal(conn: &Connection) -> Result<()> {
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .context(|| "setting WAL mode".into())?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(Error::internal(
            "setting WAL mode",
            format!("journal_mode stayed {mode}"),
        ))
    }
}

/// Runs blocking work on tokio's blocking threads, inside the caller's
/// tracing span so that its logs still name the call and the tenant.
pub async fn run_blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .context(|| "running database work".into())?
}

/// Is this SQLite error a uniqueness violation (for ALREADY_EXISTS)?
pub fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(dir: &Path) -> Arc<Database> {
        database_with(dir, PoolSettings::new(2, 256, Duration::from_secs(5)))
    }

    fn database_with(dir: &Path, settings: PoolSettings) -> Arc<Database> {
        let path = dir.join("t.db");
        Database::create(&path, &settings, |conn| {
            conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY, b BLOB)")
                .context(|| "creating t".into())
        })
        .unwrap();
        Arc::new(Database::open(&path, &settings, |_| Ok(())).unwrap().0)
    }

    /// Rows of `t`, read from the file by a connection of its own.
    fn rows_in_file(dir: &Path) -> i64 {
        Connection::open(dir.join("t.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap()
    }

    fn insert(tx: &Transaction, n: i64) -> Result<()> {
        tx.execute("INSERT INTO t (n) VALUES (?1)", [n])
            .map(|_| ())
            .context(|| format!("inserting {n}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_commit_together_and_fail_alone() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = database(dir.path());

        let (first, release) = hold_writer(&db).await;

        // Six more, queued behind it: odd ones insert and then fail, one
        // breaks a constraint, the others succeed.
        let mut queued = Vec::new();
        for n in 1..=6i64 {
            let db = db.clone();
            let mut write = Box::pin(async move {
                db.write(move |tx| {
                    insert(tx, n)?;
                    match n {
                        6 => insert(tx, 0),
                        n if n % 2 == 1 => Err(Error::Aborted(format!("write {n} gives up"))),
                        _ => Ok(()),
                    }
                })
                .await
            });
            assert!(futures::poll!(&mut write).is_pending());
            queued.push(write);
        }
        assert_eq!(
            db.queue.lock().unwrap().writes.len(),
            6,
            "queued as one batch"
        );
        release.send(()).unwrap();

        first.await.unwrap().unwrap();
        let mut outcomes = Vec::new();
        for write in queued {
            outcomes.push(write.await.is_ok());
        }
        assert_eq!(outcomes, [false, true, false, true, false, false]);
        let stored: Vec<i64> = db
            .read(|conn| {
                let mut statement = conn.prepare("SELECT n FROM t ORDER BY n").unwrap();
                let rows = statement.query_map([], |row| row.get(0)).unwrap();
                Ok(rows.map(|r| r.unwrap()).collect())
            })
            .await
            .unwrap();
        assert_eq!(
            stored,
            [0, 2, 4],
            "only the writes that succeeded are stored"
        );
    }

    /// Holds the writer busy in a first write until `release` is sent, so
    /// that the writes queued meanwhile run as one batch.
    async fn hold_writer(
        db: &Arc<Database>,
    ) -> (
        tokio::task::JoinHandle<Result<()>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (started, running) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(move |tx| {
                    started.send(()).unwrap();
                    released.recv().unwrap();
                    insert(tx, 0)
                })
                .await
            }
        });
        running.await.unwrap();
        (first, release)
    }

    /// Writes 1 to `count` queued together behind a write in progress, on
    /// a database with a 64 KiB quota: those that `too_big` names insert
    /// 256 KiB; how each ended, once every one was answered.
    async fn one_batch_past_the_quota(count: i64, too_big: fn(i64) -> bool) -> Vec<Result<()>> {
        let dir = tempfile::TempDir::new().unwrap();
        let settings = PoolSettings {
            max_bytes: Some(64 * 1024),
            ..PoolSettings::new(2, 256, Duration::from_secs(5))
        };
        let db = database_with(dir.path(), settings);
        let (first, release) = hold_writer(&db).await;
        let mut queued = Vec::new();
        for n in 1..=count {
            let db = db.clone();
            let mut write = Box::pin(async move {
                db.write(move |tx| {
                    let size = if too_big(n) { 256 * 1024 } else { 16 };
                    tx.execute("INSERT INTO t (n, b) VALUES (?1, zeroblob(?2))", [n, size])
                        .map(|_| ())
                        .context(|| format!("inserting {n}"))
                })
                .await
            });
            assert!(futures::poll!(&mut write).is_pending());
            queued.push(write);
        }
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        let outcomes = tokio::time::timeout(Duration::from_secs(20), async {
            let mut outcomes = Vec::new();
            for write in queued {
                outcomes.push(write.await);
            }
            outcomes
        })
        .await
        .expect("every write is answered");
        db.retire().await;
        outcomes
    }

    fn is_disk_full(outcome: &Result<()>) -> bool {
        outcome
            .as_ref()
            .err()
            .and_then(Error::sqlite_code)
            .map(|c| c.code)
            == Some(rusqlite::ffi::ErrorCode::DiskFull)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_past_the_quota_fails_alone_and_its_batch_can_retry() {
        let outcomes = one_batch_past_the_quota(4, |n| n == 2).await;
        assert!(
            matches!(outcomes[0], Err(Error::Unavailable(_))),
            "a write undone by another one's failure may be retried: {:?}",
            outcomes[0]
        );
        assert!(is_disk_full(&outcomes[1]), "{:?}", outcomes[1]);
        assert!(outcomes[2].is_ok() && outcomes[3].is_ok(), "{outcomes:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_with_many_writes_past_the_quota_does_not_stall_the_writer() {
        // Every other write is too big: each one breaks the batch it is in.
        let outcomes = one_batch_past_the_quota(8, |n| n % 2 == 0).await;
        let full = outcomes.iter().filter(|o| is_disk_full(o)).count();
        assert_eq!(full, 4, "{outcomes:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_panics_fails_its_batch_and_the_queue_goes_on() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = database(dir.path());
        let (started, running) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let panicking = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(move |_| -> Result<()> {
                    started.send(()).unwrap();
                    released.recv().unwrap();
                    panic!("a bug in a write")
                })
                .await
            }
        });
        running.await.unwrap();
        // Queued while the panicking write runs: the writer must still get to it.
        let mut behind = Box::pin({
            let db = db.clone();
            async move { db.write(|tx| insert(tx, 7)).await }
        });
        assert!(futures::poll!(&mut behind).is_pending());
        release.send(()).unwrap();
        assert!(panicking.await.unwrap().is_err());
        behind.await.unwrap();
        db.write(|tx| insert(tx, 8)).await.unwrap();
        db.retire().await;
        assert_eq!(
            rows_in_file(dir.path()),
            2,
            "the writes queued behind the panic and after it"
        );
    }

    /// A statement that never ends on its own.
    fn forever(conn: &Connection) -> Result<i64> {
        conn.query_row(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            [],
            |row| row.get(0),
        )
        .context(|| "counting forever".into())
    }

    fn interrupted(result: &Result<i64>) -> bool {
        result
            .as_ref()
            .err()
            .and_then(Error::sqlite_code)
            .is_some_and(|code| code.code == rusqlite::ffi::ErrorCode::OperationInterrupted)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_still_running_at_its_deadline_is_stopped() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = database(dir.path());
        let started = std::time::Instant::now();
        let deadline = Deadline::new(tokio::time::Instant::now() + Duration::from_millis(200));
        let read = deadline::scope(Some(deadline), db.read(forever)).await;
        assert!(interrupted(&read), "{read:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let status = crate::error::to_status(&read.unwrap_err());
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        // A write too, and the database serves on.
        let deadline = Deadline::new(tokio::time::Instant::now() + Duration::from_millis(200));
        let write = deadline::scope(
            Some(deadline),
            db.write(|tx| {
                insert(tx, 1)?;
                forever(tx)
            }),
        )
        .await;
        assert!(interrupted(&write), "{write:?}");
        db.write(|tx| insert(tx, 2)).await.unwrap();
        assert_eq!(
            rows_in_file(dir.path()),
            1,
            "the interrupted write was undone"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_interrupts_statements_that_have_no_deadline() {
        let dir = tempfile::TempDir::new().unwrap();
        let settings = PoolSettings::new(2, 256, Duration::from_secs(5));
        let db = database_with(dir.path(), settings.clone());
        let (started, running) = tokio::sync::oneshot::channel();
        let reading = tokio::spawn({
            let db = db.clone();
            async move {
                db.read(move |conn| {
                    started.send(()).unwrap();
                    forever(conn)
                })
                .await
            }
        });
        running.await.unwrap();
        settings.interrupt();
        let read = reading.await.unwrap();
        assert!(interrupted(&read), "{read:?}");
        settings.resume();
        assert_eq!(
            db.read(|conn| conn
                .query_row("SELECT 7", [], |r| r.get::<_, i64>(0))
                .context(|| "seven".into()))
                .await
                .unwrap(),
            7
        );
    }

    fn owned(dir: &Path) -> Arc<Database> {
        database_with(dir, PoolSettings::owning(256, Duration::from_secs(5)))
    }

    fn beside(dir: &Path, suffix: &str) -> PathBuf {
        dir.join(format!("t.db{suffix}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_owns_its_file_keeps_no_shm_and_locks_out_others() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = owned(dir.path());
        db.write(|tx| insert(tx, 1)).await.unwrap();
        assert!(beside(dir.path(), "-wal").exists());
        assert!(
            !beside(dir.path(), "-shm").exists(),
            "the WAL index is in the connection's memory"
        );
        let other = Connection::open(dir.path().join("t.db")).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        let refused = other.query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0));
        assert!(
            matches!(&refused, Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ffi::ErrorCode::DatabaseBusy),
            "{refused:?}"
        );
        drop(other);
        db.retire().await;
        assert!(
            !beside(dir.path(), "-wal").exists(),
            "closed, it is one file"
        );
        assert_eq!(rows_in_file(dir.path()), 1);
    }

    /// Inserts `rows` rows of one page each, one write each.
    async fn write_pages(db: &Arc<Database>, from: i64, rows: i64) {
        for n in from..from + rows {
            db.write(move |tx| {
                tx.execute("INSERT INTO t (n, b) VALUES (?1, zeroblob(3000))", [n])
                    .map(|_| ())
                    .context(|| "inserting".into())
            })
            .await
            .unwrap();
        }
    }

    fn wal_pages(dir: &Path) -> u64 {
        std::fs::metadata(beside(dir, "-wal")).map_or(0, |m| m.len()) / (4096 + 24)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_checkpoints_an_owned_file_except_while_it_is_copied() {
        checkpoints_except_while_copied(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_committed_inline_are_checkpointed_too_except_while_copied() {
        checkpoints_except_while_copied(true).await;
    }

    async fn checkpoints_except_while_copied(inline_writes: bool) {
        let dir = tempfile::TempDir::new().unwrap();
        let db = database_with(
            dir.path(),
            PoolSettings {
                inline_writes,
                ..PoolSettings::owning(256, Duration::from_secs(5))
            },
        );
        write_pages(&db, 0, 3000).await;
        let pages = wal_pages(dir.path());
        // An inline commit leaves its checkpoint to a blocking thread, which
        // the next writes may outrun for a moment.
        assert!(
            (1000..1600).contains(&pages),
            "checkpoints keep the WAL near {CHECKPOINT_PAGES} pages: {pages}"
        );

        // While a copy is made, no checkpoint runs and the WAL grows.
        let (copying, copy_runs) = tokio::sync::oneshot::channel();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let copy = tokio::spawn({
            let db = db.clone();
            let copied = dir.path().join("copy.db");
            async move {
                db.with_still_file(move |file| {
                    copying.send(()).unwrap();
                    finished.recv().unwrap();
                    file.copy_to(&copied, None)
                })
                .await
                .map_err(|_| "retired")
            }
        });
        copy_runs.await.unwrap();
        write_pages(&db, 3000, 2500).await;
        assert!(wal_pages(dir.path()) >= 2500, "{}", wal_pages(dir.path()));
        finish.send(()).unwrap();
        copy.await.unwrap().unwrap().unwrap();
        let copy = Connection::open(dir.path().join("copy.db")).unwrap();
        let copied: i64 = copy
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(
            copied, 3000,
            "the copy holds the commits made before it began, and no other"
        );
        // The next write after the copy checkpoints again.
        write_pages(&db, 5500, 1).await;
        db.retire().await;
        assert_eq!(rows_in_file(dir.path()), 5501);
    }

    /// POSIX locks this process holds on the file at `path`, from
    /// `/proc/locks` (other programs see these; SQLite's own bookkeeping
    /// of its connections' locks is in memory).
    fn locks_held_on(path: &Path) -> usize {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(path).unwrap().ino();
        let pid = std::process::id().to_string();
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(1) == Some(&"POSIX")
                    && fields.get(4) == Some(&pid.as_str())
                    && fields
                        .get(5)
                        .and_then(|f| f.rsplit(':').next())
                        .is_some_and(|i| i == inode.to_string())
            })
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_of_an_owned_file_keeps_its_lock_against_other_programs() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = owned(dir.path());
        db.write(|tx| insert(tx, 1)).await.unwrap();
        let path = dir.path().join("t.db");
        assert!(
            locks_held_on(&path) > 0,
            "the owning connection locks its file"
        );
        let copied = dir.path().join("copy.db");
        db.with_still_file(move |file| file.copy_to(&copied, None))
            .await
            .map_err(|_| "retired")
            .unwrap()
            .unwrap();
        assert!(
            locks_held_on(&path) > 0,
            "closing a descriptor of the file would have dropped the lock"
        );
        assert_eq!(
            Connection::open(dir.path().join("copy.db"))
                .unwrap()
                .query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0))
                .unwrap(),
            1
        );
    }

    #[test]
    fn an_owning_connection_is_never_closed_by_the_pool_on_its_own() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = owned(dir.path());
        let pool = db.pool().unwrap();
        assert_eq!(pool.max_lifetime(), None);
        assert_eq!(pool.idle_timeout(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_big_migration_at_open_is_checkpointed_though_no_write_follows() {
        let dir = tempfile::TempDir::new().unwrap();
        let settings = PoolSettings::owning(256, Duration::from_secs(5));
        let path = dir.path().join("t.db");
        Database::create(&path, &settings, |conn| {
            conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY, b BLOB)")
                .context(|| "creating t".into())
        })
        .unwrap();
        let (db, ()) = Database::open(&path, &settings, |conn| {
            // A migration that rewrites 3,000 pages of the tenant's data.
            conn.execute_batch(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000)
                 INSERT INTO t SELECT x, zeroblob(3000) FROM c",
            )
            .context(|| "migrating".into())
        })
        .unwrap();
        // Its pages are in the file already, not only in the WAL, though
        // nothing has written since.
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size >= 3000 * 4096, "the file holds {size} bytes");
        db.retire().await;
        assert_eq!(rows_in_file(dir.path()), 3000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retired_database_waits_for_queued_writes_then_refuses_more() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = database(dir.path());
        let (first, release) = hold_writer(&db).await;
        let mut second = Box::pin({
            let db = db.clone();
            async move { db.write(|tx| insert(tx, 2)).await }
        });
        assert!(futures::poll!(&mut second).is_pending());
        let mut retire = Box::pin({
            let db = db.clone();
            async move { db.retire().await }
        });
        assert!(
            futures::poll!(&mut retire).is_pending(),
            "waits for the writes"
        );
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap();
        retire.await;
        assert!(db.write(|tx| insert(tx, 3)).await.is_err(), "retired");
        assert_eq!(rows_in_file(dir.path()), 2);
    }
}

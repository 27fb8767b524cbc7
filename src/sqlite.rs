//! A pooled SQLite database: the one way tenantry talks to a database file,
//! whether it is the catalog or a tenant.
//!
//! rusqlite is synchronous, so every closure given to [`Database::read`] or
//! [`Database::write`] runs on tokio's blocking threads, never on the async
//! threads that serve other tenants. Reads run in parallel up to the pool's
//! size; writes run one at a time in `BEGIN IMMEDIATE` transactions, queued in
//! async code rather than in SQLite's busy handler, so two writers never
//! deadlock on a lock upgrade and a burst of writes to one database parks no
//! threads. The permits that bound this travel into the blocking task, so a
//! call cancelled by its client still holds them until its SQL is done.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use scheduled_thread_pool::ScheduledThreadPool;
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use crate::error::{Context, Error, Result};
use crate::limits;

/// How every connection of a database is opened and pooled.
#[derive(Clone)]
pub struct PoolSettings {
    /// Most connections, and so most concurrent calls, for one database.
    pub connections: u32,
    pub cache_kib: u32,
    pub busy_timeout: Duration,
    /// An unused connection is closed after this long.
    pub idle_connection: Duration,
    /// The most bytes the database file may hold (SQLite's
    /// `max_page_count`); a write that needs more fails with `SQLITE_FULL`.
    /// `None` for no limit.
    pub max_bytes: Option<u64>,
    /// r2d2 opens connections and reaps idle ones on a thread pool; one pool
    /// shared by every database keeps thousands of open tenants from costing
    /// thousands of threads.
    pub threads: Arc<ScheduledThreadPool>,
}

impl PoolSettings {
    pub fn new(connections: u32, cache_kib: u32, busy_timeout: Duration) -> Self {
        PoolSettings {
            connections: connections.max(1),
            cache_kib,
            busy_timeout,
            idle_connection: Duration::from_secs(60),
            max_bytes: None,
            threads: Arc::new(
                ScheduledThreadPool::builder()
                    .num_threads(2)
                    .thread_name_pattern("sqlite-pool-{}")
                    .build(),
            ),
        }
    }

    /// Applies the per-connection settings. `journal_mode` is a property of
    /// the file and is set once, when it is created or first opened.
    fn configure(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.busy_timeout(self.busy_timeout)?;
        conn.execute_batch(&format!(
            "PRAGMA foreign_keys = ON;
             PRAGMA synchronous = NORMAL;
             PRAGMA cache_size = -{};",
            self.cache_kib
        ))?;
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

/// Flags for files that must already exist: a missing tenant file is an
/// error, never a silently empty tenant.
const EXISTING: OpenFlags =
    OpenFlags::SQLITE_OPEN_READ_WRITE.union(OpenFlags::SQLITE_OPEN_NO_MUTEX);

pub struct Database {
    path: PathBuf,
    /// The file's device and inode when it was opened: see
    /// [`Database::check_in_place`].
    identity: (u64, u64),
    /// `None` once the database is retired; see [`Database::retire`].
    pool: std::sync::Mutex<Option<Pool<SqliteConnectionManager>>>,
    connections: u32,
    /// One permit per connection: the calls running on this database.
    /// Closed when it is retired.
    readers: Arc<Semaphore>,
    writer: Arc<Mutex<()>>,
}

/// The right to run one read on a database, taken in async code before any
/// work is handed to a blocking thread.
pub struct ReadTurn {
    _permit: OwnedSemaphorePermit,
}

/// The right to run one write: the database's single writer slot, plus a
/// connection permit.
pub struct WriteTurn {
    permit: OwnedSemaphorePermit,
    turn: OwnedMutexGuard<()>,
}

/// The database was retired (deleted, or replaced by a restore) while the
/// call waited for it: the caller should look the tenant up again.
#[derive(Debug)]
pub struct Retired;

impl Database {
    /// Opens an existing database file: first on one connection of its own,
    /// which runs `prepare` (switching to WAL, migrating) and is closed, then
    /// as a pool whose connections are made on demand. A missing file is an
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
        let prepared = prepare(&mut conn)?;
        let identity = file_identity(path)
            .context(|| format!("opening {}", path.display()))?
            .ok_or_else(|| moved(path))?;
        drop(conn);
        let configured = settings.clone();
        let manager = SqliteConnectionManager::file(path)
            .with_flags(EXISTING)
            .with_init(move |conn| configured.configure(conn));
        let pool = Pool::builder()
            .max_size(settings.connections)
            .min_idle(Some(0))
            .idle_timeout(Some(settings.idle_connection))
            .connection_timeout(settings.busy_timeout)
            .test_on_check_out(false)
            .thread_pool(settings.threads.clone())
            .build_unchecked(manager);
        let database = Database {
            path: path.to_owned(),
            identity,
            pool: std::sync::Mutex::new(Some(pool)),
            connections: settings.connections,
            readers: Arc::new(Semaphore::new(settings.connections as usize)),
            writer: Arc::new(Mutex::new(())),
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

    fn pool(&self) -> Result<Pool<SqliteConnectionManager>> {
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
        let turn = self.writer.clone().lock_owned().await;
        let permit = self
            .readers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Retired)?;
        Ok(WriteTurn { permit, turn })
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

    /// [`Database::read`] with a turn already taken.
    pub async fn read_in<T, F>(&self, turn: ReadTurn, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let pool = self.pool()?;
        let (path, identity) = (self.path.clone(), self.identity);
        let deadline = limits::current();
        run_blocking(move || {
            let result = limits::check(deadline)
                .and_then(|()| check_in_place(&path, identity))
                .and_then(|()| {
                    pool.get()
                        .context(|| "taking a database connection".into())
                        .and_then(|conn| f(&conn))
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
    pub async fn write_in<T, F>(&self, turn: WriteTurn, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
    {
        let pool = self.pool()?;
        let (path, identity) = (self.path.clone(), self.identity);
        let deadline = limits::current();
        run_blocking(move || {
            let result = limits::check(deadline)
                .and_then(|()| check_in_place(&path, identity))
                .and_then(|()| {
                    pool.get()
                        .context(|| "taking a database connection".into())
                        .and_then(|mut conn| write_now(&mut conn, deadline, f))
                });
            drop(pool);
            drop((turn.permit, turn.turn));
            result
        })
        .await
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
    pub async fn retire(&self) {
        // The semaphore is fair: this waits behind the calls already queued,
        // and every call queued after it is refused.
        if let Ok(all) = self.readers.acquire_many(self.connections).await {
            self.readers.close();
            drop(all);
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

/// The device and inode of a file, or `None` if there is no file.
fn file_identity(path: &Path) -> std::io::Result<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(metadata) => Ok(Some((metadata.dev(), metadata.ino()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Checks, before a call uses the database, that its file is still the one
/// that was opened. Open connections keep working on a file that was
/// removed or replaced behind the server's back, and every write to it would
/// be lost; SQLite only notices for rollback journals, not in WAL mode. One
/// `stat` per call, small next to the call's SQL.
fn check_in_place(path: &Path, opened: (u64, u64)) -> Result<()> {
    match file_identity(path).context(|| format!("checking {}", path.display()))? {
        Some(identity) if identity == opened => Ok(()),
        _ => Err(moved(path)),
    }
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

/// Runs `f` in a write transaction, committed only if it succeeds and the
/// call's deadline has not passed meanwhile: a client that has given up hears
/// DEADLINE_EXCEEDED, and so must nothing be changed.
fn write_now<T>(
    conn: &mut Connection,
    deadline: Option<tokio::time::Instant>,
    f: impl FnOnce(&Transaction) -> Result<T>,
) -> Result<T> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context(|| "starting a write transaction".into())?;
    let value = f(&tx)?;
    limits::check(deadline)?;
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

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
use tokio::sync::{Mutex, Semaphore};

use crate::error::{Context, Error, Result};

/// How every connection of a database is opened and pooled.
#[derive(Clone)]
pub struct PoolSettings {
    /// Most connections, and so most concurrent calls, for one database.
    pub connections: u32,
    pub cache_kib: u32,
    pub busy_timeout: Duration,
    /// An unused connection is closed after this long.
    pub idle_connection: Duration,
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
        ))
    }
}

/// Flags for files that must already exist: a missing tenant file is an
/// error, never a silently empty tenant.
const EXISTING: OpenFlags =
    OpenFlags::SQLITE_OPEN_READ_WRITE.union(OpenFlags::SQLITE_OPEN_NO_MUTEX);

pub struct Database {
    path: PathBuf,
    pool: Pool<SqliteConnectionManager>,
    readers: Arc<Semaphore>,
    writer: Arc<Mutex<()>>,
}

impl Database {
    /// Opens an existing database file. No connection is made yet; a missing
    /// file is an error, never a new empty database. Blocking.
    pub fn open(path: &Path, settings: &PoolSettings) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::internal(
                format!("opening {}", path.display()),
                "the database file is missing",
            ));
        }
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
        Ok(Database {
            path: path.to_owned(),
            pool,
            readers: Arc::new(Semaphore::new(settings.connections as usize)),
            writer: Arc::new(Mutex::new(())),
        })
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

    /// Runs `f` on a connection of this database, on a blocking thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .readers
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let pool = self.pool.clone();
        run_blocking(move || {
            let conn = pool
                .get()
                .context(|| "taking a database connection".into())?;
            let result = f(&conn);
            drop(permit);
            result
        })
        .await
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committed when `f`
    /// returns `Ok` and rolled back otherwise, on a blocking thread.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
    {
        let turn = self.writer.clone().lock_owned().await;
        let permit = self
            .readers
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let pool = self.pool.clone();
        run_blocking(move || {
            let mut conn = pool
                .get()
                .context(|| "taking a database connection".into())?;
            let result = write_now(&mut conn, f);
            drop((permit, turn));
            result
        })
        .await
    }

    /// Runs `f` on a connection now, on the calling thread: for start-up and
    /// other work that is already off the async threads.
    pub fn with_connection<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self
            .pool
            .get()
            .context(|| "taking a database connection".into())?;
        f(&mut conn)
    }
}

fn write_now<T>(conn: &mut Connection, f: impl FnOnce(&Transaction) -> Result<T>) -> Result<T> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context(|| "starting a write transaction".into())?;
    let value = f(&tx)?;
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

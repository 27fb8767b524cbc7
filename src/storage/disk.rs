//! Room on the disk for the changes an operator needs when it is full.
//!
//! When the file system holding the data directory fills up (tenants
//! writing, another program, the logs), the catalog cannot grow either, and
//! a revoke, a suspension or the purge that would free space all fail. So
//! the server keeps a reserve: a file of `--disk-reserve-mib`, allocated at
//! start-up. Before every catalog write it looks at the free space; when
//! little is left (or a write has just failed for lack of space), it gives
//! the reserve back to the file system and refuses, from then on, what
//! would eat that room: tenant writes and new snapshots get
//! RESOURCE_EXHAUSTED saying the disk is full. Catalog writes go on in the
//! reserve. Once there is room again (a purge, an operator), the reserve is
//! taken back and everything is served as before.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// Free space under which the reserve is given back: a catalog write needs
/// far less, but the free space is read before the write, not during it.
const LOW_WATER: u64 = 8 << 20;

/// The reserve and whether the disk is full. A cheap handle is an
/// `Arc<Disk>`.
pub struct Disk {
    /// The data directory, whose file system this watches.
    root: PathBuf,
    reserve: PathBuf,
    reserve_bytes: u64,
    full: AtomicBool,
    /// Held while the reserve is made or given back.
    changing: Mutex<()>,
}

impl Disk {
    /// Watches the file system of `root`, keeping a reserve of
    /// `reserve_bytes` in `<root>/reserve` (made now if there is room).
    /// Blocking.
    pub fn new(root: &Path, reserve_bytes: u64) -> Self {
        let disk = Disk {
            root: root.to_owned(),
            reserve: root.join("reserve"),
            reserve_bytes,
            full: AtomicBool::new(false),
            changing: Mutex::new(()),
        };
        disk.check();
        disk
    }

    /// Whether the disk is full: tenant writes and new snapshots are
    /// refused until there is room again.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed) && self.check()
    }

    /// The refusal of work that would need room while the disk is full.
    pub fn refuse_if_full(&self) -> Result<()> {
        if self.is_full() {
            return Err(full());
        }
        Ok(())
    }

    /// Looks at the free space, gives the reserve back if it runs low,
    /// takes it back once there is room again; whether the disk is full
    /// now. Called before every catalog write, and after a write failed for
    /// lack of space. Blocking (a `statvfs`, and rarely a file made or
    /// removed).
    pub fn check(&self) -> bool {
        let Some(free) = free_bytes(&self.root) else {
            return self.full.load(Ordering::Relaxed);
        };
        let full = self.full.load(Ordering::Relaxed);
        if !full && free < LOW_WATER {
            let _changing = self.changing.lock().expect("never poisoned");
            self.full.store(true, Ordering::Relaxed);
            match std::fs::remove_file(&self.reserve) {
                Ok(()) => tracing::error!(
                    free_bytes = free,
                    reserve_bytes = self.reserve_bytes,
                    "the disk is full: released the reserve for the catalog; tenant writes are \
                     refused until there is room again"
                ),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    tracing::error!(
                        free_bytes = free,
                        "the disk is full, and no reserve was left"
                    )
                }
                Err(error) => tracing::error!(%error, "could not release the disk reserve"),
            }
            return true;
        }
        if full && free > self.reserve_bytes + 2 * LOW_WATER {
            let _changing = self.changing.lock().expect("never poisoned");
            if self.make_reserve() {
                self.full.store(false, Ordering::Relaxed);
                tracing::warn!(free_bytes = free, "there is room on the disk again");
                return false;
            }
        }
        if !full && !self.reserve.exists() && free > self.reserve_bytes + 2 * LOW_WATER {
            let _changing = self.changing.lock().expect("never poisoned");
            self.make_reserve();
        }
        self.full.load(Ordering::Relaxed)
    }

    /// Allocates the reserve file; whether it now holds its bytes.
    fn make_reserve(&self) -> bool {
        if self.reserve_bytes == 0 {
            return true;
        }
        match allocate(&self.reserve, self.reserve_bytes) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "could not make the disk reserve");
                std::fs::remove_file(&self.reserve).ok();
                false
            }
        }
    }
}

fn full() -> Error {
    Error::ResourceExhausted(
        "the disk holding the data directory is full: free space (DeleteTenant with purge \
         removes a tenant's files for good) and retry"
            .into(),
    )
}

/// Bytes an unprivileged process may still write on the file system of
/// `path`, if it can be read.
fn free_bytes(path: &Path) -> Option<u64> {
    let stats = rustix::fs::statvfs(path).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Makes `path` a file of `bytes` whose blocks are allocated on disk (not a
/// sparse file), so that removing it gives them back. Blocking.
fn allocate(path: &Path, bytes: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        Ok(()) => {}
        // A file system that cannot allocate without writing: written.
        Err(rustix::io::Errno::OPNOTSUPP) => {
            let zeros = vec![0u8; 1 << 20];
            let mut left = bytes;
            while left > 0 {
                let chunk = left.min(zeros.len() as u64) as usize;
                file.write_all(&zeros[..chunk])?;
                left -= chunk as u64;
            }
        }
        Err(errno) => return Err(errno.into()),
    }
    file.sync_all()
}

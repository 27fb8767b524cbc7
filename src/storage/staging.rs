//! The staging folder: files being made (snapshots, uploads, copies), each
//! counted against a bound and removed when nobody needs it any more.
//!
//! A [`StagedFile`] reserves the bytes it may grow to before the file is
//! made; past `--max-staging-mib` in all, a new one is refused with
//! RESOURCE_EXHAUSTED, so that a handful of stalled exports or uploads
//! cannot fill the disk. Dropping it removes the file, on every path: a
//! finished export, a failed check, a caller that went away. A file handed
//! to an operation ([`StagedFile::keep`]) is that operation's to move; the
//! staging folder is emptied at start-up of whatever a crash left.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::storage::disk::Disk;

/// The staging folder's budget. A cheap handle is an `Arc<Staging>`.
pub struct Staging {
    dir: PathBuf,
    limit: u64,
    used: Mutex<u64>,
    /// A full disk takes no new staged files: its room is for the catalog.
    disk: Arc<Disk>,
}

impl Staging {
    pub fn new(dir: PathBuf, limit: u64, disk: Arc<Disk>) -> Arc<Self> {
        Arc::new(Staging {
            dir,
            limit,
            used: Mutex::new(0),
            disk,
        })
    }

    /// Bytes reserved by the staged files alive now.
    pub fn used(&self) -> u64 {
        *self.used.lock().expect("never poisoned")
    }

    /// Reserves `bytes` for a new file named after `what`; the file itself
    /// is made by the caller, at [`StagedFile::path`].
    pub fn reserve(self: &Arc<Self>, what: &str, bytes: u64) -> Result<StagedFile> {
        self.take(bytes)?;
        Ok(StagedFile {
            path: self.dir.join(format!("{what}.{}.db", uuid::Uuid::new_v4())),
            bytes,
            staging: self.clone(),
            kept: false,
        })
    }

    fn take(&self, bytes: u64) -> Result<()> {
        self.disk.refuse_if_full()?;
        let mut used = self.used.lock().expect("never poisoned");
        if *used + bytes > self.limit {
            return Err(Error::ResourceExhausted(format!(
                "the staging folder would hold more than its {} MiB (--max-staging-mib): \
                 {} MiB are in use by snapshots and uploads under way; retry once they are done",
                self.limit >> 20,
                *used >> 20
            )));
        }
        *used += bytes;
        Ok(())
    }

    fn give_back(&self, bytes: u64) {
        let mut used = self.used.lock().expect("never poisoned");
        *used = used.saturating_sub(bytes);
    }
}

/// A file in the staging folder, with the bytes reserved for it; removed
/// when dropped, unless kept.
pub struct StagedFile {
    path: PathBuf,
    bytes: u64,
    staging: Arc<Staging>,
    kept: bool,
}

impl StagedFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reserves `more` bytes, as an upload grows.
    pub fn grow(&mut self, more: u64) -> Result<()> {
        self.staging.take(more)?;
        self.bytes += more;
        Ok(())
    }

    /// Hands the file over (to an operation that moves it, or renames it
    /// into place): it is no longer removed when this is dropped.
    pub fn keep(mut self) -> PathBuf {
        self.kept = true;
        self.path.clone()
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.kept
            && let Err(error) = crate::storage::data_dir::remove_database_files(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %crate::error::error_chain(&error), "could not remove a staged file");
        }
        self.staging.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_given_back_with_their_files() {
        let dir = tempfile::TempDir::new().unwrap();
        let disk = Arc::new(Disk::new(dir.path(), 0));
        let staging = Staging::new(dir.path().to_owned(), 100, disk);
        let first = staging.reserve("a", 60).unwrap();
        std::fs::write(first.path(), b"x").unwrap();
        let refused = staging.reserve("b", 50).err().expect("over the bound");
        assert!(
            matches!(refused, Error::ResourceExhausted(_)),
            "{refused:?}"
        );
        let mut second = staging.reserve("b", 30).unwrap();
        assert!(second.grow(20).is_err(), "growing past the bound");
        let path = first.path().to_owned();
        drop(first);
        assert!(!path.exists(), "removed with its reservation");
        second.grow(20).unwrap();
        assert_eq!(staging.used(), 50);
        let kept = second.keep();
        assert_eq!(staging.used(), 0);
        assert!(kept.starts_with(dir.path()));
    }
}

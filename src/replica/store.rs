//! The object store a replica lives in: an S3-compatible bucket (through
//! the `object_store` crate) or a directory.
//!
//! Replication needs four things of a store: put an object, get one with its
//! version, delete one, and replace one only if it is still the version
//! read (or create it only if absent), which is what keeps two writers from
//! interleaving a tenant's replica. S3 stores do the last with `If-Match`
//! and `If-None-Match`. `object_store`'s local store can neither update
//! conditionally nor sync what it writes, so a directory is served here:
//! every object is written to a temporary file, synced, renamed into place
//! and its directory synced, and a conditional write holds an exclusive
//! lock on the directory's `.lock` file while it compares.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::storage::sqlite::run_blocking;

/// A version of an object, to replace it only if it is still that one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    e_tag: Option<String>,
    version: Option<String>,
}

/// What a conditional write expects to find.
#[derive(Clone, Debug)]
pub enum Expect {
    /// No object under the key.
    Absent,
    /// The object at this version.
    Version(Version),
}

/// A conditional write found something other than it expected: another
/// writer got there first.
#[derive(Debug)]
pub struct Conflict;

#[derive(Clone)]
enum Backend {
    Objects(Arc<dyn ObjectStore>),
    Directory(PathBuf),
}

/// A store, and the prefix every key of this server's replica is under.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    prefix: String,
    /// The URL it was opened from, for messages.
    url: String,
}

impl Store {
    /// Opens the store a `--replica` URL names: `s3://BUCKET/PREFIX` or
    /// `file:///PATH`.
    pub fn open(url: &str, endpoint: Option<&str>) -> Result<Store> {
        let invalid = |why: &str| Error::invalid("--replica", why.to_owned());
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("names no bucket: use s3://BUCKET/PREFIX"));
            }
            let mut builder =
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(endpoint) = endpoint {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            let store = builder
                .build()
                .map_err(|e| invalid(&format!("cannot be used: {e}")))?;
            return Ok(Store {
                backend: Backend::Objects(Arc::new(store)),
                prefix: prefix.trim_matches('/').to_owned(),
                url: url.to_owned(),
            });
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid("must name an absolute path: file:///PATH"));
            }
            std::fs::create_dir_all(path).map_err(|e| {
                Error::internal(format!("creating the replica directory {path}"), e)
            })?;
            return Ok(Store {
                backend: Backend::Directory(PathBuf::from(path)),
                prefix: String::new(),
                url: url.to_owned(),
            });
        }
        Err(invalid("must start with s3:// or file://"))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn object_path(&self, key: &str) -> ObjectPath {
        match self.prefix.is_empty() {
            true => ObjectPath::from(key),
            false => ObjectPath::from(format!("{}/{key}", self.prefix)),
        }
    }

    /// The object under `key`, with its version; `None` if there is none.
    pub async fn get(&self, key: &str) -> Result<Option<(Bytes, Version)>> {
        match &self.backend {
            Backend::Objects(store) => {
                let got = match store.get(&self.object_path(key)).await {
                    Ok(got) => got,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(error) => return Err(unavailable(&self.url, "reading", key, error)),
                };
                let version = Version {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|error| unavailable(&self.url, "reading", key, error))?;
                Ok(Some((bytes, version)))
            }
            Backend::Directory(root) => {
                let path = root.join(key);
                run_blocking(move || match std::fs::read(&path) {
                    Ok(bytes) => {
                        let version = content_version(&bytes);
                        Ok(Some((Bytes::from(bytes), version)))
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(error) => Err(Error::internal(
                        format!("reading {}", path.display()),
                        error,
                    )),
                })
                .await
            }
        }
    }

    /// Writes `bytes` under `key`, replacing whatever is there.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        match &self.backend {
            Backend::Objects(store) => store
                .put(&self.object_path(key), PutPayload::from(bytes))
                .await
                .map(drop)
                .map_err(|error| unavailable(&self.url, "writing", key, error)),
            Backend::Directory(root) => {
                let path = root.join(key);
                run_blocking(move || write_durably(&path, &bytes)).await
            }
        }
    }

    /// Writes `bytes` under `key` only if what is there is what `expect`
    /// says; the new version, or `Err(Conflict)` if it was not.
    pub async fn put_if(
        &self,
        key: &str,
        bytes: Bytes,
        expect: Expect,
    ) -> Result<std::result::Result<Version, Conflict>> {
        match &self.backend {
            Backend::Objects(store) => {
                let mode = match expect {
                    Expect::Absent => PutMode::Create,
                    Expect::Version(version) => PutMode::Update(UpdateVersion {
                        e_tag: version.e_tag,
                        version: version.version,
                    }),
                };
                let options = PutOptions {
                    mode,
                    ..PutOptions::default()
                };
                match store
                    .put_opts(&self.object_path(key), PutPayload::from(bytes), options)
                    .await
                {
                    Ok(put) => Ok(Ok(Version {
                        e_tag: put.e_tag,
                        version: put.version,
                    })),
                    Err(
                        object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. },
                    ) => Ok(Err(Conflict)),
                    Err(error) => Err(unavailable(&self.url, "writing", key, error)),
                }
            }
            Backend::Directory(root) => {
                let root = root.clone();
                let key = key.to_owned();
                run_blocking(move || put_if_in_directory(&root, &key, &bytes, expect)).await
            }
        }
    }

    /// Deletes the object under `key`, if there is one.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match &self.backend {
            Backend::Objects(store) => match store.delete(&self.object_path(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(error) => Err(unavailable(&self.url, "deleting", key, error)),
            },
            Backend::Directory(root) => {
                let path = root.join(key);
                run_blocking(move || crate::storage::data_dir::remove_if_present(&path)).await
            }
        }
    }
}

fn unavailable(url: &str, doing: &str, key: &str, error: object_store::Error) -> Error {
    Error::Unavailable(format!(
        "the replica store {url} failed {doing} {key}: {error}"
    ))
}

/// A directory object's version: its content's digest, which changes
/// whenever the object does.
fn content_version(bytes: &[u8]) -> Version {
    Version {
        e_tag: Some(hex::encode(Sha256::digest(bytes))),
        version: None,
    }
}

fn put_if_in_directory(
    root: &Path,
    key: &str,
    bytes: &[u8],
    expect: Expect,
) -> Result<std::result::Result<Version, Conflict>> {
    let lock_path = root.join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::internal(format!("opening {}", lock_path.display()), e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::internal(format!("locking {}", lock_path.display()), e))?;
    let path = root.join(key);
    let current = match std::fs::read(&path) {
        Ok(bytes) => Some(content_version(&bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(Error::internal(
                format!("reading {}", path.display()),
                error,
            ));
        }
    };
    let matches = match (&expect, &current) {
        (Expect::Absent, None) => true,
        (Expect::Version(expected), Some(current)) => expected == current,
        _ => false,
    };
    if !matches {
        return Ok(Err(Conflict));
    }
    write_durably(&path, bytes)?;
    Ok(Ok(content_version(bytes)))
    // The lock goes with its descriptor.
}

/// Writes a file whole or not at all, and syncs it and its directory: an
/// object that a write acknowledged survives a crash of the machine.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| Error::internal("writing a replica object", "the key has no directory"))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::internal(format!("creating {}", dir.display()), e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{}.partial", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(Error::internal(
            format!("writing {}", path.display()),
            error,
        ));
    }
    Ok(())
}

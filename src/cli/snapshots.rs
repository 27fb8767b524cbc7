//! `tenantry backup|restore|export|import`: snapshots of a tenant's
//! database, kept by the server (backup, restore) or moved to and from this
//! machine (export, import), checked against their SHA-256 either way.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::connect::{ClientArgs, admin};
use super::output::{Record, print_one, render_one, size_cell, time_cell, time_json};
use super::progress::Progress;
use super::{Failure, Outcome};
use tenantry::pb;

/// Bytes per ImportTenant message: well under the server's message limit.
const CHUNK_BYTES: usize = 256 * 1024;

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The tenant's id.
    tenant_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The tenant whose data to replace.
    tenant_id: String,
    /// One of the tenant's backups, as `backup` prints it: relative to the
    /// data directory (`backups/<tenant id>/<time>.db`) or absolute.
    #[arg(required_unless_present = "time", conflicts_with = "time")]
    backup_path: Option<String>,
    /// Instead of a backup: the tenant's data as it was at this moment
    /// (RFC 3339, such as 2026-12-01T10:15:00Z), from the server's replica.
    #[arg(long, value_parser = parse_time)]
    time: Option<prost_types::Timestamp>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// An RFC 3339 time, as a `Timestamp`.
pub fn parse_time(text: &str) -> Result<prost_types::Timestamp, String> {
    let time = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("{e}: give the time as RFC 3339, such as 2026-12-01T10:15:00Z"))?;
    Ok(prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    })
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The tenant's id.
    tenant_id: String,
    /// The file to write (replaced if it exists, only once the whole
    /// snapshot arrived and matched its SHA-256), or `-` for standard output.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The tenant whose data to replace.
    tenant_id: String,
    /// A snapshot file, as `export` writes it (any tenant's).
    file: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn backup(args: BackupArgs, deadline: Option<Duration>) -> Outcome {
    let mut admin = admin(&args.client.server, &args.client.token, deadline).await?;
    let backup = admin
        .backup_tenant(pb::BackupTenantRequest { id: args.tenant_id })
        .await?
        .into_inner();
    print_one(args.client.server.output, &backup)
}

pub async fn restore(args: RestoreArgs, deadline: Option<Duration>) -> Outcome {
    let mut admin = admin(&args.client.server, &args.client.token, deadline).await?;
    let restored = admin
        .restore_tenant(pb::RestoreTenantRequest {
            id: args.tenant_id,
            source: Some(match (args.time, args.backup_path) {
                (Some(time), _) => pb::restore_tenant_request::Source::PointInTime(time),
                (None, path) => {
                    pb::restore_tenant_request::Source::BackupPath(path.unwrap_or_default())
                }
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    print_one(args.client.server.output, &restored)
}

/// Streams the snapshot into `--out`, and prints its description (with
/// `path` the file written) on standard output, or on standard error when
/// the snapshot itself goes to standard output.
pub async fn export(args: ExportArgs, deadline: Option<Duration>) -> Outcome {
    let format = args.client.server.output;
    let sink = Sink::for_path(&args.out)?;
    let mut admin = admin(&args.client.server, &args.client.token, deadline).await?;
    let mut answers = admin
        .export_tenant(pb::ExportTenantRequest { id: args.tenant_id })
        .await?
        .into_inner();
    let first = answers.message().await?.unwrap_or_default();
    let Some(mut snapshot) = first.backup else {
        return Err(Failure::Failed(
            "the server's export did not start with a description of the snapshot".into(),
        ));
    };
    let mut sink = sink.open().await?;
    let mut progress = Progress::bytes("export", snapshot.size_bytes);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut chunk = first.chunk;
    let received: Outcome = async {
        loop {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            sink.write(&chunk).await?;
            progress.advance(chunk.len() as u64);
            match answers.message().await? {
                Some(next) => chunk = next.chunk,
                None => break,
            }
        }
        check_digest(&snapshot, size, &hex::encode(hasher.finalize()))
    }
    .await;
    progress.finish();
    received?;
    snapshot.path = sink.finish().await?;
    match &args.out {
        out if out == Path::new("-") => {
            eprint!("{}", render_one(format, &snapshot));
            Ok(())
        }
        _ => print_one(format, &snapshot),
    }
}

/// Whether what arrived is what the header described.
fn check_digest(snapshot: &pb::Backup, size: u64, sha256: &str) -> Outcome {
    let size_matches = size == snapshot.size_bytes;
    let digest_matches = snapshot.sha256.is_empty() || snapshot.sha256.eq_ignore_ascii_case(sha256);
    if size_matches && digest_matches {
        return Ok(());
    }
    Err(Failure::Failed(format!(
        "the export arrived damaged: {size} bytes with SHA-256 {sha256}, where the server \
         described {} bytes with SHA-256 {}",
        snapshot.size_bytes, snapshot.sha256
    )))
}

/// Streams a file into ImportTenant, with its SHA-256 for the server to
/// check before it changes anything.
pub async fn import(args: ImportArgs, deadline: Option<Duration>) -> Outcome {
    let (size, sha256) = digest_file(&args.file).await?;
    let file = tokio::fs::File::open(&args.file)
        .await
        .map_err(|error| cannot("open", &args.file, error))?;
    let mut admin = admin(&args.client.server, &args.client.token, deadline).await?;
    let (requests, upload) = mpsc::channel(4);
    let first = pb::ImportTenantRequest {
        id: args.tenant_id,
        sha256,
        ..Default::default()
    };
    let path = args.file.clone();
    let sending = tokio::spawn(send_file(file, path, first, size, requests));
    let answer = admin.import_tenant(ReceiverStream::new(upload)).await;
    // A file that could not be read explains a refusal better than the
    // refusal (of an upload that did not match its SHA-256) does.
    sending.await.expect("sending the file does not panic")?;
    let restored = answer?.into_inner();
    print_one(args.client.server.output, &restored)
}

/// Sends `first`, then the file's bytes, in messages of [`CHUNK_BYTES`].
/// Stops early, without failing, if the server stops listening: its answer
/// says why.
async fn send_file(
    mut file: tokio::fs::File,
    path: PathBuf,
    first: pb::ImportTenantRequest,
    size: u64,
    requests: mpsc::Sender<pb::ImportTenantRequest>,
) -> Outcome {
    let mut progress = Progress::bytes("import", size);
    let mut message = first;
    loop {
        let mut chunk = vec![0u8; CHUNK_BYTES];
        let mut filled = 0;
        while filled < CHUNK_BYTES {
            match file.read(&mut chunk[filled..]).await {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) => return Err(cannot("read", &path, error)),
            }
        }
        chunk.truncate(filled);
        message.chunk = chunk;
        if requests.send(message).await.is_err() {
            break;
        }
        progress.advance(filled as u64);
        if filled < CHUNK_BYTES {
            break;
        }
        message = pb::ImportTenantRequest::default();
    }
    progress.finish();
    Ok(())
}

/// The size and SHA-256 (lower-case hex) of a file.
async fn digest_file(path: &Path) -> Outcome<(u64, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path).map_err(|error| cannot("open", &path, error))?;
        let mut hasher = Sha256::new();
        let size =
            std::io::copy(&mut file, &mut hasher).map_err(|error| cannot("read", &path, error))?;
        Ok((size, hex::encode(hasher.finalize())))
    })
    .await
    .expect("hashing a file does not panic")
}

fn cannot(action: &str, path: &Path, error: std::io::Error) -> Failure {
    Failure::Failed(format!("cannot {action} {}: {error}", path.display()))
}

/// Where an export goes: a file, written beside it under another name and
/// put in place only once complete, or standard output.
enum Sink {
    File { out: PathBuf, partial: PathBuf },
    Stdout,
}

/// A sink being written. A file not finished (the export failed, or ran
/// out of time) is removed when this is dropped.
struct OpenSink {
    sink: Sink,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
    finished: bool,
}

impl Sink {
    fn for_path(out: &Path) -> Outcome<Sink> {
        if out == Path::new("-") {
            if std::io::stdout().is_terminal() {
                return Err(Failure::Usage(
                    "standard output is a terminal: pass --out FILE, or redirect it".into(),
                ));
            }
            return Ok(Sink::Stdout);
        }
        let mut partial = out.as_os_str().to_owned();
        partial.push(".partial");
        Ok(Sink::File {
            out: out.to_owned(),
            partial: partial.into(),
        })
    }

    async fn open(self) -> Outcome<OpenSink> {
        let writer: Box<dyn AsyncWrite + Unpin + Send> = match &self {
            Sink::File { partial, .. } => Box::new(
                tokio::fs::File::create(partial)
                    .await
                    .map_err(|error| cannot("create", partial, error))?,
            ),
            Sink::Stdout => Box::new(tokio::io::stdout()),
        };
        Ok(OpenSink {
            sink: self,
            writer,
            finished: false,
        })
    }
}

impl OpenSink {
    async fn write(&mut self, bytes: &[u8]) -> Outcome {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|error| self.failed(error))
    }

    /// Puts the file in place; returns where the snapshot went.
    async fn finish(mut self) -> Outcome<String> {
        self.writer
            .flush()
            .await
            .map_err(|error| self.failed(error))?;
        match &self.sink {
            Sink::File { out, partial } => {
                tokio::fs::rename(partial, out)
                    .await
                    .map_err(|error| cannot("rename", partial, error))?;
                self.finished = true;
                Ok(out.display().to_string())
            }
            Sink::Stdout => Ok("-".into()),
        }
    }

    fn failed(&self, error: std::io::Error) -> Failure {
        match &self.sink {
            Sink::File { partial, .. } => cannot("write", partial, error),
            Sink::Stdout => Failure::Failed(format!("cannot write to standard output: {error}")),
        }
    }
}

impl Drop for OpenSink {
    fn drop(&mut self) {
        if let Sink::File { partial, .. } = &self.sink
            && !self.finished
        {
            std::fs::remove_file(partial).ok();
        }
    }
}

impl Record for pb::Backup {
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("tenant", self.tenant_id.clone()),
            ("path", self.path.clone()),
            ("size", size_cell(self.size_bytes)),
            ("sha256", self.sha256.clone()),
            ("schema", self.schema_version.to_string()),
            ("taken", time_cell(self.create_time.as_ref())),
        ]
    }

    fn to_json(&self) -> Value {
        json!({
            "tenant_id": self.tenant_id,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "schema_version": self.schema_version,
            "create_time": time_json(self.create_time.as_ref()),
        })
    }
}

impl Record for pb::RestoreTenantResponse {
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("tenant", self.tenant_id.clone()),
            ("from version", self.from_version.to_string()),
            ("to version", self.to_version.to_string()),
            ("size", size_cell(self.size_bytes)),
            ("sha256", self.sha256.clone()),
        ]
    }

    fn to_json(&self) -> Value {
        json!({
            "tenant_id": self.tenant_id,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_must_match_its_description() {
        let snapshot = pb::Backup {
            size_bytes: 3,
            sha256: "ABC".into(),
            ..Default::default()
        };
        assert!(check_digest(&snapshot, 3, "abc").is_ok());
        assert!(check_digest(&snapshot, 4, "abc").is_err());
        let damaged = check_digest(&snapshot, 3, "abd").unwrap_err();
        assert!(damaged.to_string().contains("arrived damaged"), "{damaged}");
        let undigested = pb::Backup {
            size_bytes: 3,
            ..Default::default()
        };
        assert!(check_digest(&undigested, 3, "abc").is_ok());
    }
}

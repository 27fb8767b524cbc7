//! Lifecycle operations that run to their end, whatever their caller does.
//!
//! Creating, deleting, purging and restoring a tenant each change files and
//! the catalog in several steps. Such an operation follows one rule:
//!
//! 1. It is recorded in the catalog only once it holds what it needs (the
//!    tenant's gate, a checked snapshot), and only if its caller is still
//!    waiting: the record is its point of no return ([`crate::deadline`]).
//!    A caller that gives up before leaves nothing behind and hears that
//!    nothing was done.
//! 2. Once recorded, it runs on a task of its own to its end, and records
//!    its outcome (and the audit event) in the same transaction as its last
//!    change. Start-up finishes any a crash interrupted.
//! 3. Its caller hears the outcome, or, if it stops waiting first, that the
//!    outcome is unknown, with the operation's id to look it up by
//!    ([`Operations::get`]). A retry of the same call while it runs, or
//!    with the same `request_id` at any time, is answered with its outcome
//!    instead of being done again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::catalog::operations::{self, OperationKind, OperationRecord};
use crate::catalog::{Catalog, TenantRecord};
use crate::clock::now_micros;
use crate::deadline;
use crate::error::{Error, Result};
use crate::ids::TenantId;

/// What an operation did, when it succeeded.
#[derive(Clone, Debug)]
pub enum Done {
    Created(TenantRecord),
    Deleted,
    Restored(Restored),
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Restored {
    pub tenant_id: TenantId,
    pub from_version: u32,
    pub to_version: u32,
    pub size_bytes: u64,
    pub sha256: String,
}

/// How an operation ended, as its callers hear it.
pub type Outcome = std::result::Result<Done, Arc<Error>>;

/// A call that starts an operation.
#[derive(Clone, Debug)]
pub struct Call {
    /// What at most one operation at a time may act on: `tenants/<id>`, or
    /// `names/<name>` for a creation.
    pub subject: String,
    pub kind: OperationKind,
    pub action: &'static str,
    /// What tells a retry of the same call from another call on the same
    /// subject (such as the backup a restore names).
    pub request: String,
    pub request_id: Option<Uuid>,
}

impl Call {
    /// What tells a retry of this call from any other call: the same
    /// request on the same subject (a `request_id` reused on another
    /// tenant names another call).
    pub fn identity(&self) -> String {
        format!("{} {}", self.subject, self.request)
    }

    /// Whether `record` is of this call: the same action and identity, or,
    /// for a record an earlier version wrote (its request without the
    /// subject), the same request on the same tenant (a creation's request
    /// names its tenant already).
    fn recorded_as(&self, record: &OperationRecord) -> bool {
        let earlier = record.request == self.request
            && (self.kind == OperationKind::Create
                || self.subject == format!("tenants/{}", record.tenant_id));
        record.action == self.action && (record.request == self.identity() || earlier)
    }
}

/// The operations running in this process, and the way to their outcomes.
/// A cheap handle.
#[derive(Clone, Default)]
pub struct Operations {
    running: Arc<Mutex<HashMap<String, Running>>>,
    /// Operations whose record is being written: a caller told that the
    /// outcome is unknown may look one up before its record is committed.
    recording: Arc<Mutex<HashMap<Uuid, watch::Receiver<bool>>>>,
}

#[derive(Clone)]
struct Running {
    id: Uuid,
    action: &'static str,
    request: String,
    request_id: Option<Uuid>,
    done: watch::Receiver<Option<Outcome>>,
}

/// An operation recorded and started: [`Started::outcome`] waits for it.
pub struct Started {
    pub id: Uuid,
    done: watch::Receiver<Option<Outcome>>,
}

impl Started {
    /// Waits for the operation's outcome.
    pub async fn outcome(mut self) -> Result<(Uuid, Done)> {
        let id = self.id;
        let outcome = self
            .done
            .wait_for(Option::is_some)
            .await
            .map(|done| done.clone().expect("waited for Some"))
            .map_err(|_| {
                Error::internal(
                    format!("running operation {id}"),
                    "the operation's task ended without an outcome",
                )
            })?;
        outcome
            .map(|done| (id, done))
            .map_err(|error| Error::Operation { id, error })
    }
}

impl Operations {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running
            .lock()
            .expect("the operations lock is never poisoned")
    }

    /// The operation that already answers `call`, if there is one: the one
    /// running for the same request on the same subject, or the one recorded
    /// under its `request_id`. A caller that joins it hears its outcome, or,
    /// if its own deadline passes first, that the outcome is unknown.
    pub async fn existing(&self, catalog: &Catalog, call: &Call) -> Result<Option<Started>> {
        let joined = {
            let running = self.running();
            running
                .values()
                .find(|r| call.request_id.is_some() && r.request_id == call.request_id)
                .or_else(|| {
                    running
                        .get(&call.subject)
                        .filter(|r| r.action == call.action && r.request == call.identity())
                })
                .cloned()
        };
        if let Some(running) = joined {
            if running.action != call.action || running.request != call.identity() {
                return Err(reused(call));
            }
            join(running.id)?;
            return Ok(Some(Started {
                id: running.id,
                done: running.done,
            }));
        }
        let Some(request_id) = call.request_id else {
            return Ok(None);
        };
        let Some(record) = catalog
            .read(move |conn| operations::by_request_id(conn, request_id))
            .await?
        else {
            return Ok(None);
        };
        if !call.recorded_as(&record) {
            return Err(reused(call));
        }
        // Recorded and done (running ones are in the map, or were finished
        // at start-up): its outcome, as recorded.
        let outcome = replay(catalog, &record).await?;
        let (_, done) = watch::channel(Some(outcome));
        Ok(Some(Started {
            id: record.id,
            done,
        }))
    }

    /// Records the operation of `call`, in one transaction with `changes`
    /// (the state it starts from), if its caller is still waiting; then runs
    /// `steps`, keeping `hold` until they end. `steps` record the operation's
    /// end themselves (see [`finish`]).
    ///
    /// The record and the steps run on one task of their own, so that a
    /// caller dropped at any point cannot separate them: either nothing is
    /// recorded (and `steps` and `hold` are dropped unrun), or the operation
    /// runs to its end. `steps` take over what the operation needs only once
    /// it is recorded.
    pub async fn start<H, C, S, F>(
        &self,
        catalog: &Catalog,
        call: Call,
        record: impl FnOnce(Uuid) -> OperationRecord,
        hold: H,
        changes: C,
        steps: S,
    ) -> Result<Started>
    where
        H: Send + 'static,
        C: FnOnce(&rusqlite::Transaction) -> Result<()> + Send + 'static,
        S: FnOnce(OperationRecord) -> F + Send + 'static,
        F: Future<Output = Outcome> + Send + 'static,
    {
        let id = Uuid::now_v7();
        let op = record(id);
        let deadline = deadline::current();
        let retried = call.clone();
        let (recorded, started) = oneshot::channel();
        let operations = self.clone();
        let task_catalog = catalog.clone();
        let (written_tx, written_rx) = watch::channel(false);
        self.recording
            .lock()
            .expect("never poisoned")
            .insert(id, written_rx);
        tokio::spawn(async move {
            let entry = op.clone();
            let commit = deadline.clone();
            let written = deadline::scope(
                deadline,
                task_catalog.write(move |tx| {
                    changes(tx)?;
                    operations::insert(tx, &entry)?;
                    // The point of no return: the caller is still waiting,
                    // and from now on hears this operation's outcome, or
                    // its id.
                    match &commit {
                        Some(deadline) => deadline.commit_operation(id),
                        None => Ok(()),
                    }
                }),
            )
            .await;
            // The task holds no database past the record: a caller that
            // hears the outcome and stops the server finds every database
            // closed with it.
            drop(task_catalog);
            operations
                .recording
                .lock()
                .expect("never poisoned")
                .remove(&id);
            let _ = written_tx.send(true);
            if let Err(error) = written {
                let _ = recorded.send(Err(error));
                return;
            }
            let (report, done) = watch::channel(None);
            let listed = operations.list(&call, id, done.clone());
            crate::fault::reached("operation.after-record").await;
            let _ = recorded.send(Ok(Started { id, done }));
            let outcome = steps(op).await;
            let _ = report.send(Some(outcome));
            drop(listed);
            drop(hold);
        });
        let outcome = started.await.unwrap_or_else(|_| {
            Err(Error::internal(
                format!("recording operation {id}"),
                "the operation's task ended before it was recorded",
            ))
        });
        match outcome {
            // The same call may have been recorded meanwhile under the same
            // request_id by a retry that raced this one: its outcome answers.
            Err(error) if retried.request_id.is_some() => {
                match self.existing(catalog, &retried).await {
                    Ok(Some(started)) => Ok(started),
                    _ => Err(error),
                }
            }
            outcome => outcome,
        }
    }

    /// Runs an operation whose every change is one catalog transaction:
    /// `changes`, given the operation's id, makes them and says what it did
    /// (its record, its outcome, and more for its audit event), or `None`
    /// to do nothing at all, in which case nothing is recorded. The
    /// operation is recorded done, with its audit event, in the same
    /// transaction, if its caller is still waiting: the commit is the point
    /// of no return, and nothing is left for start-up to finish. `synced`:
    /// whether the commit is synced before it is answered (see
    /// [`Catalog::write_unsynced`]).
    pub async fn run_at_once<C>(
        &self,
        catalog: &Catalog,
        call: Call,
        synced: bool,
        changes: C,
    ) -> Result<Option<Started>>
    where
        C: FnOnce(&rusqlite::Transaction, Uuid) -> Result<Option<(OperationRecord, Done, String)>>
            + Send
            + 'static,
    {
        let id = Uuid::now_v7();
        let deadline = deadline::current();
        let write = move |tx: &rusqlite::Transaction| {
            let Some((op, done, detail)) = changes(tx, id)? else {
                return Ok(None);
            };
            let time = now_micros();
            let op = OperationRecord {
                outcome: Some("OK".into()),
                end_time: Some(time),
                ..op
            };
            operations::insert_done(tx, &op)?;
            crate::audit::record_in(tx, time, &end_event(&op, "OK".into(), &detail))?;
            if let Some(deadline) = &deadline {
                deadline.commit_operation(id)?;
            }
            Ok(Some(done))
        };
        let ran = match synced {
            true => catalog.write(write).await,
            false => catalog.write_unsynced(write).await,
        };
        match ran {
            Ok(Some(done)) => {
                let (_, done) = watch::channel(Some(Ok(done)));
                Ok(Some(Started { id, done }))
            }
            Ok(None) => Ok(None),
            // As in `start`: a retry that raced this one may have recorded
            // the same call under the same request_id.
            Err(error) if call.request_id.is_some() => match self.existing(catalog, &call).await {
                Ok(Some(started)) => Ok(Some(started)),
                _ => Err(error),
            },
            Err(error) => Err(error),
        }
    }

    /// Lists operation `id` as the one running for `call`, until the guard
    /// returned is dropped (after its outcome is reported, before what it
    /// holds is released, and also if its steps panic).
    fn list(&self, call: &Call, id: Uuid, done: watch::Receiver<Option<Outcome>>) -> Listed {
        self.running().insert(
            call.subject.clone(),
            Running {
                id,
                action: call.action,
                request: call.identity(),
                request_id: call.request_id,
                done,
            },
        );
        Listed {
            operations: self.clone(),
            subject: call.subject.clone(),
            id,
        }
    }

    /// Waits until no operation runs in this process, for at most `grace`:
    /// at shutdown, before the tenants are closed. Whatever still runs then
    /// is finished at the next start; false if any does.
    pub async fn drain(&self, grace: Duration) -> bool {
        let waiting: Vec<watch::Receiver<Option<Outcome>>> =
            self.running().values().map(|r| r.done.clone()).collect();
        let all = async {
            for mut done in waiting {
                let _ = done.wait_for(Option::is_some).await;
            }
        };
        let finished = tokio::time::timeout(grace, all).await.is_ok();
        if !finished {
            tracing::warn!(
                ?grace,
                "operations still running after the grace period: the next start finishes them"
            );
        }
        finished
    }

    /// An operation by id, as recorded (once its record, if it is being
    /// written, is committed or abandoned).
    pub async fn get(&self, catalog: &Catalog, id: Uuid) -> Result<OperationRecord> {
        let recording = self
            .recording
            .lock()
            .expect("never poisoned")
            .get(&id)
            .cloned();
        if let Some(mut written) = recording {
            let _ = written.wait_for(|written| *written).await;
        }
        catalog
            .read(move |conn| operations::get(conn, id))
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "operation {id} does not exist: no call ever recorded it, so nothing was \
                     done under it"
                ))
            })
    }
}

/// An operation's place in the list of running ones.
struct Listed {
    operations: Operations,
    subject: String,
    id: Uuid,
}

impl Drop for Listed {
    fn drop(&mut self) {
        let mut running = self.operations.running();
        // Only its own: another may run on the subject by now.
        if running.get(&self.subject).is_some_and(|r| r.id == self.id) {
            running.remove(&self.subject);
        }
    }
}

/// A caller joining a running operation: from now on it hears that
/// operation's outcome, or, past its deadline, that the outcome is unknown.
fn join(id: Uuid) -> Result<()> {
    match deadline::current() {
        Some(deadline) if deadline.commit_operation(id).is_err() => Err(Error::OutcomeUnknown {
            operation: id,
            message: format!(
                "operation {id}, which this call would repeat, is under way, and this call's \
                 deadline has passed: look its outcome up with GetOperation"
            ),
        }),
        _ => Ok(()),
    }
}

fn reused(call: &Call) -> Error {
    Error::invalid(
        "request_id",
        format!(
            "was used for another call than this {}: choose a new request_id for a new call",
            call.action
        ),
    )
}

/// The outcome of a finished operation, as its record says.
async fn replay(catalog: &Catalog, record: &OperationRecord) -> Result<Outcome> {
    match record.outcome.as_deref() {
        Some("OK") => {}
        Some(code) => {
            return Ok(Err(Arc::new(Error::Recorded {
                code: code_of(code),
                message: record.message.clone(),
            })));
        }
        None => {
            return Err(Error::Unavailable(format!(
                "operation {} is still running: retry later",
                record.id
            )));
        }
    }
    let done = match record.kind {
        OperationKind::Create => {
            let id = record.tenant_id;
            let tenant = catalog
                .read(move |conn| crate::catalog::store::get_tenant(conn, id))
                .await?
                .ok_or_else(|| Error::NotFound(format!("tenant {id} does not exist any more")))?;
            Done::Created(tenant)
        }
        OperationKind::Delete | OperationKind::Purge => Done::Deleted,
        OperationKind::Restore => {
            Done::Restored(serde_json::from_str(&record.result).map_err(|e| {
                Error::internal(format!("reading the result of operation {}", record.id), e)
            })?)
        }
    };
    Ok(Ok(done))
}

/// A status code from its name, as outcomes are recorded.
fn code_of(name: &str) -> tonic::Code {
    use tonic::Code;
    [
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ]
    .into_iter()
    .find(|code| crate::error::code_name(*code) == name)
    .unwrap_or(Code::Unknown)
}

/// Records the end of operation `op` in `tx`, with its audit event: in the
/// transaction of the operation's last change.
pub fn finish(
    tx: &rusqlite::Connection,
    op: &OperationRecord,
    outcome: &std::result::Result<String, &Error>,
    detail: &str,
) -> Result<()> {
    let time = now_micros();
    let (code, message, result) = match outcome {
        Ok(result) => ("OK".to_owned(), String::new(), result.clone()),
        Err(error) => {
            let status = crate::error::to_status(error);
            (
                crate::error::code_name(status.code()).to_owned(),
                status.message().to_owned(),
                String::new(),
            )
        }
    };
    operations::finish(tx, op.id, &code, &message, &result, time)?;
    crate::audit::record_in(tx, time, &end_event(op, code, detail))
}

/// The audit event of an operation's end, with outcome `code`.
fn end_event(op: &OperationRecord, code: String, detail: &str) -> crate::audit::AdminCall {
    let detail = match detail {
        "" => format!("operation {}", op.id),
        more => format!("operation {}; {more}", op.id),
    };
    crate::audit::AdminCall {
        action: op.action.clone(),
        target: format!("tenants/{}", op.tenant_id),
        outcome: code,
        detail,
    }
}

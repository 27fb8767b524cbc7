//! The crate's one error type and its one conversion to a gRPC status.
//!
//! Every fallible path in tenantry returns [`Error`]. The variants name what a
//! caller can act on; the conversion to [`tonic::Status`] is a single
//! exhaustive `match` (no `_` arm), so a new variant forces a decision about
//! its status code. Internal detail (SQL text, file paths, cause chains) is
//! logged here and never sent to the client.

use std::sync::Arc;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `domain` of the `google.rpc.ErrorInfo` details tenantry sends.
pub const ERROR_DOMAIN: &str = "tenantry.v1";
/// The metadata naming the operation an answer comes from.
pub const OPERATION_METADATA: &str = "tenantry-operation-id";
/// The `reason` of an error whose operation goes on, its outcome unknown to
/// the caller; `metadata.operation_id` names the operation.
pub const OUTCOME_UNKNOWN: &str = "OUTCOME_UNKNOWN";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field (or metadata entry) is malformed. `field` is the name a
    /// client sees: a proto field path such as `item.title`, or a metadata key.
    #[error("{field}: {description}")]
    InvalidArgument {
        field: &'static str,
        description: String,
    },
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The caller stopped waiting (its deadline) while an operation it
    /// started went on by itself: the caller cannot know how it ended, but
    /// can look it up by the operation's id.
    #[error("{message}")]
    OutcomeUnknown {
        operation: uuid::Uuid,
        message: String,
    },
    /// Stored data is damaged or missing: a tenant's file overwritten,
    /// truncated or removed. Only an operator can repair it.
    #[error("{0}")]
    DataLoss(String),
    /// A storage failure an operator must fix (a file made read-only, an
    /// unreadable directory), with a message saying what to fix. Unlike
    /// [`Error::Internal`], the message is meant for the client.
    #[error("{0}")]
    Storage(String),
    /// An error shared by every waiter of one single-flight operation (moka
    /// hands each of them the same `Arc`).
    #[error("{0}")]
    Shared(Arc<Error>),
    /// How a lifecycle operation ended, once it had started: its answer
    /// names the operation (`tenantry-operation-id`), so that the call is
    /// not recorded twice in the audit trail and the client can look it up.
    #[error("{error}")]
    Operation { id: uuid::Uuid, error: Arc<Error> },
    /// The outcome of an operation as its record keeps it, for a retry
    /// answered with it.
    #[error("{message}")]
    Recorded { code: Code, message: String },
    /// A failure of the server or of its storage, with what was being done.
    /// The client learns only that something went wrong inside.
    #[error("{context}: {source}")]
    Internal {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            description: description.into(),
        }
    }

    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Internal {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Attaches "what we were doing" to lower-level errors on their way up.
pub trait Context<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E> Context<T> for std::result::Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::internal(context(), source))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        to_status(&error)
    }
}

/// moka hands the error of a failed single-flight initialisation to every
/// waiter as a shared `Arc`; this is the one place that absorbs it.
impl From<Arc<Error>> for Error {
    fn from(error: Arc<Error>) -> Self {
        Error::Shared(error)
    }
}

pub fn to_status(error: &Error) -> Status {
    match error {
        Error::InvalidArgument { field, description } => Status::with_error_details(
            Code::InvalidArgument,
            format!("{field}: {description}"),
            ErrorDetails::with_bad_request_violation(*field, description.clone()),
        ),
        Error::Unauthenticated(message) => Status::unauthenticated(*message),
        Error::PermissionDenied(message) => Status::permission_denied(*message),
        Error::NotFound(message) => Status::not_found(message.clone()),
        Error::AlreadyExists(message) => Status::already_exists(message.clone()),
        Error::FailedPrecondition(message) => Status::failed_precondition(message.clone()),
        Error::Aborted(message) => Status::aborted(message.clone()),
        Error::Unavailable(message) => Status::unavailable(message.clone()),
        Error::ResourceExhausted(message) => Status::resource_exhausted(message.clone()),
        Error::DeadlineExceeded(message) => Status::deadline_exceeded(message.clone()),
        Error::OutcomeUnknown { operation, message } => Status::with_error_details(
            Code::DeadlineExceeded,
            message.clone(),
            ErrorDetails::with_error_info(
                OUTCOME_UNKNOWN,
                ERROR_DOMAIN,
                [("operation_id".to_owned(), operation.to_string())],
            ),
        ),
        Error::DataLoss(message) => {
            tracing::error!(message, "stored data is damaged");
            Status::data_loss(message.clone())
        }
        Error::Storage(message) => {
            tracing::error!(message, "storage failure");
            Status::internal(message.clone())
        }
        Error::Shared(inner) => to_status(inner),
        Error::Operation { id, error } => {
            let mut status = to_status(error);
            status.metadata_mut().insert(
                OPERATION_METADATA,
                id.to_string().parse().expect("a UUID is a metadata value"),
            );
            status
        }
        Error::Recorded { code, message } => Status::new(*code, message.clone()),
        Error::Internal { .. } if is_disk_full(error) => {
            tracing::error!(error = %error_chain(error), "the disk is full");
            Status::resource_exhausted(
                "the disk holding the data directory is full: free space (DeleteTenant with \
                 purge removes a tenant's files for good) and retry",
            )
        }
        Error::Internal { .. }
            if error
                .sqlite_code()
                .is_some_and(|c| c.code == rusqlite::ffi::ErrorCode::OperationInterrupted) =>
        {
            Status::deadline_exceeded(
                "the call's deadline passed while its statement ran: it was stopped, and \
                 nothing was changed",
            )
        }
        Error::Internal { .. } => {
            tracing::error!(error = %error_chain(error), "internal error");
            Status::internal("internal error; the server log has the details")
        }
    }
}

impl Error {
    /// The SQLite result code behind this error, if it came from SQLite.
    pub fn sqlite_code(&self) -> Option<rusqlite::ffi::Error> {
        match self {
            Error::Shared(inner) | Error::Operation { error: inner, .. } => inner.sqlite_code(),
            Error::Internal { source, .. } => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
                while let Some(error) = cause {
                    if let Some(rusqlite::Error::SqliteFailure(code, _)) =
                        error.downcast_ref::<rusqlite::Error>()
                    {
                        return Some(*code);
                    }
                    cause = error.source();
                }
                None
            }
            _ => None,
        }
    }
}

/// The error and every `source()` below it, joined: what an operator needs.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The canonical name of a gRPC status code, as in the gRPC specification.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The answer for a tenant that does not exist (or is deleted): the same
/// wherever it is found out.
pub fn tenant_not_found(id: impl std::fmt::Display) -> Error {
    Error::NotFound(format!("tenant {id} does not exist"))
}

/// Whether `error` says the disk (or the user's quota on it) is full.
pub fn is_disk_full(error: &Error) -> bool {
    if error
        .sqlite_code()
        .is_some_and(|code| code.code == rusqlite::ffi::ErrorCode::DiskFull)
    {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        {
            return true;
        }
        cause = current.source();
    }
    false
}

//! The admin command line: `tenantry tenants|keys|backup|restore|export|
//! import|migrate|health`, a client of a running server.
//!
//! Every command but `health` and `migrate --offline` is one or a few calls
//! of `tenantry.v1.TenantService` through the generated client, with the
//! admin token (`connect`). What comes back is printed in one place
//! (`output`): an aligned table for people, or one JSON document with
//! `--output json` for scripts. Long work (migrations, exports and imports
//! of big tenants) shows a progress bar when standard error is a terminal,
//! and plain lines otherwise (`progress`).
//!
//! A command that cannot do its work ends with a [`Failure`], printed as
//! `tenantry: <CODE>: <message>` on standard error, and an exit status that
//! tells a script what kind of failure it was ([`EXIT_STATUSES`]).

mod connect;
mod health;
mod migrate;
mod output;
mod progress;
mod recover;
mod snapshots;
mod tenants;

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use tonic::{Code, Status};

use tenantry::config::LogFormat;
use tenantry::error::code_name;

pub use health::{HealthArgs, health};
pub use migrate::MigrateArgs;

/// The exit statuses of the client commands, for `--help` and the README.
pub const EXIT_STATUSES: &str = "\
Exit status of the client commands:
  0  done
  1  the server refused the call (its status code is printed), or the work
     failed on this side (a file, a checksum, a tenant that did not migrate)
  2  the command line cannot work as given (a bad flag, no admin token)
  3  no answer: the server could not be reached, did not answer within
     --timeout, or asked to be called again later (UNAVAILABLE); worth retrying";

/// The commands that talk to a running server, and the offline migration
/// (`health`, with its own exit statuses, stands apart: [`health()`]).
#[derive(Subcommand)]
pub enum Command {
    /// Create, list, show, suspend, resume and delete tenants.
    #[command(subcommand_required = true)]
    Tenants(tenants::TenantsArgs),
    /// Create, list and revoke a tenant's API keys.
    #[command(subcommand_required = true)]
    Keys(tenants::KeysArgs),
    /// Take a consistent snapshot of a tenant into the server's backups
    /// folder, while it keeps serving.
    Backup(snapshots::BackupArgs),
    /// Replace a tenant's data with one of its own backups, as `backup`
    /// made it (a file from elsewhere goes in with `import`).
    Restore(snapshots::RestoreArgs),
    /// Download a consistent snapshot of a tenant into a file here.
    Export(snapshots::ExportArgs),
    /// Replace a tenant's data with a snapshot file from here.
    Import(snapshots::ImportArgs),
    /// Bring every tenant database to the server's schema version: through
    /// the running server (MigrateTenants), or with `--offline` in a stopped
    /// server's data directory.
    Migrate(MigrateArgs),
    /// Rebuild a lost server's data directory (catalog, keys and every
    /// tenant) from its replica, here, as it is or as it was at --time; a
    /// server started on the directory then serves as before.
    Recover(recover::RecoverArgs),
}

impl Command {
    /// The log format the command asks for, if it has a setting for it.
    pub fn log_format(&self) -> Option<LogFormat> {
        match self {
            Command::Migrate(args) => Some(args.log_format()),
            _ => None,
        }
    }

    /// How long the command may take, as `--timeout` or its default says.
    fn deadline(&self) -> Option<Duration> {
        match self {
            Command::Tenants(args) => connect::deadline(&args.client.server, false),
            Command::Keys(args) => connect::deadline(&args.client.server, false),
            Command::Backup(args) => connect::deadline(&args.client.server, false),
            Command::Restore(args) => connect::deadline(&args.client.server, false),
            Command::Export(args) => connect::deadline(&args.client.server, true),
            Command::Import(args) => connect::deadline(&args.client.server, true),
            Command::Migrate(args) => args.deadline(),
            Command::Recover(_) => None,
        }
    }
}

/// Runs a client command and says how it ended.
pub async fn run(command: Command) -> ExitCode {
    let deadline = command.deadline();
    let work = async {
        match command {
            Command::Tenants(args) => tenants::tenants(args, deadline).await,
            Command::Keys(args) => tenants::keys(args, deadline).await,
            Command::Backup(args) => snapshots::backup(args, deadline).await,
            Command::Restore(args) => snapshots::restore(args, deadline).await,
            Command::Export(args) => snapshots::export(args, deadline).await,
            Command::Import(args) => snapshots::import(args, deadline).await,
            Command::Migrate(args) => migrate::migrate(args, deadline).await,
            Command::Recover(args) => recover::recover(args).await,
        }
    };
    let ran = match deadline {
        None => work.await,
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(Failure::Unreachable {
                code: Code::DeadlineExceeded,
                message: format!("not done within {limit:?}; a longer --timeout may help"),
            })
        }),
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("tenantry: {failure}");
            ExitCode::from(failure.exit_status())
        }
    }
}

/// Why a command did not do its work.
#[derive(Debug)]
pub enum Failure {
    /// The command line cannot work as given: no admin token, a bad address.
    Usage(String),
    /// The server answered with a status other than OK.
    Refused(Status),
    /// The server could not be reached, or did not answer in time.
    Unreachable { code: Code, message: String },
    /// The work failed on this side: a file, a checksum, a tenant that could
    /// not be migrated.
    Failed(String),
}

impl Failure {
    /// The exit status, as [`EXIT_STATUSES`] lists them.
    pub fn exit_status(&self) -> u8 {
        match self {
            Failure::Refused(status) if is_retryable(status.code()) => 3,
            Failure::Refused(_) | Failure::Failed(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Unreachable { .. } => 3,
        }
    }
}

fn is_retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(message) | Failure::Failed(message) => f.write_str(message),
            Failure::Refused(status) => {
                write!(f, "{}: {}", code_name(status.code()), status.message())
            }
            Failure::Unreachable { code, message } => write!(f, "{}: {message}", code_name(*code)),
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Refused(status)
    }
}

/// What a command returns.
type Outcome<T = ()> = Result<T, Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_print_their_code_name_and_retryable_ones_exit_3() {
        let refused = Failure::from(Status::not_found("tenant x does not exist"));
        assert_eq!(refused.to_string(), "NOT_FOUND: tenant x does not exist");
        assert_eq!(refused.exit_status(), 1);
        assert_eq!(Failure::from(Status::unavailable("busy")).exit_status(), 3);
        assert_eq!(Failure::Usage("no token".into()).exit_status(), 2);
        let unreachable = Failure::Unreachable {
            code: Code::DeadlineExceeded,
            message: "no answer".into(),
        };
        assert_eq!(unreachable.to_string(), "DEADLINE_EXCEEDED: no answer");
        assert_eq!(unreachable.exit_status(), 3);
    }
}

//! `tenantry migrate`: every tenant database to the schema version of the
//! server, through the running server (MigrateTenants) or, with `--offline`,
//! in the data directory of a stopped one. Either way a line per tenant as
//! it is done, a summary at the end, and a failing exit status if any
//! tenant could not be migrated.

use std::time::Duration;

use serde_json::{Value, json};

use super::connect::{ServerArgs, TokenArgs, admin};
use super::output::{Format, print_json};
use super::progress::Progress;
use super::{Failure, Outcome};
use tenantry::config::{Config, LogFormat};
use tenantry::error::error_chain;
use tenantry::pb;
use tenantry::tenant::migrate::MigrationReport;

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// Migrate the data directory of a stopped server instead, in this
    /// process (the directory is locked meanwhile; a server using it makes
    /// this fail), with the settings of the data directory below.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    server: ServerArgs,
    // Online, `--data-dir` and `--admin-token-file` only say where the
    // admin token is, as for the other commands.
    #[command(flatten, next_help_heading = "Settings of the data directory")]
    config: Box<Config>,
}

impl MigrateArgs {
    pub fn log_format(&self) -> LogFormat {
        self.config.log_format
    }

    /// How long the migration may take: no limit unless `--timeout` says;
    /// none offline, where stopping half-way would help nobody.
    pub fn deadline(&self) -> Option<Duration> {
        match self.offline {
            true => None,
            false => super::connect::deadline(&self.server, true),
        }
    }
}

pub async fn migrate(args: MigrateArgs, deadline: Option<Duration>) -> Outcome {
    match args.offline {
        true => offline(*args.config, args.server.output).await,
        false => online(&args.server, &args.config, deadline).await,
    }
}

/// Through MigrateTenants, reporting each tenant as the server does.
async fn online(server: &ServerArgs, config: &Config, deadline: Option<Duration>) -> Outcome {
    let token = TokenArgs {
        admin_token_file: config.admin_token_file.clone(),
        data_dir: config.data_dir.clone(),
    };
    let mut admin = admin(server, &token, deadline)
        .await
        .map_err(|failure| match failure {
            Failure::Unreachable { code, message } => Failure::Unreachable {
                code,
                message: format!(
                    "{message} To migrate the data directory of a stopped server, add --offline."
                ),
            },
            other => other,
        })?;
    let mut reports = admin
        .migrate_tenants(pb::MigrateTenantsRequest {})
        .await?
        .into_inner();
    let mut summary = Summary::new(server.output);
    let ran = async {
        while let Some(report) = reports.message().await? {
            let failure =
                (!report.ok).then(|| format!("{}: {}", report.error_code, report.error_message));
            summary.add(Migrated {
                tenant_id: report.tenant_id,
                from_version: report.from_version,
                to_version: report.to_version,
                failure,
            })?;
        }
        Ok(())
    }
    .await;
    summary.finish(ran)
}

/// In this process, with the data directory locked.
async fn offline(config: Config, format: Format) -> Outcome {
    let workers = config.migrate_workers;
    let data = tokio::task::spawn_blocking(move || tenantry::server::OpenData::open(&config))
        .await
        .expect("opening the data directory does not panic")
        .map_err(|error| Failure::Failed(error_chain(&error)))?;
    let (reports, mut received) = tokio::sync::mpsc::channel::<MigrationReport>(64);
    let registry = data.registry.clone();
    let running = tokio::spawn(async move { registry.migrate_all(workers, reports).await });
    let mut summary = Summary::new(format);
    let ran = async {
        while let Some(report) = received.recv().await {
            summary.add(Migrated {
                tenant_id: report.tenant_id.to_string(),
                from_version: report.from_version,
                to_version: report.to_version,
                failure: report.result.err().map(|error| error_chain(&error)),
            })?;
        }
        running
            .await
            .expect("the migration does not panic")
            .map_err(|error| Failure::Failed(error_chain(&error)))
    }
    .await;
    summary.finish(ran)
}

/// One tenant's outcome.
struct Migrated {
    tenant_id: String,
    from_version: u32,
    to_version: u32,
    /// What went wrong, if the tenant could not be migrated.
    failure: Option<String>,
}

impl Migrated {
    fn line(&self) -> String {
        match &self.failure {
            None => format!(
                "{} migrated from version {} to {}\n",
                self.tenant_id, self.from_version, self.to_version
            ),
            Some(failure) => format!(
                "{} FAILED at version {}: {failure}\n",
                self.tenant_id, self.from_version
            ),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "tenant_id": self.tenant_id,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "ok": self.failure.is_none(),
            "error": self.failure,
        })
    }
}

/// The tenants done so far: a line each as they come in a table, one JSON
/// document at the end.
struct Summary {
    format: Format,
    progress: Progress,
    migrated: u64,
    failed: u64,
    tenants: Vec<Value>,
}

impl Summary {
    fn new(format: Format) -> Self {
        Summary {
            format,
            progress: Progress::tenants("migrate"),
            migrated: 0,
            failed: 0,
            tenants: Vec::new(),
        }
    }

    fn add(&mut self, tenant: Migrated) -> Outcome {
        match tenant.failure {
            None => self.migrated += 1,
            Some(_) => {
                self.failed += 1;
                self.progress.set_message(format!("{} failed", self.failed));
            }
        }
        self.progress.advance(1);
        match self.format {
            Format::Table => self.progress.print(&tenant.line()),
            Format::Json => {
                self.tenants.push(tenant.to_json());
                Ok(())
            }
        }
    }

    /// Prints the summary of the tenants done, even when the migration
    /// stopped early (`ran`), and says how it ended.
    fn finish(self, ran: Outcome) -> Outcome {
        self.progress.finish();
        let (migrated, failed) = (self.migrated, self.failed);
        let printed = match self.format {
            Format::Table => super::output::write_stdout(&format!(
                "{migrated} tenants migrated, {failed} failed\n"
            )),
            Format::Json => print_json(&json!({
                "migrated": migrated,
                "failed": failed,
                "tenants": self.tenants,
            })),
        };
        ran?;
        printed?;
        if failed > 0 {
            return Err(Failure::Failed(format!(
                "{failed} tenants could not be migrated; see the lines above"
            )));
        }
        Ok(())
    }
}

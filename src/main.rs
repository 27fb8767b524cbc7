//! The `tenantry` command: parse the command line, then call the library.
//!
//! The admin client ([`cli`]) and the load generator ([`bench`]) are part of
//! this binary only: the library that tests and benchmarks link holds the
//! server, and these talk to it as any other client does, over gRPC.

#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tenantry::config::LogFormat;
use tenantry::{Application, Config};

mod bench;
mod cli;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = cli::EXIT_STATUSES
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Settings of `serve`, which is what runs when no command is given.
    #[command(flatten)]
    serve: Config,
}

// Parsed once per process: the size of `serve`'s settings costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (the default).
    Serve(Config),
    #[command(flatten)]
    Client(cli::Command),
    /// Ask a running server whether it is serving (`grpc.health.v1`): exit
    /// status 0 if it is, 1 if not or if it cannot be reached. For container
    /// health checks, with no other binary.
    Health(cli::HealthArgs),
    /// Measure a server under load, next to Health/Check measured in the
    /// same run (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// The bare reference server `bench hot` measures beside tenantry.
    #[command(hide = true)]
    BenchReference(bench::ReferenceArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Some(Command::Serve(config)) => config.log_format,
        Some(Command::Client(command)) => command.log_format().unwrap_or(LogFormat::Text),
        Some(Command::Health(_) | Command::Bench(_) | Command::BenchReference(_)) => {
            LogFormat::Text
        }
        None => cli.serve.log_format,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let served = match cli.command {
        Some(Command::Serve(config)) => runtime.block_on(serve(config)),
        None => runtime.block_on(serve(cli.serve)),
        Some(Command::Client(command)) => return runtime.block_on(cli::run(command)),
        Some(Command::Health(args)) => return runtime.block_on(cli::health(args)),
        Some(Command::Bench(args)) => return runtime.block_on(bench(args)),
        Some(Command::BenchReference(args)) => {
            return match runtime.block_on(bench::reference::serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(failure) => {
                    eprintln!("tenantry bench-reference: {failure}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", tenantry::error::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// `tenantry bench`: figures on stdout, progress and failures on stderr.
async fn bench(args: bench::BenchArgs) -> ExitCode {
    match bench::run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(failure) => {
            eprintln!("tenantry bench: {failure}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> tenantry::error::Result<()> {
    let data_dir = config.data_dir.clone();
    let app = Application::build(config).await?;
    tracing::info!(address = %app.local_addr(), data_dir = %data_dir.display(), "tenantry is serving");
    app.run_until(tenantry::server::shutdown::signal()).await
}

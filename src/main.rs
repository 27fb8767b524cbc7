//! The `tenantry` command: parse the command line, then call the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tenantry::{Application, Config};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Settings of `serve`, which is what runs when no command is given.
    #[command(flatten)]
    serve: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (the default).
    Serve(Config),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Serve(config)) => config,
        None => cli.serve,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", tenantry::error::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> tenantry::error::Result<()> {
    let data_dir = config.data_dir.clone();
    let app = Application::build(config).await?;
    tracing::info!(address = %app.local_addr(), data_dir = %data_dir.display(), "tenantry is serving");
    app.run_until(tenantry::shutdown::signal()).await
}

//! `tenantry health`: whether a running server is serving, as an exit
//! status, for container health checks with no other binary.

use std::process::ExitCode;
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::connect::{DEFAULT_ADDR, channel, this_host_if_unspecified};

#[derive(clap::Args)]
pub struct HealthArgs {
    /// The server's address. An unspecified address (`0.0.0.0`, `[::]`), as
    /// a container's `TENANTRY_LISTEN` usually is, means this host.
    #[arg(long, env = "TENANTRY_LISTEN", default_value = DEFAULT_ADDR)]
    addr: std::net::SocketAddr,
    /// The service to ask about; empty for the server as a whole.
    #[arg(long, default_value = "")]
    service: String,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

/// Prints the serving status, or why there is none: exit status 0 for
/// SERVING, 1 otherwise.
pub async fn health(args: HealthArgs) -> ExitCode {
    let addr = this_host_if_unspecified(args.addr);
    let timeout = Duration::from_millis(args.timeout_ms);
    let asked = tokio::time::timeout(timeout, async {
        let channel = channel(&addr.to_string(), Some(timeout))
            .await
            .map_err(|failure| failure.to_string())?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map(|answer| answer.into_inner().status())
            .map_err(|status| format!("{addr} answered {:?}: {}", status.code(), status.message()))
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer from {addr} within {timeout:?}")));
    match asked {
        Ok(ServingStatus::Serving) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{}", status.as_str_name());
            ExitCode::FAILURE
        }
        Err(problem) => {
            eprintln!("tenantry health: {problem}");
            ExitCode::FAILURE
        }
    }
}

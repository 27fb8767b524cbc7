//! The connection of every client command: where the server is, how long to
//! wait for it, and the admin token every call carries.
//!
//! The token comes from `TENANTRY_ADMIN_TOKEN`, else from
//! `--admin-token-file`, else from the `admin.token` a server writes into its
//! data directory when it has no token configured, the way the server
//! itself looks for it. It is never a flag: `ps` would show it to every user.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::output::Format;
use super::{Failure, Outcome};
use tenantry::auth::Secret;
use tenantry::pb::tenant_service_client::TenantServiceClient;

/// Where the server listens when nothing says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";

/// How long a command of a few calls waits for its answers by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server is, how long to wait, and how to print the answer.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// The server's address, `host:port`. Without it: TENANTRY_ADDR, else
    /// the server's own TENANTRY_LISTEN, else 127.0.0.1:50051. An
    /// unspecified address (`0.0.0.0`, `[::]`) means this host.
    #[arg(long, env = "TENANTRY_ADDR", global = true)]
    pub addr: Option<String>,
    /// How long to wait for the server, such as `30s`, `500ms` or `10m`
    /// (plain numbers are seconds). Defaults to 30s, except for migrate,
    /// export and import, which take as long as their data needs unless it
    /// is set.
    #[arg(long, global = true, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// `table` for people, `json` for scripts (one document; lists are one
    /// array).
    #[arg(long, short, value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
}

/// Where the admin token is, when `TENANTRY_ADMIN_TOKEN` is not set.
#[derive(clap::Args, Clone, Debug)]
pub struct TokenArgs {
    /// File holding the admin token (whitespace around it is ignored), used
    /// when TENANTRY_ADMIN_TOKEN is not set. The token itself is never a
    /// flag: `ps` would show it to every user.
    #[arg(long, env = "TENANTRY_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<PathBuf>,
    /// The server's data directory: its `admin.token` (the token a server
    /// generates when none is configured) is read when neither
    /// TENANTRY_ADMIN_TOKEN nor --admin-token-file is given.
    #[arg(
        long,
        env = "TENANTRY_DATA_DIR",
        default_value = "tenants-data",
        global = true
    )]
    pub data_dir: PathBuf,
}

/// Everything a client command needs to call the server.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub token: TokenArgs,
}

/// The admin API of a running server, every call carrying the admin token.
pub type AdminClient = TenantServiceClient<InterceptedService<Channel, AdminCredential>>;

/// How long a command may take: what `--timeout` says, or else the default
/// for a command of a few calls (`long` commands have none).
pub fn deadline(server: &ServerArgs, long: bool) -> Option<Duration> {
    match server.timeout {
        Some(timeout) => Some(timeout),
        None if long => None,
        None => Some(DEFAULT_TIMEOUT),
    }
}

/// Connects to the server with the admin token. Calls carry `timeout` as
/// their deadline, so that the server gives up when this command does.
pub async fn admin(
    server: &ServerArgs,
    token: &TokenArgs,
    timeout: Option<Duration>,
) -> Outcome<AdminClient> {
    let token = admin_token(token)?;
    let authorization = format!("Bearer {}", token.expose()).parse().map_err(|_| {
        Failure::Usage("the admin token holds characters that cannot be sent in a header".into())
    })?;
    let channel = channel(&server_addr(server), timeout).await?;
    Ok(TenantServiceClient::with_interceptor(
        channel,
        AdminCredential {
            authorization,
            timeout,
        },
    ))
}

/// Adds the admin token and the deadline to every call.
#[derive(Clone)]
pub struct AdminCredential {
    authorization: MetadataValue<Ascii>,
    timeout: Option<Duration>,
}

impl Interceptor for AdminCredential {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        Ok(request)
    }
}

/// The address to call, as `--addr`, TENANTRY_ADDR or TENANTRY_LISTEN say.
fn server_addr(server: &ServerArgs) -> String {
    server
        .addr
        .clone()
        .or_else(|| std::env::var("TENANTRY_LISTEN").ok())
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned())
}

/// A connection to `addr`, which is `host:port`; an unspecified IP address
/// means this host.
pub async fn channel(addr: &str, timeout: Option<Duration>) -> Outcome<Channel> {
    let target = match addr.parse::<SocketAddr>() {
        Ok(socket) => this_host_if_unspecified(socket).to_string(),
        Err(_) => addr.to_owned(),
    };
    let endpoint = Endpoint::from_shared(format!("http://{target}"))
        .map_err(|_| Failure::Usage(format!("--addr {addr:?} is not a host:port address")))?
        .connect_timeout(timeout.unwrap_or(DEFAULT_TIMEOUT));
    endpoint
        .connect()
        .await
        .map_err(|error| Failure::Unreachable {
            code: Code::Unavailable,
            message: format!(
                "cannot connect to {target} ({}): is the server running there?",
                tenantry::error::error_chain(&error)
            ),
        })
}

/// An unspecified address (`0.0.0.0`, `[::]`), as a container's
/// `TENANTRY_LISTEN` usually is, means this host: its loopback address.
pub fn this_host_if_unspecified(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// The admin token: TENANTRY_ADMIN_TOKEN, else `--admin-token-file`, else
/// the data directory's `admin.token` if there is one.
fn admin_token(args: &TokenArgs) -> Outcome<Secret> {
    if let Ok(token) = std::env::var("TENANTRY_ADMIN_TOKEN") {
        return non_empty(token.trim(), "TENANTRY_ADMIN_TOKEN");
    }
    let generated = args.data_dir.join("admin.token");
    let path = match &args.admin_token_file {
        Some(path) => path,
        None if generated.is_file() => &generated,
        None => {
            return Err(Failure::Usage(format!(
                "no admin token: set TENANTRY_ADMIN_TOKEN, or pass --admin-token-file FILE \
                 (a server with no token configured writes one to {})",
                generated.display()
            )));
        }
    };
    let text = std::fs::read_to_string(path).map_err(|error| {
        Failure::Usage(format!(
            "cannot read the admin token file {}: {error}",
            path.display()
        ))
    })?;
    non_empty(text.trim(), &path.display().to_string())
}

fn non_empty(token: &str, source: &str) -> Outcome<Secret> {
    if token.is_empty() {
        return Err(Failure::Usage(format!(
            "the admin token in {source} is empty"
        )));
    }
    Ok(Secret::new(token))
}

/// A duration such as `30s`, `500ms`, `10m` or `1h`; a plain number is
/// seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30s, 500ms or 10m"))?;
    let millis = match unit {
        "ms" => number,
        "" | "s" => number.saturating_mul(1_000),
        "m" => number.saturating_mul(60_000),
        "h" => number.saturating_mul(3_600_000),
        _ => return Err(format!("{unit:?} is not a unit: use ms, s, m or h")),
    };
    if millis == 0 {
        return Err("a timeout must be longer than zero".into());
    }
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "s", "1d", "-5", "1.5s", "0"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unspecified_address_means_this_host() {
        let v4: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        assert_eq!(this_host_if_unspecified(v4).to_string(), "127.0.0.1:50051");
        let v6: SocketAddr = "[::]:7000".parse().unwrap();
        assert_eq!(this_host_if_unspecified(v6).to_string(), "[::1]:7000");
        let given: SocketAddr = "192.0.2.7:50051".parse().unwrap();
        assert_eq!(this_host_if_unspecified(given), given);
    }
}

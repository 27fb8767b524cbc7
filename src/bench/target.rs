//! The server a benchmark runs against: a `tenantry serve` child process on a
//! free port with a scratch data directory (so that its memory and open files
//! can be read from `/proc`), or a server already running elsewhere.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::Failure;

/// A running server and the admin credential for it.
pub struct Target {
    pub addr: SocketAddr,
    pub admin: MetadataValue<Ascii>,
    pub metrics: Option<SocketAddr>,
    child: Option<Spawned>,
}

struct Spawned {
    process: Child,
    dir: PathBuf,
    /// Its whole command line, after the executable.
    args: Vec<String>,
    token: String,
}

impl Target {
    /// A server already running at `addr`; the admin token comes from
    /// `TENANTRY_ADMIN_TOKEN`.
    pub fn external(addr: SocketAddr) -> Result<Self, Failure> {
        let token = std::env::var("TENANTRY_ADMIN_TOKEN").map_err(|_| {
            Failure::from("--addr needs the server's admin token in TENANTRY_ADMIN_TOKEN")
        })?;
        Ok(Target {
            addr,
            admin: bearer(&token)?,
            metrics: None,
            child: None,
        })
    }

    /// Starts `tenantry serve` (this very binary) on a free port with a new
    /// data directory, with `args` added to its command line, and waits
    /// until it serves.
    pub async fn spawn(args: &[String]) -> Result<Self, Failure> {
        let dir = scratch_dir()?;
        let mut command = vec![
            "serve".to_owned(),
            "--listen=127.0.0.1:0".to_owned(),
            format!("--data-dir={}", dir.join("data").display()),
            "--log-format=text".to_owned(),
        ];
        command.extend(args.iter().cloned());
        Self::spawn_command(dir, command).await
    }

    /// Starts the bare reference server (see [`super::reference`]) with
    /// `items` items, and returns it with their ids.
    pub async fn spawn_reference(items: usize) -> Result<(Self, Vec<String>), Failure> {
        let dir = scratch_dir()?;
        let command = vec![
            "bench-reference".to_owned(),
            format!("--dir={}", dir.display()),
            format!("--items={items}"),
        ];
        let target = Self::spawn_command(dir.clone(), command).await?;
        let ids = std::fs::read_to_string(dir.join("items.txt"))
            .map_err(|e| format!("reading the reference's items: {e}"))?;
        Ok((target, ids.lines().map(str::to_owned).collect()))
    }

    async fn spawn_command(dir: PathBuf, args: Vec<String>) -> Result<Self, Failure> {
        let token = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let spawned = Spawned {
            process: start(&dir, &args, &token)?,
            dir,
            args,
            token: token.clone(),
        };
        let mut target = Target {
            addr: "127.0.0.1:0".parse().expect("an address"),
            admin: bearer(&token)?,
            metrics: None,
            child: Some(spawned),
        };
        target.wait_serving().await?;
        Ok(target)
    }

    /// The server's process id, if this benchmark started it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.process.id())
    }

    /// Stops the server with SIGTERM (a graceful stop), starts it again on
    /// the same data directory, and returns how long it took from starting
    /// the process until Health/Check answered SERVING.
    pub async fn restart(&mut self) -> Result<Duration, Failure> {
        let spawned = self
            .child
            .as_mut()
            .ok_or_else(|| Failure::from("only a server started by the benchmark restarts"))?;
        stop(&mut spawned.process)?;
        let started = Instant::now();
        spawned.process = start(&spawned.dir, &spawned.args, &spawned.token)?;
        self.wait_serving().await?;
        Ok(started.elapsed())
    }

    /// Reads the server's log for its addresses, then asks Health/Check until
    /// it answers SERVING.
    async fn wait_serving(&mut self) -> Result<(), Failure> {
        let spawned = self.child.as_mut().expect("a spawned server");
        let log = spawned.dir.join("server.log");
        let give_up = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let found = address_after(&text, "tenantry is serving");
            let wants_metrics = spawned
                .args
                .iter()
                .any(|a| a.starts_with("--metrics-listen"));
            let serves_health = spawned.args.first().is_some_and(|c| c == "serve");
            let metrics = address_after(&text, "serving metrics");
            if let Some(addr) = found.filter(|_| metrics.is_some() || !wants_metrics) {
                self.addr = addr;
                self.metrics = metrics;
                if !serves_health {
                    return Ok(());
                }
                break;
            }
            if let Some(status) = spawned.process.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("the server exited ({status}):\n{text}").into());
            }
            if Instant::now() > give_up {
                return Err(format!("the server did not start in 120 s:\n{text}").into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut health = HealthClient::new(self.channel().await?);
        loop {
            let answer = health.check(HealthCheckRequest::default()).await;
            if matches!(answer, Ok(ref a) if a.get_ref().status() == ServingStatus::Serving) {
                return Ok(());
            }
            if Instant::now() > give_up {
                return Err("the server never reported SERVING".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A new HTTP/2 connection to the server.
    pub async fn channel(&self) -> Result<Channel, Failure> {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.addr).into())
    }

    /// The CPU time the server process has used since it started (user and
    /// system, every thread), in the kernel's clock ticks.
    pub fn cpu_time(&self) -> Option<Duration> {
        let pid = self.pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name, which is in parentheses and
        // may hold spaces: state is field 3, utime 14 and stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let per_second = rustix::param::clock_ticks_per_second();
        Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
    }

    /// Resident memory and open file descriptors of the server process.
    pub fn footprint(&self) -> Option<Footprint> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        Some(Footprint { rss_kib, fds })
    }

    /// The value of a counter or gauge on the metrics endpoint (summed over
    /// its labels), if the server serves metrics.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let addr = self.metrics?;
        let text = tokio::task::spawn_blocking(move || scrape(addr))
            .await
            .ok()??;
        let mut sum = None;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split('{').next().unwrap_or(series);
            if series_name == name {
                *sum.get_or_insert(0.0) += value.parse::<f64>().ok()?;
            }
        }
        sum
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut spawned) = self.child.take() {
            let _ = stop(&mut spawned.process);
            let _ = std::fs::remove_dir_all(&spawned.dir);
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    pub rss_kib: u64,
    pub fds: u64,
}

pub fn bearer(token: &str) -> Result<MetadataValue<Ascii>, Failure> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| Failure::from("a token must be printable ASCII"))
}

fn scratch_dir() -> Result<PathBuf, Failure> {
    let dir = std::env::temp_dir().join(format!(
        "tenantry-bench-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

fn start(dir: &Path, args: &[String], token: &str) -> Result<Child, Failure> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
    Command::new(exe)
        .args(args)
        .env("TENANTRY_ADMIN_TOKEN", token)
        .env_remove("TENANTRY_ADMIN_TOKEN_FILE")
        // The server's own default, which keeps each call's span; set
        // TENANTRY_BENCH_SERVER_LOG (`info,tenantry::layers::calls=warn`) to
        // measure without it.
        .env(
            "RUST_LOG",
            std::env::var("TENANTRY_BENCH_SERVER_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting the server: {e}").into())
}

fn stop(process: &mut Child) -> Result<(), Failure> {
    // SIGTERM through kill(1): a graceful stop, which closes every tenant.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(process.id().to_string())
        .status();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if process.try_wait().map_err(|e| e.to_string())?.is_some() {
            return Ok(());
        }
        if Instant::now() > give_up {
            let _ = process.kill();
            let _ = process.wait();
            return Err("the server did not stop within 60 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `address=` field of the first log line containing `message`.
fn address_after(log: &str, message: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains(message))?;
    let field = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("address="))?;
    field.parse().ok()
}

fn scrape(addr: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer.split_once("\r\n\r\n")?.1.to_owned())
}

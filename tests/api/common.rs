//! The test harness: a real server on 127.0.0.1:0 with a temporary data
//! directory, in this process or as the `tenantry` binary, and clients
//! generated from `proto/`, talking over real HTTP/2.

use std::fmt::Display;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;

use tempfile::TempDir;
use tenantry::auth::Secret;
use tenantry::pb::item_service_client::ItemServiceClient;
use tenantry::pb::tenant_service_client::TenantServiceClient;
use tenantry::pb::{self, CreateApiKeyRequest, CreateTenantRequest};
use tenantry::tenant::Registry;
use tenantry::{Application, Config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

pub struct TestServer {
    pub addr: SocketAddr,
    /// Where metrics are served, if the configuration asked for them.
    pub metrics_addr: Option<SocketAddr>,
    pub registry: Registry,
    dir: Arc<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<tenantry::error::Result<()>>,
}

/// A server on a fresh, empty data directory.
pub async fn spawn() -> TestServer {
    spawn_in(Arc::new(TempDir::new().unwrap()), |_| {}).await
}

/// A server with some settings changed.
pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> TestServer {
    spawn_in(Arc::new(TempDir::new().unwrap()), configure).await
}

/// A server on an existing directory, such as one a stopped server used.
pub async fn spawn_in(dir: Arc<TempDir>, configure: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config::with_data_dir(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_token = Some(Secret::new(ADMIN_TOKEN));
    config.admin_token_file = None;
    configure(&mut config);
    // The directory's lock (flock) of a server stopped a moment ago lives on
    // in a process that another test forked meanwhile and that has not
    // reached its exec yet: wait for it to let go, a few seconds at most.
    let started = std::time::Instant::now();
    let app = loop {
        match Application::build(config.clone()).await {
            Err(tenantry::error::Error::FailedPrecondition(message))
                if message.contains("in use by another tenantry process")
                    && started.elapsed() < std::time::Duration::from_secs(5) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            built => break built.expect("the server starts"),
        }
    };
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let registry = app.registry();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        metrics_addr,
        registry,
        dir,
        stop: Some(stop),
        task,
    }
}

impl TestServer {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Closes every open tenant, as idle timeouts would: an open tenant's
    /// file is locked by its connection, and a closed one is one file that
    /// any program may open.
    pub async fn close_tenants(&self) {
        self.registry.close_all().await;
    }

    pub fn tenant_file(&self, tenant_id: &str) -> PathBuf {
        self.data_dir()
            .join("tenants")
            .join(format!("{tenant_id}.db"))
    }

    /// Stops the server the way SIGTERM does, waits until it has closed every
    /// tenant database, and hands back its directory.
    pub async fn stop(mut self) -> Arc<TempDir> {
        self.begin_stop();
        self.task
            .await
            .unwrap()
            .expect("the server shuts down cleanly");
        self.dir
    }

    /// Tells the server to shut down, without waiting for it: it drains the
    /// calls in flight meanwhile. Finish with [`TestServer::stop`].
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).unwrap();
        }
    }

    pub async fn admin(&self) -> TenantServiceClient<Channel> {
        TenantServiceClient::new(connect(self.addr).await)
    }

    pub async fn items(&self) -> ItemServiceClient<Channel> {
        ItemServiceClient::new(connect(self.addr).await)
    }

    /// Creates a tenant named `name` and an API key for it.
    pub async fn tenant(&self, name: &str) -> TestTenant {
        create_tenant(&mut self.admin().await, name).await
    }
}

/// The server binary itself, `tenantry serve` on `<dir>/data`, started as an
/// operator would start it. A process still running when this is dropped
/// (say, by a failed assertion) is killed, so no test leaves a server behind.
pub struct ServerProcess {
    child: Child,
    addr: String,
    /// Every line the server logged, once it has ended.
    log: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl ServerProcess {
    /// Starts the binary with `env` added to its environment, and waits until
    /// it logs the address it listens on.
    pub fn start(dir: &TempDir, env: &[(&str, &str)]) -> ServerProcess {
        Self::launch(Command::new(env!("CARGO_BIN_EXE_tenantry")), dir, env)
    }

    /// [`ServerProcess::start`], with the process allowed at most
    /// `open_files` file descriptors (its hard limit).
    pub fn start_with_file_limit(
        dir: &TempDir,
        open_files: u64,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        Self::start_after(
            dir,
            &format!("ulimit -Sn {open_files} && ulimit -Hn {open_files}"),
            env,
        )
    }

    /// [`ServerProcess::start`], from a shell that runs `setup` first (such
    /// as `umask 022`).
    pub fn start_after(dir: &TempDir, setup: &str, env: &[(&str, &str)]) -> ServerProcess {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            &format!("{setup} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_tenantry"),
        ]);
        Self::launch(command, dir, env)
    }

    fn launch(mut command: Command, dir: &TempDir, env: &[(&str, &str)]) -> ServerProcess {
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("TENANTRY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server binary starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the server logs its address before anything else ends")
                .unwrap();
            if let Some(rest) = line.split("address=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
            // The same, logged as JSON.
            if let Some(rest) = line.split(r#""address":""#).nth(1) {
                break rest.split('"').next().unwrap().to_owned();
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        let log = std::thread::spawn(move || lines.map_while(Result::ok).collect());
        ServerProcess {
            child,
            addr,
            log: Some(log),
        }
    }

    pub async fn admin(&self) -> TenantServiceClient<Channel> {
        TenantServiceClient::new(connect(&self.addr).await)
    }

    pub async fn items(&self) -> ItemServiceClient<Channel> {
        ItemServiceClient::new(connect(&self.addr).await)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The CPU time the process has used so far (user and system).
    pub fn cpu_time(&self) -> std::time::Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // Linux reports them in USER_HZ, 100 per second.
        std::time::Duration::from_millis(ticks * 10)
    }

    /// Waits for the process to end on its own.
    pub fn wait(mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }

    /// Stops the process as SIGTERM does, and returns everything it logged.
    pub fn stop_and_read_log(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        assert!(
            self.child.wait().unwrap().success(),
            "the server stops cleanly"
        );
        self.log.take().unwrap().join().unwrap()
    }

    /// Kills the process with SIGKILL, and waits until it is gone.
    pub fn kill(mut self) -> ExitStatus {
        self.child.kill().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A connection to the server listening on `addr`.
pub async fn connect(addr: impl Display) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects to the server")
}

/// Creates a tenant named `name` through the admin API, and an API key for it.
pub async fn create_tenant(admin: &mut TenantServiceClient<Channel>, name: &str) -> TestTenant {
    let tenant = admin
        .create_tenant(as_admin(CreateTenantRequest {
            tenant: Some(pb::Tenant {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("creates the tenant")
        .into_inner();
    let key = admin
        .create_api_key(as_admin(CreateApiKeyRequest {
            tenant_id: tenant.id.clone(),
            description: format!("test key of {name}"),
        }))
        .await
        .expect("creates a key")
        .into_inner();
    TestTenant {
        id: tenant.id,
        key: key.secret,
    }
}

/// Suspends a tenant through the admin API (UpdateTenant with the `state`
/// mask).
pub async fn suspend(server: &TestServer, tenant_id: &str) {
    server
        .admin()
        .await
        .update_tenant(as_admin(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant {
                id: tenant_id.into(),
                state: pb::TenantState::Suspended.into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["state".into()],
            }),
        }))
        .await
        .expect("suspends the tenant");
}

/// A tenant and one of its API keys.
#[derive(Clone)]
pub struct TestTenant {
    pub id: String,
    pub key: String,
}

impl TestTenant {
    /// A request acting for this tenant with its own key.
    pub fn call<T>(&self, message: T) -> Request<T> {
        with_metadata(
            message,
            &[
                ("authorization", &format!("Bearer {}", self.key)),
                ("x-tenant-id", &self.id),
            ],
        )
    }

    /// A request with this tenant's key that names another tenant.
    pub fn call_for<T>(&self, tenant_id: &str, message: T) -> Request<T> {
        with_metadata(
            message,
            &[
                ("authorization", &format!("Bearer {}", self.key)),
                ("x-tenant-id", tenant_id),
            ],
        )
    }
}

pub fn as_admin<T>(message: T) -> Request<T> {
    with_metadata(
        message,
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    )
}

/// A request with the admin token, acting for the tenant `tenant_id`.
pub fn as_admin_for<T>(tenant_id: &str, message: T) -> Request<T> {
    with_metadata(
        message,
        &[
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("x-tenant-id", tenant_id),
        ],
    )
}

/// A request with exactly these metadata entries (a key may repeat).
pub fn with_metadata<T>(message: T, entries: &[(&'static str, &str)]) -> Request<T> {
    let mut request = Request::new(message);
    for (key, value) in entries {
        let value: MetadataValue<_> = value.parse().expect("valid metadata value");
        request.metadata_mut().append(*key, value);
    }
    request
}

/// Asserts that a call failed with `code`, and returns its status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, Status>,
    code: Code,
) -> Status {
    match result {
        Ok(response) => panic!("expected {code:?}, got a success: {:?}", response.get_ref()),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
    }
}

/// Every file under `dir`, as paths relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

pub fn new_item(title: &str) -> pb::CreateItemRequest {
    pb::CreateItemRequest {
        item: Some(pb::Item {
            title: title.into(),
            ..Default::default()
        }),
    }
}

/// Every item title of a tenant, newest first, across all pages.
pub async fn all_titles(server: &TestServer, tenant: &TestTenant) -> Vec<String> {
    all_items(&mut server.items().await, tenant)
        .await
        .into_iter()
        .map(|i| i.title)
        .collect()
}

/// Every item of a tenant, newest first, across all pages.
pub async fn all_items(
    items: &mut ItemServiceClient<Channel>,
    tenant: &TestTenant,
) -> Vec<pb::Item> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = items
            .list_items(tenant.call(pb::ListItemsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                completed: None,
            }))
            .await
            .expect("lists items")
            .into_inner();
        all.extend(page.items);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// Opens a database file that nothing else has open, as an operator's tool
/// would: read-write, so that closing it leaves no `-wal` or `-shm` beside it.
fn open_closed_file(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .unwrap_or_else(|e| panic!("{} opens: {e}", path.display()))
}

/// The item titles stored in a database file, read directly, sorted.
pub fn titles_in_file(path: &Path) -> Vec<String> {
    let conn = open_closed_file(path);
    let mut statement = conn
        .prepare("SELECT title FROM items ORDER BY title")
        .unwrap();
    statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<String>>>()
        .unwrap()
}

/// `PRAGMA integrity_check` of a database file.
pub fn integrity(path: &Path) -> String {
    let conn = open_closed_file(path);
    conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}

/// Every database file under the data directory passes `integrity_check`.
pub fn all_files_intact(data: &Path) {
    for file in files_under(data) {
        if file.extension().is_some_and(|e| e == "db") {
            assert_eq!(integrity(&data.join(&file)), "ok", "{}", file.display());
        }
    }
}

/// A bare HTTP/2 connection, for calls no gRPC client would make: the
/// handle that opens streams, and the connection, which the caller must
/// keep polling (see [`drive`]).
pub async fn raw_h2(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::Connection<tokio::net::TcpStream, bytes::Bytes>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    h2::client::handshake(tcp).await.unwrap()
}

/// Polls `connection` while `work` runs, and hands the connection back.
pub async fn drive<T>(
    connection: &mut h2::client::Connection<tokio::net::TcpStream, bytes::Bytes>,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::select! {
        done = work => done,
        ended = &mut *connection => panic!("the connection ended: {ended:?}"),
    }
}

/// The headers of a gRPC call to `path`, with `metadata` added.
pub fn grpc_headers(path: &str, metadata: &[(&str, &str)]) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://tenantry{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (key, value) in metadata {
        request = request.header(*key, *value);
    }
    request.body(()).unwrap()
}

/// A gRPC message as framed on the wire: no compression, length, bytes.
pub fn grpc_frame(message: &impl prost::Message) -> bytes::Bytes {
    let body = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    framed.into()
}

/// The `grpc-status` of a raw call's answer: in its headers (a refusal) or
/// in its trailers.
pub async fn grpc_status(response: http::Response<h2::RecvStream>) -> Code {
    let parse = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(Code::from_i32)
    };
    if let Some(code) = parse(response.headers()) {
        return code;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    let trailers = body
        .trailers()
        .await
        .unwrap()
        .expect("the call ends with trailers");
    parse(&trailers).expect("the trailers hold a grpc-status")
}

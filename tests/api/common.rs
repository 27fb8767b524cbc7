//! The test harness: a real server on 127.0.0.1:0 with a temporary data
//! directory, and clients generated from `proto/`, talking over real HTTP/2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    let app = Application::build(config).await.expect("the server starts");
    let addr = app.local_addr();
    let registry = app.registry();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
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

    pub fn tenant_file(&self, tenant_id: &str) -> PathBuf {
        self.data_dir()
            .join("tenants")
            .join(format!("{tenant_id}.db"))
    }

    /// Stops the server the way SIGTERM does, waits until it has closed every
    /// tenant database, and hands back its directory.
    pub async fn stop(mut self) -> Arc<TempDir> {
        self.stop.take().unwrap().send(()).unwrap();
        self.task
            .await
            .unwrap()
            .expect("the server shuts down cleanly");
        self.dir
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connects to the server")
    }

    pub async fn admin(&self) -> TenantServiceClient<Channel> {
        TenantServiceClient::new(self.channel().await)
    }

    pub async fn items(&self) -> ItemServiceClient<Channel> {
        ItemServiceClient::new(self.channel().await)
    }

    /// Creates a tenant named `name` and an API key for it.
    pub async fn tenant(&self, name: &str) -> TestTenant {
        let mut admin = self.admin().await;
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
    let mut items = server.items().await;
    let mut titles = Vec::new();
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
        titles.extend(page.items.into_iter().map(|i| i.title));
        if page.next_page_token.is_empty() {
            return titles;
        }
        page_token = page.next_page_token;
    }
}

/// The item titles stored in a database file, read directly, sorted.
pub fn titles_in_file(path: &Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("{} opens: {e}", path.display()));
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
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("{} opens: {e}", path.display()));
    conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}

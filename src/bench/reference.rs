//! The bare reference of `tenantry bench hot`: `ItemService/GetItem` served
//! by a plain tonic server with no layers (no credential check, no tenant,
//! no registry, no limits, no call log), doing the same point read as
//! tenantry, through the same store function, on one SQLite file opened with
//! a tenant's settings. Measured next to tenantry in the same run, it shows
//! which share of a call's cost is the transport's and SQLite's, and which
//! is ours.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::Connection;
use tonic::{Request, Response, Status};

use tenantry::pb::item_service_server::{ItemService, ItemServiceServer};
use tenantry::pb::{self};
use tenantry::resources::items::service::to_pb;
use tenantry::resources::items::store::{self, NewItem};
use tenantry::storage::schema;
use tenantry::storage::sqlite::{PoolSettings, open_connection};

/// Settings of the reference server (a hidden command, started by the
/// benchmark).
#[derive(clap::Args, Clone, Debug)]
pub struct ReferenceArgs {
    /// Folder for its database file, and for `items.txt`, the ids of the
    /// items it made (one a line), which the benchmark reads.
    #[arg(long)]
    pub dir: PathBuf,
    /// Items to make.
    #[arg(long, default_value_t = 10_000)]
    pub items: usize,
}

struct Reference {
    conn: Mutex<Connection>,
}

#[tonic::async_trait]
impl ItemService for Reference {
    async fn get_item(
        &self,
        request: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        let id = uuid::Uuid::try_parse(&request.get_ref().id)
            .map_err(|_| Status::invalid_argument("id"))?;
        let conn = self.conn.lock().expect("never poisoned");
        match store::get(&conn, id) {
            Ok(Some(item)) => Ok(Response::new(to_pb(&item))),
            Ok(None) => Err(Status::not_found("no such item")),
            Err(error) => Err(Status::internal(error.to_string())),
        }
    }

    async fn create_item(
        &self,
        _: Request<pb::CreateItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        Err(Status::unimplemented("the reference serves GetItem only"))
    }

    async fn list_items(
        &self,
        _: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        Err(Status::unimplemented("the reference serves GetItem only"))
    }

    async fn update_item(
        &self,
        _: Request<pb::UpdateItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        Err(Status::unimplemented("the reference serves GetItem only"))
    }

    async fn delete_item(&self, _: Request<pb::DeleteItemRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("the reference serves GetItem only"))
    }
}

/// Makes the file and its items, then serves until killed. Its address is
/// logged as tenantry's is, so that the benchmark finds it the same way.
pub async fn serve(args: ReferenceArgs) -> Result<(), String> {
    let path = args.dir.join("reference.db");
    let settings = PoolSettings::new(1, 512, Duration::from_secs(5));
    let conn = tokio::task::spawn_blocking(move || make(&path, &settings, &args))
        .await
        .map_err(|e| e.to_string())??;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%address, "tenantry is serving (bare reference)");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(ItemServiceServer::new(Reference {
            conn: Mutex::new(conn),
        }))
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| e.to_string())
}

fn make(
    path: &std::path::Path,
    settings: &PoolSettings,
    args: &ReferenceArgs,
) -> Result<Connection, String> {
    let fail = |e: tenantry::error::Error| e.to_string();
    std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut conn = Connection::open(path).map_err(|e| e.to_string())?;
    tenantry::storage::sqlite::set_wal(&conn).map_err(fail)?;
    schema::migrate(
        &mut conn,
        tenantry::resources::tenant_schema().migrations(),
        "the reference",
    )
    .map_err(fail)?;
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let mut ids = String::new();
    for i in 0..args.items {
        let item = store::insert(
            &tx,
            NewItem {
                title: format!("item {} of tenant {}", i % 100, i / 100),
                description: "seeded by the benchmark".into(),
                completed: false,
                due_time: None,
            },
        )
        .map_err(fail)?;
        ids.push_str(&item.id.hyphenated().to_string());
        ids.push('\n');
    }
    tx.commit().map_err(|e| e.to_string())?;
    drop(conn);
    std::fs::write(args.dir.join("items.txt"), ids).map_err(|e| e.to_string())?;
    open_connection(path, settings).map_err(fail)
}

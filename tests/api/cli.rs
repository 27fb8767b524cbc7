//! The admin command line: the `tenantry` binary, run as an operator runs
//! it, against a real server, with the admin token in its environment.
//! What it prints is checked, and what it did is checked again through the
//! generated clients.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tenantry::pb;
use tonic::Code;

use crate::common::{
    ADMIN_TOKEN, TestServer, all_titles, as_admin, expect_code, new_item, spawn, spawn_in,
};
use crate::migrations::{record_version, write_v1_tenant};

/// The schema version this server creates and serves.
fn latest() -> u32 {
    tenantry::resources::tenant_schema().latest()
}

/// What one run of the binary did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    bytes: Vec<u8>,
}

impl Ran {
    /// Standard output as JSON, after checking the run succeeded.
    #[track_caller]
    fn json(&self) -> Value {
        self.succeeded();
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("one JSON document ({e}): {}", self.stdout))
    }

    #[track_caller]
    fn succeeded(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// The value of a `label:` line of a single record printed as a table.
    #[track_caller]
    fn field(&self, label: &str) -> String {
        let prefix = format!("{label}:");
        self.succeeded()
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {label:?} line in {}", self.stdout))
            .trim()
            .to_owned()
    }
}

/// How to run the binary: its environment holds nothing of the caller's
/// `TENANTRY_*` settings, and it runs in a directory of its own.
struct Cli {
    addr: String,
    dir: TempDir,
    token: Option<&'static str>,
}

impl Cli {
    /// The binary, for `server`, with the admin token in its environment.
    fn new(server: &TestServer) -> Cli {
        Cli::at(server.addr.to_string())
    }

    /// The binary, for a server at `addr`.
    fn at(addr: String) -> Cli {
        Cli {
            addr,
            dir: TempDir::new().unwrap(),
            token: Some(ADMIN_TOKEN),
        }
    }

    /// The same, with no admin token in its environment.
    fn without_token(server: &TestServer) -> Cli {
        Cli {
            token: None,
            ..Cli::new(server)
        }
    }

    /// Runs `tenantry <args> --addr <server>` on a thread of its own, so
    /// that the server in this process keeps serving.
    async fn run(&self, args: &[&str]) -> Ran {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tenantry"));
        command
            .args(args)
            .args(["--addr", &self.addr])
            .current_dir(self.dir.path());
        for name in [
            "TENANTRY_ADMIN_TOKEN",
            "TENANTRY_ADMIN_TOKEN_FILE",
            "TENANTRY_DATA_DIR",
            "TENANTRY_ADDR",
            "TENANTRY_LISTEN",
        ] {
            command.env_remove(name);
        }
        if let Some(token) = self.token {
            command.env("TENANTRY_ADMIN_TOKEN", token);
        }
        let Output {
            status,
            stdout,
            stderr,
        } = tokio::task::spawn_blocking(move || command.output().expect("runs tenantry"))
            .await
            .unwrap();
        Ran {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            bytes: stdout,
        }
    }

    /// A path in the directory the binary runs in.
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn tenant_state(server: &TestServer, id: &str) -> pb::TenantState {
    server
        .admin()
        .await
        .get_tenant(as_admin(pb::GetTenantRequest { id: id.into() }))
        .await
        .unwrap()
        .into_inner()
        .state()
}

#[tokio::test]
async fn tenants_are_created_listed_shown_suspended_resumed_and_deleted() {
    let server = spawn().await;
    let cli = Cli::new(&server);

    let globex = cli.run(&["tenants", "create", "globex"]).await;
    assert_eq!(globex.field("name"), "globex");
    assert_eq!(globex.field("state"), "active");
    let globex_id = globex.field("id");
    let acme = cli
        .run(&[
            "tenants",
            "create",
            "acme",
            "--display-name",
            "Acme Corp.",
            "--output",
            "json",
        ])
        .await
        .json();
    assert_eq!(acme["name"], "acme");
    assert_eq!(acme["display_name"], "Acme Corp.");
    let acme_id = acme["id"].as_str().unwrap().to_owned();
    assert_eq!(
        tenant_state(&server, &acme_id).await,
        pb::TenantState::Active
    );

    // A table: a header, then one aligned row per tenant, in name order.
    let table = cli.run(&["tenants", "list"]).await;
    let lines: Vec<&str> = table.succeeded().lines().collect();
    assert_eq!(lines.len(), 3, "{}", table.stdout);
    assert!(lines[0].starts_with("ID "), "{}", lines[0]);
    assert!(lines[1].starts_with(&acme_id) && lines[1].contains("Acme Corp."));
    assert!(lines[2].starts_with(&globex_id));
    let name_column = lines[0].find("NAME").unwrap();
    assert_eq!(&lines[1][name_column..name_column + 4], "acme");
    assert_eq!(&lines[2][name_column..name_column + 6], "globex");

    let listed = cli.run(&["tenants", "list", "-o", "json"]).await.json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "globex"]);
    let first = cli
        .run(&["tenants", "list", "--limit", "1", "-o", "json"])
        .await
        .json();
    assert_eq!(first.as_array().unwrap().len(), 1);
    let usage = cli.run(&["tenants", "list", "--usage"]).await;
    assert!(usage.succeeded().lines().next().unwrap().contains("ITEMS"));

    let shown = cli
        .run(&["tenants", "get", &acme_id, "-o", "json"])
        .await
        .json();
    assert_eq!(shown, acme, "get shows what create answered");

    let suspended = cli.run(&["tenants", "suspend", &acme_id]).await;
    assert_eq!(suspended.field("state"), "suspended");
    assert_eq!(
        tenant_state(&server, &acme_id).await,
        pb::TenantState::Suspended
    );
    let resumed = cli
        .run(&["tenants", "resume", &acme_id, "-o", "json"])
        .await
        .json();
    assert_eq!(resumed["state"], "active");
    assert_eq!(
        tenant_state(&server, &acme_id).await,
        pb::TenantState::Active
    );

    let deleted = cli
        .run(&["tenants", "delete", &globex_id, "-o", "json"])
        .await
        .json();
    assert_eq!(deleted["id"], globex_id.as_str());
    assert_eq!(deleted["purged"], false);
    expect_code(
        server
            .admin()
            .await
            .get_tenant(as_admin(pb::GetTenantRequest {
                id: globex_id.clone(),
            }))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn a_refused_call_prints_its_status_code_and_fails() {
    let server = spawn().await;
    let cli = Cli::new(&server);
    let missing = "0190f5d2-5b7a-7cc3-a1d4-3f7c2b9e8a10";

    let refused = cli.run(&["tenants", "get", missing]).await;
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);
    assert!(
        refused.stderr.starts_with(&format!(
            "tenantry: NOT_FOUND: tenant {missing} does not exist"
        )),
        "{}",
        refused.stderr
    );

    let taken = cli.run(&["tenants", "create", "acme"]).await;
    taken.succeeded();
    let again = cli.run(&["tenants", "create", "acme"]).await;
    assert_eq!(again.code, Some(1));
    assert!(
        again.stderr.starts_with("tenantry: ALREADY_EXISTS: "),
        "{}",
        again.stderr
    );
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked() {
    let server = spawn().await;
    let tenant = server.tenant("acme").await;
    let cli = Cli::new(&server);

    let created = cli
        .run(&[
            "keys",
            "create",
            &tenant.id,
            "--description",
            "cli",
            "-o",
            "json",
        ])
        .await
        .json();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tenantry_"), "{secret}");
    assert_eq!(created["tenant_id"], tenant.id.as_str());
    assert_eq!(created["revoke_time"], Value::Null);
    let key_id = created["id"].as_str().unwrap().to_owned();
    let with_new_key = crate::common::TestTenant {
        id: tenant.id.clone(),
        key: secret,
    };
    let mut items = server.items().await;
    items
        .create_item(with_new_key.call(new_item("made with the new key")))
        .await
        .expect("the new key works");

    let listed = cli
        .run(&["keys", "list", &tenant.id, "-o", "json"])
        .await
        .json();
    let descriptions: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["description"].as_str().unwrap())
        .collect();
    assert_eq!(descriptions, ["test key of acme", "cli"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("secret").is_none()),
        "secrets are never listed: {listed}"
    );
    let table = cli.run(&["keys", "list", &tenant.id]).await;
    assert_eq!(table.succeeded().lines().count(), 3, "{}", table.stdout);

    let revoked = cli.run(&["keys", "revoke", &key_id]).await;
    assert_eq!(revoked.field("id"), key_id);
    assert!(!revoked.field("revoked").is_empty(), "{}", revoked.stdout);
    expect_code(
        items
            .create_item(with_new_key.call(new_item("after revocation")))
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn a_backup_is_restored_from_the_command_line() {
    let server = spawn().await;
    let tenant = server.tenant("acme").await;
    let mut items = server.items().await;
    items
        .create_item(tenant.call(new_item("kept")))
        .await
        .unwrap();
    let cli = Cli::new(&server);

    let backup = cli.run(&["backup", &tenant.id, "-o", "json"]).await.json();
    let path = backup["path"].as_str().unwrap().to_owned();
    let on_disk = std::fs::read(server.data_dir().join(&path)).unwrap();
    assert_eq!(backup["sha256"], sha256_hex(&on_disk).as_str());
    assert_eq!(backup["size_bytes"], on_disk.len() as u64);
    let table = cli.run(&["backup", &tenant.id]).await;
    assert!(
        table
            .field("path")
            .starts_with(&format!("backups/{}/", tenant.id))
    );
    assert_eq!(table.field("sha256").len(), 64);

    items
        .create_item(tenant.call(new_item("spilled")))
        .await
        .unwrap();
    let restored = cli.run(&["restore", &tenant.id, &path]).await;
    assert_eq!(restored.field("sha256"), sha256_hex(&on_disk));
    assert_eq!(all_titles(&server, &tenant).await, ["kept"]);
}

#[tokio::test]
async fn an_export_imported_into_another_tenant_brings_its_data() {
    let server = spawn().await;
    let source = server.tenant("source").await;
    let copy = server.tenant("copy").await;
    let mut items = server.items().await;
    for title in ["first", "second"] {
        items
            .create_item(source.call(new_item(title)))
            .await
            .unwrap();
    }
    let cli = Cli::new(&server);

    let file = cli.path("source.db");
    let exported = cli.run(&["export", &source.id, "--out", &file]).await;
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(exported.field("sha256"), sha256_hex(&bytes));
    assert_eq!(exported.field("path"), file);
    assert!(!Path::new(&format!("{file}.partial")).exists());
    // Standard error is not a terminal here: plain lines, no bar.
    assert!(
        exported.stderr.contains("export: ") && exported.stderr.contains("(100%)"),
        "{}",
        exported.stderr
    );
    assert!(!exported.stderr.contains('\x1b'), "{}", exported.stderr);

    let imported = cli
        .run(&["import", &copy.id, &file, "-o", "json"])
        .await
        .json();
    assert_eq!(imported["tenant_id"], copy.id.as_str());
    assert_eq!(imported["sha256"], sha256_hex(&bytes).as_str());
    assert_eq!(
        all_titles(&server, &copy).await,
        all_titles(&server, &source).await
    );
    assert_eq!(all_titles(&server, &copy).await, ["second", "first"]);

    // To standard output: the snapshot there, its description on stderr.
    let piped = cli.run(&["export", &source.id, "--out", "-"]).await;
    assert_eq!(piped.code, Some(0), "{}", piped.stderr);
    assert!(piped.bytes.starts_with(b"SQLite format 3\0"));
    let described = piped
        .stderr
        .lines()
        .find_map(|line| line.strip_prefix("sha256:"))
        .unwrap_or_else(|| panic!("{}", piped.stderr))
        .trim();
    assert_eq!(described, sha256_hex(&piped.bytes));

    // A file that is not a tenant database is refused; the data stays.
    let junk = cli.path("junk.db");
    std::fs::write(&junk, b"not a database").unwrap();
    let refused = cli.run(&["import", &copy.id, &junk]).await;
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("tenantry: INVALID_ARGUMENT: "),
        "{}",
        refused.stderr
    );
    assert_eq!(all_titles(&server, &copy).await, ["second", "first"]);
}

#[tokio::test]
async fn migrate_asks_the_running_server_and_reports_each_tenant() {
    let server = spawn().await;
    let old = server.tenant("old").await;
    server.tenant("current").await;
    let dir = server.stop().await;
    write_v1_tenant(
        &dir.path().join(format!("data/tenants/{}.db", old.id)),
        &["kept"],
    );
    record_version(&dir, &[&old], 1);
    let server = spawn_in(dir, |_| {}).await;
    let cli = Cli::new(&server);

    let ran = cli.run(&["migrate"]).await;
    let stdout = ran.succeeded();
    assert_eq!(
        stdout,
        format!(
            "{} migrated from version 1 to {}\n1 tenants migrated, 0 failed\n",
            old.id,
            latest()
        )
    );
    assert!(
        ran.stderr.contains("migrate: 1 tenants in"),
        "{}",
        ran.stderr
    );
    assert_eq!(all_titles(&server, &old).await, ["kept"]);

    let again = cli.run(&["migrate", "-o", "json"]).await.json();
    assert_eq!(
        again,
        serde_json::json!({"migrated": 0, "failed": 0, "tenants": []})
    );
}

#[tokio::test]
async fn the_admin_token_comes_from_the_environment_or_a_file_never_a_flag() {
    let server = spawn().await;
    let cli = Cli::without_token(&server);

    let missing = cli.run(&["tenants", "list"]).await;
    assert_eq!(missing.code, Some(2), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("no admin token")
            && missing.stderr.contains("TENANTRY_ADMIN_TOKEN")
            && missing.stderr.contains("--admin-token-file"),
        "{}",
        missing.stderr
    );

    let refused = cli
        .run(&["tenants", "list", "--admin-token", ADMIN_TOKEN])
        .await;
    assert_eq!(refused.code, Some(2), "no such flag: {}", refused.stderr);

    // A token file, whitespace and all.
    let file = cli.path("token");
    std::fs::write(&file, format!("  {ADMIN_TOKEN}\n")).unwrap();
    let from_file = cli
        .run(&["tenants", "create", "acme", "--admin-token-file", &file])
        .await;
    assert_eq!(from_file.field("name"), "acme");

    // The admin.token a server writes into its data directory.
    let data = cli.path("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        Path::new(&data).join("admin.token"),
        format!("{ADMIN_TOKEN}\n"),
    )
    .unwrap();
    let from_data_dir = cli
        .run(&["tenants", "list", "--data-dir", &data, "-o", "json"])
        .await
        .json();
    assert_eq!(from_data_dir.as_array().unwrap().len(), 1);

    std::fs::write(&file, "not-the-admin-token-at-all\n").unwrap();
    let wrong = cli
        .run(&["tenants", "list", "--admin-token-file", &file])
        .await;
    assert_eq!(wrong.code, Some(1));
    assert!(
        wrong.stderr.starts_with("tenantry: UNAUTHENTICATED: "),
        "{}",
        wrong.stderr
    );
}

#[tokio::test]
async fn a_server_that_cannot_be_reached_exits_3() {
    // Nothing listens on a port the kernel just handed out and took back.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cli = Cli::at(free.to_string());

    let ran = cli.run(&["tenants", "list"]).await;
    assert_eq!(ran.code, Some(3), "{}", ran.stderr);
    assert!(
        ran.stderr
            .starts_with("tenantry: UNAVAILABLE: cannot connect to"),
        "{}",
        ran.stderr
    );
    let migrate = cli.run(&["migrate"]).await;
    assert_eq!(migrate.code, Some(3));
    assert!(
        migrate.stderr.contains("add --offline"),
        "{}",
        migrate.stderr
    );
}

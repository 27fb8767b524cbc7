//! Crafted snapshots: files made to pass a weaker check (hidden triggers, a
//! rewritten schema, rows the API could never have written) are refused by
//! ImportTenant, the tenant keeps its data, and nothing of them survives.
//! And what the server opens itself, it opens defensively: a trigger placed
//! in a tenant's file behind its back does not run.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use tempfile::TempDir;
use tenantry::pb;
use tonic::Code;

use crate::common::{
    TestServer, TestTenant, all_titles, as_admin, new_item, spawn, spawn_in, titles_in_file,
};

async fn export(server: &TestServer, tenant: &TestTenant) -> Vec<u8> {
    let mut stream = server
        .admin()
        .await
        .export_tenant(as_admin(pb::ExportTenantRequest {
            id: tenant.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(message) = stream.next().await {
        bytes.extend(message.unwrap().chunk);
    }
    bytes
}

async fn import(
    server: &TestServer,
    tenant: &TestTenant,
    bytes: &[u8],
) -> Result<tonic::Response<pb::RestoreTenantResponse>, tonic::Status> {
    let mut messages: Vec<_> = bytes
        .chunks(256 * 1024)
        .map(|chunk| pb::ImportTenantRequest {
            chunk: chunk.to_vec(),
            ..Default::default()
        })
        .collect();
    messages[0].id = tenant.id.clone();
    server
        .admin()
        .await
        .import_tenant(as_admin(futures::stream::iter(messages)))
        .await
}

/// A copy of `good` changed by `sql`, run with the schema writable, as an
/// attacker crafting a file would.
fn crafted(dir: &Path, name: &str, good: &[u8], sql: &str) -> Vec<u8> {
    let path = dir.join(name);
    std::fs::write(&path, good).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA writable_schema = ON; {sql}; PRAGMA writable_schema = OFF;"
    ))
    .unwrap_or_else(|e| panic!("crafting {name}: {e}"));
    drop(conn);
    std::fs::read(&path).unwrap()
}

const ITEM_COLUMNS: &str = "id, title, description, completed, create_time, update_time, revision";

/// An id after every real one, and a creation time after theirs (an hour
/// from now: later than a year is refused by itself): a crafted row that
/// breaks nothing but what its case breaks.
fn last_id_and_time() -> (String, i64) {
    let late = tenantry::clock::now_micros() + 3_600_000_000;
    let id = tenantry::clock::id_at(late);
    (format!("unhex('{}')", id.simple()), late)
}

#[tokio::test]
async fn crafted_snapshots_are_refused_and_leave_nothing_of_themselves() {
    let (last_id, late) = last_id_and_time();
    let far = 253_402_300_799_999_999_i64;
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;
    for title in ["first", "second"] {
        items.create_item(acme.call(new_item(title))).await.unwrap();
    }
    let good = export(&server, &acme).await;
    let scratch = TempDir::new().unwrap();
    let dir = scratch.path();
    let triggers: String = (0..2000)
        .map(|n| format!("CREATE TRIGGER many_{n} AFTER INSERT ON items BEGIN SELECT 1; END;"))
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a trigger hidden under a sqlite_ name",
            crafted(
                dir,
                "evil.db",
                &good,
                "INSERT INTO sqlite_schema (type, name, tbl_name, rootpage, sql) VALUES
                 ('trigger', 'sqlite_evil', 'items', 0,
                  'CREATE TRIGGER sqlite_evil AFTER INSERT ON items BEGIN
                     UPDATE items SET title = ''pwned''; DELETE FROM audit_events; END')",
            ),
        ),
        (
            "a trigger that never ends",
            crafted(
                dir,
                "bomb.db",
                &good,
                "CREATE TRIGGER bomb AFTER INSERT ON items BEGIN
                   SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)
                                         SELECT x FROM c);
                 END",
            ),
        ),
        (
            "thousands of triggers",
            crafted(dir, "many.db", &good, &triggers),
        ),
        (
            "a check that allocates",
            crafted(
                dir,
                "check.db",
                &good,
                "UPDATE sqlite_schema SET sql = replace(sql, 'revision    INTEGER NOT NULL DEFAULT 1',
                   'revision INTEGER NOT NULL DEFAULT 1 CHECK (length(zeroblob(300000000)) > 0)')
                 WHERE name = 'items'",
            ),
        ),
        (
            "a unique index under an expected name",
            crafted(
                dir,
                "unique.db",
                &good,
                "DROP INDEX items_completed;
                 CREATE UNIQUE INDEX items_completed ON items (completed, id)",
            ),
        ),
        (
            "an extra generated column",
            crafted(
                dir,
                "generated.db",
                &good,
                "ALTER TABLE items ADD COLUMN shout TEXT GENERATED ALWAYS AS (upper(title)) VIRTUAL",
            ),
        ),
        (
            "an id that is not a UUID",
            crafted(
                dir,
                "id.db",
                &good,
                &format!(
                    "PRAGMA ignore_check_constraints = ON;
                     INSERT INTO items ({ITEM_COLUMNS})
                     VALUES (X'ff', 'x', '', 0, {late}, {late}, 1)"
                ),
            ),
        ),
        (
            "a description far over the API's limit",
            crafted(
                dir,
                "long.db",
                &good,
                &format!(
                    "INSERT INTO items ({ITEM_COLUMNS})
                     VALUES ({last_id}, 'long', hex(zeroblob(1000000)), 0, {late}, {late}, 1)"
                ),
            ),
        ),
        (
            "a title with a control character",
            crafted(
                dir,
                "title.db",
                &good,
                &format!(
                    "INSERT INTO items ({ITEM_COLUMNS})
                     VALUES ({last_id}, 'bell' || char(7), '', 0, {late}, {late}, 1)"
                ),
            ),
        ),
        (
            "items listed by id whose creation times go back",
            crafted(
                dir,
                "order.db",
                &good,
                "UPDATE items SET create_time = 1 WHERE title = 'second'",
            ),
        ),
        (
            "one of the two indexes a file keeps for its time order",
            crafted(
                dir,
                "half.db",
                &good,
                "UPDATE items SET create_time = 1 WHERE title = 'second';
                 CREATE INDEX items_newest ON items (create_time DESC, id DESC)",
            ),
        ),
        (
            "a revision an update would overflow",
            crafted(
                dir,
                "revision.db",
                &good,
                "UPDATE items SET revision = 9223372036854775807 WHERE title = 'first'",
            ),
        ),
        (
            "an audit event by nobody",
            crafted(
                dir,
                "actor.db",
                &good,
                &format!(
                    "INSERT INTO audit_events (id, time, action, item_id, actor)
                     VALUES (1, 1, 'CreateItem', '{}', 'keys/somebody')",
                    uuid::Uuid::new_v4()
                ),
            ),
        ),
        (
            "an audit event out of its place in time",
            crafted(
                dir,
                "when.db",
                &good,
                &format!(
                    "PRAGMA ignore_check_constraints = ON;
                     INSERT INTO audit_events (id, time, action, item_id, actor)
                     VALUES (1, {late}, 'CreateItem', '{}', 'admin')",
                    uuid::Uuid::new_v4()
                ),
            ),
        ),
        (
            "an item dated at the end of time",
            crafted(
                dir,
                "future-item.db",
                &good,
                &format!(
                    "INSERT INTO items ({ITEM_COLUMNS})
                     VALUES ({last_id}, 'later', '', 0, {far}, {far}, 1)"
                ),
            ),
        ),
        (
            "an id dated at the end of time",
            crafted(
                dir,
                "future-id.db",
                &good,
                &format!(
                    "INSERT INTO items ({ITEM_COLUMNS})
                     VALUES (unhex('ffffffffffff7fffbfffffffffffffff'), 'later', '', 0, {late}, {late}, 1)"
                ),
            ),
        ),
        (
            "an audit event dated at the end of time",
            crafted(
                dir,
                "future-event.db",
                &good,
                &format!(
                    "INSERT INTO audit_events (id, time, action, item_id, actor)
                     VALUES ({far}, {far}, 'CreateItem', '{}', 'admin')",
                    uuid::Uuid::new_v4()
                ),
            ),
        ),
    ];
    for (name, bytes) in cases {
        let started = std::time::Instant::now();
        let status = import(&server, &acme, &bytes)
            .await
            .expect_err(&format!("{name} was accepted"));
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains("not a valid tenant database"),
            "{name}: {status:?}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{name} took {:?} to refuse",
            started.elapsed()
        );
        assert_eq!(
            all_titles(&server, &acme).await,
            ["second", "first"],
            "{name}"
        );
    }
    // The tenant's own file has exactly tenantry's schema still.
    let dir = server.stop().await;
    let file = dir
        .path()
        .join("data/tenants")
        .join(format!("{}.db", acme.id));
    let conn = rusqlite::Connection::open(&file).unwrap();
    let odd: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type IN ('trigger', 'view')
             OR name LIKE 'many%' OR sql LIKE '%zeroblob%' OR sql LIKE '%UNIQUE%'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(odd, 0);
    assert_eq!(titles_in_file(&file), ["first", "second"]);
}

#[tokio::test]
async fn a_trigger_slipped_into_a_tenant_file_does_not_run() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    server
        .items()
        .await
        .create_item(acme.call(new_item("kept")))
        .await
        .unwrap();
    let dir = server.stop().await;
    let file = dir
        .path()
        .join("data/tenants")
        .join(format!("{}.db", acme.id));
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch("CREATE TRIGGER wipe AFTER INSERT ON items BEGIN DELETE FROM items; END;")
        .unwrap();
    let server = spawn_in(Arc::clone(&dir), |_| {}).await;
    server
        .items()
        .await
        .create_item(acme.call(new_item("added")))
        .await
        .unwrap();
    assert_eq!(all_titles(&server, &acme).await, ["added", "kept"]);
}

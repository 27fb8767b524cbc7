//! Lifecycle operations and their callers' deadlines: an operation that
//! had not started when its caller gave up leaves nothing behind, now or
//! after a restart; one that had started runs to its end, its caller hears
//! that the outcome is unknown and how to look it up, and a retry hears the
//! outcome instead of being refused or doing the work twice.

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tenantry::pb::{self, restore_tenant_request::Source};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{
    ServerProcess, TestTenant, all_titles, as_admin, expect_code, files_under, new_item, spawn_in,
};

fn restore(tenant: &TestTenant, path: &str, request_id: &str) -> pb::RestoreTenantRequest {
    pb::RestoreTenantRequest {
        id: tenant.id.clone(),
        source: Some(Source::BackupPath(path.into())),
        request_id: request_id.into(),
    }
}

fn within<T>(mut request: tonic::Request<T>, millis: u64) -> tonic::Request<T> {
    request.set_timeout(Duration::from_millis(millis));
    request
}

async fn write(
    server_items: &mut pb::item_service_client::ItemServiceClient<tonic::transport::Channel>,
    tenant: &TestTenant,
    titles: &[&str],
) {
    for title in titles {
        server_items
            .create_item(tenant.call(new_item(title)))
            .await
            .unwrap();
    }
}

async fn backup_of(
    admin: &mut pb::tenant_service_client::TenantServiceClient<tonic::transport::Channel>,
    tenant: &TestTenant,
) -> String {
    admin
        .backup_tenant(as_admin(pb::BackupTenantRequest {
            id: tenant.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .path
}

/// The operation an OUTCOME_UNKNOWN error names.
fn unknown_outcome(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, "OUTCOME_UNKNOWN");
    info.metadata["operation_id"].clone()
}

/// A DEADLINE_EXCEEDED that says nothing was done.
fn nothing_done(status: &tonic::Status) {
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.get_details_error_info().is_none(), "{status:?}");
    assert!(
        status.message().contains("nothing was changed"),
        "{status:?}"
    );
}

fn operation_of<T>(response: &tonic::Response<T>) -> String {
    response
        .metadata()
        .get("tenantry-operation-id")
        .expect("the answer names its operation")
        .to_str()
        .unwrap()
        .to_owned()
}

async fn admin_events(
    admin: &mut pb::tenant_service_client::TenantServiceClient<tonic::transport::Channel>,
    tenant: &TestTenant,
) -> Vec<pb::AuditEvent> {
    admin
        .list_audit_events(as_admin(pb::ListAuditEventsRequest {
            tenant_id: tenant.id.clone(),
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.source == pb::AuditSource::Admin as i32)
        .collect()
}

#[tokio::test]
async fn a_restore_that_gives_up_waiting_for_the_tenant_leaves_nothing_behind_even_after_a_restart()
{
    let server = spawn_in(Arc::new(TempDir::new().unwrap()), |_| {}).await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;
    let mut admin = server.admin().await;
    write(&mut items, &acme, &["kept"]).await;
    let backup = backup_of(&mut admin, &acme).await;
    write(&mut items, &acme, &["after the backup"]).await;

    // A long backup holds the tenant's file, as this hold does.
    let tenant_id = tenantry::ids::TenantId::parse("id", &acme.id).unwrap();
    let held = server.registry.shared(tenant_id).await;
    for _ in 0..2 {
        let refused = admin
            .restore_tenant(within(as_admin(restore(&acme, &backup, "")), 1000))
            .await
            .unwrap_err();
        nothing_done(&refused);
    }
    let refused = admin
        .delete_tenant(within(
            as_admin(pb::DeleteTenantRequest {
                id: acme.id.clone(),
                ..Default::default()
            }),
            1000,
        ))
        .await
        .unwrap_err();
    nothing_done(&refused);
    // The tenant serves meanwhile, and is still there with its name.
    write(&mut items, &acme, &["meanwhile"]).await;
    let tenant = admin
        .get_tenant(as_admin(pb::GetTenantRequest {
            id: acme.id.clone(),
        }))
        .await
        .expect("a delete that gave up leaves the tenant as it was")
        .into_inner();
    assert_eq!(tenant.state, pb::TenantState::Active as i32);
    drop(held);

    let events = admin_events(&mut admin, &acme).await;
    let gave_up: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.outcome != "OK")
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        gave_up,
        [
            ("DeleteTenant", "DEADLINE_EXCEEDED"),
            ("RestoreTenant", "DEADLINE_EXCEEDED"),
            ("RestoreTenant", "DEADLINE_EXCEEDED")
        ],
        "each call that gave up is in the trail"
    );

    // After a restart, nothing the callers were told failed happens.
    let dir = server.stop().await;
    let server = spawn_in(dir, |_| {}).await;
    assert_eq!(
        all_titles(&server, &acme).await,
        ["meanwhile", "after the backup", "kept"]
    );
    assert!(files_under(&server.data_dir().join("trash")).is_empty());
    assert!(files_under(&server.data_dir().join("staging")).is_empty());
    // And the tenant can be restored now.
    server
        .admin()
        .await
        .restore_tenant(as_admin(restore(&acme, &backup, "")))
        .await
        .unwrap();
    assert_eq!(all_titles(&server, &acme).await, ["kept"]);
}

/// A data directory with tenant `acme` (items `kept`, then `later`) and a
/// backup of it taken in between; the backup's path.
async fn prepared_with_backup() -> (Arc<TempDir>, TestTenant, String) {
    let server = spawn_in(Arc::new(TempDir::new().unwrap()), |_| {}).await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;
    write(&mut items, &acme, &["kept"]).await;
    let backup = backup_of(&mut server.admin().await, &acme).await;
    write(&mut items, &acme, &["later"]).await;
    (server.stop().await, acme, backup)
}

async fn titles_through(server: &ServerProcess, tenant: &TestTenant) -> Vec<String> {
    let mut items = server.items().await;
    crate::common::all_items(&mut items, tenant)
        .await
        .into_iter()
        .map(|item| item.title)
        .collect()
}

/// A server on `dir` that pauses at `pause` (`<point>=<ms>`), an admin
/// client of it, and the operation of a restore of `tenant` from `backup`
/// whose caller gave up while it ran (told its outcome is unknown).
async fn restore_given_up(
    dir: &TempDir,
    tenant: &TestTenant,
    backup: &str,
    request_id: &str,
    pause: &str,
) -> (
    ServerProcess,
    pb::tenant_service_client::TenantServiceClient<tonic::transport::Channel>,
    String,
) {
    let server = ServerProcess::start(dir, &[(tenantry::fault::PAUSE_ENV, pause)]);
    let mut admin = server.admin().await;
    let gave_up = admin
        .restore_tenant(within(as_admin(restore(tenant, backup, request_id)), 1000))
        .await
        .unwrap_err();
    let operation = unknown_outcome(&gave_up);
    (server, admin, operation)
}

async fn operation_record(
    admin: &mut pb::tenant_service_client::TenantServiceClient<tonic::transport::Channel>,
    id: &str,
) -> pb::Operation {
    admin
        .get_operation(as_admin(pb::GetOperationRequest { id: id.to_owned() }))
        .await
        .unwrap()
        .into_inner()
}

/// Stops `server`, which must have had nothing left for a restart to finish.
async fn stop_with_nothing_to_finish(server: ServerProcess) {
    let log = tokio::task::spawn_blocking(move || server.stop_and_read_log())
        .await
        .unwrap();
    assert!(
        !log.iter()
            .any(|line| line.contains("finishing an operation")),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_restore_that_started_runs_to_its_end_and_a_retry_hears_its_outcome() {
    let (dir, acme, backup) = prepared_with_backup().await;
    let (server, mut admin, operation) =
        restore_given_up(&dir, &acme, &backup, "", "restore.after-record=4000").await;
    let running = operation_record(&mut admin, &operation).await;
    assert_eq!(running.state, pb::OperationState::Running as i32);
    assert_eq!(running.action, "RestoreTenant");
    assert_eq!(running.tenant_id, acme.id);

    // The same call again: answered with the running operation's outcome.
    let answer = admin
        .restore_tenant(as_admin(restore(&acme, &backup, "")))
        .await
        .expect("a retry hears how the operation ended");
    assert_eq!(operation_of(&answer), operation);
    let done = operation_record(&mut admin, &operation).await;
    assert_eq!(done.state, pb::OperationState::Succeeded as i32);
    assert_eq!(done.outcome, "OK");
    assert!(done.end_time.is_some());

    assert_eq!(titles_through(&server, &acme).await, ["kept"]);
    let trash = files_under(&dir.path().join("data").join("trash"));
    assert_eq!(trash.len(), 1, "restored once, not twice: {trash:?}");
    let restores: Vec<pb::AuditEvent> = admin_events(&mut admin, &acme)
        .await
        .into_iter()
        .filter(|e| e.action == "RestoreTenant")
        .collect();
    assert_eq!(restores.len(), 1, "{restores:?}");
    assert_eq!(restores[0].outcome, "OK");
    assert!(restores[0].detail.contains(&operation), "{restores:?}");
    expect_code(
        admin
            .get_operation(as_admin(pb::GetOperationRequest {
                id: uuid::Uuid::new_v4().to_string(),
            }))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn a_delete_that_started_finishes_and_frees_the_name_though_its_caller_gave_up() {
    let (dir, acme, _) = prepared_with_backup().await;
    let server = ServerProcess::start(
        &dir,
        &[(tenantry::fault::PAUSE_ENV, "delete.after-mark=3000")],
    );
    let mut admin = server.admin().await;
    let delete = pb::DeleteTenantRequest {
        id: acme.id.clone(),
        ..Default::default()
    };
    let gave_up = admin
        .delete_tenant(within(as_admin(delete.clone()), 1000))
        .await
        .unwrap_err();
    let operation = unknown_outcome(&gave_up);
    // Its keys stopped working when it was recorded.
    let mut items = server.items().await;
    expect_code(
        items.create_item(acme.call(new_item("too late"))).await,
        Code::NotFound,
    );
    let answer = admin
        .delete_tenant(as_admin(delete))
        .await
        .expect("a retry hears the delete's outcome, not FAILED_PRECONDITION");
    assert_eq!(operation_of(&answer), operation);
    expect_code(
        admin
            .get_tenant(as_admin(pb::GetTenantRequest {
                id: acme.id.clone(),
            }))
            .await,
        Code::NotFound,
    );
    crate::common::create_tenant(&mut admin, "acme").await;
    // Restarted, the server has nothing left to finish.
    drop((admin, items));
    stop_with_nothing_to_finish(server).await;
}

#[tokio::test]
async fn a_creation_that_started_is_joined_by_its_retry() {
    let (dir, _, _) = prepared_with_backup().await;
    // Without spare files: a creation from a spare is one commit, with
    // nothing to pause between.
    let server = ServerProcess::start(
        &dir,
        &[
            (tenantry::fault::PAUSE_ENV, "create.after-file=3000"),
            ("TENANTRY_SPARE_TENANT_FILES", "0"),
        ],
    );
    let mut admin = server.admin().await;
    let create = pb::CreateTenantRequest {
        tenant: Some(pb::Tenant {
            name: "globex".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let gave_up = admin
        .create_tenant(within(as_admin(create.clone()), 1000))
        .await
        .unwrap_err();
    let operation = unknown_outcome(&gave_up);
    let answer = admin
        .create_tenant(as_admin(create))
        .await
        .expect("a retry of the same creation hears its outcome, not ALREADY_EXISTS");
    assert_eq!(operation_of(&answer), operation);
    let tenants = admin
        .list_tenants(as_admin(pb::ListTenantsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tenants;
    let globex: Vec<_> = tenants.iter().filter(|t| t.name == "globex").collect();
    assert_eq!(globex.len(), 1);
    assert_eq!(globex[0].id, answer.into_inner().id);
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_is_answered_with_the_first_outcome() {
    let server = spawn_in(Arc::new(TempDir::new().unwrap()), |_| {}).await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;
    let mut admin = server.admin().await;
    write(&mut items, &acme, &["kept"]).await;
    let backup = backup_of(&mut admin, &acme).await;
    write(&mut items, &acme, &["undone"]).await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let first = admin
        .restore_tenant(as_admin(restore(&acme, &backup, &request_id)))
        .await
        .unwrap();
    write(&mut items, &acme, &["after the restore"]).await;
    let again = admin
        .restore_tenant(as_admin(restore(&acme, &backup, &request_id)))
        .await
        .unwrap();
    assert_eq!(operation_of(&again), operation_of(&first));
    assert_eq!(again.get_ref(), first.get_ref());
    assert_eq!(
        all_titles(&server, &acme).await,
        ["after the restore", "kept"],
        "the retry did not restore again"
    );
    assert_eq!(files_under(&server.data_dir().join("trash")).len(), 1);
    // The same request id for another call is refused.
    let other = backup_of(&mut admin, &acme).await;
    let status = expect_code(
        admin
            .restore_tenant(as_admin(restore(&acme, &other, &request_id)))
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().starts_with("request_id"), "{status:?}");
    // So is the same call on another tenant: it is not answered with the
    // first tenant's outcome, and not done.
    let globex = server.tenant("globex").await;
    write(&mut items, &globex, &["globex kept"]).await;
    let globex_backup = backup_of(&mut admin, &globex).await;
    write(&mut items, &globex, &["globex later"]).await;
    let status = expect_code(
        admin
            .restore_tenant(as_admin(restore(&globex, &globex_backup, &request_id)))
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().starts_with("request_id"), "{status:?}");
    let delete_id = uuid::Uuid::new_v4().to_string();
    let deleted = admin
        .delete_tenant(as_admin(pb::DeleteTenantRequest {
            id: acme.id.clone(),
            request_id: delete_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let status = expect_code(
        admin
            .delete_tenant(as_admin(pb::DeleteTenantRequest {
                id: globex.id.clone(),
                request_id: delete_id,
                ..Default::default()
            }))
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().starts_with("request_id"), "{status:?}");
    assert!(!operation_of(&deleted).is_empty());
    assert_eq!(
        all_titles(&server, &globex).await,
        ["globex later", "globex kept"],
        "nothing was done to the other tenant"
    );
}

#[tokio::test]
async fn a_caller_that_goes_away_as_its_operation_is_recorded_cannot_stop_it() {
    let (dir, acme, backup) = prepared_with_backup().await;
    let request_id = uuid::Uuid::new_v4().to_string();
    // The caller's deadline passes between the record and the first step.
    let (server, mut admin, operation) = restore_given_up(
        &dir,
        &acme,
        &backup,
        &request_id,
        "operation.after-record=3000",
    )
    .await;
    let answer = admin
        .restore_tenant(as_admin(restore(&acme, &backup, &request_id)))
        .await
        .expect("the operation runs on and its retry hears how it ended");
    assert_eq!(operation_of(&answer), operation);
    assert_eq!(titles_through(&server, &acme).await, ["kept"]);
    let done = operation_record(&mut admin, &operation).await;
    assert_eq!(done.state, pb::OperationState::Succeeded as i32);
    // A restart has nothing to finish, and the data stays restored.
    drop(admin);
    stop_with_nothing_to_finish(server).await;
    let server = ServerProcess::start(&dir, &[]);
    assert_eq!(titles_through(&server, &acme).await, ["kept"]);
}

#[tokio::test]
async fn a_restore_whose_checked_copy_is_lost_fails_and_leaves_the_tenant_as_it_was() {
    let (dir, acme, backup) = prepared_with_backup().await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let (server, mut admin, operation) = restore_given_up(
        &dir,
        &acme,
        &backup,
        &request_id,
        "restore.after-record=3000",
    )
    .await;
    // An unlucky operator empties the staging folder meanwhile.
    let staging = dir.path().join("data").join("staging");
    let staged = files_under(&staging);
    assert_eq!(staged.len(), 1, "{staged:?}");
    std::fs::remove_file(staging.join(&staged[0])).unwrap();
    let status = expect_code(
        admin
            .restore_tenant(as_admin(restore(&acme, &backup, &request_id)))
            .await,
        Code::Aborted,
    );
    assert!(status.message().contains("unchanged"), "{status:?}");
    let done = operation_record(&mut admin, &operation).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32);
    assert_eq!(done.outcome, "ABORTED");
    assert_eq!(titles_through(&server, &acme).await, ["later", "kept"]);
    assert!(files_under(&dir.path().join("data").join("trash")).is_empty());
}

#[tokio::test]
async fn a_restore_cut_after_the_trash_whose_copy_was_lost_puts_the_tenant_back() {
    let (dir, acme, backup) = prepared_with_backup().await;
    let crashing = ServerProcess::start(&dir, &[(tenantry::fault::ENV, "restore.after-trash")]);
    let crashed = crashing
        .admin()
        .await
        .restore_tenant(as_admin(restore(&acme, &backup, "")))
        .await;
    assert!(crashed.is_err());
    assert!(!crashing.wait().success());
    // An unlucky operator empties the staging folder before the restart.
    let staging = dir.path().join("data").join("staging");
    for file in files_under(&staging) {
        std::fs::remove_file(staging.join(file)).unwrap();
    }
    let server = spawn_in(dir, |_| {}).await;
    assert_eq!(all_titles(&server, &acme).await, ["later", "kept"]);
    assert!(files_under(&server.data_dir().join("trash")).is_empty());
    let mut admin = server.admin().await;
    let restores: Vec<String> = admin_events(&mut admin, &acme)
        .await
        .into_iter()
        .filter(|e| e.action == "RestoreTenant")
        .map(|e| e.outcome)
        .collect();
    assert_eq!(restores, ["ABORTED"]);
}

#[tokio::test]
async fn a_retry_of_an_operation_an_earlier_version_recorded_hears_its_outcome() {
    let server = spawn_in(Arc::new(TempDir::new().unwrap()), |_| {}).await;
    let acme = server.tenant("acme").await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let delete = || {
        as_admin(pb::DeleteTenantRequest {
            id: acme.id.clone(),
            request_id: request_id.clone(),
            purge: false,
        })
    };
    let first = server.admin().await.delete_tenant(delete()).await.unwrap();
    let dir = server.stop().await;
    // The earlier version recorded a delete's request without its subject.
    let catalog = rusqlite::Connection::open(dir.path().join("data").join("catalog.db")).unwrap();
    let changed = catalog
        .execute(
            "UPDATE operations SET request = '' WHERE action = 'DeleteTenant'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(catalog);
    let server = spawn_in(dir, |_| {}).await;
    let again = server
        .admin()
        .await
        .delete_tenant(delete())
        .await
        .expect("the retry is answered with the first outcome");
    assert_eq!(operation_of(&again), operation_of(&first));
}

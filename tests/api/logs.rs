//! Logs: one span per call with its method, tenant, key id, status code and
//! latency; `--log-format json` for log shippers; and never a secret.

use tempfile::TempDir;
use tenantry::pb::{self, ListApiKeysRequest};
use tonic::Code;

use crate::common::{
    ADMIN_TOKEN, ServerProcess, TestTenant, as_admin, create_tenant, expect_code, new_item,
};

/// The `call finished` events of a JSON log, as (method, span) pairs.
fn finished_calls(lines: &[serde_json::Value]) -> Vec<(String, serde_json::Value)> {
    lines
        .iter()
        .filter(|line| line["fields"]["message"] == "call finished")
        .map(|line| {
            let span = line["span"].clone();
            (span["method"].as_str().unwrap_or_default().to_owned(), span)
        })
        .collect()
}

#[tokio::test]
async fn json_logs_name_each_call_with_its_tenant_key_code_and_latency_and_no_secret() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(
        &dir,
        &[
            ("TENANTRY_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,tenantry::calls=debug"),
        ],
    );
    let mut admin = server.admin().await;
    let acme = create_tenant(&mut admin, "acme").await;
    let other = create_tenant(&mut admin, "other").await;
    let key_id = admin
        .list_api_keys(as_admin(ListApiKeysRequest {
            tenant_id: acme.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .api_keys[0]
        .id
        .clone();
    let mut items = server.items().await;
    items
        .create_item(acme.call(new_item("logged")))
        .await
        .unwrap();
    expect_code(
        items
            .list_items(acme.call_for(&other.id, pb::ListItemsRequest::default()))
            .await,
        Code::PermissionDenied,
    );
    let (prefix, secret) = acme.key.rsplit_once('_').unwrap();
    let forged = TestTenant {
        id: acme.id.clone(),
        key: format!("{prefix}_{}", "A".repeat(secret.len())),
    };
    expect_code(
        items
            .list_items(forged.call(pb::ListItemsRequest::default()))
            .await,
        Code::Unauthenticated,
    );
    drop((admin, items));
    let log = tokio::task::spawn_blocking(move || server.stop_and_read_log())
        .await
        .unwrap();

    // Every line is one JSON object.
    let lines: Vec<serde_json::Value> = log
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let calls = finished_calls(&lines);
    let created: Vec<_> = calls
        .iter()
        .filter(|(method, _)| method == "/tenantry.v1.ItemService/CreateItem")
        .collect();
    assert_eq!(created.len(), 1, "{calls:?}");
    let span = &created[0].1;
    assert_eq!(span["tenant"], acme.id.as_str());
    assert_eq!(span["key_id"], key_id.as_str());
    assert_eq!(span["code"], "OK");
    assert!(span["latency_ms"].as_f64().unwrap() > 0.0, "{span}");

    let refused: Vec<&str> = calls
        .iter()
        .filter(|(method, _)| method == "/tenantry.v1.ItemService/ListItems")
        .map(|(_, span)| span["code"].as_str().unwrap())
        .collect();
    assert_eq!(refused, ["PERMISSION_DENIED", "UNAUTHENTICATED"]);
    // The refusal's warning is inside the call's span, with the key id.
    let warning = lines
        .iter()
        .find(|line| line["fields"]["message"] == "refused an api key for another tenant")
        .expect("the refusal is logged");
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["fields"]["key_id"], key_id.as_str());
    assert_eq!(
        warning["span"]["method"],
        "/tenantry.v1.ItemService/ListItems"
    );

    let text = log.join("\n");
    for secret in [secret, ADMIN_TOKEN, acme.key.as_str(), other.key.as_str()] {
        assert!(!text.contains(secret), "a secret reached the log");
    }
}

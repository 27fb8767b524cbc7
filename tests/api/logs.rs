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
            // The span's fields, and the event's own (the code, the latency).
            let mut call = line["span"].clone();
            if let (Some(call), Some(fields)) = (call.as_object_mut(), line["fields"].as_object()) {
                call.extend(fields.clone());
            }
            (call["method"].as_str().unwrap_or_default().to_owned(), call)
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
            ("RUST_LOG", "info,tenantry::layers::calls=debug"),
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

    // Refusals are not logged one by one, but counted against the key
    // they came with, and summed up in a warning per interval.
    assert!(
        !calls
            .iter()
            .any(|(method, _)| method == "/tenantry.v1.ItemService/ListItems"),
        "{calls:?}"
    );
    let mut summed: Vec<(&str, u64)> = lines
        .iter()
        .filter(|line| line["target"] == "tenantry::summary")
        .map(|line| {
            assert_eq!(line["level"], "WARN");
            assert_eq!(line["fields"]["what"], "refused call");
            assert_eq!(line["fields"]["subject"], format!("api key {key_id}"));
            (
                line["fields"]["code"].as_str().unwrap(),
                line["fields"]["count"].as_u64().unwrap(),
            )
        })
        .collect();
    summed.sort();
    assert_eq!(summed, [("PERMISSION_DENIED", 1), ("UNAUTHENTICATED", 1)]);

    let text = log.join("\n");
    for secret in [secret, ADMIN_TOKEN, acme.key.as_str(), other.key.as_str()] {
        assert!(!text.contains(secret), "a secret reached the log");
    }
}

#[tokio::test]
async fn a_flood_of_failing_calls_adds_a_bounded_number_of_lines_to_the_log() {
    let dir = TempDir::new().unwrap();
    // Refusals answered at once, so that the flood is as fast as it gets.
    let server = ServerProcess::start(&dir, &[("TENANTRY_REFUSAL_DELAY_MS", "0")]);
    let mut admin = server.admin().await;
    let acme = create_tenant(&mut admin, "acme").await;
    let forged = TestTenant {
        id: acme.id.clone(),
        key: format!("tenantry_{}_{}", "0".repeat(32), "1".repeat(64)),
    };
    const CALLS: usize = 4000;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let mut items = server.items().await;
        let (acme, forged) = (acme.clone(), forged.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..CALLS / 8 {
                // Refused (a key that does not exist), and failed (an item
                // that does not exist), in turns.
                let (tenant, code) = if (n + worker) % 2 == 0 {
                    (&forged, Code::Unauthenticated)
                } else {
                    (&acme, Code::NotFound)
                };
                let request = tenant.call(pb::GetItemRequest {
                    id: uuid::Uuid::new_v4().to_string(),
                });
                expect_code(items.get_item(request).await, code);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // The summaries have a budget of lines per second: a slow machine makes
    // the flood last longer, and so gives them more (never a line a call).
    let bound = (200 + 20 * started.elapsed().as_secs() as usize).min(CALLS / 4);
    drop(admin);
    let log = tokio::task::spawn_blocking(move || server.stop_and_read_log())
        .await
        .unwrap();
    let get_items = log.iter().filter(|line| line.contains("GetItem")).count();
    let summarized: u64 = log
        .iter()
        .filter(|line| line.contains("tenantry::summary"))
        .filter_map(|line| line.split("count=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        log.len() < bound,
        "{} lines (more than {bound}) for {CALLS} failing calls: {:#?}",
        log.len(),
        &log[..20.min(log.len())]
    );
    assert!(
        summarized as usize + get_items >= CALLS,
        "every call is in a line or a count: {summarized} counted, {get_items} lines"
    );
}

//! Loading contract manifests: the accepted forms, capability defaults, and precise errors.

use opshost_contract::{Action, Contract, ContractError};
use serde_json::{Value, json};

fn manifest(operations: Value) -> String {
    json!({
        "service": "svc",
        "schemas": {
            "In": { "type": "object", "properties": { "n": { "type": "integer" } }, "required": ["n"] },
            "Out": { "type": "object" }
        },
        "operations": operations
    })
    .to_string()
}

fn issues(text: &str) -> Vec<String> {
    match Contract::from_json(text) {
        Err(error @ ContractError::Invalid(_)) => {
            error.issues().iter().map(ToString::to_string).collect()
        }
        other => panic!("expected an invalid manifest, got {other:?}"),
    }
}

#[test]
fn the_shipped_orders_manifest_loads_with_its_capabilities() {
    let contract = Contract::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../contracts/orders_service.manifest.json"
    ))
    .unwrap();
    assert_eq!(contract.service(), "orders-service");
    let op = contract.operation("Orders.Process").unwrap();
    assert_eq!(op.version, "v1");
    assert!(op.cancel);
    assert_eq!(op.capabilities.required(Action::Call), ["orders.write"]);
    assert_eq!(op.capabilities.required(Action::Observe), ["orders.read"]);
    assert_eq!(op.input.name(), Some("ProcessOrderRequest"));
    assert!(op.signals.contains_key("Expedite"));
}

#[test]
fn the_seed_form_and_the_shorthand_are_equivalent() {
    let seed = manifest(
        json!({ "A.Run": { "version": "v1", "input": { "schema": { "$ref": "In" } }, "output": { "schema": { "$ref": "Out" } } } }),
    );
    let short = manifest(
        json!({ "A.Run": { "version": "v1", "input": { "schema": "In" }, "output": { "schema": "Out" } } }),
    );
    for text in [seed, short] {
        let contract = Contract::from_json(&text).unwrap();
        let input = &contract.operation("A.Run").unwrap().input;
        assert_eq!(input.name(), Some("In"));
        assert!(input.validate(&json!({ "n": 1 })).is_ok());
        let issues = input.validate(&json!({ "n": "x" })).unwrap_err();
        assert_eq!(issues[0].pointer, "/n");
    }
}

#[test]
fn observe_cancel_and_control_default_to_the_call_list() {
    let text = manifest(
        json!({ "A.Run": { "version": "v1", "input": { "schema": "In" }, "output": { "schema": "Out" },
        "capabilities": { "call": ["a.write"] } } }),
    );
    let contract = Contract::from_json(&text).unwrap();
    let caps = &contract.operation("A.Run").unwrap().capabilities;
    for action in [
        Action::Call,
        Action::Observe,
        Action::Cancel,
        Action::Control,
    ] {
        assert_eq!(caps.required(action), ["a.write"], "{action:?}");
    }
    assert_eq!(caps.missing(Action::Observe, &[]), Some("a.write"));
    assert_eq!(caps.missing(Action::Observe, &["a.write".into()]), None);
}

#[test]
fn an_explicit_empty_observe_list_admits_any_authenticated_caller() {
    let text = manifest(
        json!({ "A.Run": { "version": "v1", "input": { "schema": "In" }, "output": { "schema": "Out" },
        "capabilities": { "call": ["a.write"], "observe": [] } } }),
    );
    let contract = Contract::from_json(&text).unwrap();
    let caps = &contract.operation("A.Run").unwrap().capabilities;
    assert!(caps.required(Action::Observe).is_empty());
    assert_eq!(caps.missing(Action::Observe, &[]), None);
    assert_eq!(caps.required(Action::Cancel), ["a.write"]);
}

#[test]
fn omitted_capabilities_admit_any_authenticated_caller() {
    let text = manifest(
        json!({ "A.Run": { "version": "v1", "input": { "schema": "In" }, "output": { "schema": "Out" } } }),
    );
    let contract = Contract::from_json(&text).unwrap();
    let caps = &contract.operation("A.Run").unwrap().capabilities;
    assert!(caps.required(Action::Call).is_empty() && caps.required(Action::Control).is_empty());
    assert!(
        !contract.operation("A.Run").unwrap().cancel,
        "cancel defaults to false"
    );
}

#[test]
fn an_unknown_ref_is_reported_at_its_json_path() {
    let text = manifest(
        json!({ "A.Run": { "version": "v1", "input": { "schema": "Missing" }, "output": { "schema": "Out" } } }),
    );
    assert_eq!(
        issues(&text),
        ["/operations/A.Run/input/schema/$ref: unknown schema `Missing` in `$ref`"]
    );
}

#[test]
fn a_bad_version_unknown_keys_and_bad_cancel_are_all_reported() {
    let text = manifest(
        json!({ "A.Run": { "version": "1.0", "input": { "schema": "In" }, "output": { "schema": "Out" },
        "cancel": "yes", "retries": 3 } }),
    );
    let found = issues(&text);
    assert!(
        found
            .iter()
            .any(|i| i.starts_with("/operations/A.Run/version: bad version")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|i| i.starts_with("/operations/A.Run/retries: unknown key `retries`")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|i| i == "/operations/A.Run/cancel: expected true or false"),
        "{found:?}"
    );
}

#[test]
fn an_invalid_json_schema_is_reported_at_its_path() {
    let text = json!({ "service": "svc", "schemas": { "Bad": { "type": "no-such-type" } }, "operations": {} }).to_string();
    let found = issues(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("/schemas/Bad: not a valid JSON Schema 2020-12"),
        "{found:?}"
    );
}

#[test]
fn duplicate_keys_are_refused() {
    let text = r#"{ "service": "svc", "schemas": {}, "operations": {}, "service": "again" }"#;
    let error = Contract::from_json(text).unwrap_err();
    assert!(
        matches!(&error, ContractError::Json(message) if message.contains("duplicate key `service`")),
        "{error}"
    );
}

#[test]
fn operation_names_that_map_to_the_same_type_are_duplicates() {
    let entry =
        json!({ "version": "v1", "input": { "schema": "In" }, "output": { "schema": "Out" } });
    let text = manifest(json!({ "A.Run": entry.clone(), "ARun": entry }));
    let found = issues(&text);
    assert!(
        found.iter().any(|i| i.contains("duplicate operation name")),
        "{found:?}"
    );
}

#[test]
fn missing_required_keys_are_named() {
    let text = json!({ "schemas": {}, "operations": { "A.Run": { "version": "v1" } } }).to_string();
    let found = issues(&text);
    assert!(
        found.contains(&"/: missing required key `service`".to_string()),
        "{found:?}"
    );
    assert!(
        found.contains(&"/operations/A.Run: missing required key `input`".to_string()),
        "{found:?}"
    );
    assert!(
        found.contains(&"/operations/A.Run: missing required key `output`".to_string()),
        "{found:?}"
    );
}

fn with_queues(queues: Value) -> String {
    let mut manifest: Value = serde_json::from_str(&manifest(json!({}))).unwrap();
    manifest["queues"] = queues;
    manifest.to_string()
}

#[test]
fn a_queue_takes_its_schemas_and_retry_policy_with_defaults() {
    let contract = Contract::from_json(&with_queues(json!({
        "work": { "payload": { "schema": "In" }, "result": { "schema": "Out" },
                  "maxAttempts": 5, "backoff": { "initialMs": 50, "maxMs": 400 }, "timeoutMs": 2000 },
        "plain": { "payload": { "schema": "In" } }
    })))
    .unwrap();
    let work = contract.queue("work").unwrap();
    assert_eq!(work.max_attempts, 5);
    assert_eq!(work.backoff_initial.as_millis(), 50);
    assert_eq!(work.backoff_max.as_millis(), 400);
    assert_eq!(work.timeout.as_millis(), 2000);
    assert!(work.result.is_some());
    assert!(work.payload.validate(&json!({ "n": "x" })).is_err());
    let plain = contract.queue("plain").unwrap();
    assert_eq!(plain.max_attempts, 3);
    assert_eq!(plain.backoff_initial.as_millis(), 1000);
    assert!(plain.result.is_none() && plain.progress.is_none());
}

#[test]
fn bad_queue_settings_are_reported_at_their_paths() {
    let found = issues(&with_queues(json!({
        "work": { "payload": { "schema": "Nope" }, "maxAttempts": 0,
                  "backoff": { "initialMs": 500, "maxMs": 100, "factor": 2 }, "timeoutMs": "1s" },
        "bad name": { "payload": { "schema": "In" } },
        "nopayload": {}
    })));
    for expected in [
        "/queues/work/payload/schema/$ref: unknown schema `Nope` in `$ref`",
        "/queues/work/maxAttempts: expected a whole number from 1 up, got 0",
        "/queues/work/backoff/factor: unknown key `factor` (expected one of: initialMs, maxMs)",
        "/queues/work/backoff: `maxMs` is below `initialMs`",
        "/queues/work/timeoutMs: expected a whole number from 1 up, got \"1s\"",
        "/queues/bad name: queue names are dot-separated identifiers, e.g. `fulfillment`",
        "/queues/nopayload: missing required key `payload`",
    ] {
        assert!(
            found.iter().any(|issue| issue == expected),
            "missing `{expected}` in {found:#?}"
        );
    }
}

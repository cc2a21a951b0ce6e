//! The orders example through its payments service, from outside: a real `opshost serve`
//! whose fulfillment worker charges each order over HTTP with a token only the host holds.

use serde_json::json;

use crate::common::{payments, token};
use crate::{Serve, json, text};

/// Starts an order with a fresh id and waits for it; answers its id.
fn order(serve: &Serve, token: &str, order_id: &str) -> String {
    let input = json!({
        "orderId": order_id,
        "lineItems": [{ "sku": "KB-ERGO-01", "quantity": 2, "unitPriceCents": 12900 }]
    })
    .to_string();
    let started = serve.call(token, &["start", "Orders.Process", "--input", &input]);
    assert!(started.status.success(), "{}", text(&started.stderr));
    let id = json(&started)["id"].as_str().expect("an id").to_owned();
    let waited = serve.call(token, &["wait", &id]);
    assert_eq!(
        json(&waited)["state"],
        "completed",
        "{}",
        text(&waited.stdout)
    );
    id
}

#[test]
fn an_order_is_charged_through_the_payments_service_with_the_token_the_host_holds() {
    let serve = Serve::start();
    let token = token(&["orders.write", "orders.read"]);
    let order_id = format!("ord_{}", ulid::Ulid::new());
    let id = order(&serve, &token, &order_id);
    let charge = payments()
        .charges()
        .into_iter()
        .find(|charge| charge.order_id == order_id)
        .expect("the order was charged");
    assert_eq!(charge.amount_cents, 25_800);
    let logs = serve.call(&token, &["logs", &id]);
    let lines = text(&logs.stdout);
    assert!(logs.status.success(), "{}", text(&logs.stderr));
    assert!(
        lines.contains("POST http://127.0.0.1:18091/v1/charges  201 in"),
        "{lines}"
    );
    assert!(
        !lines.contains("dev-payments-token"),
        "no secret in records: {lines}"
    );
}

#[test]
fn a_payments_outage_fails_the_job_attempt_and_the_retry_charges_the_order() {
    let serve = Serve::start();
    let token = token(&["orders.write", "orders.read"]);
    let order_id = format!("ord_{}", ulid::Ulid::new());
    payments().fail_order(&order_id, 1);
    let id = order(&serve, &token, &order_id);
    assert!(
        payments()
            .charges()
            .iter()
            .any(|charge| charge.order_id == order_id)
    );
    let logs = serve.call(&token, &["logs", &id]);
    let lines: Vec<String> = text(&logs.stdout)
        .lines()
        .filter(|line| line.contains("  http "))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("attempt 1 job") && lines[0].contains("  503 in"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("attempt 2 job") && lines[1].contains("  201 in"),
        "{lines:?}"
    );
}

#[test]
fn an_orders_logs_are_followed_until_it_ends_with_its_steps_and_its_charge() {
    let serve = Serve::start();
    let token = token(&["orders.write", "orders.read"]);
    let order_id = format!("ord_{}", ulid::Ulid::new());
    let input = json!({
        "orderId": order_id,
        "lineItems": [{ "sku": "KB-ERGO-01", "quantity": 1, "unitPriceCents": 12900 }]
    })
    .to_string();
    let started = serve.call(&token, &["start", "Orders.Process", "--input", &input]);
    let id = json(&started)["id"].as_str().expect("an id").to_owned();
    let followed = serve.call(&token, &["logs", &id, "--follow"]);
    assert!(followed.status.success(), "{}", text(&followed.stderr));
    let lines = text(&followed.stdout);
    for step in [
        "Reserving stock: done",
        "Charging payment: done",
        "Packing items: done",
        "Handing over to the carrier: done",
    ] {
        assert!(lines.contains(step), "{step} in {lines}");
    }
    assert!(
        lines.contains("POST http://127.0.0.1:18091/v1/charges  201 in"),
        "{lines}"
    );
    assert!(lines.contains(&format!("order={order_id}")), "{lines}");
    let state = serve.call(&token, &["get", &id]);
    assert_eq!(
        json(&state)["state"],
        "completed",
        "the follow ended with the order"
    );
    let again = serve.call(&token, &["logs", &id]);
    assert_eq!(text(&again.stdout), lines, "read back, the same lines");

    // A reader that stops after the first line of a running order's follow ends the command
    // quietly when the next line comes (each step takes 300 ms).
    let started = serve.call(&token, &["start", "Orders.Process", "--input", &input]);
    let running = json(&started)["id"].as_str().expect("an id").to_owned();
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} logs {running} --follow --json --url {} --token {token} | head -n 1",
            env!("CARGO_BIN_EXE_opshost"),
            serve.url
        ))
        .output()
        .unwrap();
    let first: serde_json::Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(first["seq"], 1);
    assert!(
        !text(&piped.stderr).contains("panicked"),
        "no panic on a closed pipe: {}",
        text(&piped.stderr)
    );
}

#[test]
fn serve_with_json_logs_writes_each_outbound_request_with_its_operation() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    crate::common::payments();
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("host.log");
    let mut child = crate::common::opshost()
        .args([
            "serve",
            "--config",
            "contracts/orders.deploy.toml",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .trim()
        .strip_prefix("opshost listening on ")
        .unwrap()
        .to_owned();
    let token = token(&["orders.write", "orders.read"]);
    let call = |args: &[&str]| {
        crate::common::opshost()
            .args(args)
            .args(["--url", &url, "--token", &token])
            .output()
            .unwrap()
    };
    let input = json!({
        "orderId": format!("ord_{}", ulid::Ulid::new()),
        "lineItems": [{ "sku": "A", "quantity": 1, "unitPriceCents": 100 }]
    })
    .to_string();
    let started = call(&["start", "Orders.Process", "--input", &input]);
    let id = json(&started)["id"].as_str().expect("an id").to_owned();
    let waited = call(&["wait", &id]);
    assert_eq!(json(&waited)["state"], "completed");
    let _ = child.kill();
    let _ = child.wait();
    let lines = std::fs::read_to_string(&log).unwrap();
    let request = lines
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["fields"]["message"] == "outbound request")
        .unwrap_or_else(|| panic!("no outbound request in {lines}"));
    assert_eq!(request["fields"]["operation"], id.as_str(), "{request}");
    assert_eq!(request["fields"]["status"], 201, "{request}");
    assert_eq!(request["fields"]["path"], "/v1/charges", "{request}");
    // Sent by the job's worker: its span names the job and the tenant of its operation.
    assert_eq!(request["span"]["name"], "job", "{request}");
    assert_eq!(request["span"]["tenant"], "acme", "{request}");
    assert_eq!(request["span"]["operation"], id.as_str(), "{request}");
    assert!(
        lines
            .lines()
            .all(|line| !line.contains("dev-payments-token"))
    );
}

//! Two `opshost serve` processes on one PostgreSQL database: orders accepted by host A are
//! finished by host B, started after A was killed with SIGKILL.

use std::path::{Path, PathBuf};

use crate::common::{root, token};
use crate::{Serve, json, text};

/// Orders started on A before it dies.
const ORDERS: usize = 12;

/// The orders deployment with short host and job leases, so that B takes over within seconds.
fn write_config(dir: &Path) -> PathBuf {
    let wasm = root().join("target/wasm32-wasip2/release/orders_process.wasm");
    let worker = root().join("target/wasm32-wasip2/release/orders_fulfillment.wasm");
    let contract = root().join("contracts/orders_service.manifest.json");
    let config = format!(
        "contract = {contract:?}\n\n\
         [[handlers]]\noperation = \"Orders.Process\"\ncomponent = {wasm:?}\n\n\
         [[workers]]\nqueue = \"fulfillment\"\ncomponent = {worker:?}\nconcurrency = 16\n\
         grants = {{ http = {{ allow = [] }} }}\n\n\
         [jobs]\nlease_ms = 1000\n\n[store]\nhost_lease_ms = 1000\n\n\
         [auth]\nhs256_secret_env = \"OPSHOST_JWT_SECRET\"\n",
    );
    let path = dir.join("host.toml");
    std::fs::write(&path, config).expect("config written");
    path
}

#[test]
fn orders_of_a_killed_host_are_finished_by_the_other() {
    let url = opshost_tests::postgres::fresh_database_blocking();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut a = Serve::on_postgres(&config, &url);
    let token = token(&["orders.write", "orders.read"]);
    let ids: Vec<String> = (0..ORDERS)
        .map(|n| {
            let input = format!(
                r#"{{"orderId":"ord_{n}","lineItems":[{{"sku":"A","quantity":1,"unitPriceCents":100}}]}}"#
            );
            let started = a.call(&token, &["start", "Orders.Process", "--input", &input]);
            assert!(started.status.success(), "{}", text(&started.stderr));
            json(&started)["id"].as_str().expect("an id").to_owned()
        })
        .collect();
    let _ = a.child.kill();
    let _ = a.child.wait();

    // B starts only now: whatever A accepted, B must take over (A's host and job leases run
    // out a second after its death).
    let b = Serve::on_postgres(&config, &url);

    for id in &ids {
        let waited = b.call(&token, &["wait", id, "--timeout", "60"]);
        assert_eq!(waited.status.code(), Some(0), "{}", text(&waited.stderr));
        let snapshot = json(&waited);
        assert_eq!(snapshot["state"], "completed", "{snapshot}");
        assert_eq!(snapshot["output"]["status"], "shipped", "{snapshot}");
    }
}

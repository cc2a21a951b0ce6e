//! Every integration test of the host in one binary, so wasmtime and the host are linked once
//! rather than once per file. Each module is one area of behaviour.

mod active_handlers;
mod browsers;
mod conformance;
mod deploys;
mod egress;
mod guest_failures;
mod hostile_guests;
mod http_api;
mod http_auth;
mod http_client;
mod http_connections;
mod http_hardening;
mod http_jobs;
mod http_logs;
mod jobs;
mod list_watch;
mod logs;
mod metrics;
mod native_handler;
mod orders_guest;
mod orders_harness;
mod postgres;
mod recovery;
mod sandbox;
mod several_hosts;
mod telemetry;
mod wasm_jobs;

//! The participant facade of `orders-service`, generated from
//! `contracts/orders_service.manifest.json` by `opshost-codegen` at build time.
//!
//! Types for every schema (`ProcessOrderRequest`, ...), operation markers in [`operations`]
//! and signal markers in [`signals`]; with the default `client` feature, the typed HTTP client
//! [`connect_service`].

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/orders_participant.rs"));

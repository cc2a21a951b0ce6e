//! The participant facade of `{{service}}`, generated from `contract.json` by `opshost-codegen`
//! at build time: a type per schema, a marker per operation and signal and, with the `client`
//! feature, the typed HTTP client.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/facade.rs"));

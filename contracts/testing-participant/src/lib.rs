//! The participant facade of `testing-service`, the contract of the purpose-made test guests,
//! generated from `contracts/testing.manifest.json` at build time.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/testing_participant.rs"));

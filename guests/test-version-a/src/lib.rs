//! Version a of `Testing.Scenario` for deploy tests (see `../test-versions/handler.rs`).

const VERSION: &str = "a";

include!("../../test-versions/handler.rs");

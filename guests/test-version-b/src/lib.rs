//! Version b of `Testing.Scenario` for deploy tests (see `../test-versions/handler.rs`).

const VERSION: &str = "b";

include!("../../test-versions/handler.rs");

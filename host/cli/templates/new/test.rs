//! `{{operation}}` under the real host, in-process: wasmtime, the same sandbox and limits as
//! `opshost serve`, the in-memory store and virtual time. `cargo test` builds the component
//! first.

use facade::operations::{{marker}};
use opshost_test::{Harness, OperationState, build_component};

fn harness() -> Harness {
    let component = build_component(env!("CARGO_MANIFEST_DIR"), env!("CARGO_PKG_NAME"))
        .expect("the component builds");
    Harness::builder(concat!(env!("CARGO_MANIFEST_DIR"), "/contract.json"))
        .handler("{{operation}}", component)
        .build()
        .expect("the host loads the component")
}

fn input<T: serde::de::DeserializeOwned>() -> T {
    serde_json::from_str({{input}}).expect("the example input decodes")
}

#[tokio::test]
async fn completes_with_the_placeholder_output() {
    let harness = harness();
    let run = harness.start::<{{marker}}>(input()).await.expect("the host accepts the input");
    let done = run.wait().await.expect("the operation ends");
    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    let output = serde_json::to_value(done.output).expect("the output encodes");
    assert_eq!(output, serde_json::from_str::<serde_json::Value>({{output}}).unwrap());
{{progress_assert}}}

//! The facade generator: markers, types, determinism and refusal of bad manifests.

use opshost_codegen::{CodegenError, generate};

const TESTING: &str = include_str!("../../../contracts/testing.manifest.json");

#[test]
fn the_facade_has_a_type_per_schema_and_a_marker_per_operation_and_signal() {
    let source = generate(TESTING).unwrap();
    for expected in [
        "pub struct ScenarioRequest",
        "pub struct ScenarioResult",
        "pub struct TestingScenario;",
        "pub type TestingScenarioOperation = TestingScenario;",
        "const NAME: &'static str = \"Testing.Scenario\";",
        "type Input = super::ScenarioRequest;",
        "type Progress = ();",
        "pub struct TestingScenarioNote;",
        "pub const MANIFEST: &str",
        "pub async fn connect_service(",
        "pub fn testing(&self) -> ::opshost_client::ServiceClient",
        "#[cfg(feature = \"client\")]",
    ] {
        assert!(source.contains(expected), "missing `{expected}`");
    }
    syn::parse_file(&source).expect("the facade is valid Rust");
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(generate(TESTING).unwrap(), generate(TESTING).unwrap());
}

#[test]
fn an_invalid_manifest_is_refused_with_its_issues() {
    let error =
        generate(r#"{"service": "s", "schemas": {}, "operations": {"A.B": {"version": "one"}}}"#)
            .unwrap_err();
    assert!(matches!(error, CodegenError::Contract(_)));
    assert!(
        error.to_string().contains("/operations/A.B/version"),
        "{error}"
    );
}

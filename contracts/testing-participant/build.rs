fn main() {
    if let Err(error) = opshost_codegen::build("../testing.manifest.json", "testing_participant.rs")
    {
        panic!("cannot generate the testing facade: {error}");
    }
}

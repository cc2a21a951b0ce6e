fn main() {
    if let Err(error) = opshost_codegen::build("../contract.json", "facade.rs") {
        panic!("cannot generate the facade of contract.json: {error}");
    }
}

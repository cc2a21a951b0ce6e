fn main() {
    if let Err(error) =
        opshost_codegen::build("../orders_service.manifest.json", "orders_participant.rs")
    {
        panic!("cannot generate the orders facade: {error}");
    }
}

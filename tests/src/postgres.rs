//! The PostgreSQL server of the tests: `OPSHOST_TEST_POSTGRES` names it (`./dev test` and
//! `.ci/run` start one with `scripts/postgres`), and each test gets a database of its own.

use tokio_postgres::NoTls;

/// The variable that names the test server.
pub const SERVER_VAR: &str = "OPSHOST_TEST_POSTGRES";

/// The URL of the test server, or a panic that says how to get one.
pub fn server() -> String {
    std::env::var(SERVER_VAR).unwrap_or_else(|_| {
        panic!(
            "{SERVER_VAR} is not set: run the tests with ./dev test, or start a server with \
             scripts/postgres start and export {SERVER_VAR}=<the URL it prints>"
        )
    })
}

/// Creates an empty database on the test server and answers its URL.
pub async fn fresh_database() -> String {
    let server = server();
    let (client, connection) = tokio_postgres::connect(&server, NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {server}: {error}"));
    tokio::spawn(connection);
    let name = format!("opshost_{}", ulid::Ulid::new().to_string().to_lowercase());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|error| panic!("cannot create database {name}: {error}"));
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// [`fresh_database`] from code that is not async.
pub fn fresh_database_blocking() -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(fresh_database())
}

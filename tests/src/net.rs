//! Real HTTP on loopback: a host's API on an ephemeral port, tokens signed with the test keys,
//! and a proxy whose connections a test can cut.

use std::net::SocketAddr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use opshost_jobs::Jobs;
use opshost_runtime::OperationRuntime;
use opshost_server::auth::{TokenRequest, mint_hs256};
use opshost_server::{AuthConfig, Authenticator, HttpApi, ServerConfig};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::root;

/// The HS256 secret of the test servers.
pub const SECRET: &str = "opshost-tests-hs256-secret-0123456789";

/// The tenant of [`token`].
pub const TENANT: &str = "acme";

/// Path of a test key file.
pub fn key(name: &str) -> std::path::PathBuf {
    root().join("tests/fixtures/keys").join(name)
}

/// Accepts HS256 ([`SECRET`]), Ed25519 and RS256 (the fixture keys).
pub fn auth_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ed25519_public_key: Some(key("ed25519.pub.pem")),
        rs256_public_key: Some(key("rs256.pub.pem")),
        ..AuthConfig::default()
    }
}

/// An HS256 token for subject `alice` of tenant [`TENANT`] with `scopes`, valid 10 minutes.
pub fn token(scopes: &[&str]) -> String {
    token_for(TENANT, scopes)
}

/// An HTTP client for tests. The process's rustls provider (ring) is installed first: the
/// workspace builds reqwest with TLS and no provider of its own.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// An HS256 token for subject `alice` of `tenant` with `scopes`, valid 10 minutes.
pub fn token_for(tenant: &str, scopes: &[&str]) -> String {
    let request = TokenRequest {
        subject: "alice".into(),
        tenant: Some(tenant.into()),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ttl: Duration::from_secs(600),
    };
    match mint_hs256(SECRET.as_bytes(), &request) {
        Ok(token) => token,
        Err(error) => panic!("cannot mint a test token: {error}"),
    }
}

/// Now, in seconds since the epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims for tenant [`TENANT`] with `scopes`, valid 10 minutes; tests edit them.
pub fn claims(scopes: &[&str]) -> Value {
    json!({ "sub": "alice", "tenant": TENANT, "scope": scopes.join(" "), "exp": now() + 600 })
}

/// Signs `claims` with `alg` and the matching key (HS256 secret, or a fixture private key).
pub fn sign(alg: Algorithm, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read(&key("ed25519.pem")))
            .unwrap_or_else(|e| panic!("ed25519 fixture: {e}")),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&read(&key("rs256.pem")))
            .unwrap_or_else(|e| panic!("rs256 fixture: {e}")),
        other => panic!("no test key for {other:?}"),
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &key)
        .unwrap_or_else(|e| panic!("cannot sign a test token: {e}"))
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of metric `name` in the `/metrics` of the host at `url`.
pub async fn metric(url: &str, name: &str) -> f64 {
    metric_if_shown(url, name)
        .await
        .unwrap_or_else(|| panic!("no metric {name} at {url}/metrics"))
}

/// The value of metric `name` at `url`, if the host shows it.
pub async fn metric_if_shown(url: &str, name: &str) -> Option<f64> {
    let text = http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("/metrics body: {e}"));
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Sends `request` and reads its answer as JSON.
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("answer is not JSON: {e}"))
}

/// A host's HTTP API on 127.0.0.1, stopped when dropped.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The runtime behind the API.
    pub runtime: OperationRuntime,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Serves `runtime` with the test keys and default settings.
    pub async fn start(runtime: &OperationRuntime) -> Self {
        Self::start_with(runtime, ServerConfig::default()).await
    }

    /// Serves `runtime` with the test keys and `config` (its `listen` is ignored).
    pub async fn start_with(runtime: &OperationRuntime, config: ServerConfig) -> Self {
        Self::serve(runtime, config, |api| api).await
    }

    /// Serves `runtime` and, for operators, its `jobs`, with the test keys.
    pub async fn start_with_jobs(runtime: &OperationRuntime, jobs: &Jobs) -> Self {
        let jobs = jobs.clone();
        Self::serve(runtime, ServerConfig::default(), |api| api.with_jobs(jobs)).await
    }

    /// Serves `runtime` with the test keys and default settings, the API as `configure`
    /// makes it (e.g. with deployments).
    pub async fn start_configured(
        runtime: &OperationRuntime,
        configure: impl FnOnce(HttpApi) -> HttpApi,
    ) -> Self {
        Self::serve(runtime, ServerConfig::default(), configure).await
    }

    async fn serve(
        runtime: &OperationRuntime,
        config: ServerConfig,
        configure: impl FnOnce(HttpApi) -> HttpApi,
    ) -> Self {
        // Any reqwest client the test makes needs the process's rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let auth = Authenticator::from_config(&auth_config())
            .unwrap_or_else(|e| panic!("test auth config: {e}"));
        let listener = bind().await;
        let scheme = if config.serves_tls() { "https" } else { "http" };
        let url = format!("{scheme}://{}", local(&listener));
        let api = configure(HttpApi::new(runtime.clone(), auth, config));
        let task = tokio::spawn(async move {
            if let Err(error) = api.serve(listener).await {
                panic!("test server failed: {error}");
            }
        });
        Self {
            url,
            runtime: runtime.clone(),
            task,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"))
}

fn local(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no local address: {e}"))
}

/// A TCP proxy on 127.0.0.1 in front of a server; [`Proxy::cut`] drops every open connection
/// (new ones are still accepted), as a flaky network or a restarting load balancer would.
pub struct Proxy {
    /// `http://127.0.0.1:PORT` of the proxy.
    pub url: String,
    cut: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy forwarding to `target` (`http://host:port`).
    pub async fn start(target: &str) -> Self {
        let target: SocketAddr = target
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("proxy target {target}: {e}"));
        let listener = bind().await;
        let url = format!("http://{}", local(&listener));
        let (cut, cuts) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { url, cut, task }
    }

    /// Drops every connection open now.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Rust client of the opshost HTTP API.
//!
//! [`Client`] speaks the untyped routes; [`ServiceClient::operation`] gives an
//! [`OperationClient`] typed by a facade marker, whose `start` returns an [`OperationRef`] with
//! `wait`, `watch`, `cancel` and `signal`. A generated facade wraps this in the caller's
//! shape: `connect_service(url, token)` and `client.orders().operation::<Op>()`.
//!
//! [`OperationRef::watch`] is a `Stream` of typed [`OperationEvent`]s that survives dropped
//! connections: it reconnects with the last revision it saw (`Last-Event-ID`) and never yields
//! a revision twice.
//!
//! Start an operation, watch it to its end and read the result:
//!
//! ```
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! # use futures::StreamExt;
//! # use opshost_api::{Operation, OperationEvent, OperationState};
//! # use serde_json::{Value, json};
//! # struct Greet;
//! # impl Operation for Greet {
//! #     const SERVICE: &'static str = "greeter";
//! #     const NAME: &'static str = "Greet";
//! #     const VERSION: &'static str = "v1";
//! #     type Input = Value;
//! #     type Progress = Value;
//! #     type Output = Value;
//! #     fn manifest() -> &'static str {
//! #         r#"{"service": "greeter", "schemas": {}, "operations": {"Greet": {"version": "v1",
//! #             "input": {"schema": {"type": "object"}}, "output": {"schema": {"type": "string"}},
//! #             "progress": {"schema": {"type": "integer"}},
//! #             "capabilities": {"call": ["greet"]}}}}"#
//! #     }
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! # let contract = opshost_contract::Contract::from_json(Greet::manifest()).unwrap();
//! # let runtime = opshost_runtime::OperationRuntime::builder(contract).build();
//! # runtime.operation::<Greet>().serve(|control, input: Value| async move {
//! #     control.started().await?;
//! #     control.progress(json!(50)).await?;
//! #     control.complete(json!(format!("hello, {}", input["name"]))).await?;
//! #     Ok(())
//! # });
//! # let secret = "a development secret of enough length";
//! # let auth = opshost_server::Authenticator::from_config(&opshost_server::AuthConfig {
//! #     hs256_secret: Some(secret.into()),
//! #     ..Default::default()
//! # }).unwrap();
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! # let url = format!("http://{}", listener.local_addr().unwrap());
//! # let api = opshost_server::HttpApi::new(runtime, auth, Default::default());
//! # tokio::spawn(api.serve(listener));
//! # let token = opshost_server::auth::mint_hs256(secret.as_bytes(), &opshost_server::auth::TokenRequest {
//! #     subject: "ada".into(), tenant: None, scopes: vec!["greet".into()], ttl: Duration::from_secs(60),
//! # }).unwrap();
//! // A host serving `Greet` of service `greeter` runs at `url`.
//! let client = opshost_client::Client::connect(&url, &token).await?;
//! let greetings = client.service("greeter").operation::<Greet>();
//! let greeting = greetings.start(json!({ "name": "Ada" })).await?;
//! let mut events = greeting.watch();
//! while let Some(event) = events.next().await {
//!     if let OperationEvent::Completed { snapshot } = event {
//!         assert_eq!(snapshot.output, Some(json!("hello, \"Ada\"")));
//!     }
//! }
//! let done = greeting.wait().await?;
//! assert_eq!(done.state, OperationState::Completed);
//! # Ok::<(), opshost_client::ClientError>(())
//! # }).unwrap();
//! ```

mod error;
mod logs;
#[cfg(feature = "rustls")]
mod tls;
mod watch;

use std::marker::PhantomData;
use std::time::Duration;

use opshost_api::id::url_segment as segment;
use opshost_api::{DeployTarget, Operation, OperationSnapshot, OperationState, Signal, Snapshot};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::Value;

pub use error::ClientError;
pub use opshost_api::{
    ErrorCode, JobPage, JobRecord, JobState, LogLevel, LogLine, LogStream, OperationEvent,
};
pub use watch::{EventStream, TypedEventStream};

/// Options of a start request.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// `Idempotency-Key`, scoped to the caller's tenant: repeating the same key and input
    /// returns the same operation. The operation id is the key itself in the default tenant and
    /// `key@tenant` in any other.
    pub idempotency_key: Option<String>,
    /// `Prefer: wait=N`: let the host hold the answer until the operation ends or this passes.
    pub wait: Option<Duration>,
}

/// Which operations to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this operation name.
    pub operation: Option<String>,
    /// Only this state.
    pub state: Option<OperationState>,
    /// The previous page's `next`.
    pub after: Option<String>,
    /// Page size.
    pub limit: Option<usize>,
}

/// Filters of [`Client::jobs`] (an operator's call).
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
    /// The previous page's `next`.
    pub after: Option<String>,
    /// Page size.
    pub limit: Option<usize>,
}

/// One page of a listing.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    /// Snapshots, ordered by id.
    pub items: Vec<Snapshot>,
    /// Cursor of the next page.
    pub next: Option<String>,
}

#[derive(Deserialize)]
struct SignalAck {
    sequence: u64,
}

/// A connection to one opshost host. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// How a [`Client`] reaches its host.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// A PEM file of certificate authorities to trust besides the system's, for a host whose
    /// certificate a private CA signed (HTTPS needs the `rustls` feature).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Client {
    /// A client for the host at `url` (e.g. `http://127.0.0.1:8080`) using bearer `token`.
    pub fn new(url: impl AsRef<str>, token: impl Into<String>) -> Result<Self, ClientError> {
        Self::with_options(url, token, &ClientOptions::default())
    }

    /// [`Client::new`] with `options`. An `https://` host needs the `rustls` feature.
    pub fn with_options(
        url: impl AsRef<str>,
        token: impl Into<String>,
        options: &ClientOptions,
    ) -> Result<Self, ClientError> {
        let base = url.as_ref().trim_end_matches('/').to_owned();
        #[cfg_attr(feature = "rustls", allow(unused_variables))]
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| ClientError::Protocol(format!("url `{base}`: {e}")))?;
        // Idle connections are dropped before a host's header timeout (10 s by default) would
        // close them, so a request never races the host closing its connection.
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(5));
        // Always configured, `http://` hosts too: with TLS built in, reqwest has no crypto
        // provider of its own to fall back on.
        #[cfg(feature = "rustls")]
        let builder = builder.tls_backend_preconfigured(tls::config(options.ca_file.as_deref())?);
        #[cfg(not(feature = "rustls"))]
        if parsed.scheme() == "https" || options.ca_file.is_some() {
            return Err(ClientError::Config(format!(
                "`{base}`: HTTPS needs opshost-client's `rustls` feature"
            )));
        }
        let http = builder.build().map_err(ClientError::Transport)?;
        Ok(Self {
            http,
            base,
            token: token.into(),
        })
    }

    /// Like [`Client::new`], then checks that the host answers `/healthz`.
    pub async fn connect(
        url: impl AsRef<str>,
        token: impl Into<String>,
    ) -> Result<Self, ClientError> {
        let client = Self::new(url, token)?;
        let response = client
            .http
            .get(format!("{}/healthz", client.base))
            .send()
            .await
            .map_err(ClientError::Transport)?;
        decode::<Value>(response).await?;
        Ok(client)
    }

    /// The namespace of one service's operations.
    pub fn service(&self, service: impl Into<String>) -> ServiceClient {
        ServiceClient {
            client: self.clone(),
            service: service.into(),
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Starts `operation` with a JSON input.
    pub async fn start(
        &self,
        operation: &str,
        input: &Value,
        options: &StartOptions,
    ) -> Result<Snapshot, ClientError> {
        let mut request = self
            .request(
                Method::POST,
                &format!("/v1/operations/{}", segment(operation)),
            )
            .json(input);
        if let Some(key) = &options.idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(wait) = options.wait {
            request = request.header("prefer", format!("wait={}", wait.as_secs()));
        }
        send(request).await
    }

    /// The current snapshot.
    pub async fn get(&self, id: &str) -> Result<Snapshot, ClientError> {
        send(self.request(Method::GET, &format!("/v1/operations/{}", segment(id)))).await
    }

    /// The terminal snapshot, or the current one after `timeout` (the host caps it).
    pub async fn wait_timeout(&self, id: &str, timeout: Duration) -> Result<Snapshot, ClientError> {
        let request = self
            .request(Method::GET, &format!("/v1/operations/{}/wait", segment(id)))
            .query(&[("timeout", timeout.as_secs_f64())]);
        send(request).await
    }

    /// The terminal snapshot, however long it takes (one long poll after another).
    pub async fn wait(&self, id: &str) -> Result<Snapshot, ClientError> {
        loop {
            let snapshot = self.wait_timeout(id, Duration::from_secs(60)).await?;
            if snapshot.is_terminal() {
                return Ok(snapshot);
            }
        }
    }

    /// Events of the operation: the current snapshot first (or every event after `after`),
    /// ending with the terminal event.
    pub fn watch(&self, id: &str, after: Option<u64>) -> EventStream {
        EventStream::new(self.clone(), id.to_owned(), after)
    }

    /// Cancels the operation; answers with its terminal snapshot.
    pub async fn cancel(&self, id: &str) -> Result<Snapshot, ClientError> {
        send(self.request(
            Method::POST,
            &format!("/v1/operations/{}/cancel", segment(id)),
        ))
        .await
    }

    /// Sends signal `name`; answers with its sequence number.
    pub async fn signal(&self, id: &str, name: &str, payload: &Value) -> Result<u64, ClientError> {
        let request = self
            .request(
                Method::POST,
                &format!("/v1/operations/{}/signals/{}", segment(id), segment(name)),
            )
            .json(payload);
        Ok(send::<SignalAck>(request).await?.sequence)
    }

    /// One page of the operations the caller may observe.
    pub async fn list(&self, query: &ListQuery) -> Result<Page, ClientError> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(operation) = &query.operation {
            params.push(("operation", operation.clone()));
        }
        if let Some(state) = query.state {
            params.push(("state", state.as_str().to_owned()));
        }
        if let Some(after) = &query.after {
            params.push(("after", after.clone()));
        }
        if let Some(limit) = query.limit {
            params.push(("limit", limit.to_string()));
        }
        send(self.request(Method::GET, "/v1/operations").query(&params)).await
    }

    /// The contract manifest the host serves.
    pub async fn contract(&self) -> Result<Value, ClientError> {
        send(self.request(Method::GET, "/v1/contract")).await
    }

    /// One page of the service's jobs (needs the host's admin capability).
    pub async fn jobs(&self, query: &JobQuery) -> Result<JobPage, ClientError> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(queue) = &query.queue {
            params.push(("queue", queue.clone()));
        }
        if let Some(state) = query.state {
            params.push(("state", state.as_str().to_owned()));
        }
        if let Some(after) = &query.after {
            params.push(("after", after.clone()));
        }
        if let Some(limit) = query.limit {
            params.push(("limit", limit.to_string()));
        }
        send(self.request(Method::GET, "/v1/jobs").query(&params)).await
    }

    /// One job (needs the host's admin capability).
    pub async fn job(&self, id: &str) -> Result<JobRecord, ClientError> {
        send(self.request(Method::GET, &format!("/v1/jobs/{}", segment(id)))).await
    }

    /// Queues a dead or cancelled job again (needs the host's admin capability).
    pub async fn retry_job(&self, id: &str) -> Result<JobRecord, ClientError> {
        let path = format!("/v1/jobs/{}/retry", segment(id));
        send(self.request(Method::POST, &path)).await
    }

    /// Cancels a job (needs the host's admin capability).
    pub async fn cancel_job(&self, id: &str) -> Result<JobRecord, ClientError> {
        let path = format!("/v1/jobs/{}/cancel", segment(id));
        send(self.request(Method::POST, &path)).await
    }

    /// The versions of each operation's handler and each queue's worker, and the last changes
    /// of the deployment log (needs the host's admin capability).
    pub async fn deployments(&self) -> Result<Value, ClientError> {
        send(self.request(Method::GET, "/v1/deployments")).await
    }

    /// Deploys `component` (a `.wasm` file's bytes) as the new version of `target`, for all
    /// new work or, with `percent`, that share of it; the host checks it first and refuses it
    /// with every problem found (needs the host's admin capability).
    pub async fn deploy(
        &self,
        target: &DeployTarget,
        component: Vec<u8>,
        percent: Option<u8>,
    ) -> Result<Value, ClientError> {
        let mut request = self
            .request(Method::POST, &deployment_path(target))
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(component);
        if let Some(percent) = percent {
            request = request.query(&[("percent", percent)]);
        }
        send(request).await
    }

    /// What a deploy of `component` as `target` would find, changing nothing: every problem
    /// that would refuse it, and the interfaces it imports beyond, or no longer, against the
    /// current version (needs the host's admin capability).
    pub async fn check_deploy(
        &self,
        target: &DeployTarget,
        component: Vec<u8>,
    ) -> Result<Value, ClientError> {
        let request = self
            .request(Method::POST, &deployment_path(target))
            .query(&[("dryRun", "true")])
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(component);
        send(request).await
    }

    /// Rolls `target` back: its ramp ends, or the previous version is made current again
    /// (needs the host's admin capability).
    pub async fn rollback(&self, target: &DeployTarget) -> Result<Value, ClientError> {
        let path = format!("{}/rollback", deployment_path(target));
        send(self.request(Method::POST, &path)).await
    }
}

fn deployment_path(target: &DeployTarget) -> String {
    format!(
        "/v1/deployments/{}/{}",
        target.collection(),
        segment(target.name())
    )
}

async fn send<T: serde::de::DeserializeOwned>(request: RequestBuilder) -> Result<T, ClientError> {
    let response = request.send().await.map_err(ClientError::Transport)?;
    decode(response).await
}

async fn decode<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, ClientError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .map(Duration::from_secs);
    let body = response.bytes().await.map_err(ClientError::Transport)?;
    if status.is_success() {
        return serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("response body: {e}")));
    }
    Err(ClientError::from_body(status, &body, retry_after))
}

/// The operations of one service.
#[derive(Clone)]
pub struct ServiceClient {
    client: Client,
    service: String,
}

impl ServiceClient {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.service
    }

    /// The untyped client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The typed handle of operation `Op`, a marker of this service's facade.
    pub fn operation<Op: Operation>(&self) -> OperationClient<Op> {
        debug_assert_eq!(
            Op::SERVICE,
            self.service,
            "{} is not an operation of this service",
            Op::NAME
        );
        OperationClient {
            client: self.client.clone(),
            marker: PhantomData,
        }
    }
}

/// Starts and resumes operations of type `Op`.
pub struct OperationClient<Op: Operation> {
    client: Client,
    marker: PhantomData<fn() -> Op>,
}

impl<Op: Operation> Clone for OperationClient<Op> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            marker: PhantomData,
        }
    }
}

impl<Op: Operation> OperationClient<Op> {
    /// Starts the operation with a fresh id.
    pub async fn start(&self, input: Op::Input) -> Result<OperationRef<Op>, ClientError> {
        self.start_with(input, &StartOptions::default()).await
    }

    /// Starts the operation with an idempotency key and/or an inline wait.
    pub async fn start_with(
        &self,
        input: Op::Input,
        options: &StartOptions,
    ) -> Result<OperationRef<Op>, ClientError> {
        let input = serde_json::to_value(&input).map_err(ClientError::Codec)?;
        let snapshot = typed::<Op>(self.client.start(Op::NAME, &input, options).await?)?;
        Ok(OperationRef {
            client: self.client.clone(),
            id: snapshot.id.clone(),
            accepted: Some(snapshot),
        })
    }

    /// A reference to an operation started earlier, by id. Nothing is checked until it is used.
    pub fn resume(&self, id: impl Into<String>) -> OperationRef<Op> {
        OperationRef {
            client: self.client.clone(),
            accepted: None,
            id: id.into(),
        }
    }
}

/// A started operation of type `Op`.
pub struct OperationRef<Op: Operation> {
    client: Client,
    id: String,
    accepted: Option<OperationSnapshot<Op>>,
}

impl<Op: Operation> Clone for OperationRef<Op> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            id: self.id.clone(),
            accepted: self.accepted.clone(),
        }
    }
}

impl<Op: Operation> OperationRef<Op> {
    /// The operation id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The snapshot the start request answered with (`None` for a resumed reference).
    pub fn accepted(&self) -> Option<&OperationSnapshot<Op>> {
        self.accepted.as_ref()
    }

    /// The current snapshot.
    pub async fn get(&self) -> Result<OperationSnapshot<Op>, ClientError> {
        typed(self.client.get(&self.id).await?)
    }

    /// Waits for the terminal snapshot.
    pub async fn wait(&self) -> Result<OperationSnapshot<Op>, ClientError> {
        typed(self.client.wait(&self.id).await?)
    }

    /// Waits up to `timeout`; the snapshot may not be terminal.
    pub async fn wait_timeout(
        &self,
        timeout: Duration,
    ) -> Result<OperationSnapshot<Op>, ClientError> {
        typed(self.client.wait_timeout(&self.id, timeout).await?)
    }

    /// Live typed events, from the current snapshot to the terminal one, reconnecting after a
    /// dropped connection. Why a stream ended early is told by
    /// [`TypedEventStream::take_error`].
    pub fn watch(&self) -> TypedEventStream<Op> {
        TypedEventStream::new(self.client.watch(&self.id, None))
    }

    /// Like [`OperationRef::watch`], resuming after revision `after`.
    pub fn watch_after(&self, after: u64) -> TypedEventStream<Op> {
        TypedEventStream::new(self.client.watch(&self.id, Some(after)))
    }

    /// Cancels the operation; answers with its terminal snapshot.
    pub async fn cancel(&self) -> Result<OperationSnapshot<Op>, ClientError> {
        typed(self.client.cancel(&self.id).await?)
    }

    /// Sends signal `S`; answers with its sequence number.
    pub async fn signal<S: Signal<Operation = Op>>(
        &self,
        input: &S::Input,
    ) -> Result<u64, ClientError> {
        let payload = serde_json::to_value(input).map_err(ClientError::Codec)?;
        self.client.signal(&self.id, S::NAME, &payload).await
    }
}

fn typed<Op: Operation>(snapshot: Snapshot) -> Result<OperationSnapshot<Op>, ClientError> {
    snapshot.typed::<Op>().map_err(ClientError::Codec)
}

fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

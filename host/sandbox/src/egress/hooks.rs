//! [`Egress`]: the `wasi:http` hooks of one store, and [`EgressRun`]: what one run sent.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use chrono::{DateTime, Utc};
use http::{Request, Response};
use http_body_util::BodyExt;
use opshost_api::OutboundRecord;
use opshost_runtime::OperationRuntime;
use tokio_rustls::rustls::pki_types::ServerName;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::EgressPolicy;
use super::allow::{Origin, Scheme};
use super::send::{self, Bounded, OnEnd, Timeouts};
use crate::limits::{HttpLimits, LimitBreach};

/// Refusals for a limit a run may ignore before it is stopped with `LimitExceeded`.
const TOLERATED_REFUSALS: u32 = 10;

/// What one run (a handler's attempt or a job's) sent: counts against its limits, refusals,
/// and where its records go.
pub(crate) struct EgressRun {
    limits: HttpLimits,
    runtime: OperationRuntime,
    operation: Option<String>,
    job: Option<String>,
    attempt: u32,
    requests: AtomicU64,
    in_flight: AtomicU32,
    refusals: AtomicU32,
    breach: Mutex<Option<LimitBreach>>,
}

impl EgressRun {
    /// A run of `operation`'s attempt `attempt` (or of job `job`'s), under `limits`.
    pub(crate) fn new(
        limits: HttpLimits,
        runtime: OperationRuntime,
        operation: Option<String>,
        job: Option<String>,
        attempt: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            limits,
            runtime,
            operation,
            job,
            attempt,
            requests: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            refusals: AtomicU32::new(0),
            breach: Mutex::new(None),
        })
    }

    /// The limit the run kept breaking, once it broke it too often.
    pub(crate) fn breach(&self) -> Option<LimitBreach> {
        self.breach
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counts a refusal for `limit`; past the tolerated number, the run is to be stopped.
    fn refuse(&self, limit: &'static str, detail: &str) {
        let refusals = self.refusals.fetch_add(1, Ordering::SeqCst) + 1;
        if refusals > TOLERATED_REFUSALS {
            self.breach
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(|| LimitBreach::Http {
                    limit,
                    detail: detail.to_owned(),
                    refusals,
                });
        }
    }

    fn save(&self, record: OutboundRecord) {
        tracing::info!(
            operation = self.operation.as_deref().unwrap_or(""),
            job = self.job.as_deref().unwrap_or(""),
            attempt = record.attempt,
            method = %record.method,
            origin = %record.origin,
            path = %record.path,
            status = record.status,
            duration_ms = record.duration_ms,
            bytes = record.bytes,
            denied = record.denied.as_deref().unwrap_or(""),
            error = record.error.as_deref().unwrap_or(""),
            "outbound request"
        );
        if let Some(operation) = &self.operation {
            self.runtime.outbound().record(operation, record);
        }
    }

    async fn send(
        self: Arc<Self>,
        policy: Option<Arc<EgressPolicy>>,
        mut request: Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(Response<WasiBody>, send::Io), Error> {
        let uri = request.uri().clone();
        let origin = match (uri.scheme_str().and_then(Scheme::parse), uri.host()) {
            (Some(scheme), Some(host)) => Some(Origin::new(scheme, host, uri.port_u16())),
            _ => None,
        };
        let record = Pending {
            run: Arc::clone(&self),
            at: Utc::now(),
            began: Instant::now(),
            method: request.method().to_string(),
            origin: origin.as_ref().map_or_else(
                || uri.authority().map_or("", |a| a.as_str()).to_owned(),
                Origin::to_string,
            ),
            path: uri.path().to_owned(),
        };
        let Some(policy) = policy else {
            return Err(record.deny("the component has no grants.http".into()));
        };
        let Some(origin) = origin else {
            return Err(record.deny(format!("`{uri}` has no http or https origin")));
        };
        let limits = self.limits;
        if self.requests.fetch_add(1, Ordering::SeqCst) >= limits.max_requests {
            let detail = format!("the run already sent its {} requests", limits.max_requests);
            self.refuse("http_max_requests", &detail);
            return Err(record.deny(format!("{detail} (limits.http_max_requests)")));
        }
        let Some(in_flight) = InFlight::enter(&self) else {
            let detail = format!(
                "the run already has {} requests in flight",
                limits.max_in_flight
            );
            self.refuse("http_max_in_flight", &detail);
            record.deny(format!("{detail} (limits.http_max_in_flight)"));
            return Err(Error::ConnectionLimitReached);
        };
        if !policy.allow.admits(&origin) {
            return Err(record.deny(format!("{origin} is not in grants.http.allow")));
        }
        let address = match policy
            .network
            .resolver
            .address(&origin, &policy.allow)
            .await
        {
            Ok(address) => address,
            Err(why) => return Err(record.deny(why)),
        };
        if let Some((_, headers)) = policy.headers.iter().find(|(o, _)| *o == origin) {
            for (name, value) in headers {
                request.headers_mut().insert(name, value.clone());
            }
        }
        let tls = match origin.scheme {
            Scheme::Https => match ServerName::try_from(origin.host.clone()) {
                Ok(name) => Some((policy.network.tls.clone(), name)),
                Err(_) => {
                    return Err(record.deny(format!("`{}` is not a TLS server name", origin.host)));
                }
            },
            Scheme::Http => None,
        };
        let options = options.unwrap_or_default();
        let clamp = |asked: Option<std::time::Duration>, most| asked.map_or(most, |a| a.min(most));
        let timeouts = Timeouts {
            connect: clamp(options.connect_timeout, limits.connect_timeout),
            first_byte: clamp(options.first_byte_timeout, limits.first_byte_timeout),
            between_bytes: clamp(options.between_bytes_timeout, limits.between_bytes_timeout),
        };
        let (response, io) = match send::send(request, address, tls, &timeouts).await {
            Ok(sent) => sent,
            Err(error) => return Err(record.fail(None, error)),
        };
        let status = response.status().as_u16();
        let (mut parts, body) = response.into_parts();
        strip_secrets(&mut parts.headers, &policy.secrets);
        let max = limits.max_response_bytes;
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max) {
            let detail = format!(
                "a response of {} bytes is over {max}",
                declared.unwrap_or(0)
            );
            self.refuse("http_max_response_bytes", &detail);
            return Err(record.fail(Some(status), Error::HttpResponseBodySize(Some(max))));
        }
        let run = Arc::clone(&self);
        let on_end: OnEnd = Box::new(move |bytes, failure| {
            drop(in_flight);
            if bytes > max {
                run.refuse(
                    "http_max_response_bytes",
                    &format!("a response body went over {max} bytes"),
                );
            }
            record.end(Some(status), bytes, failure);
        });
        let body = Bounded::new(body, max, timeouts.between_bytes, on_end).boxed_unsync();
        Ok((Response::from_parts(parts, body), io))
    }
}

/// Removes every header whose value carries one of `secrets`.
fn strip_secrets(headers: &mut http::HeaderMap, secrets: &[Arc<str>]) {
    if secrets.is_empty() {
        return;
    }
    let carrying: Vec<http::HeaderName> = headers
        .iter()
        .filter(|(_, value)| {
            let bytes = value.as_bytes();
            secrets.iter().any(|secret| {
                let secret = secret.as_bytes();
                bytes.windows(secret.len()).any(|window| window == secret)
            })
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in carrying {
        headers.remove(&name);
    }
}

/// A request counted as in flight until dropped.
struct InFlight(Arc<EgressRun>);

impl InFlight {
    fn enter(run: &Arc<EgressRun>) -> Option<Self> {
        let before = run.in_flight.fetch_add(1, Ordering::SeqCst);
        let entered = Self(Arc::clone(run));
        (before < run.limits.max_in_flight).then_some(entered)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The record of one request, saved once it ends.
struct Pending {
    run: Arc<EgressRun>,
    at: DateTime<Utc>,
    began: Instant,
    method: String,
    origin: String,
    path: String,
}

impl Pending {
    fn save(self, status: Option<u16>, bytes: u64, denied: Option<String>, error: Option<String>) {
        let record = OutboundRecord {
            at: self.at,
            attempt: self.run.attempt,
            job: self.run.job.clone(),
            method: self.method,
            origin: self.origin,
            path: self.path,
            status,
            duration_ms: u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX),
            bytes,
            denied,
            error,
        };
        self.run.save(record);
    }

    /// Records a refusal; answers the error the guest reads (`HTTP-request-denied`).
    fn deny(self, why: String) -> Error {
        self.save(None, 0, Some(why), None);
        Error::HttpRequestDenied
    }

    /// Records a failure after the request was sent; answers `error` for the guest.
    fn fail(self, status: Option<u16>, error: Error) -> Error {
        self.save(status, 0, None, Some(error.to_string()));
        error
    }

    fn end(self, status: Option<u16>, bytes: u64, failure: Option<String>) {
        self.save(status, bytes, None, failure);
    }
}

/// The `wasi:http` hooks of one store: its component's policy and its run's accounting.
pub(crate) struct Egress {
    policy: Option<Arc<EgressPolicy>>,
    run: Arc<EgressRun>,
}

impl Egress {
    pub(crate) fn new(policy: Option<Arc<EgressPolicy>>, run: Arc<EgressRun>) -> Self {
        Self { policy, run }
    }

    /// The limit the run kept breaking, once it broke it too often.
    pub(crate) fn breach(&self) -> Option<LimitBreach> {
        self.run.breach()
    }
}

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_result: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        let (policy, run) = (self.policy.clone(), Arc::clone(&self.run));
        Box::new(async move {
            let (response, io) = run.send(policy, request, options).await?;
            Ok((
                response,
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

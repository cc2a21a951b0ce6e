//! Prometheus metrics at `/metrics`: operations by state, start→terminal latency, handlers
//! running, jobs by queue and state and the attempts started here, the CPU time and peak
//! memory of each run by operation or queue, log lines dropped, and HTTP requests by route and
//! status.
//!
//! Operation and job counts are read from the store at scrape time; latencies come from the
//! runtime's event feed, so they cover every operation this host changed, whoever started it;
//! runs' usage comes from the runtime's usage feed as each run ends.

use std::sync::Arc;
use std::time::Duration;

use opshost_api::OperationEvent;
use opshost_jobs::Jobs;
use opshost_runtime::OperationRuntime;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::broadcast::error::RecvError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    operation: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    queue: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    kind: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
    status: u16,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn memory_histogram() -> Histogram {
    // 64 KiB .. 4 GiB
    Histogram::new(exponential_buckets(65_536.0, 2.0, 17))
}

/// The host's metrics registry.
pub struct Metrics {
    registry: Registry,
    operations: Family<StateLabels, Gauge>,
    accepted: Family<OperationLabels, Counter>,
    durations: HistogramFamily<StateLabels>,
    active: Gauge,
    doorbells: Gauge,
    watchers: Gauge,
    connections: Gauge,
    log_lines_dropped: Counter,
    jobs: Family<JobLabels, Gauge>,
    job_attempts: Family<QueueLabels, Counter>,
    run_cpu: HistogramFamily<RunLabels>,
    run_memory: HistogramFamily<RunLabels>,
    requests: Family<RouteLabels, Counter>,
    request_durations: HistogramFamily<RouteLabels>,
}

impl Metrics {
    /// A registry with every opshost metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("opshost");
        let operations = Family::<StateLabels, Gauge>::default();
        let accepted = Family::<OperationLabels, Counter>::default();
        let durations: HistogramFamily<StateLabels> =
            Family::new_with_constructor(latency_histogram);
        let active = Gauge::default();
        let doorbells = Gauge::default();
        let watchers = Gauge::default();
        let connections = Gauge::default();
        let log_lines_dropped = Counter::default();
        let jobs = Family::<JobLabels, Gauge>::default();
        let job_attempts = Family::<QueueLabels, Counter>::default();
        let run_cpu: HistogramFamily<RunLabels> = Family::new_with_constructor(latency_histogram);
        let run_memory: HistogramFamily<RunLabels> = Family::new_with_constructor(memory_histogram);
        let requests = Family::<RouteLabels, Counter>::default();
        let request_durations: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "operations",
            "Operations in the store by operation and state",
            operations.clone(),
        );
        registry.register(
            "operations_accepted",
            "Operations accepted by this host",
            accepted.clone(),
        );
        registry.register(
            "operation_duration_seconds",
            "Time from accept to the terminal state",
            durations.clone(),
        );
        registry.register(
            "active_handlers",
            "Operations whose handler (wasm guest or native) runs on this host",
            active.clone(),
        );
        registry.register(
            "doorbells",
            "Operations with a doorbell held on this host (by a watch, a wait or a handler)",
            doorbells.clone(),
        );
        registry.register(
            "watchers",
            "Server-Sent Events watch streams open on this host",
            watchers.clone(),
        );
        registry.register(
            "connections",
            "HTTP connections open on this host (when it accepts them itself)",
            connections.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Guest log lines dropped on this host since it started: over a run's rate, or with the store's queue full",
            log_lines_dropped.clone(),
        );
        registry.register(
            "jobs",
            "Jobs in the store by queue and state (dead ones included until purged)",
            jobs.clone(),
        );
        registry.register(
            "job_attempts",
            "Job attempts started on this host since it started, by queue",
            job_attempts.clone(),
        );
        registry.register(
            "run_cpu_seconds",
            "CPU time a run spent in wasm, by kind (handler or worker) and operation or queue",
            run_cpu.clone(),
        );
        registry.register(
            "run_peak_memory_bytes",
            "The most linear memory a run held at once, by kind and operation or queue",
            run_memory.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency (until the response head for streams)",
            request_durations.clone(),
        );
        Self {
            registry,
            operations,
            accepted,
            durations,
            active,
            doorbells,
            watchers,
            connections,
            log_lines_dropped,
            jobs,
            job_attempts,
            run_cpu,
            run_memory,
            requests,
            request_durations,
        }
    }

    /// The gauge of open connections.
    pub(crate) fn connections(&self) -> Gauge {
        self.connections.clone()
    }

    /// Counts one open watch stream until the guard is dropped with the stream.
    pub(crate) fn watching(&self) -> Watching {
        self.watchers.inc();
        Watching(self.watchers.clone())
    }

    /// Follows the runtime's event and usage feeds until the runtime is dropped.
    pub(crate) fn follow(self: &Arc<Self>, runtime: &OperationRuntime) {
        let metrics = Arc::clone(self);
        let mut usage = runtime.usage();
        tokio::spawn(async move {
            loop {
                match usage.recv().await {
                    Ok(usage) => {
                        let labels = RunLabels {
                            kind: usage.kind.to_owned(),
                            name: usage.name,
                        };
                        metrics
                            .run_cpu
                            .get_or_create(&labels)
                            .observe(usage.cpu.as_secs_f64());
                        metrics
                            .run_memory
                            .get_or_create(&labels)
                            .observe(usage.peak_memory_bytes as f64);
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
        let metrics = Arc::clone(self);
        let mut events = runtime.events();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => metrics.observe(&event),
                    Err(RecvError::Lagged(skipped)) => {
                        tracing::debug!(skipped, "metrics skipped events");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    fn observe(&self, event: &OperationEvent) {
        let snapshot = event.snapshot();
        if matches!(event, OperationEvent::Accepted { .. }) {
            self.accepted
                .get_or_create(&OperationLabels {
                    operation: snapshot.operation.clone(),
                })
                .inc();
        }
        if let Some(completed_at) = snapshot.completed_at {
            let elapsed = (completed_at - snapshot.created_at)
                .to_std()
                .unwrap_or_default();
            self.durations
                .get_or_create(&StateLabels {
                    operation: snapshot.operation.clone(),
                    state: snapshot.state.as_str().to_owned(),
                })
                .observe(elapsed.as_secs_f64());
        }
    }

    /// Records one HTTP request.
    pub(crate) fn request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let labels = RouteLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.request_durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with store counts read now.
    pub(crate) async fn render(
        &self,
        runtime: &OperationRuntime,
        jobs: Option<&Jobs>,
    ) -> Result<String, String> {
        if let Some(jobs) = jobs {
            let counts = jobs.counts().await.map_err(|e| e.to_string())?;
            self.jobs.clear();
            for count in counts {
                self.jobs
                    .get_or_create(&JobLabels {
                        queue: count.queue,
                        state: count.state.as_str().to_owned(),
                    })
                    .set(i64::try_from(count.count).unwrap_or(i64::MAX));
            }
            for (queue, attempts) in jobs.attempts() {
                catch_up(
                    &self.job_attempts.get_or_create(&QueueLabels { queue }),
                    attempts,
                );
            }
        }
        let counts = runtime.count_by_state().await.map_err(|e| e.to_string())?;
        self.operations.clear();
        for count in counts {
            self.operations
                .get_or_create(&StateLabels {
                    operation: count.operation,
                    state: count.state.as_str().to_owned(),
                })
                .set(i64::try_from(count.count).unwrap_or(i64::MAX));
        }
        self.active
            .set(i64::try_from(runtime.active_handlers()).unwrap_or(i64::MAX));
        self.doorbells
            .set(i64::try_from(runtime.doorbells()).unwrap_or(i64::MAX));
        catch_up(&self.log_lines_dropped, runtime.log_sink().dropped());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|e| e.to_string())?;
        Ok(text)
    }
}

/// Brings `counter` up to `total`, a count kept elsewhere that only grows.
fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// One open watch stream, counted in `opshost_watchers` while it lives.
pub(crate) struct Watching(Gauge);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

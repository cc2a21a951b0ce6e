//! The loader's part for job queues: payload schemas, attempts, backoff and timeouts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::QueueSpec;
use super::loader::{Loader, is_operation_name, pointer};

const QUEUE_KEYS: &[&str] = &[
    "description",
    "payload",
    "progress",
    "result",
    "maxAttempts",
    "backoff",
    "timeoutMs",
];
const BACKOFF_KEYS: &[&str] = &["initialMs", "maxMs"];

impl Loader {
    pub(super) fn queues(&mut self, value: &Value) -> BTreeMap<String, QueueSpec> {
        let mut queues = BTreeMap::new();
        let Some(object) = value.as_object() else {
            self.issue("/queues", "expected an object of queue name → queue");
            return queues;
        };
        for (name, entry) in object {
            let path = pointer("/queues", name);
            if !is_operation_name(name) {
                self.issue(
                    &path,
                    "queue names are dot-separated identifiers, e.g. `fulfillment`",
                );
            }
            if let Some(spec) = self.queue(name, entry, &path) {
                queues.insert(name.clone(), spec);
            }
        }
        queues
    }

    fn queue(&mut self, name: &str, value: &Value, path: &str) -> Option<QueueSpec> {
        let entry = self.object(value, path, QUEUE_KEYS)?;
        let payload = self.required_payload(entry, "payload", path);
        let progress = entry
            .get("progress")
            .and_then(|v| self.payload(v, &pointer(path, "progress")));
        let result = entry
            .get("result")
            .and_then(|v| self.payload(v, &pointer(path, "result")));
        let max_attempts = self.count(entry.get("maxAttempts"), &pointer(path, "maxAttempts"), 3);
        let timeout = self.millis(entry.get("timeoutMs"), &pointer(path, "timeoutMs"), 300_000);
        let backoff_path = pointer(path, "backoff");
        let backoff = entry
            .get("backoff")
            .and_then(|v| self.object(v, &backoff_path, BACKOFF_KEYS));
        let field = |key: &str| backoff.and_then(|b| b.get(key));
        let (initial, max) = (field("initialMs"), field("maxMs"));
        let backoff_initial = self.millis(initial, &pointer(&backoff_path, "initialMs"), 1_000);
        let backoff_max = self.millis(max, &pointer(&backoff_path, "maxMs"), 300_000);
        if backoff_max < backoff_initial {
            self.issue(&backoff_path, "`maxMs` is below `initialMs`");
        }
        Some(QueueSpec {
            name: name.to_owned(),
            payload: payload?,
            progress,
            result,
            max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
            backoff_initial,
            backoff_max,
            timeout,
        })
    }

    /// A positive integer, or `default` when absent.
    fn count(&mut self, value: Option<&Value>, path: &str, default: u64) -> u64 {
        match value {
            None => default,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 && n <= u64::from(u32::MAX) => n,
                _ => {
                    self.issue(path, format!("expected a whole number from 1 up, got {v}"));
                    default
                }
            },
        }
    }

    fn millis(&mut self, value: Option<&Value>, path: &str, default: u64) -> Duration {
        Duration::from_millis(self.count(value, path, default))
    }
}

//! The manifest model and its loader.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::capabilities::Capabilities;
use crate::error::{ContractError, ManifestIssue};
use crate::schema::PayloadSchema;
use crate::strict_json;

const TOP_KEYS: &[&str] = &[
    "$schema",
    "service",
    "description",
    "schemas",
    "operations",
    "queues",
];
const OPERATION_KEYS: &[&str] = &[
    "version",
    "description",
    "input",
    "progress",
    "output",
    "capabilities",
    "cancel",
    "signals",
];
const CAPABILITY_KEYS: &[&str] = &["call", "observe", "cancel", "control"];
const PAYLOAD_KEYS: &[&str] = &["schema", "description"];
const SIGNAL_KEYS: &[&str] = &["input", "description"];
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

/// A loaded, validated contract: one service, its schemas and its operations.
#[derive(Debug, Clone)]
pub struct Contract {
    service: String,
    manifest: Arc<Value>,
    schemas: BTreeMap<String, Value>,
    operations: BTreeMap<String, OperationSpec>,
    queues: BTreeMap<String, QueueSpec>,
}

/// A job queue of a contract: what its jobs carry and how failed attempts are retried.
///
/// ```json
/// "queues": { "fulfillment": { "payload": { "schema": "FulfillmentJob" },
///     "maxAttempts": 5, "backoff": { "initialMs": 1000, "maxMs": 60000 }, "timeoutMs": 30000 } }
/// ```
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Queue name, e.g. `fulfillment`.
    pub name: String,
    /// Payload schema, checked at enqueue.
    pub payload: PayloadSchema,
    /// Progress schema; `None` accepts any JSON progress.
    pub progress: Option<PayloadSchema>,
    /// Result schema; `None` accepts any JSON result.
    pub result: Option<PayloadSchema>,
    /// Attempts before a job is `dead` (default 3).
    pub max_attempts: u32,
    /// Delay before the first retry (default 1 s); doubled on each retry, with jitter.
    pub backoff_initial: Duration,
    /// Longest delay between attempts (default 5 min).
    pub backoff_max: Duration,
    /// Longest one attempt may run (default 5 min).
    pub timeout: Duration,
}

/// One operation of a contract, with schemas compiled and capability defaults resolved.
#[derive(Debug, Clone)]
pub struct OperationSpec {
    /// Operation name, e.g. `Orders.Process`.
    pub name: String,
    /// Contract version, e.g. `v1`.
    pub version: String,
    /// Start input schema.
    pub input: PayloadSchema,
    /// Progress schema; `None` when the operation reports no progress.
    pub progress: Option<PayloadSchema>,
    /// Output schema.
    pub output: PayloadSchema,
    /// Resolved capability lists.
    pub capabilities: Capabilities,
    /// Whether callers may cancel.
    pub cancel: bool,
    /// Named signals.
    pub signals: BTreeMap<String, SignalSpec>,
}

/// A named post-start input of an operation.
#[derive(Debug, Clone)]
pub struct SignalSpec {
    /// Signal name, e.g. `Expedite`.
    pub name: String,
    /// Payload schema.
    pub input: PayloadSchema,
}

impl Contract {
    /// Loads a manifest file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ContractError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ContractError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses and validates manifest text, reporting every problem found.
    pub fn from_json(text: &str) -> Result<Self, ContractError> {
        let root = strict_json::parse(text).map_err(|e| ContractError::Json(e.to_string()))?;
        let mut loader = Loader::default();
        let contract = loader.contract(&root);
        match contract {
            Some(contract) if loader.issues.is_empty() => Ok(contract),
            _ => Err(ContractError::Invalid(loader.issues)),
        }
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The manifest document as loaded.
    pub fn manifest(&self) -> &Value {
        &self.manifest
    }

    /// The named schemas, as written.
    pub fn schemas(&self) -> &BTreeMap<String, Value> {
        &self.schemas
    }

    /// All operations by name.
    pub fn operations(&self) -> &BTreeMap<String, OperationSpec> {
        &self.operations
    }

    /// One operation by name.
    pub fn operation(&self, name: &str) -> Option<&OperationSpec> {
        self.operations.get(name)
    }

    /// All job queues by name.
    pub fn queues(&self) -> &BTreeMap<String, QueueSpec> {
        &self.queues
    }

    /// One job queue by name.
    pub fn queue(&self, name: &str) -> Option<&QueueSpec> {
        self.queues.get(name)
    }
}

#[derive(Default)]
struct Loader {
    issues: Vec<ManifestIssue>,
    defs: Map<String, Value>,
}

fn pointer(path: &str, key: &str) -> String {
    format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"))
}

impl Loader {
    fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ManifestIssue {
            path: path.into(),
            message: message.into(),
        });
    }

    fn object<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(object) = value.as_object() else {
            self.issue(path, "expected an object");
            return None;
        };
        for key in object.keys().filter(|key| !allowed.contains(&key.as_str())) {
            self.issue(
                pointer(path, key),
                format!(
                    "unknown key `{key}` (expected one of: {})",
                    allowed.join(", ")
                ),
            );
        }
        Some(object)
    }

    fn contract(&mut self, root: &Value) -> Option<Contract> {
        let top = self.object(root, "", TOP_KEYS)?;
        let service = match top.get("service") {
            Some(Value::String(name)) if !name.trim().is_empty() => name.clone(),
            Some(_) => {
                self.issue("/service", "expected a non-empty string");
                String::new()
            }
            None => {
                self.issue("", "missing required key `service`");
                String::new()
            }
        };
        let schemas = self.schemas(top.get("schemas"));
        let operations = match top.get("operations") {
            Some(value) => self.operations(value),
            None => {
                self.issue("", "missing required key `operations`");
                BTreeMap::new()
            }
        };
        let queues = match top.get("queues") {
            Some(value) => self.queues(value),
            None => BTreeMap::new(),
        };
        Some(Contract {
            service,
            manifest: Arc::new(root.clone()),
            schemas,
            operations,
            queues,
        })
    }

    fn schemas(&mut self, value: Option<&Value>) -> BTreeMap<String, Value> {
        let Some(value) = value else {
            self.issue("", "missing required key `schemas`");
            return BTreeMap::new();
        };
        let Some(object) = value.as_object() else {
            self.issue("/schemas", "expected an object of name → JSON Schema");
            return BTreeMap::new();
        };
        for (name, schema) in object {
            let path = pointer("/schemas", name);
            if !is_identifier(name) {
                self.issue(
                    &path,
                    "schema names must start with a letter and use only letters, digits and `_`",
                );
            }
            if let Err(error) = jsonschema::draft202012::meta::validate(schema) {
                self.issue(&path, format!("not a valid JSON Schema 2020-12: {error}"));
            }
            let mut rewritten = schema.clone();
            self.resolve_refs(&mut rewritten, &path, object);
            self.defs.insert(name.clone(), rewritten);
        }
        object.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Rewrites `{"$ref": "Name"}` to the `$defs` entry of the named schema; reports refs that
    /// name no schema and refs outside the document.
    fn resolve_refs(&mut self, value: &mut Value, path: &str, names: &Map<String, Value>) {
        match value {
            Value::Object(object) => {
                for (key, child) in object.iter_mut() {
                    let child_path = pointer(path, key);
                    if key == "$ref" {
                        let Value::String(target) = child else {
                            self.issue(child_path, "`$ref` must be a string");
                            continue;
                        };
                        if target.starts_with('#') {
                            continue;
                        }
                        if names.contains_key(target.as_str()) {
                            *target = format!("#/$defs/{target}");
                        } else {
                            self.issue(child_path, format!("unknown schema `{target}` in `$ref`"));
                        }
                    } else {
                        self.resolve_refs(child, &child_path, names);
                    }
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter_mut().enumerate() {
                    self.resolve_refs(item, &format!("{path}/{index}"), names);
                }
            }
            _ => {}
        }
    }

    fn operations(&mut self, value: &Value) -> BTreeMap<String, OperationSpec> {
        let mut operations = BTreeMap::new();
        let Some(object) = value.as_object() else {
            self.issue(
                "/operations",
                "expected an object of operation name → operation",
            );
            return operations;
        };
        let mut type_names: BTreeMap<String, String> = BTreeMap::new();
        for (name, entry) in object {
            let path = pointer("/operations", name);
            if !is_operation_name(name) {
                self.issue(
                    &path,
                    "operation names are dot-separated identifiers, e.g. `Orders.Process`",
                );
            } else if let Some(other) = type_names.insert(name.replace('.', ""), name.clone()) {
                self.issue(
                    &path,
                    format!("duplicate operation name: `{name}` and `{other}` name the same type"),
                );
            }
            if let Some(spec) = self.operation(name, entry, &path) {
                operations.insert(name.clone(), spec);
            }
        }
        operations
    }

    fn operation(&mut self, name: &str, value: &Value, path: &str) -> Option<OperationSpec> {
        let entry = self.object(value, path, OPERATION_KEYS)?;
        let version = match entry.get("version") {
            Some(Value::String(v)) if is_version(v) => v.clone(),
            Some(other) => {
                self.issue(
                    pointer(path, "version"),
                    format!("bad version {other}: expected `v<digits>`, e.g. `v1`"),
                );
                String::new()
            }
            None => {
                self.issue(path, "missing required key `version`");
                String::new()
            }
        };
        let input = self.required_payload(entry, "input", path);
        let progress = entry
            .get("progress")
            .and_then(|v| self.payload(v, &pointer(path, "progress")));
        let output = self.required_payload(entry, "output", path);
        let capabilities =
            self.capabilities(entry.get("capabilities"), &pointer(path, "capabilities"));
        let cancel = match entry.get("cancel") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.issue(pointer(path, "cancel"), "expected true or false");
                false
            }
        };
        let signals = self.signals(entry.get("signals"), &pointer(path, "signals"));
        Some(OperationSpec {
            name: name.to_owned(),
            version,
            input: input?,
            progress,
            output: output?,
            capabilities,
            cancel,
            signals,
        })
    }

    fn required_payload(
        &mut self,
        entry: &Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<PayloadSchema> {
        match entry.get(key) {
            Some(value) => self.payload(value, &pointer(path, key)),
            None => {
                self.issue(path, format!("missing required key `{key}`"));
                None
            }
        }
    }

    /// `{"schema": {"$ref": "Name"}}`, the shorthand `{"schema": "Name"}`, or an inline schema.
    fn payload(&mut self, value: &Value, path: &str) -> Option<PayloadSchema> {
        let entry = self.object(value, path, PAYLOAD_KEYS)?;
        let schema_path = pointer(path, "schema");
        let (name, mut schema) = match entry.get("schema") {
            Some(Value::String(name)) => (Some(name.clone()), json!({ "$ref": name })),
            Some(schema @ Value::Object(object)) => {
                let name = match (object.len(), object.get("$ref")) {
                    (1, Some(Value::String(target))) => Some(target.clone()),
                    _ => None,
                };
                (name, schema.clone())
            }
            Some(_) => {
                self.issue(
                    &schema_path,
                    "expected a schema name or a JSON Schema object",
                );
                return None;
            }
            None => {
                self.issue(path, "missing required key `schema`");
                return None;
            }
        };
        if name.is_none()
            && let Err(error) = jsonschema::draft202012::meta::validate(&schema)
        {
            self.issue(
                &schema_path,
                format!("not a valid JSON Schema 2020-12: {error}"),
            );
            return None;
        }
        let names = self.defs.clone();
        let before = self.issues.len();
        self.resolve_refs(&mut schema, &schema_path, &names);
        if self.issues.len() > before {
            return None;
        }
        let Value::Object(object) = &mut schema else {
            return None;
        };
        object.insert("$defs".into(), Value::Object(names));
        match PayloadSchema::compile(name, schema) {
            Ok(compiled) => Some(compiled),
            Err(message) => {
                self.issue(schema_path, format!("schema does not compile: {message}"));
                None
            }
        }
    }

    fn string_list(&mut self, value: &Value, path: &str) -> Option<Vec<String>> {
        let list = value.as_array().and_then(|items| {
            items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        });
        if list.is_none() {
            self.issue(path, "expected a list of capability names");
        }
        list
    }

    fn capabilities(&mut self, value: Option<&Value>, path: &str) -> Capabilities {
        let Some(object) = value.and_then(|v| self.object(v, path, CAPABILITY_KEYS)) else {
            return Capabilities::default();
        };
        let mut list = |key: &str| {
            object
                .get(key)
                .and_then(|v| self.string_list(v, &pointer(path, key)))
        };
        let call = list("call").unwrap_or_default();
        let observe = list("observe");
        let cancel = list("cancel");
        let control = list("control");
        Capabilities {
            observe: observe.unwrap_or_else(|| call.clone()),
            cancel: cancel.unwrap_or_else(|| call.clone()),
            control: control.unwrap_or_else(|| call.clone()),
            call,
        }
    }

    fn signals(&mut self, value: Option<&Value>, path: &str) -> BTreeMap<String, SignalSpec> {
        let mut signals = BTreeMap::new();
        let Some(value) = value else {
            return signals;
        };
        let Some(object) = value.as_object() else {
            self.issue(path, "expected an object of signal name → signal");
            return signals;
        };
        for (name, entry) in object {
            let signal_path = pointer(path, name);
            if !is_identifier(name) {
                self.issue(
                    &signal_path,
                    "signal names must start with a letter and use only letters, digits and `_`",
                );
            }
            let Some(entry) = self.object(entry, &signal_path, SIGNAL_KEYS) else {
                continue;
            };
            if let Some(input) = self.required_payload(entry, "input", &signal_path) {
                signals.insert(
                    name.clone(),
                    SignalSpec {
                        name: name.clone(),
                        input,
                    },
                );
            }
        }
        signals
    }
}

impl Loader {
    fn queues(&mut self, value: &Value) -> BTreeMap<String, QueueSpec> {
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

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_operation_name(name: &str) -> bool {
    name.split('.').all(is_identifier)
}

fn is_version(version: &str) -> bool {
    version
        .strip_prefix('v')
        .is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
}

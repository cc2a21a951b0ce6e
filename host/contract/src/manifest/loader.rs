//! The manifest loader: walks the document once, checks every key it knows and refuses the
//! rest, resolves `$ref`s to named schemas and compiles each schema, collecting every problem
//! with its JSON pointer instead of stopping at the first.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Contract, OperationSpec, SignalSpec};
use crate::capabilities::Capabilities;
use crate::error::ManifestIssue;
use crate::schema::PayloadSchema;

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

#[derive(Default)]
pub(super) struct Loader {
    pub(super) issues: Vec<ManifestIssue>,
    defs: Map<String, Value>,
}

pub(super) fn pointer(path: &str, key: &str) -> String {
    format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"))
}

impl Loader {
    pub(super) fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ManifestIssue {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn object<'v>(
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

    pub(super) fn contract(&mut self, root: &Value) -> Option<Contract> {
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

    pub(super) fn required_payload(
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
    pub(super) fn payload(&mut self, value: &Value, path: &str) -> Option<PayloadSchema> {
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

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn is_operation_name(name: &str) -> bool {
    name.split('.').all(is_identifier)
}

fn is_version(version: &str) -> bool {
    version
        .strip_prefix('v')
        .is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
}

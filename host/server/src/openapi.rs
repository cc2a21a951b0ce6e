//! The OpenAPI 3.1 document at `/openapi.json`: every route, with the contract's schemas under
//! `components/schemas` so that each operation's start body, progress and output are typed.

use opshost_contract::{Contract, PayloadSchema};
use serde_json::{Map, Value, json};

const SCHEMAS: &str = "#/components/schemas/";

/// The document for `contract` (only the generic routes when none is loaded).
pub fn document(contract: Option<&Contract>) -> Value {
    let mut schemas = Map::new();
    let mut paths = generic_paths();
    let mut title = "opshost".to_owned();
    if let Some(contract) = contract {
        title = format!("{} operations", contract.service());
        for (name, schema) in contract.schemas() {
            schemas.insert(name.clone(), rewrite_refs(schema.clone()));
        }
        for (name, spec) in contract.operations() {
            let snapshot = json!({
                "allOf": [
                    { "$ref": format!("{SCHEMAS}Snapshot") },
                    { "properties": {
                        "progress": spec.progress.as_ref().map(payload).unwrap_or(Value::Bool(true)),
                        "output": payload(&spec.output),
                    } }
                ]
            });
            paths.insert(
                format!("/v1/operations/{name}"),
                json!({ "post": {
                    "operationId": format!("start {name}"),
                    "summary": format!("Start {name} ({})", spec.version),
                    "description": format!(
                        "Needs capabilities {:?}. Answers 202 with the accepted snapshot, or 200 with the terminal one when `Prefer: wait=N` sees it finish.",
                        spec.capabilities.call
                    ),
                    "parameters": [
                        { "name": "Idempotency-Key", "in": "header", "schema": { "type": "string", "maxLength": 200 },
                          "description": "Becomes the operation id: the same key and body return the same operation." },
                        { "name": "Prefer", "in": "header", "schema": { "type": "string", "examples": ["wait=10"] } },
                        { "name": "traceparent", "in": "header", "schema": { "type": "string" },
                          "description": "W3C trace context: the operation joins this trace, on every attempt, and carries it to its jobs and outbound requests." }
                    ],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": payload(&spec.input) } } },
                    "responses": {
                        "200": response("Terminal snapshot", snapshot.clone()),
                        "202": response("Accepted snapshot", snapshot),
                        "400": error_response(), "401": error_response(), "403": error_response(),
                        "404": error_response(), "409": error_response(), "413": error_response(),
                        "415": error_response(), "429": error_response(), "503": error_response()
                    }
                } }),
            );
            for (signal, signal_spec) in &spec.signals {
                paths.insert(
                    format!("/v1/operations/{{id}}/signals/{signal}"),
                    json!({ "post": {
                        "operationId": format!("signal {name} {signal}"),
                        "summary": format!("Send signal {signal} to an operation of {name}"),
                        "parameters": [id_parameter()],
                        "requestBody": { "required": true, "content": { "application/json": { "schema": payload(&signal_spec.input) } } },
                        "responses": {
                            "202": response("Signal accepted", json!({ "$ref": format!("{SCHEMAS}SignalAck") })),
                            "400": error_response(), "401": error_response(), "403": error_response(),
                            "404": error_response(), "409": error_response()
                        }
                    } }),
                );
            }
        }
    }
    schemas.extend(host_schemas());
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": { "title": title, "version": env!("CARGO_PKG_VERSION") },
        "security": [{ "bearer": [] }],
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
            "schemas": schemas
        },
        "paths": paths
    })
}

/// A payload's schema: a reference to its named schema, or the inline schema.
fn payload(schema: &PayloadSchema) -> Value {
    match schema.name() {
        Some(name) => json!({ "$ref": format!("{SCHEMAS}{name}") }),
        None => {
            let mut document = schema.document().clone();
            if let Some(object) = document.as_object_mut() {
                object.remove("$defs");
            }
            rewrite_refs(document)
        }
    }
}

/// Points `$ref: "Name"` and `$ref: "#/$defs/Name"` at `components/schemas`.
fn rewrite_refs(mut value: Value) -> Value {
    match &mut value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if key == "$ref"
                    && let Value::String(target) = child
                {
                    let name = target.strip_prefix("#/$defs/").unwrap_or(target);
                    if !name.starts_with('#') {
                        *target = format!("{SCHEMAS}{name}");
                    }
                } else {
                    *child = rewrite_refs(std::mem::take(child));
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = rewrite_refs(std::mem::take(item));
            }
        }
        _ => {}
    }
    value
}

fn response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn error_response() -> Value {
    response("Error", json!({ "$ref": format!("{SCHEMAS}Error") }))
}

fn id_parameter() -> Value {
    json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } })
}

fn snapshot_response() -> Value {
    response("Snapshot", json!({ "$ref": format!("{SCHEMAS}Snapshot") }))
}

fn generic_paths() -> Map<String, Value> {
    let errors =
        || json!({ "401": error_response(), "403": error_response(), "404": error_response() });
    let with_errors = |mut responses: Value| {
        if let (Some(target), Value::Object(extra)) = (responses.as_object_mut(), errors()) {
            target.extend(extra);
        }
        responses
    };
    let mut paths = Map::new();
    paths.insert("/v1/operations".into(), json!({ "get": {
        "operationId": "list",
        "summary": "List the caller's tenant's operations it may observe, ordered by id",
        "parameters": [
            { "name": "operation", "in": "query", "schema": { "type": "string" } },
            { "name": "state", "in": "query", "schema": { "$ref": format!("{SCHEMAS}State") } },
            { "name": "idPrefix", "in": "query", "schema": { "type": "string" }, "description": "Only ids that start with this" },
            { "name": "createdFrom", "in": "query", "schema": { "type": "string", "format": "date-time" }, "description": "Only operations created at or after this" },
            { "name": "createdUntil", "in": "query", "schema": { "type": "string", "format": "date-time" }, "description": "Only operations created before this" },
            { "name": "after", "in": "query", "schema": { "type": "string" }, "description": "The previous page's `next`" },
            { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1 } }
        ],
        "responses": with_errors(json!({ "200": response("A page", json!({ "$ref": format!("{SCHEMAS}Page") })) }))
    } }));
    paths.insert("/v1/events".into(), json!({ "get": {
        "operationId": "listWatch",
        "summary": "Server-Sent Events of every change to the caller's tenant's operations it may observe, across hosts. First `event: ready` (`id` = where the stream starts), then one event per change (`event` = kind, `id` = the change's cursor, `data` = snapshot)",
        "parameters": [
            { "name": "operation", "in": "query", "schema": { "type": "string" }, "description": "Only this operation" },
            { "name": "state", "in": "query", "schema": { "$ref": format!("{SCHEMAS}State") }, "description": "Only changes that leave an operation in this state" },
            { "name": "after", "in": "query", "schema": { "type": "string" }, "description": "Resume after this cursor" },
            { "name": "Last-Event-ID", "in": "header", "schema": { "type": "string" }, "description": "Resume after this cursor (wins over `after`)" }
        ],
        "responses": with_errors(json!({
            "200": { "description": "Event stream", "content": { "text/event-stream": { "schema": { "type": "string" } } } }
        }))
    } }));
    paths.insert(
        "/v1/operations/{id}".into(),
        json!({ "get": {
        "operationId": "get",
        "summary": "The current snapshot",
        "parameters": [id_parameter()],
        "responses": with_errors(json!({ "200": snapshot_response() }))
    } }),
    );
    paths.insert("/v1/operations/{id}/wait".into(), json!({ "get": {
        "operationId": "wait",
        "summary": "The terminal snapshot, or the current one after `timeout` seconds",
        "parameters": [id_parameter(), { "name": "timeout", "in": "query", "schema": { "type": "number", "minimum": 0 } }],
        "responses": with_errors(json!({ "200": snapshot_response() }))
    } }));
    paths.insert("/v1/operations/{id}/events".into(), json!({ "get": {
        "operationId": "watch",
        "summary": "Server-Sent Events: one per change (`event` = kind, `id` = revision, `data` = snapshot), closed after the terminal event",
        "parameters": [
            id_parameter(),
            { "name": "after", "in": "query", "schema": { "type": "integer", "minimum": 0 }, "description": "Resume after this revision" },
            { "name": "Last-Event-ID", "in": "header", "schema": { "type": "string" }, "description": "Resume after this revision" },
            { "name": "access_token", "in": "query", "schema": { "type": "string" }, "description": "A watch token of this operation (see watchToken), for callers that cannot send Authorization; never a bearer token" }
        ],
        "responses": with_errors(json!({
            "200": { "description": "Event stream", "content": { "text/event-stream": { "schema": { "type": "string" } } } },
            "204": { "description": "Resumed at or past the terminal revision: nothing more will come" }
        }))
    } }));
    paths.insert("/v1/operations/{id}/logs".into(), json!({ "get": {
        "operationId": "logs",
        "summary": "The operation's log lines: what its handler and job workers wrote to stdout, stderr and the log import, and the outbound requests they made. With follow=true, Server-Sent Events (`event: log`, `id` = the line's seq) until the operation has ended and its last lines are out, then one `event: end`; a stream closed without it is to be resumed",
        "parameters": [
            id_parameter(),
            { "name": "after", "in": "query", "schema": { "type": "integer", "minimum": 0 }, "description": "Lines after this seq" },
            { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 10000 }, "description": "Most lines (default 1000); not with follow" },
            { "name": "follow", "in": "query", "schema": { "type": "boolean" } },
            { "name": "Last-Event-ID", "in": "header", "schema": { "type": "string" }, "description": "With follow: resume after this seq" }
        ],
        "responses": with_errors(json!({ "200": { "description": "Lines, oldest first", "content": {
            "application/x-ndjson": { "schema": { "type": "object", "properties": {
                "seq": { "type": "integer" },
                "at": { "type": "string", "format": "date-time" },
                "attempt": { "type": "integer" },
                "job": { "type": "string" },
                "stream": { "type": "string", "enum": ["stdout", "stderr", "log", "http", "host"] },
                "level": { "type": "string", "enum": ["trace", "debug", "info", "warn", "error"] },
                "message": { "type": "string" },
                "fields": { "type": "object", "additionalProperties": { "type": "string" } },
                "traceId": { "type": "string", "description": "The trace of the run that wrote it" },
                "spanId": { "type": "string", "description": "The span of the attempt or job attempt that wrote it" }
            }, "required": ["seq", "at", "attempt", "stream", "level", "message"] } },
            "text/event-stream": { "schema": { "type": "string" } }
        } } }))
    } }));
    paths.insert(
        "/v1/operations/{id}/cancel".into(),
        json!({ "post": {
        "operationId": "cancel",
        "summary": "Cancel; answers with the terminal snapshot",
        "parameters": [id_parameter()],
        "responses": with_errors(json!({ "200": snapshot_response(), "409": error_response() }))
    } }),
    );
    paths.insert("/v1/operations/{id}/signals/{signal}".into(), json!({ "post": {
        "operationId": "signal",
        "summary": "Send a named signal declared by the operation",
        "parameters": [id_parameter(), { "name": "signal", "in": "path", "required": true, "schema": { "type": "string" } }],
        "requestBody": { "required": true, "content": { "application/json": { "schema": {} } } },
        "responses": with_errors(json!({
            "202": response("Signal accepted", json!({ "$ref": format!("{SCHEMAS}SignalAck") })),
            "400": error_response(), "409": error_response()
        }))
    } }));
    paths.insert("/v1/contract".into(), json!({ "get": {
        "operationId": "contract",
        "summary": "The contract manifest served",
        "responses": { "200": { "description": "Manifest", "content": { "application/json": { "schema": { "type": "object" } } } }, "401": error_response() }
    } }));
    paths.insert("/v1/me".into(), json!({ "get": {
        "operationId": "me",
        "summary": "The caller: its subject, tenant, capabilities and token expiry, the actions it may take on each operation, and whether it holds the admin capability",
        "responses": { "200": response("The caller", json!({ "type": "object", "required": ["subject", "tenant", "capabilities", "operations", "admin"], "properties": {
            "subject": { "type": "string" },
            "tenant": { "type": "string" },
            "capabilities": { "type": "array", "items": { "type": "string" } },
            "expiresAt": { "type": ["string", "null"], "format": "date-time" },
            "operations": { "type": "object", "additionalProperties": { "type": "array", "items": { "type": "string", "enum": ["call", "observe", "cancel", "control"] } } },
            "admin": { "type": "boolean" }
        } })), "401": error_response() }
    } }));
    paths.insert("/v1/jobs".into(), json!({ "get": {
        "operationId": "listJobs",
        "summary": "Operators: the service's jobs, ordered by id (needs the admin capability)",
        "parameters": [
            { "name": "queue", "in": "query", "schema": { "type": "string" } },
            { "name": "state", "in": "query", "schema": { "type": "string", "enum": ["queued", "running", "completed", "dead", "cancelled"] } },
            { "name": "after", "in": "query", "schema": { "type": "string" }, "description": "The previous page's `next`" },
            { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1 } }
        ],
        "responses": with_errors(json!({ "200": response("A page of jobs", json!({ "type": "object" })) }))
    } }));
    for (path, method, operation_id, summary) in [
        ("/v1/jobs/{id}", "get", "getJob", "Operators: one job"),
        (
            "/v1/jobs/{id}/retry",
            "post",
            "retryJob",
            "Operators: queue a dead or cancelled job again",
        ),
        (
            "/v1/jobs/{id}/cancel",
            "post",
            "cancelJob",
            "Operators: cancel a job (a running one is asked to stop)",
        ),
    ] {
        paths.insert(path.into(), json!({ method: {
            "operationId": operation_id,
            "summary": summary,
            "parameters": [id_parameter()],
            "responses": with_errors(json!({ "200": response("The job", json!({ "type": "object" })), "409": error_response() }))
        } }));
    }
    paths.insert("/v1/deployments".into(), json!({ "get": {
        "operationId": "listDeployments",
        "summary": "Operators: the versions of each operation's handler and each queue's worker (current, ramping, draining or drained, with who deployed them), and the last changes of the deployment log (needs the admin capability)",
        "responses": with_errors(json!({ "200": response("Versions by operation and by queue, and the history", json!({ "type": "object", "required": ["operations", "queues", "history"] })) }))
    } }));
    let target_parameters = json!([
        { "name": "kind", "in": "path", "required": true, "schema": { "type": "string", "enum": ["operations", "queues"] } },
        { "name": "name", "in": "path", "required": true, "schema": { "type": "string" }, "description": "The operation or the queue" }
    ]);
    let mut deploy_parameters = target_parameters.clone();
    if let Some(parameters) = deploy_parameters.as_array_mut() {
        parameters.push(json!({ "name": "percent", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": 100 }, "description": "Give the new version only this share of new work (a ramp)" }));
        parameters.push(json!({ "name": "dryRun", "in": "query", "required": false, "schema": { "type": "boolean" }, "description": "Only check: answer 200 with { sha256, current, problems, importsAdded, importsRemoved }, changing nothing" }));
    }
    paths.insert("/v1/deployments/{kind}/{name}".into(), json!({ "post": {
        "operationId": "deploy",
        "summary": "Operators: check a component and deploy it as the version of the handler or worker that new work runs; refused with every problem found, changing nothing",
        "parameters": deploy_parameters,
        "requestBody": { "required": true, "content": { "application/wasm": { "schema": { "type": "string", "format": "binary" } } } },
        "responses": with_errors(json!({ "201": response("Deployed: its sha256 and share", json!({ "type": "object", "required": ["kind", "name", "sha256", "percent"] })) }))
    } }));
    paths.insert("/v1/deployments/{kind}/{name}/rollback".into(), json!({ "post": {
        "operationId": "rollback",
        "summary": "Operators: end the ramp, or else make the previous version current again",
        "parameters": target_parameters,
        "responses": with_errors(json!({ "200": response("Rolled back: the version now current", json!({ "type": "object", "required": ["kind", "name", "sha256"] })), "409": error_response() }))
    } }));
    paths.insert("/v1/operations/{id}/watch-token".into(), json!({ "post": {
        "operationId": "watchToken",
        "summary": "A short-lived token letting a browser's EventSource watch this operation: accepted only as ?access_token= on its events (needs the observe capability)",
        "parameters": [id_parameter()],
        "responses": with_errors(json!({ "200": response("The token, when it expires, and the events URL that takes it", json!({ "type": "object", "required": ["token", "expiresAt", "events"], "properties": { "token": { "type": "string" }, "expiresAt": { "type": "string", "format": "date-time" }, "events": { "type": "string" } } })) }))
    } }));
    paths.insert("/v1/config/reload".into(), json!({ "post": {
        "operationId": "reloadConfig",
        "summary": "Operators: read the host's config file again and apply its [limits] and grants to new runs, without a restart; refused as a whole, changing nothing, when any version held would not link under the new grants",
        "responses": with_errors(json!({ "200": response("What changed, one line each", json!({ "type": "object", "required": ["changes"], "properties": { "changes": { "type": "array", "items": { "type": "string" } } } })) }))
    } }));
    for (path, summary, content) in [
        ("/healthz", "Liveness", "application/json"),
        (
            "/metrics",
            "Prometheus metrics",
            "application/openmetrics-text",
        ),
        ("/openapi.json", "This document", "application/json"),
    ] {
        paths.insert(path.into(), json!({ "get": {
            "summary": summary,
            "security": [],
            "responses": { "200": { "description": summary, "content": { content: { "schema": {} } } } }
        } }));
    }
    paths
}

fn host_schemas() -> Map<String, Value> {
    let schemas = json!({
        "State": { "type": "string", "enum": ["pending", "running", "completed", "failed", "cancelled"] },
        "ErrorInfo": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": { "type": "string", "enum": [
                    "OperationNotFound", "OperationAlreadyExists", "OperationTerminal",
                    "OperationUnsupportedControl", "InvalidInput", "Unauthenticated",
                    "MissingCapability", "LimitExceeded", "HandlerTrapped", "HandlerNonTerminal",
                    "HostRestarted", "Overloaded", "HandlerFailed", "Cancelled", "Internal",
                    "JobNotFound", "Unavailable"
                ] },
                "message": { "type": "string" },
                "details": {}
            }
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": { "$ref": format!("{SCHEMAS}ErrorInfo") } }
        },
        "Snapshot": {
            "type": "object",
            "required": ["id", "service", "operation", "version", "revision", "state", "cancelRequested", "attempt", "createdAt", "updatedAt"],
            "properties": {
                "id": { "type": "string" },
                "service": { "type": "string" },
                "operation": { "type": "string" },
                "version": { "type": "string" },
                "revision": { "type": "integer", "minimum": 1 },
                "state": { "$ref": format!("{SCHEMAS}State") },
                "progress": {},
                "output": {},
                "error": { "$ref": format!("{SCHEMAS}ErrorInfo") },
                "cancelRequested": { "type": "boolean" },
                "attempt": { "type": "integer", "minimum": 1 },
                "createdAt": { "type": "string", "format": "date-time" },
                "updatedAt": { "type": "string", "format": "date-time" },
                "completedAt": { "type": "string", "format": "date-time" },
                "component": { "type": "string", "pattern": "^[0-9a-f]{64}$", "description": "The sha256 of the handler's component the operation is pinned to: every attempt runs this version" },
                "trace": {
                    "type": "object",
                    "description": "The trace the operation's spans belong to: the span its attempts hang from",
                    "required": ["traceId", "spanId"],
                    "properties": {
                        "traceId": { "type": "string", "pattern": "^[0-9a-f]{32}$" },
                        "spanId": { "type": "string", "pattern": "^[0-9a-f]{16}$" },
                        "sampled": { "type": "boolean" },
                        "state": { "type": "string", "description": "The caller's W3C tracestate, passed on as it came" }
                    }
                }
            }
        },
        "Page": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": { "type": "array", "items": { "$ref": format!("{SCHEMAS}Snapshot") } },
                "next": { "type": ["string", "null"] }
            }
        },
        "SignalAck": {
            "type": "object",
            "required": ["id", "signal", "sequence"],
            "properties": {
                "id": { "type": "string" },
                "signal": { "type": "string" },
                "sequence": { "type": "integer", "minimum": 1 }
            }
        }
    });
    match schemas {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

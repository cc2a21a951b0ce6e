//! `Testing.Scenario` through outbound HTTP: each scenario sends requests a test server sees,
//! and completes with a JSON note of what the guest saw (statuses, headers, error codes).
//!
//! - `fetch`: one `GET` of `url` (with `header`, if given).
//! - `fetch-follow`: a `GET` of `url`, then of the `location` of a redirect.
//! - `fetch-loop`: `count` `GET`s of `url`, ignoring every error; the note lists how long each
//!   one took, in microseconds, from the call to the end of its body.
//! - `fetch-parallel`: `count` `GET`s of `url` handed to the host at once, then awaited; the
//!   note counts the answers and the errors by code.
//! - `exfiltrate`: a `GET` of `url`, then a `POST` to `then` of everything its response showed.

use opshost_guest::http::{HttpError, Response};
use opshost_guest::{Context, HandlerError, OperationHandler, export_handler};
use serde_json::{Value, json};
use testing_participant::operations::TestingScenario;
use testing_participant::{ScenarioRequest, ScenarioRequestScenario as Scenario, ScenarioResult};

struct Egress;

impl OperationHandler for Egress {
    type Operation = TestingScenario;

    fn handle(ctx: &Context<TestingScenario>, input: ScenarioRequest) -> Result<(), HandlerError> {
        ctx.started()?;
        let url = input.url.clone().unwrap_or_default();
        let note = match input.scenario {
            Scenario::Fetch => {
                let mut request = ctx.http().get(&url);
                if let Some((name, value)) = input.header.as_deref().and_then(|h| h.split_once(':'))
                {
                    request = request.header(name.trim(), value.trim());
                }
                seen(request.send())
            }
            Scenario::FetchFollow => match ctx.http().get(&url).send() {
                Ok(first) if (300..400).contains(&first.status()) => {
                    let location = first.header("location").unwrap_or_default().to_owned();
                    json!({ "redirect": location, "then": seen(ctx.http().get(&location).send()) })
                }
                other => seen(other),
            },
            Scenario::FetchLoop => {
                let (mut ok, mut errors) = (0u64, serde_json::Map::new());
                let mut micros = Vec::new();
                for _ in 0..input.count.unwrap_or(1) {
                    let began = std::time::Instant::now();
                    let sent = ctx.http().get(&url).send();
                    micros.push(began.elapsed().as_micros() as u64);
                    match sent {
                        Ok(_) => ok += 1,
                        Err(error) => {
                            let count = errors.entry(error.error_code()).or_insert(json!(0));
                            *count = json!(count.as_u64().unwrap_or(0) + 1);
                        }
                    }
                }
                json!({ "ok": ok, "errors": errors, "micros": micros })
            }
            Scenario::FetchParallel => parallel(&url, input.count.unwrap_or(1)),
            Scenario::Exfiltrate => {
                let first = seen(ctx.http().get(&url).send());
                let then = input.then.clone().unwrap_or_default();
                let posted = match ctx.http().post(&then).json(&first).send() {
                    Ok(response) => json!(response.status()),
                    Err(error) => json!(error.to_string()),
                };
                json!({ "saw": first, "posted": posted })
            }
            other => {
                return Err(HandlerError::new(format!(
                    "scenario {other} is served by the test-handlers guest"
                )));
            }
        };
        ctx.complete(&ScenarioResult {
            note: note.to_string(),
            signals: Vec::new(),
        })?;
        Ok(())
    }
}

/// Hands `count` `GET`s of `url` to the host before waiting for any, through `wasi:http`
/// directly (the SDK's requests are one at a time).
fn parallel(url: &str, count: u64) -> Value {
    use wasip2::http::outgoing_handler::handle;
    use wasip2::http::types::{Fields, OutgoingBody, OutgoingRequest, Scheme};
    let Some((authority, path)) = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
    else {
        return json!({ "error": "expected http://authority/path" });
    };
    let path = format!("/{path}");
    let mut pending = Vec::new();
    let mut errors = serde_json::Map::new();
    let mut count_error = |code: String| {
        let count = errors.entry(code).or_insert(json!(0));
        *count = json!(count.as_u64().unwrap_or(0) + 1);
    };
    for _ in 0..count {
        let request = OutgoingRequest::new(Fields::new());
        let _ = request.set_scheme(Some(&Scheme::Http));
        let _ = request.set_authority(Some(authority));
        let _ = request.set_path_with_query(Some(&path));
        let body = request.body().expect("a body");
        match handle(request, None) {
            Ok(future) => pending.push(future),
            Err(code) => count_error(format!("{code:?}")),
        }
        let _ = OutgoingBody::finish(body, None);
    }
    let mut ok = 0u64;
    for future in pending {
        future.subscribe().block();
        match future.get() {
            Some(Ok(Ok(_))) => ok += 1,
            Some(Ok(Err(code))) => count_error(format!("{code:?}")),
            _ => count_error("no answer".into()),
        }
    }
    json!({ "ok": ok, "errors": errors })
}

/// What the guest saw of a response, or of the error instead of one.
fn seen(outcome: Result<Response, HttpError>) -> Value {
    match outcome {
        Ok(response) => {
            let headers: serde_json::Map<String, Value> = response
                .headers()
                .iter()
                .map(|(name, value)| (name.clone(), json!(String::from_utf8_lossy(value))))
                .collect();
            json!({
                "status": response.status(),
                "bytes": response.bytes().len(),
                "headers": headers,
                "body": String::from_utf8_lossy(&response.bytes()[..response.bytes().len().min(512)]),
            })
        }
        Err(error) => json!({ "error": error.error_code(), "message": error.to_string() }),
    }
}

export_handler!(Egress);

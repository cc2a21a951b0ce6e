//! `Testing.Scenario` through outbound HTTP: each scenario sends requests a test server sees,
//! and completes with a JSON note of what the guest saw (statuses, headers, error codes).
//!
//! - `fetch`: one `GET` of `url` (with `header`, if given).
//! - `fetch-follow`: a `GET` of `url`, then of the `location` of a redirect.
//! - `fetch-loop`: `count` `GET`s of `url`, ignoring every error; the note lists how long each
//!   one took, in microseconds, from the call to the end of its body.
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

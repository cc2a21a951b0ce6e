//! The worker of the testing queues (`testing.work`, `testing.owned`): the payload's
//! `behaviour` says what one attempt does.

use std::time::Duration;

use opshost_guest::{HandlerError, HostError, JobContext, JobWorker, export_worker};
use serde_json::Value;
use testing_participant::operations::TestingScenario;
use testing_participant::{Note, ScenarioProgress, ScenarioResult};

struct Behaviours;

fn note(text: String) -> Note {
    Note { text }
}

impl JobWorker for Behaviours {
    type Output = Note;

    fn run(job: &JobContext) -> Result<Note, HandlerError> {
        let payload: Value = job.payload()?;
        match payload["behaviour"].as_str().unwrap_or_default() {
            "complete" => {
                job.progress(&ScenarioProgress {
                    percent: 50,
                    padding: None,
                })?;
                Ok(note(format!("done {}", payload["n"])))
            }
            "fail" => Err(HandlerError::new(format!(
                "worker failed attempt {}",
                job.attempt()
            ))),
            "trap" => panic!("worker trap: deliberate panic"),
            "hang" => loop {
                std::hint::black_box(());
            },
            "finish-operation" => {
                let ctx = job.control::<TestingScenario>()?;
                ctx.progress(&ScenarioProgress {
                    percent: 90,
                    padding: None,
                })?;
                ctx.complete(&ScenarioResult {
                    note: format!("completed by wasm job {}", job.id()),
                    signals: Vec::new(),
                })?;
                Ok(note("finished the operation".into()))
            }
            "await-cancel" => {
                let ctx = job.control::<TestingScenario>()?;
                ctx.progress(&ScenarioProgress {
                    percent: 20,
                    padding: None,
                })?;
                loop {
                    match ctx.sleep(Duration::from_millis(50)) {
                        Ok(()) => {}
                        Err(HostError::Cancelled) => {
                            ctx.acknowledge_cancel()?;
                            return Err(HandlerError::new("stopped on request"));
                        }
                        Err(other) => return Err(other.into()),
                    }
                }
            }
            other => Err(HandlerError::new(format!("unknown behaviour `{other}`"))),
        }
    }
}

export_worker!(Behaviours);

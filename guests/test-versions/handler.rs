// `Testing.Scenario` as one version of a component: each build names its version in what it
// answers, so that a test sees which version ran an operation. Included by `test-version-a`
// and `test-version-b`, which differ only in `VERSION`.

use std::time::Duration;

use opshost_guest::{Context, HandlerError, OperationHandler, export_handler};
use testing_participant::operations::TestingScenario;
use testing_participant::{ScenarioRequest, ScenarioRequestScenario as Scenario, ScenarioResult};

struct Versioned;

impl OperationHandler for Versioned {
    type Operation = TestingScenario;

    fn handle(ctx: &Context<TestingScenario>, input: ScenarioRequest) -> Result<(), HandlerError> {
        ctx.started()?;
        if input.scenario == Scenario::EchoSignals {
            // Waits for one signal, so that the operation is in flight across a deploy.
            if ctx.next_signal(Some(Duration::from_secs(60)))?.is_none() {
                return Err(HandlerError::new("no signal within 60 s"));
            }
        }
        ctx.complete(&ScenarioResult {
            note: format!("version {VERSION}, attempt {}", ctx.attempt()),
            signals: Vec::new(),
        })?;
        Ok(())
    }
}

export_handler!(Versioned);

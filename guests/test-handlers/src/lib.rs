//! `Testing.Scenario`: one guest, one behaviour per scenario, for the host's tests.

use std::time::Duration;

use opshost_guest::{Context, HandlerError, HostError, OperationHandler, export_handler};
use testing_participant::operations::TestingScenario;
use testing_participant::signals::TestingScenarioNote;
use testing_participant::{
    ScenarioProgress, ScenarioRequest, ScenarioRequestScenario as Scenario, ScenarioResult,
};

struct Scenarios;

fn done(
    ctx: &Context<TestingScenario>,
    note: impl Into<String>,
    signals: Vec<String>,
) -> Result<(), HandlerError> {
    ctx.complete(&ScenarioResult {
        note: note.into(),
        signals,
    })?;
    Ok(())
}

impl OperationHandler for Scenarios {
    type Operation = TestingScenario;

    fn handle(ctx: &Context<TestingScenario>, input: ScenarioRequest) -> Result<(), HandlerError> {
        ctx.started()?;
        match input.scenario {
            Scenario::Complete => {
                ctx.progress(&ScenarioProgress { percent: 50 })?;
                done(ctx, format!("attempt {}", ctx.attempt()), Vec::new())
            }
            Scenario::Fail => Err(HandlerError::new("the scenario asked to fail")),
            Scenario::Trap => panic!("scenario trap: deliberate panic"),
            Scenario::NonTerminal => Ok(()),
            Scenario::IgnoreCancel => {
                let mut spins: u64 = 0;
                loop {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            }
            Scenario::BadProgress => match ctx.progress(&ScenarioProgress { percent: 500 }) {
                Err(HostError::InvalidPayload(message)) => done(ctx, message, Vec::new()),
                other => Err(HandlerError::new(format!(
                    "invalid progress was not refused: {other:?}"
                ))),
            },
            Scenario::AwaitCancel => loop {
                match ctx.next_signal(None) {
                    Err(HostError::Cancelled) => {
                        ctx.acknowledge_cancel()?;
                        return Ok(());
                    }
                    Err(other) => return Err(other.into()),
                    Ok(_) => {}
                }
            },
            Scenario::EchoSignals => {
                let wanted = input.signals.unwrap_or(1);
                let mut texts = Vec::new();
                while (texts.len() as u64) < wanted {
                    let Some(signal) = ctx.next_signal(Some(Duration::from_secs(30)))? else {
                        return Err(HandlerError::new("no signal within 30 s"));
                    };
                    if let Some(note) = signal.decode::<TestingScenarioNote>() {
                        texts.push(format!("{}:{}", signal.sequence, note.text));
                    }
                }
                done(ctx, "echoed", texts)
            }
            Scenario::HandOff => {
                ctx.progress(&ScenarioProgress { percent: 10 })?;
                let behaviour = input.job.as_deref().unwrap_or("finish-operation");
                ctx.hand_off(
                    "testing.owned",
                    &serde_json::json!({ "behaviour": behaviour }),
                )?;
                Ok(())
            }
        }
    }
}

export_handler!(Scenarios);

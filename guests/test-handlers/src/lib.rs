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
                ctx.progress(&ScenarioProgress {
                    percent: 50,
                    padding: None,
                })?;
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
            Scenario::BadProgress => match ctx.progress(&ScenarioProgress {
                percent: 500,
                padding: None,
            }) {
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
            Scenario::MemoryBomb => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![7; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Scenario::Recursion => {
                deeper(0);
                Err(HandlerError::new("the recursion ended"))
            }
            Scenario::Unreachable => core::arch::wasm32::unreachable(),
            Scenario::ProgressFlood => {
                let count = input.count.unwrap_or(1000);
                for n in 0..count {
                    ctx.progress(&ScenarioProgress {
                        percent: n * 100 / count.max(1),
                        padding: None,
                    })?;
                }
                ctx.progress(&ScenarioProgress {
                    percent: 100,
                    padding: None,
                })?;
                done(
                    ctx,
                    format!("sent {} progress events", count + 1),
                    Vec::new(),
                )
            }
            Scenario::ProgressHoard => {
                let padding = "x".repeat(input.bytes.unwrap_or(1024) as usize);
                for n in 0..input.count.unwrap_or(1000) {
                    ctx.progress(&ScenarioProgress {
                        percent: n % 100,
                        padding: Some(padding.clone()),
                    })?;
                    ctx.sleep(Duration::from_millis(20))?;
                }
                done(ctx, "hoarded", Vec::new())
            }
            Scenario::OversizedOutput => done(ctx, "x".repeat(2 << 20), Vec::new()),
            Scenario::DoubleComplete => {
                done(ctx, "first", Vec::new())?;
                match ctx.complete(&ScenarioResult {
                    note: "second".into(),
                    signals: Vec::new(),
                }) {
                    Err(HostError::Terminal(_)) => Ok(()),
                    other => Err(HandlerError::new(format!(
                        "a second complete was not refused: {other:?}"
                    ))),
                }
            }
            Scenario::CompleteAfterFail => {
                ctx.fail("failed on purpose")?;
                match ctx.complete(&ScenarioResult {
                    note: "after fail".into(),
                    signals: Vec::new(),
                }) {
                    Err(HostError::Terminal(_)) => Ok(()),
                    other => Err(HandlerError::new(format!(
                        "complete after fail was not refused: {other:?}"
                    ))),
                }
            }
            Scenario::ReadFile => {
                let path = input.path.unwrap_or_default();
                match std::fs::read_to_string(&path) {
                    Ok(text) => done(ctx, text, Vec::new()),
                    Err(error) => Err(HandlerError::new(format!("cannot read {path}: {error}"))),
                }
            }
            Scenario::WriteFile => {
                let path = input.path.unwrap_or_default();
                match std::fs::write(&path, "written by the guest") {
                    Ok(()) => done(ctx, format!("wrote {path}"), Vec::new()),
                    Err(error) => Err(HandlerError::new(format!("cannot write {path}: {error}"))),
                }
            }
            Scenario::ReadEnv => {
                let name = input.path.unwrap_or_default();
                match std::env::var(&name) {
                    Ok(value) => done(ctx, value, Vec::new()),
                    Err(error) => Err(HandlerError::new(format!("{name}: {error}"))),
                }
            }
            Scenario::HandOff => {
                ctx.progress(&ScenarioProgress {
                    percent: 10,
                    padding: None,
                })?;
                let behaviour = input.job.as_deref().unwrap_or("finish-operation");
                ctx.hand_off(
                    "testing.owned",
                    &serde_json::json!({ "behaviour": behaviour }),
                )?;
                Ok(())
            }
            Scenario::Print => {
                for n in 0..input.count.unwrap_or(1) {
                    println!("line {n} to stdout");
                    eprintln!("line {n} to stderr");
                    opshost_guest::log::info!("line {n} through log"; n = n, kind = "structured");
                }
                done(ctx, "printed", Vec::new())
            }
            Scenario::PrintFlood => {
                use std::io::Write;
                let chunk = vec![b'x'; 64 << 10];
                let mut left = input.bytes.unwrap_or(0);
                let mut stdout = std::io::stdout();
                while left > 0 {
                    let take = left.min(chunk.len() as u64) as usize;
                    let _ = stdout.write_all(&chunk[..take]);
                    left -= take as u64;
                }
                done(ctx, "flooded", Vec::new())
            }
            Scenario::Fetch
            | Scenario::FetchFollow
            | Scenario::FetchLoop
            | Scenario::FetchParallel
            | Scenario::Exfiltrate => Err(HandlerError::new(
                "outbound HTTP scenarios are served by the test-egress guest",
            )),
        }
    }
}

/// Recurses without end, through a pointer the compiler cannot see through.
fn deeper(depth: u64) -> u64 {
    let next: fn(u64) -> u64 = std::hint::black_box(deeper);
    next(depth + 1).wrapping_add(depth)
}

export_handler!(Scenarios);

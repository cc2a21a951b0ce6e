//! `Testing.Scenario` through the network: the host must refuse to load it.

use opshost_guest::{Context, HandlerError, OperationHandler, export_handler};
use testing_participant::operations::TestingScenario;
use testing_participant::{ScenarioRequest, ScenarioResult};

struct Dialer;

impl OperationHandler for Dialer {
    type Operation = TestingScenario;

    fn handle(ctx: &Context<TestingScenario>, _input: ScenarioRequest) -> Result<(), HandlerError> {
        let connected = std::net::TcpStream::connect("127.0.0.1:9").is_ok();
        ctx.complete(&ScenarioResult {
            note: format!("connected: {connected}"),
            signals: Vec::new(),
        })?;
        Ok(())
    }
}

export_handler!(Dialer);

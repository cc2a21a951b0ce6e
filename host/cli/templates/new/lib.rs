//! `{{operation}}` as a wasm component: `cargo build --target wasm32-wasip2 --release`.

use facade::operations::{{marker}};
use opshost_guest::{Context, HandlerError, Operation, OperationHandler, export_handler};

type Input = <{{marker}} as Operation>::Input;
type Output = <{{marker}} as Operation>::Output;

struct Handler;

impl OperationHandler for Handler {
    type Operation = {{marker}};

    fn handle(ctx: &Context<{{marker}}>, _input: Input) -> Result<(), HandlerError> {
        ctx.started()?;
{{progress_call}}        // Do the work here: report progress with `ctx.progress`, watch `ctx.cancel_requested()`
        // and `ctx.next_signal`, or hand the work to a job with `ctx.hand_off`.
        ctx.complete(&example::<Output>({{output}})?)?;
        Ok(())
    }
}

/// A placeholder payload from the contract's schema; replace it with the real values.
fn example<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, HandlerError> {
    serde_json::from_str(json).map_err(|error| HandlerError::new(format!("placeholder: {error}")))
}

export_handler!(Handler);

//! `Orders.Process` as a wasm component, as a handler that hands its work to a job: the
//! handler marks the operation started, reports "queued" and hands fulfilment to a
//! `fulfillment` job, whose worker (`orders-fulfillment`) reports the steps and ends the
//! operation.

use opshost_guest::{Context, HandlerError, OperationHandler, export_handler};
use orders_participant::operations::OrdersProcess;
use orders_participant::{FulfillmentJob, ProcessOrderProgress, ProcessOrderRequest};

/// Steps the fulfillment worker reports after "queued".
const STEPS: u64 = 4;

struct Process;

impl OperationHandler for Process {
    type Operation = OrdersProcess;

    fn handle(
        ctx: &Context<OrdersProcess>,
        input: ProcessOrderRequest,
    ) -> Result<(), HandlerError> {
        ctx.started()?;
        ctx.progress(&ProcessOrderProgress {
            step: "queued".into(),
            message: "Fulfillment started".into(),
            completed: 0,
            total: STEPS,
        })?;
        ctx.hand_off("fulfillment", &FulfillmentJob { order: input })?;
        Ok(())
    }
}

export_handler!(Process);

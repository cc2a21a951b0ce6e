//! The `fulfillment` job worker: it resumes the `Orders.Process` operation the job owns and
//! drives it to its end in four steps with real work between them, each reported as
//! progress. Honours cancel (releases what it reserved, then acknowledges) and the `Expedite`
//! signal (shorter waits, expedited shipping). A redelivered job starts the steps again.
//!
//! When the host grants it `PAYMENTS_URL` (and that origin in `grants.http`), the charging
//! step charges the order there: `POST {PAYMENTS_URL}/v1/charges`. The host adds the
//! service's token; the worker never holds it. A refused or failed charge fails the attempt,
//! so the job's retries and backoff take over; a repeated charge of an order is answered with
//! the first one.

use std::time::Duration;

use opshost_guest::{Context, HandlerError, HostError, JobContext, JobWorker, export_worker};
use orders_participant::operations::OrdersProcess;
use orders_participant::signals::OrdersProcessExpedite;
use orders_participant::{
    FulfillmentJob, LineItem, ProcessOrderProgress, ProcessOrderResult, ProcessOrderResultStatus,
};

const STEPS: [(&str, &str); 4] = [
    ("reserving", "Reserving stock"),
    ("charging", "Charging payment"),
    ("packing", "Packing items"),
    ("shipping", "Handing over to the carrier"),
];
const STEP_TIME: Duration = Duration::from_millis(300);
const EXPEDITED_STEP_TIME: Duration = Duration::from_millis(30);

struct Fulfillment;

struct Order {
    expedited: bool,
    total_cents: u64,
    tracking: u64,
}

impl Order {
    /// The work of one step: a real computation over the order.
    fn work(&mut self, step: usize, items: &[LineItem]) {
        for item in items {
            self.tracking = fnv(self.tracking, item.sku.as_bytes());
            self.tracking = fnv(
                self.tracking,
                &(item.quantity * (step as u64 + 1)).to_le_bytes(),
            );
        }
        if step == 1 {
            self.total_cents = items.iter().map(|i| i.quantity * i.unit_price_cents).sum();
        }
    }

    /// Waits out the step, taking any `Expedite` signal that arrives meanwhile.
    fn wait(&mut self, ctx: &Context<OrdersProcess>) -> Result<(), HostError> {
        let step_time = if self.expedited {
            EXPEDITED_STEP_TIME
        } else {
            STEP_TIME
        };
        if let Some(signal) = ctx.next_signal(Some(step_time))?
            && signal.decode::<OrdersProcessExpedite>().is_some()
        {
            self.expedited = true;
        }
        Ok(())
    }
}

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    hash
}

fn progress(step: &str, message: &str, completed: u64) -> ProcessOrderProgress {
    ProcessOrderProgress {
        step: step.into(),
        message: message.into(),
        completed,
        total: STEPS.len() as u64,
    }
}

impl JobWorker for Fulfillment {
    type Output = ();

    fn run(job: &JobContext) -> Result<(), HandlerError> {
        let FulfillmentJob { order: input } = job.payload()?;
        let ctx = job.control::<OrdersProcess>()?;
        let mut order = Order {
            expedited: false,
            total_cents: 0,
            tracking: fnv(0xcbf2_9ce4_8422_2325, input.order_id.as_bytes()),
        };
        for (index, (step, message)) in STEPS.iter().enumerate() {
            match order.wait(&ctx) {
                Ok(()) => {}
                Err(HostError::Cancelled) => {
                    ctx.progress(&progress(
                        "cleanup",
                        "Releasing reserved stock",
                        index as u64,
                    ))?;
                    ctx.acknowledge_cancel()?;
                    return Ok(());
                }
                Err(other) => return Err(other.into()),
            }
            order.work(index, &input.line_items);
            if *step == "charging" {
                charge(job, &input.order_id, order.total_cents)?;
            }
            ctx.progress(&progress(step, message, index as u64 + 1))?;
            opshost_guest::log::info!("{message}: done"; order = input.order_id, step = step);
        }
        ctx.complete(&ProcessOrderResult {
            order_id: input.order_id,
            status: ProcessOrderResultStatus::Shipped,
            total_cents: order.total_cents,
            tracking_number: format!("TRK{:016X}", order.tracking),
            expedited: order.expedited,
        })?;
        Ok(())
    }
}

/// Charges the order through the payments service the host grants, if it grants one.
fn charge(job: &JobContext, order_id: &str, amount_cents: u64) -> Result<(), HandlerError> {
    let Ok(payments) = std::env::var("PAYMENTS_URL") else {
        return Ok(());
    };
    let response = job
        .http()
        .post(&format!("{}/v1/charges", payments.trim_end_matches('/')))
        .json(&serde_json::json!({ "orderId": order_id, "amountCents": amount_cents }))
        .send()
        .map_err(|error| HandlerError::new(format!("charging {order_id}: {error}")))?;
    if !response.is_success() {
        return Err(HandlerError::new(format!(
            "charging {order_id}: the payments service answered {}",
            response.status()
        )));
    }
    Ok(())
}

export_worker!(Fulfillment);

//! Showing an operation live in the terminal: an indicatif bar fed by its progress payloads.
//!
//! A payload with numeric `completed` and `total` moves the bar; `step` and `message` are
//! printed above it, one line per report.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use opshost_api::Snapshot;
use serde_json::Value;

/// The live view of one operation.
pub struct ProgressView {
    bar: ProgressBar,
}

impl ProgressView {
    /// A bar with a spinner, hidden when stderr is not a terminal.
    pub fn new() -> Result<Self> {
        let bar = ProgressBar::new(1);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
                .context("progress bar template")?
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Ok(Self { bar })
    }

    /// Shows the progress reported in `snapshot`, if any.
    pub fn update(&self, snapshot: &Snapshot) {
        let Some(progress) = &snapshot.progress else {
            return;
        };
        if let (Some(done), Some(total)) = (
            progress.get("completed").and_then(Value::as_u64),
            progress.get("total").and_then(Value::as_u64),
        ) {
            self.bar.set_length(total);
            self.bar.set_position(done);
        }
        let text = |key: &str| {
            progress
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let (step, message) = (text("step"), text("message"));
        self.bar.suspend(|| eprintln!("  {step:<10} {message}"));
        self.bar.set_message(message.to_owned());
    }

    /// Removes the bar.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

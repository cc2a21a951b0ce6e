//! Faults a test injects into the control imports, to drive a guest down its error paths.
//!
//! A host has no faults unless built with a [`Faults`] plan: "the 2nd `progress` call is
//! refused", "cancellation is requested at the 3rd `progress` call". Calls are counted per
//! import across the host's runs, from 1.

use std::sync::{Mutex, PoisonError};

/// A control import a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Import {
    /// `started`.
    Started,
    /// `progress`.
    Progress,
    /// `complete`.
    Complete,
    /// `fail`.
    Fail,
    /// `next-signal`.
    NextSignal,
    /// `sleep`.
    Sleep,
    /// `hand-off`.
    HandOff,
}

/// What an injected fault does to the call it targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The call is refused with an `internal` control error carrying this message, and does
    /// nothing.
    Refuse(String),
    /// Cancellation of the operation is requested, then the call runs (and, if it blocks,
    /// returns `cancelled`).
    RequestCancel,
}

/// A plan of faults: each fires once, at the `nth` call of its import.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<Plan>,
}

#[derive(Debug, Default)]
struct Plan {
    rules: Vec<Rule>,
    calls: Vec<(Import, u32)>,
}

#[derive(Debug)]
struct Rule {
    import: Import,
    nth: u32,
    fault: Fault,
}

impl Faults {
    /// No faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `fault` at the `nth` call (from 1) of `import`.
    pub fn at(self, import: Import, nth: u32, fault: Fault) -> Self {
        self.lock().rules.push(Rule { import, nth, fault });
        self
    }

    /// Counts a call of `import` and returns the fault planned for it, if any.
    pub(crate) fn before(&self, import: Import) -> Option<Fault> {
        let mut plan = self.lock();
        let count = match plan.calls.iter_mut().find(|(seen, _)| *seen == import) {
            Some((_, count)) => {
                *count += 1;
                *count
            }
            None => {
                plan.calls.push((import, 1));
                1
            }
        };
        let index = plan
            .rules
            .iter()
            .position(|rule| rule.import == import && rule.nth == count)?;
        Some(plan.rules.remove(index).fault)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

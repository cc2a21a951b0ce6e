//! Capability lists of an operation, with the manifest's defaults resolved.

/// An action a caller can take on an operation, each gated by one capability list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Start the operation.
    Call,
    /// Get, wait for, watch or list it.
    Observe,
    /// Cancel it.
    Cancel,
    /// Send it signals.
    Control,
}

impl Action {
    /// The action's name as written in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Observe => "observe",
            Self::Cancel => "cancel",
            Self::Control => "control",
        }
    }
}

/// Resolved capability lists. Each list is all-of; an empty list admits any authenticated
/// caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Needed to start.
    pub call: Vec<String>,
    /// Needed to get, wait, watch and list (defaults to `call`).
    pub observe: Vec<String>,
    /// Needed to cancel (defaults to `call`).
    pub cancel: Vec<String>,
    /// Needed to signal (defaults to `call`).
    pub control: Vec<String>,
}

impl Capabilities {
    /// The list that gates `action`.
    pub fn required(&self, action: Action) -> &[String] {
        match action {
            Action::Call => &self.call,
            Action::Observe => &self.observe,
            Action::Cancel => &self.cancel,
            Action::Control => &self.control,
        }
    }

    /// The first capability of `action`'s list that `granted` lacks, if any.
    pub fn missing<'a>(&'a self, action: Action, granted: &[String]) -> Option<&'a str> {
        self.required(action)
            .iter()
            .find(|needed| !granted.contains(needed))
            .map(String::as_str)
    }
}

//! Load-time errors of a contract manifest.

use std::fmt;

/// One problem in a manifest, at a JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestIssue {
    /// JSON pointer to the offending value, e.g. `/operations/Orders.Process/version`.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for ManifestIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Io {
        /// The file's path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The text is not JSON (or repeats a key).
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    /// The manifest is JSON but breaks the contract rules.
    #[error("invalid manifest:\n{}", list(.0))]
    Invalid(Vec<ManifestIssue>),
}

impl ContractError {
    /// The individual issues of an [`ContractError::Invalid`] error (empty otherwise).
    pub fn issues(&self) -> &[ManifestIssue] {
        match self {
            Self::Invalid(issues) => issues,
            _ => &[],
        }
    }
}

fn list(issues: &[ManifestIssue]) -> String {
    issues
        .iter()
        .map(|issue| format!("  - {issue}"))
        .collect::<Vec<_>>()
        .join("\n")
}

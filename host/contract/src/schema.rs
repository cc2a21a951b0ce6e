//! Compiled payload schemas and the issues they report.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

/// One way a payload breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaIssue {
    /// JSON pointer into the payload (empty for the whole payload).
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for SchemaIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{pointer}: {}", self.message)
    }
}

/// A payload schema compiled once at load time.
#[derive(Clone)]
pub struct PayloadSchema {
    name: Option<String>,
    document: Arc<Value>,
    validator: Arc<jsonschema::Validator>,
}

impl fmt::Debug for PayloadSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadSchema")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PayloadSchema {
    pub(crate) fn compile(name: Option<String>, document: Value) -> Result<Self, String> {
        let validator = jsonschema::draft202012::new(&document).map_err(|e| e.to_string())?;
        Ok(Self {
            name,
            document: Arc::new(document),
            validator: Arc::new(validator),
        })
    }

    /// The named schema this payload refers to, when it is a `$ref` to one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The self-contained schema document (named schemas under `$defs`).
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Checks `value`, listing every issue with its JSON pointer.
    pub fn validate(&self, value: &Value) -> Result<(), Vec<SchemaIssue>> {
        let issues: Vec<SchemaIssue> = self
            .validator
            .iter_errors(value)
            .map(|error| SchemaIssue {
                pointer: error.instance_path().to_string(),
                message: error.to_string(),
            })
            .collect();
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }
}

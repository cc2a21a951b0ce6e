//! Guest logs on the wire: what a handler or job worker wrote, line by line, with the attempt
//! that wrote it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The guest's standard output, one line per line written.
    Stdout,
    /// The guest's standard error.
    Stderr,
    /// The `log` import (the SDK's `log::info!` and friends).
    Log,
    /// An outbound HTTP request the host sent for the guest.
    Http,
    /// The host, about the run (for example lines it dropped).
    Host,
}

impl LogStream {
    /// The stream's wire name, e.g. `stdout`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Log => "log",
            Self::Http => "http",
            Self::Host => "host",
        }
    }
}

/// How much a log line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Fine detail.
    Trace,
    /// For debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something to look at.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// The level's wire name, e.g. `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// One line of an operation's logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Increasing within the operation; a reader resumes after the last one it saw.
    pub seq: u64,
    /// When it was written.
    pub at: DateTime<Utc>,
    /// The attempt that wrote it: the operation's, or the job's when `job` is set.
    pub attempt: u32,
    /// The job whose worker wrote it, when a worker did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Where it came from.
    pub stream: LogStream,
    /// How much it matters.
    pub level: LogLevel,
    /// The text.
    pub message: String,
    /// Key-value fields (from the `log` import, or an outbound request's details).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// The trace of the run that wrote it, when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The span of the run that wrote it (the attempt's, or the job attempt's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_the_serialized_ones() {
        use LogStream::*;
        for stream in [Stdout, Stderr, Log, Http, Host] {
            assert_eq!(serde_json::to_value(stream).unwrap(), stream.as_str());
        }
        for level in [
            LogLevel::Trace,
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warn,
            LogLevel::Error,
        ] {
            assert_eq!(serde_json::to_value(level).unwrap(), level.as_str());
        }
    }
}

//! What a guest writes: stdout, stderr and the `log` import, kept as log lines of the
//! operation its run belongs to, under the run's rate.
//!
//! Each run has one [`Capture`]: lines beyond `log_lines_per_second` or
//! `log_bytes_per_second` in the current second are dropped and counted, and the count is
//! written as a line of the host's once the guest may write again (and when the run ends). A
//! line is at most [`MAX_LINE`] bytes; longer output is cut into several. Writing never waits:
//! lines go to the runtime's log sink, which writes them in batches.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use opshost_api::{LogLevel, LogLine, LogStream};
use opshost_runtime::OperationRuntime;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept, in bytes.
pub const MAX_LINE: usize = 16 << 10;

/// The writing of one run: where its lines go and how many it may write.
pub(crate) struct Capture {
    runtime: OperationRuntime,
    operation: Option<String>,
    job: Option<String>,
    attempt: u32,
    lines_per_second: u32,
    bytes_per_second: u64,
    window: Mutex<Window>,
}

/// What the run wrote in the current second, and what it had to drop.
struct Window {
    start: Instant,
    lines: u32,
    bytes: u64,
    dropped: u64,
}

impl Capture {
    /// The capture of a run of `operation` (or of job `job`) in attempt `attempt`.
    pub(crate) fn new(
        runtime: OperationRuntime,
        operation: Option<String>,
        job: Option<String>,
        attempt: u32,
        lines_per_second: u32,
        bytes_per_second: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            operation,
            job,
            attempt,
            lines_per_second,
            bytes_per_second,
            window: Mutex::new(Window {
                start: Instant::now(),
                lines: 0,
                bytes: 0,
                dropped: 0,
            }),
        })
    }

    /// Keeps one line, unless the run is over its rate.
    pub(crate) fn line(
        &self,
        stream: LogStream,
        level: LogLevel,
        message: &str,
        fields: BTreeMap<String, String>,
    ) {
        let bytes = message.len() as u64
            + fields
                .iter()
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum::<u64>();
        let dropped = {
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            if window.start.elapsed() >= Duration::from_secs(1) {
                window.start = Instant::now();
                window.lines = 0;
                window.bytes = 0;
            }
            if window.lines >= self.lines_per_second || window.bytes + bytes > self.bytes_per_second
            {
                window.dropped += 1;
                return;
            }
            window.lines += 1;
            window.bytes += bytes;
            std::mem::take(&mut window.dropped)
        };
        if dropped > 0 {
            self.dropped_note(dropped);
        }
        self.keep(stream, level, message, fields);
    }

    fn keep(
        &self,
        stream: LogStream,
        level: LogLevel,
        message: &str,
        fields: BTreeMap<String, String>,
    ) {
        let Some(operation) = &self.operation else {
            tracing::info!(job = self.job.as_deref().unwrap_or(""), ?stream, %message, "guest log");
            return;
        };
        let mut end = message.len().min(MAX_LINE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        self.runtime.log_sink().log(
            operation,
            LogLine {
                seq: 0,
                at: Utc::now(),
                attempt: self.attempt,
                job: self.job.clone(),
                stream,
                level,
                message: message[..end].to_owned(),
                fields,
            },
        );
    }

    fn dropped_note(&self, dropped: u64) {
        let message = format!(
            "{dropped} lines dropped: the run wrote faster than {} lines or {} bytes a second (limits.log_lines_per_second, limits.log_bytes_per_second)",
            self.lines_per_second, self.bytes_per_second
        );
        let fields = BTreeMap::from([("dropped".to_owned(), dropped.to_string())]);
        self.keep(LogStream::Host, LogLevel::Warn, &message, fields);
    }

    /// A stdout or stderr for the guest that writes into this capture.
    pub(crate) fn output(self: &Arc<Self>, stream: LogStream) -> CapturedOutput {
        CapturedOutput {
            capture: Arc::clone(self),
            stream,
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let dropped = self.window.get_mut().map_or(0, |window| window.dropped);
        if dropped > 0 {
            self.dropped_note(dropped);
        }
    }
}

/// The guest's stdout or stderr.
pub(crate) struct CapturedOutput {
    capture: Arc<Capture>,
    stream: LogStream,
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(Lines::new(Arc::clone(&self.capture), self.stream))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Lines::new(Arc::clone(&self.capture), self.stream))
    }
}

/// Output cut into lines at each newline (and every [`MAX_LINE`] bytes).
struct Lines {
    capture: Arc<Capture>,
    stream: LogStream,
    pending: Vec<u8>,
}

impl Lines {
    fn new(capture: Arc<Capture>, stream: LogStream) -> Self {
        Self {
            capture,
            stream,
            pending: Vec::new(),
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = MAX_LINE - self.pending.len();
            match rest[..rest.len().min(room)]
                .iter()
                .position(|b| *b == b'\n')
            {
                Some(at) => {
                    self.pending.extend_from_slice(&rest[..at]);
                    self.emit();
                    rest = &rest[at + 1..];
                }
                None => {
                    let taken = rest.len().min(room);
                    self.pending.extend_from_slice(&rest[..taken]);
                    rest = &rest[taken..];
                    if self.pending.len() >= MAX_LINE {
                        self.emit();
                    }
                }
            }
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        let level = match self.stream {
            LogStream::Stderr => LogLevel::Warn,
            _ => LogLevel::Info,
        };
        self.capture.line(self.stream, level, line, BTreeMap::new());
        self.pending.clear();
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

#[async_trait::async_trait]
impl Pollable for Lines {
    async fn ready(&mut self) {}
}

impl OutputStream for Lines {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

impl tokio::io::AsyncWrite for Lines {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.take(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

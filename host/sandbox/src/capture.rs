//! What a guest writes: stdout, stderr and the `log` import, kept as log lines of the
//! operation its run belongs to, under the run's rate.
//!
//! Each run has one [`Capture`]: lines beyond `log_lines_per_second` or
//! `log_bytes_per_second` in the current second are dropped and counted, and the count is
//! written as a line of the host's once the guest may write again (and when the run ends). A
//! line is at most [`MAX_LINE`] bytes; longer output is cut into several. Writing never waits:
//! lines go to the runtime's log sink, which writes them in batches. A `log_lines_per_second`
//! of 0 turns capture off: nothing is kept or counted.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use opshost_api::{LogLevel, LogLine, LogStream};
use opshost_runtime::OperationRuntime;
use opshost_telemetry::{Span, Telemetry};
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
    /// The run's span, and its trace and span ids as each line carries them.
    span: Span,
    /// The host's own span of the run (its operation, attempt, tenant, trace): the host's
    /// lines about the run are written in it, whichever task writes them.
    host_span: tracing::Span,
    ids: Option<(String, String)>,
    lines_per_second: u32,
    bytes_per_second: u64,
    window: Mutex<Window>,
    /// The unfinished last line of stdout and of stderr.
    pending: Mutex<[Vec<u8>; 2]>,
    /// Whether the run wrote any line (or dropped one) since the last [`Capture::finish`].
    wrote: AtomicBool,
}

/// What the run wrote in the current second, and what it had to drop.
struct Window {
    start: Instant,
    lines: u32,
    bytes: u64,
    dropped: u64,
}

impl Capture {
    /// The capture of a run of `operation` (or of job `job`) in attempt `attempt`, whose span
    /// is `span`; made within the run's task, whose `tracing` span it keeps.
    pub(crate) fn new(
        runtime: OperationRuntime,
        operation: Option<String>,
        job: Option<String>,
        attempt: u32,
        span: Span,
        lines_per_second: u32,
        bytes_per_second: u64,
    ) -> Arc<Self> {
        let ids = span.trace().map(|trace| (trace.trace_id, trace.span_id));
        Arc::new(Self {
            runtime,
            operation,
            job,
            attempt,
            span,
            host_span: tracing::Span::current(),
            ids,
            lines_per_second,
            bytes_per_second,
            window: Mutex::new(Window {
                start: Instant::now(),
                lines: 0,
                bytes: 0,
                dropped: 0,
            }),
            pending: Mutex::default(),
            wrote: AtomicBool::new(false),
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
        if self.is_off() {
            return;
        }
        self.wrote.store(true, Ordering::Relaxed);
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
            let _in_run = self.host_span.enter();
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
                trace_id: self.ids.as_ref().map(|(trace, _)| trace.clone()),
                span_id: self.ids.as_ref().map(|(_, span)| span.clone()),
            },
        );
    }

    fn dropped_note(&self, dropped: u64) {
        self.runtime.log_sink().count_dropped(dropped);
        let message = format!(
            "{dropped} lines dropped: the run wrote faster than {} lines or {} bytes a second (limits.log_lines_per_second, limits.log_bytes_per_second)",
            self.lines_per_second, self.bytes_per_second
        );
        let fields = BTreeMap::from([("dropped".to_owned(), dropped.to_string())]);
        self.keep(LogStream::Host, LogLevel::Warn, &message, fields);
    }

    /// Writes what is still unwritten (the unfinished last line of stdout and stderr, and the
    /// count of lines dropped) and waits until every line of the run is in the store, so that
    /// a reader who sees the operation end sees all of its lines. Call it before the run's
    /// terminal change.
    pub(crate) async fn finish(&self) {
        if !self.wrote.swap(false, Ordering::Relaxed) {
            return;
        }
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for (stream, line) in [LogStream::Stdout, LogStream::Stderr]
            .into_iter()
            .zip(pending)
        {
            if !line.is_empty() {
                self.emit(stream, &line);
            }
        }
        let dropped = std::mem::take(
            &mut self
                .window
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .dropped,
        );
        if dropped > 0 {
            self.dropped_note(dropped);
        }
        self.runtime.log_sink().flush().await;
    }

    /// The operation the run belongs to, if any.
    pub(crate) fn operation(&self) -> Option<&str> {
        self.operation.as_deref()
    }

    /// The job the run works, if it is a worker's.
    pub(crate) fn job(&self) -> Option<&str> {
        self.job.as_deref()
    }

    /// The run's attempt.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The run's span.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// The host's own span of the run, for the host's lines about it.
    pub(crate) fn host_span(&self) -> &tracing::Span {
        &self.host_span
    }

    /// Where the run's spans go.
    pub(crate) fn telemetry(&self) -> &Telemetry {
        self.runtime.telemetry()
    }

    /// Whether capture is off for this component (`log_lines_per_second = 0`).
    fn is_off(&self) -> bool {
        self.lines_per_second == 0
    }

    /// Whether the run wrote (or dropped) a line since the last [`Capture::finish`].
    pub(crate) fn wrote(&self) -> bool {
        self.wrote.load(Ordering::Relaxed)
    }

    /// Takes output written to `stream`: whole lines are kept, the rest waits for its end.
    fn take(&self, stream: LogStream, bytes: &[u8]) {
        if self.is_off() {
            return;
        }
        self.wrote.store(true, Ordering::Relaxed);
        let index = usize::from(stream == LogStream::Stderr);
        let mut rest = bytes;
        while !rest.is_empty() {
            let mut ready = None;
            {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let line = &mut pending[index];
                let room = MAX_LINE - line.len();
                match rest[..rest.len().min(room)]
                    .iter()
                    .position(|b| *b == b'\n')
                {
                    Some(at) => {
                        line.extend_from_slice(&rest[..at]);
                        ready = Some(std::mem::take(line));
                        rest = &rest[at + 1..];
                    }
                    None => {
                        let taken = rest.len().min(room);
                        line.extend_from_slice(&rest[..taken]);
                        rest = &rest[taken..];
                        if line.len() >= MAX_LINE {
                            ready = Some(std::mem::take(line));
                        }
                    }
                }
            }
            if let Some(line) = ready {
                self.emit(stream, &line);
            }
        }
    }

    fn emit(&self, stream: LogStream, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        let level = match stream {
            LogStream::Stderr => LogLevel::Warn,
            _ => LogLevel::Info,
        };
        self.line(stream, level, line, BTreeMap::new());
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
        let pending = std::mem::take(
            self.pending
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (stream, line) in [LogStream::Stdout, LogStream::Stderr]
            .into_iter()
            .zip(pending)
        {
            if !line.is_empty() {
                self.emit(stream, &line);
            }
        }
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
}

impl Lines {
    fn new(capture: Arc<Capture>, stream: LogStream) -> Self {
        Self { capture, stream }
    }

    fn take(&mut self, bytes: &[u8]) {
        self.capture.take(self.stream, bytes);
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

//! The function's log (`infercell:function/log`) and its stdout and stderr: one buffer per
//! call, capped in bytes; what goes over the cap is counted and dropped, never an error.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::bindings::infercell::function::log;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    /// Written by the guest to stdout.
    Stdout,
    /// Written by the guest to stderr.
    Stderr,
}

/// One line of a function's log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// The call's log: lines kept up to a byte cap, the rest counted and dropped.
#[derive(Debug, Default)]
struct LogBuffer {
    lines: Vec<LogLine>,
    bytes: usize,
    cap: usize,
    dropped: usize,
    /// Partial stdout/stderr lines not yet ended by a newline.
    partial_out: Vec<u8>,
    partial_err: Vec<u8>,
}

impl LogBuffer {
    fn push(&mut self, level: LogLevel, message: String) {
        if self.bytes + message.len() > self.cap {
            self.dropped += message.len();
            return;
        }
        self.bytes += message.len();
        self.lines.push(LogLine { level, message });
    }

    fn write_stream(&mut self, level: LogLevel, data: &[u8]) {
        let room = self.cap.saturating_sub(self.bytes);
        let partial = if level == LogLevel::Stderr { &mut self.partial_err } else { &mut self.partial_out };
        if partial.len() + data.len() > room {
            let keep = room.saturating_sub(partial.len());
            partial.extend_from_slice(&data[..keep.min(data.len())]);
            self.dropped += data.len() - keep.min(data.len());
        } else {
            partial.extend_from_slice(data);
        }
        let mut complete = Vec::new();
        while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=pos).collect();
            complete.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        for line in complete {
            self.push(level, line);
        }
    }

    fn finish(&mut self) {
        for level in [LogLevel::Stdout, LogLevel::Stderr] {
            let partial = if level == LogLevel::Stderr { &mut self.partial_err } else { &mut self.partial_out };
            if !partial.is_empty() {
                let line = String::from_utf8_lossy(partial).into_owned();
                partial.clear();
                self.push(level, line);
            }
        }
    }
}

/// A stdout/stderr stream that appends to the call's log buffer and never blocks or fails:
/// a guest that floods its output loses the excess, it does not trap.
#[derive(Clone)]
struct LogPipe {
    level: LogLevel,
    buffer: Arc<Mutex<LogBuffer>>,
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    // A direct WASI 0.2 stream: writes land in the buffer synchronously, without the worker
    // task the default adapter spawns, so even a guest that floods its output stays cheap.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for LogPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        if let Ok(mut log) = self.buffer.lock() {
            log.write_stream(self.level, &bytes);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

impl AsyncWrite for LogPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if let Ok(mut log) = self.buffer.lock() {
            log.write_stream(self.level, buf);
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The call's log capability: its buffer, and the pipes WASI's stdout and stderr write to.
pub struct LogCtx {
    buffer: Arc<Mutex<LogBuffer>>,
}

impl LogCtx {
    pub fn new(cap: usize) -> Self {
        Self { buffer: Arc::new(Mutex::new(LogBuffer { cap, ..LogBuffer::default() })) }
    }

    /// A pipe for the guest's stdout or stderr into this log.
    pub fn pipe(&self, level: LogLevel) -> impl StdoutStream + 'static {
        LogPipe { level, buffer: self.buffer.clone() }
    }

    /// The call's log lines and the number of bytes dropped over the cap.
    pub fn take(&self) -> (Vec<LogLine>, usize) {
        match self.buffer.lock() {
            Ok(mut log) => {
                log.finish();
                (std::mem::take(&mut log.lines), log.dropped)
            }
            Err(_) => (Vec::new(), 0),
        }
    }
}

/// Links `infercell:function/log`, reaching each store's [`LogCtx`] through `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> &mut LogCtx,
) -> wasmtime::Result<()> {
    log::add_to_linker::<T, wasmtime::component::HasSelf<LogCtx>>(linker, view)
}

impl log::Host for LogCtx {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        if let Ok(mut log) = self.buffer.lock() {
            log.push(level, message);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_buffer_splits_lines_and_caps_bytes() {
        let mut log = LogBuffer { cap: 10, ..LogBuffer::default() };
        log.write_stream(LogLevel::Stdout, b"abc\nde");
        log.write_stream(LogLevel::Stdout, b"f\n0123456789");
        log.finish();
        let lines: Vec<&str> = log.lines.iter().map(|l| l.message.as_str()).collect();
        // "0123456789" only partly fits: "012" is kept (and flushed at the end), 7 bytes dropped.
        assert_eq!(lines, ["abc", "def", "012"]);
        assert_eq!(log.dropped, 7);
    }
}

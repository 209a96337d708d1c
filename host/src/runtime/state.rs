//! Per-request store state: one plain struct with one typed field per capability.
//!
//! The WASI context grants nothing: no preopened directories, no environment variables, no
//! arguments, no stdin; stdout and stderr are captured into the call's capped log together with
//! the `infercell:function/log` import.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::infercell::function::{config, log};

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

/// Caps linear-memory growth at the version's limit and records the peak (Spin's pattern:
/// one limiter both enforces and meters).
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: u64,
    peak: u64,
    hit: bool,
}

impl MemoryLimiter {
    pub fn peak(&self) -> u64 {
        self.peak
    }
    pub fn limit_hit(&self) -> bool {
        self.hit
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired as u64);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The `T` of `Store<T>`.
pub struct InstanceState {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) nn: super::nn::NnCtx,
    pub limiter: MemoryLimiter,
    log: Arc<Mutex<LogBuffer>>,
    config: Arc<Vec<(String, String)>>,
    /// Host calls refused for want of a grant during this call.
    pub denials: Vec<super::Denial>,
    http_ctx: wasmtime_wasi_http::WasiHttpCtx,
    /// Outbound HTTP: the grant, and the requests it refused.
    pub(super) http: super::http::HttpGuard,
}

impl InstanceState {
    pub fn new(memory_limit: u64, grants: &super::Grants, log_cap: usize) -> Self {
        let log = Arc::new(Mutex::new(LogBuffer { cap: log_cap, ..LogBuffer::default() }));
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(LogPipe { level: LogLevel::Stdout, buffer: log.clone() })
            .stderr(LogPipe { level: LogLevel::Stderr, buffer: log.clone() })
            .allow_blocking_current_thread(false);
        // The tenant's granted files, read-only at /files: the only directory the guest sees.
        // A view that cannot be opened (removed under us) leaves the guest with no /files; its
        // reads fail like any missing file, never reaching anything else.
        if let Some(dir) = &grants.files
            && let Err(e) = wasi.preopened_dir(dir.as_ref(), "/files", wasmtime_wasi::FsPerms::ReadOnly)
        {
            tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "cannot open a function's files view");
        }
        let wasi = wasi.build();
        Self {
            wasi,
            table: ResourceTable::new(),
            nn: super::nn::NnCtx::new(grants.nn.clone(), memory_limit),
            denials: Vec::new(),
            http_ctx: wasmtime_wasi_http::WasiHttpCtx::new(),
            http: super::http::HttpGuard { allowed: grants.allowed_hosts.clone(), denials: Vec::new() },
            limiter: MemoryLimiter { limit: memory_limit, peak: 0, hit: false },
            log,
            config: grants.config.clone(),
        }
    }

    /// The call's log lines and the number of bytes dropped over the cap.
    pub fn take_logs(&mut self) -> (Vec<LogLine>, usize) {
        match self.log.lock() {
            Ok(mut log) => {
                log.finish();
                (std::mem::take(&mut log.lines), log.dropped)
            }
            Err(_) => (Vec::new(), 0),
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for InstanceState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { ctx: &mut self.http_ctx, table: &mut self.table, hooks: &mut self.http }
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl log::Host for InstanceState {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        if let Ok(mut log) = self.log.lock() {
            log.push(level, message);
        }
        Ok(())
    }
}

impl config::Host for InstanceState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.config.as_ref().clone())
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

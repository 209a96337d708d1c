//! Per-request store state: one plain struct with one typed field per capability.
//!
//! Each capability owns its state and links itself (`log`, `config`, `nn`, `http`, WASI): the
//! WASI context grants nothing (no preopened directories but a granted `/files`, no
//! environment, no arguments, no stdin), stdout and stderr go to the call's capped log, and
//! every capability reports its denials to one shared list.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::config::ConfigCtx;
use super::log::{LogCtx, LogLevel};
use super::nn::NnCtx;
use super::{Denials, LogLine};

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
    pub(super) nn: NnCtx,
    pub limiter: MemoryLimiter,
    pub(super) log: LogCtx,
    pub(super) config: ConfigCtx,
    /// Host calls refused for want of a grant during this call, from every capability.
    pub denials: Denials,
    http_ctx: wasmtime_wasi_http::WasiHttpCtx,
    /// Outbound HTTP: the grant; its denials go to `denials`.
    pub(super) http: super::http::HttpGuard,
}

impl InstanceState {
    pub fn new(memory_limit: u64, grants: &super::Grants, log_cap: usize) -> Self {
        let log = LogCtx::new(log_cap);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(log.pipe(LogLevel::Stdout)).stderr(log.pipe(LogLevel::Stderr)).allow_blocking_current_thread(false);
        // The tenant's granted files, read-only at /files: the only directory the guest sees.
        // A view that cannot be opened (removed under us) leaves the guest with no /files; its
        // reads fail like any missing file, never reaching anything else.
        if let Some(dir) = &grants.files
            && let Err(e) = wasi.preopened_dir(dir.as_ref(), "/files", wasmtime_wasi::FsPerms::ReadOnly)
        {
            tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "cannot open a function's files view");
        }
        let denials = Denials::default();
        Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            nn: NnCtx::new(grants.nn.clone(), memory_limit, denials.clone()),
            http_ctx: wasmtime_wasi_http::WasiHttpCtx::new(),
            http: super::http::HttpGuard {
                allowed: grants.allowed_hosts.clone(),
                network: grants.network.clone(),
                meter: Default::default(),
                denials: denials.clone(),
            },
            denials,
            limiter: MemoryLimiter { limit: memory_limit, peak: 0, hit: false },
            log,
            config: ConfigCtx(grants.config.clone()),
        }
    }

    /// The call's log lines and the number of bytes dropped over the cap.
    pub fn take_logs(&mut self) -> (Vec<LogLine>, usize) {
        self.log.take()
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

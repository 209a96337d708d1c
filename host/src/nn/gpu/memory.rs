//! GPU memory admission: the budget, the buffers counted against it, and the eviction or
//! trimming of idle models that makes room for a new buffer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use super::model::GpuModel;
use super::{Gpu, Shared};
use crate::nn::{ErrorCode, NnError};

/// GPU memory admission.
pub struct Budget {
    pub(super) cap: u64,
    pub(super) used: AtomicU64,
}

/// A buffer counted against the budget while it lives.
pub struct Tracked {
    pub buffer: wgpu::Buffer,
    bytes: u64,
    budget: Arc<Budget>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
        self.buffer.destroy();
    }
}

impl Gpu {
    /// A buffer of `bytes`, admitted against the budget (evicting idle models if needed).
    pub fn buffer(&self, bytes: u64, usage: wgpu::BufferUsages) -> Result<Tracked, NnError> {
        let bytes = bytes.max(4).next_multiple_of(4);
        let shared = self.shared.upgrade().ok_or_else(|| NnError::new(ErrorCode::RuntimeError, "GPU engine gone"))?;
        let budget = &shared.budget;
        if bytes > self.max_buffer {
            return Err(NnError::too_large_for_device(format!(
                "a tensor of {bytes} bytes is larger than the GPU's largest buffer ({} bytes)",
                self.max_buffer
            )));
        }
        if bytes > budget.cap {
            return Err(too_large(bytes, budget.cap));
        }
        let mut trimmed = false;
        loop {
            let used = budget.used.load(Ordering::SeqCst);
            if used + bytes <= budget.cap {
                if budget.used.compare_exchange(used, used + bytes, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    break;
                }
                continue;
            }
            let running = RUNNING.with(|r| r.get());
            if shared.evict_one(running) {
                continue;
            }
            // Nothing idle to evict: what the running model itself holds but does not use.
            if !trimmed {
                trimmed = true;
                if shared.trim(running) {
                    continue;
                }
            }
            return Err(NnError::busy(format!(
                "busy: the GPU memory budget ({} of {} bytes in use by running models) has no room for \
                 {bytes} more bytes now; try again",
                used, budget.cap
            )));
        }
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage,
            mapped_at_creation: false,
        });
        Ok(Tracked { buffer, bytes, budget: budget.clone() })
    }
}

pub(super) fn too_large(bytes: u64, cap: u64) -> NnError {
    NnError::too_large_for_device(format!(
        "needs {bytes} bytes of GPU memory at once; the GPU memory budget is {cap} bytes (nn.gpu_memory_bytes)"
    ))
}

impl Shared {
    /// Trims the model at `running` (see `GpuModel::trim`).
    fn trim(&self, running: *const GpuModel) -> bool {
        let model = {
            let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
            models.iter().filter_map(Weak::upgrade).find(|m| std::ptr::eq(Arc::as_ptr(m), running))
        };
        model.is_some_and(|m| m.trim())
    }

    /// Evicts the least recently used idle model other than `keep`; false when none is idle.
    fn evict_one(&self, keep: *const GpuModel) -> bool {
        let models: Vec<Arc<GpuModel>> = {
            let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
            models.retain(|m| m.strong_count() > 0);
            models.iter().filter_map(Weak::upgrade).collect()
        };
        let victim = models
            .iter()
            .filter(|m| !std::ptr::eq(Arc::as_ptr(m), keep) && m.busy.load(Ordering::SeqCst) == 0 && m.holds_memory())
            .min_by_key(|m| m.last_used.load(Ordering::SeqCst));
        match victim {
            Some(m) => {
                m.evict();
                self.evictions.fetch_add(1, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
}

thread_local! {
    /// The model a thread is running on the GPU, which eviction must spare.
    static RUNNING: std::cell::Cell<*const GpuModel> = const { std::cell::Cell::new(std::ptr::null()) };
}

/// Marks a model busy (not evictable) for the life of a call on this thread.
pub(super) struct Busy<'a>(&'a GpuModel);

impl<'a> Busy<'a> {
    pub(super) fn new(model: &'a GpuModel) -> Self {
        model.busy.fetch_add(1, Ordering::SeqCst);
        model.last_used.store(model.shared.tick(), Ordering::SeqCst);
        RUNNING.with(|r| r.set(model as *const GpuModel));
        Busy(model)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(std::ptr::null()));
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

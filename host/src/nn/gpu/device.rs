//! The GPU device: the adapter wgpu finds, the device and queue made on it (again after a
//! loss), its compiled pipelines, parameter buffers and read-back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use super::Shared;
use super::kernels::Kernel;
use crate::nn::{ErrorCode, NnError};

/// One device and its queue, pipelines and limits.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pipelines: [OnceLock<wgpu::ComputePipeline>; Kernel::ALL.len()],
    /// Whether compute passes can write timestamps, and nanoseconds per tick.
    pub timestamps: bool,
    pub period: f32,
    pub(super) max_buffer: u64,
    pub(super) lost: Arc<AtomicBool>,
    pub(super) shared: Weak<Shared>,
}

pub(super) fn best_adapter(instance: &wgpu::Instance) -> Option<wgpu::Adapter> {
    let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN)).into_iter().min_by_key(rank)
}

impl Shared {
    /// The live device, made (again) when there is none or it was lost.
    pub(super) fn gpu(self: &Arc<Self>) -> Result<Arc<Gpu>, NnError> {
        if let Some(gpu) = self.gpu.read().ok().and_then(|g| g.clone())
            && !gpu.lost.load(Ordering::SeqCst)
        {
            return Ok(gpu);
        }
        let mut slot = self.gpu.write().unwrap_or_else(|e| e.into_inner());
        if let Some(gpu) = slot.as_ref()
            && !gpu.lost.load(Ordering::SeqCst)
        {
            return Ok(gpu.clone());
        }
        if slot.is_some() {
            tracing::warn!(adapter = %self.adapter.name, "GPU device lost; recreating it");
            self.recreated.fetch_add(1, Ordering::SeqCst);
        }
        let gpu = Arc::new(Gpu::new(self)?);
        *slot = Some(gpu.clone());
        Ok(gpu)
    }
}

/// Longest wait for the GPU to finish a call's work before the device is reset.
const GPU_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
/// How often a wait on the device looks at its call's deadline.
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(10);

impl Gpu {
    fn new(shared: &Arc<Shared>) -> Result<Self, NnError> {
        let adapter = best_adapter(&shared.instance)
            .ok_or_else(|| NnError::new(ErrorCode::RuntimeError, "the GPU adapter is gone"))?;
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let required_features = if timestamps { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() };
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("infercell"),
            required_features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("cannot open the GPU: {e}")))?;
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            flag.store(true, Ordering::SeqCst);
            tracing::warn!(?reason, message, "GPU device lost");
        });
        device.on_uncaptured_error(Arc::new(|error| tracing::error!(%error, "GPU error outside any call")));
        Ok(Gpu {
            device,
            queue: queue.clone(),
            pipelines: Default::default(),
            timestamps,
            period: queue.get_timestamp_period(),
            max_buffer: limits.max_buffer_size.min(limits.max_storage_buffer_binding_size),
            lost,
            shared: Arc::downgrade(shared),
        })
    }

    pub(super) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The compute pipeline of `kernel`, compiled on first use.
    pub fn pipeline(&self, kernel: Kernel) -> &wgpu::ComputePipeline {
        self.pipelines[kernel.index()].get_or_init(|| {
            let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.name()),
                source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
            });
            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.name()),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        })
    }

    /// A parameter buffer (small, immutable, not counted).
    pub fn params(&self, values: &[u32]) -> wgpu::Buffer {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: (bytes.len() as u64).max(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buffer, 0, &bytes);
        buffer
    }

    /// Waits for submission `index` (not for other callers' work), then reads the first bytes
    /// of each mappable buffer. A `cancel` set while it waits ends the wait at once: the work
    /// already submitted finishes on the device, but the call's thread and slot are free.
    pub fn read(
        &self,
        index: wgpu::SubmissionIndex,
        buffers: &[(&wgpu::Buffer, u64)],
        cancel: Option<&crate::nn::Cancel>,
    ) -> Result<Vec<Vec<u8>>, NnError> {
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, (buffer, bytes)) in buffers.iter().enumerate() {
            let tx = tx.clone();
            if *bytes > 0 {
                buffer.slice(..*bytes).map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send((i, r));
                });
            }
        }
        drop(tx);
        let started = std::time::Instant::now();
        let slice = if cancel.is_some() { CANCEL_POLL } else { GPU_WAIT };
        while let Err(e) =
            self.device.poll(wgpu::PollType::Wait { submission_index: Some(index.clone()), timeout: Some(slice) })
        {
            if matches!(e, wgpu::PollError::Timeout) && started.elapsed() < GPU_WAIT {
                if let Some(cancel) = cancel {
                    cancel.check()?;
                }
                continue;
            }
            // A GPU that does not finish is treated as lost: the next call makes a new device.
            if matches!(e, wgpu::PollError::Timeout) {
                tracing::error!(seconds = GPU_WAIT.as_secs(), "the GPU did not finish; resetting the device");
                self.device.destroy();
                self.lost.store(true, Ordering::SeqCst);
            }
            return Err(NnError::new(ErrorCode::RuntimeError, format!("GPU: {e}")));
        }
        for (_, result) in rx.iter() {
            result.map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("GPU read-back failed: {e}")))?;
        }
        let mut out = Vec::with_capacity(buffers.len());
        for (buffer, bytes) in buffers {
            if *bytes == 0 {
                out.push(Vec::new());
                continue;
            }
            let data = buffer
                .slice(..*bytes)
                .get_mapped_range()
                .map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("GPU read-back failed: {e}")))?
                .to_vec();
            buffer.unmap();
            out.push(data);
        }
        Ok(out)
    }
}

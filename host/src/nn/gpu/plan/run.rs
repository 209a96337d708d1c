//! Running a plan: each caller's arena (the buffers and bind groups of one run), the steps
//! in order on the GPU and the CPU, and the bytes a value is uploaded as.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;

use super::{Bind, Plan, Step, internal};
use crate::nn::gpu::{Gpu, Tracked};
use crate::nn::{ErrorCode, NnError};

/// Buffers of one run.
pub(super) struct Arena {
    slots: Vec<Tracked>,
    /// Per step: the bind group of a dispatch.
    bind_groups: Vec<Option<wgpu::BindGroup>>,
    /// Per step: the mappable buffer of a download.
    staging: Vec<Option<Tracked>>,
    timestamps: Option<Timestamps>,
}

struct Timestamps {
    set: wgpu::QuerySet,
    resolve: Tracked,
    readback: Tracked,
}

/// Most GPU segments (runs of dispatches between CPU work) timed with timestamp queries.
const MAX_TIMED_SEGMENTS: u32 = 2048;

/// What one run did on each device.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunStats {
    /// The run's kernels, from timestamps; else from submit to completion.
    pub gpu_time: Duration,
    /// Time spent blocked on the device (the run's own work and any queued before it).
    pub waited: Duration,
}

impl Plan {
    fn slot(&self, v: usize) -> usize {
        self.slot_of[&self.values[v].root]
    }

    fn value_bytes(&self, v: usize) -> u64 {
        self.values[v].shape.iter().product::<usize>() as u64 * 4
    }

    /// Runs the plan on `fed` (the model's inputs, in order), with the model's weight buffers.
    pub fn run(
        &self,
        gpu: &Gpu,
        weights: &[Arc<Tracked>],
        fed: Vec<TValue>,
        cancel: Option<&crate::nn::Cancel>,
    ) -> Result<(TVec<TValue>, RunStats), NnError> {
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pooled = self.arenas.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let result = match pooled {
            Some(arena) => Ok(arena),
            None => self.arena(gpu, weights),
        }
        .and_then(|mut arena| self.execute(gpu, &mut arena, fed, cancel).map(|out| (out, arena)));
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(NnError::new(ErrorCode::RuntimeError, format!("GPU: {error}")));
        }
        // An arena goes back to the pool only after a clean run: a failed one may hold mapped
        // or half-written buffers.
        let (out, arena) = result?;
        self.arenas.lock().unwrap_or_else(|e| e.into_inner()).push(arena);
        Ok(out)
    }

    /// Makes the buffers and bind groups of one run.
    fn arena(&self, gpu: &Gpu, weights: &[Arc<Tracked>]) -> Result<Arena, NnError> {
        use wgpu::BufferUsages as U;
        let slots: Vec<Tracked> = self
            .slot_bytes
            .iter()
            .map(|bytes| gpu.buffer(*bytes, U::STORAGE | U::COPY_DST | U::COPY_SRC))
            .collect::<Result<_, _>>()?;
        let mut bind_groups = Vec::with_capacity(self.steps.len());
        let mut staging = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let mut group = None;
            let mut stage = None;
            match step {
                Step::Dispatch { kernel, binds, params, .. } => {
                    let layout = gpu.pipeline(*kernel).get_bind_group_layout(0);
                    let mut buffers: Vec<&wgpu::Buffer> = binds
                        .iter()
                        .map(|b| match b {
                            Bind::Value(v) => &slots[self.slot(*v)].buffer,
                            Bind::Weight(w) => &weights[*w].buffer,
                            Bind::Params => &self.params[*params],
                        })
                        .collect();
                    buffers.push(&self.params[*params]);
                    let entries: Vec<wgpu::BindGroupEntry> = buffers
                        .iter()
                        .enumerate()
                        .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
                        .collect();
                    group = Some(gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(kernel.name()),
                        layout: &layout,
                        entries: &entries,
                    }));
                }
                Step::Download { value } => {
                    stage = Some(gpu.buffer(self.value_bytes(*value).max(4), U::MAP_READ | U::COPY_DST)?);
                }
                _ => {}
            }
            bind_groups.push(group);
            staging.push(stage);
        }
        let timestamps = match (gpu.timestamps, self.segments) {
            // wgpu allows 4096 queries per set: a plan with more GPU segments than 2048 is timed
            // from submit to completion instead.
            (true, segments) if segments > 0 && segments <= MAX_TIMED_SEGMENTS => {
                let count = segments * 2;
                let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("infercell timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                });
                let bytes = u64::from(count) * 8;
                Some(Timestamps {
                    set,
                    resolve: gpu.buffer(bytes, U::QUERY_RESOLVE | U::COPY_SRC)?,
                    readback: gpu.buffer(bytes, U::MAP_READ | U::COPY_DST)?,
                })
            }
            _ => None,
        };
        Ok(Arena { slots, bind_groups, staging, timestamps })
    }

    /// Runs the steps in order; a `cancel` is looked at before each step and while waiting
    /// on the device (see [`Gpu::read`]).
    fn execute(
        &self,
        gpu: &Gpu,
        arena: &mut Arena,
        fed: Vec<TValue>,
        cancel: Option<&crate::nn::Cancel>,
    ) -> Result<(TVec<TValue>, RunStats), NnError> {
        let mut cpu: Vec<Option<TValue>> = vec![None; self.values.len()];
        for (v, tensor) in &self.consts {
            cpu[*v] = Some(TValue::from_const(tensor.clone()));
        }
        for (v, value) in self.fed.iter().zip(fed) {
            cpu[*v] = Some(value);
        }
        let new_encoder = || gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let mut encoder: Option<wgpu::CommandEncoder> = None;
        let mut segment = 0u32;
        let mut waited = Duration::ZERO;
        let mut s = 0;
        while s < self.steps.len() {
            if let Some(cancel) = cancel {
                cancel.check()?;
            }
            match &self.steps[s] {
                Step::Dispatch { .. } => {
                    let end = (s..self.steps.len())
                        .find(|k| !matches!(self.steps[*k], Step::Dispatch { .. }))
                        .unwrap_or(self.steps.len());
                    let enc = encoder.get_or_insert_with(new_encoder);
                    let timestamp_writes = arena.timestamps.as_ref().map(|t| wgpu::ComputePassTimestampWrites {
                        query_set: &t.set,
                        beginning_of_pass_write_index: Some(segment * 2),
                        end_of_pass_write_index: Some(segment * 2 + 1),
                    });
                    let mut pass =
                        enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
                    for k in s..end {
                        if let (Step::Dispatch { kernel, groups, .. }, Some(group)) =
                            (&self.steps[k], &arena.bind_groups[k])
                        {
                            pass.set_pipeline(gpu.pipeline(*kernel));
                            pass.set_bind_group(0, group, &[]);
                            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        }
                    }
                    drop(pass);
                    segment += 1;
                    s = end;
                }
                Step::Upload { value } => {
                    // Work recorded so far may still read this buffer's previous value: it goes
                    // to the queue first, and the write lands after it.
                    if let Some(enc) = encoder.take() {
                        gpu.queue.submit([enc.finish()]);
                    }
                    let tensor = cpu[*value].as_ref().ok_or_else(|| internal("an uploaded value is missing"))?;
                    if tensor.shape() != self.values[*value].shape.as_slice() {
                        return Err(internal(format!(
                            "a CPU node made shape {:?} where the plan has {:?}",
                            tensor.shape(),
                            self.values[*value].shape
                        )));
                    }
                    let bytes = upload_bytes(tensor, self.values[*value].indices)?;
                    gpu.queue.write_buffer(&arena.slots[self.slot(*value)].buffer, 0, &bytes);
                    s += 1;
                }
                Step::Download { .. } => {
                    let end = (s..self.steps.len())
                        .find(|k| !matches!(self.steps[*k], Step::Download { .. }))
                        .unwrap_or(self.steps.len());
                    let mut enc = encoder.take().unwrap_or_else(new_encoder);
                    let mut reads = Vec::new();
                    for k in s..end {
                        if let (Step::Download { value }, Some(stage)) = (&self.steps[k], &arena.staging[k]) {
                            let bytes = self.value_bytes(*value);
                            if bytes > 0 {
                                enc.copy_buffer_to_buffer(
                                    &arena.slots[self.slot(*value)].buffer,
                                    0,
                                    &stage.buffer,
                                    0,
                                    bytes,
                                );
                            }
                            reads.push((*value, &stage.buffer, bytes));
                        }
                    }
                    let started = Instant::now();
                    let index = gpu.queue.submit([enc.finish()]);
                    let buffers: Vec<(&wgpu::Buffer, u64)> = reads.iter().map(|(_, b, n)| (*b, *n)).collect();
                    let data = gpu.read(index, &buffers, cancel)?;
                    waited += started.elapsed();
                    for ((value, _, _), bytes) in reads.iter().zip(data) {
                        let floats: Vec<f32> =
                            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                        let tensor = Tensor::from_shape(&self.values[*value].shape, &floats).map_err(internal)?;
                        cpu[*value] = Some(tensor.into_tvalue());
                    }
                    s = end;
                }
                Step::Cpu { node } => {
                    let node = self.model.node(*node);
                    let inputs: TVec<TValue> = node
                        .inputs
                        .iter()
                        .map(|o| cpu[self.outlet_values[o]].clone().ok_or_else(|| internal("a CPU input is missing")))
                        .collect::<Result<_, _>>()?;
                    let outputs = node
                        .op
                        .eval_out_of_plan(inputs)
                        .map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("{}: {e:#}", node.name)))?
                        .ok_or_else(|| {
                            NnError::new(
                                ErrorCode::UnsupportedOperation,
                                format!("{} ({}) cannot run outside a tract plan", node.name, node.op.name()),
                            )
                        })?;
                    for (slot, value) in outputs.into_iter().enumerate() {
                        cpu[self.outlet_values[&OutletId::new(node.id, slot)]] = Some(value);
                    }
                    s += 1;
                }
            }
        }
        let mut gpu_time = waited;
        if let Some(t) = &arena.timestamps {
            let count = segment * 2;
            if count > 0 {
                let mut enc = encoder.take().unwrap_or_else(new_encoder);
                enc.resolve_query_set(&t.set, 0..count, &t.resolve.buffer, 0);
                enc.copy_buffer_to_buffer(&t.resolve.buffer, 0, &t.readback.buffer, 0, u64::from(count) * 8);
                let started = Instant::now();
                let index = gpu.queue.submit([enc.finish()]);
                let data = gpu.read(index, &[(&t.readback.buffer, u64::from(count) * 8)], cancel)?;
                waited += started.elapsed();
                let ticks: Vec<u64> =
                    data[0].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
                let total: u64 = ticks.chunks_exact(2).map(|p| p[1].saturating_sub(p[0])).sum();
                gpu_time = Duration::from_nanos((total as f64 * f64::from(gpu.period)) as u64);
            }
        } else if let Some(enc) = encoder.take() {
            let started = Instant::now();
            let index = gpu.queue.submit([enc.finish()]);
            gpu.read(index, &[], cancel)?;
            gpu_time += started.elapsed();
            waited += started.elapsed();
        }
        let outputs = self
            .outputs
            .iter()
            .map(|v| cpu[*v].clone().ok_or_else(|| internal("an output is missing")))
            .collect::<Result<_, _>>()?;
        Ok((outputs, RunStats { gpu_time, waited }))
    }

    /// Drops the idle arenas (runs in flight keep theirs).
    pub fn arenas_clear(&self) {
        self.arenas.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The bytes a value is uploaded as: FP32 as is; indices checked against the shortest axis any
/// gather reading them indexes (every gather must be valid, as on the CPU), as i32 (each gather
/// wraps negative ones with its own axis length).
pub fn upload_bytes(tensor: &Tensor, indices: Option<usize>) -> Result<Vec<u8>, NnError> {
    match indices {
        None => {
            let floats = tensor.cast_to::<f32>().map_err(internal)?;
            Ok(floats.as_bytes().to_vec())
        }
        Some(len) => {
            let ints = tensor.cast_to::<i64>().map_err(internal)?;
            let ints = ints.to_plain_array_view::<i64>().map_err(internal)?;
            let mut out = Vec::with_capacity(ints.len() * 4);
            for i in ints.iter() {
                if *i < -(len as i64) || *i >= len as i64 {
                    return Err(NnError::new(
                        ErrorCode::InvalidArgument,
                        format!("gather index {i} is out of range for an axis of {len}"),
                    ));
                }
                out.extend((*i as i32).to_le_bytes());
            }
            Ok(out)
        }
    }
}

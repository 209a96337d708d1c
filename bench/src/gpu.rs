//! GPU benchmark (issue 7): open_nsfw (ResNet-50) at several batch sizes on the wgpu engine,
//! beside ONNX Runtime on the CPU (and tract), natively (no WebAssembly), same random input.
//! Per engine and batch: mean latency per call, images per second, and the largest absolute
//! difference from ONNX Runtime's output (the wgpu engine's results must agree).
//!
//! `bench/gpu.sh` builds and runs this on a machine with a GPU, then adds onnxruntime-gpu
//! (CUDA) from Python when it installs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use infercell::nn::gpu::Wgpu;
use infercell::nn::onnxruntime::OnnxRuntime;
use infercell::nn::tract::Tract;
use infercell::nn::{ElemType, Engine, HostTensor, LoadedModel};

use crate::repo_root;

/// Deterministic pseudo-random floats in the range of open_nsfw's BGR-minus-mean input.
fn input(batch: u32) -> HostTensor {
    let n = batch as usize * 224 * 224 * 3;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..n)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state % 256) as f32 - 120.0).to_le_bytes()
        })
        .collect();
    HostTensor { dims: vec![batch, 224, 224, 3], ty: ElemType::F32, data }
}

fn floats(t: &HostTensor) -> Vec<f32> {
    t.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Mean time per call and the last outputs, after one warm-up call (which also plans and
/// uploads), over at least `iters` calls and one second.
fn measure(
    model: &Arc<dyn LoadedModel>,
    name: &str,
    x: &HostTensor,
    iters: u32,
) -> Result<(Duration, Vec<f32>, Duration)> {
    let call = || model.run_placed(vec![(name.to_string(), x.clone())]).map_err(|e| anyhow::anyhow!("{e}"));
    let (warm, _) = call()?;
    let started = Instant::now();
    let mut runs = 0;
    let mut gpu = Duration::ZERO;
    let mut last = warm;
    while runs < iters || started.elapsed() < Duration::from_secs(1) {
        let (outputs, placed) = call()?;
        gpu += placed.gpu_time;
        last = outputs;
        runs += 1;
    }
    let out = last.first().map(|(_, t)| floats(t)).context("no output")?;
    Ok((started.elapsed() / runs, out, gpu / runs))
}

pub async fn run(batches: &[u32], iters: u32) -> Result<()> {
    let path = repo_root().join("samples/moderate-image/open-nsfw.onnx");
    let onnx =
        std::fs::read(&path).with_context(|| format!("{} missing: run scripts/make-models.sh", path.display()))?;
    let mut engines: Vec<(String, Arc<dyn Engine>)> = Vec::new();
    if let Ok(ort) = std::env::var("ORT_DYLIB_PATH") {
        engines.push(("onnxruntime (cpu)".into(), Arc::new(OnnxRuntime::load(std::path::Path::new(&ort))?)));
    }
    match (Wgpu::discover(u64::MAX / 2), Wgpu::discover(u64::MAX / 2)) {
        (Some(fused), Some(unfused)) => {
            let name = format!("wgpu ({})", fused.adapter_name());
            engines.push((name.clone(), Arc::new(fused)));
            // The same engine with one dispatch per node: what epilogue fusion saves.
            engines.push((format!("{name}, no fusion"), Arc::new(unfused.with_fusion(false))));
        }
        _ => bail!("no GPU adapter: wgpu finds no Vulkan device"),
    }
    if std::env::var_os("BENCH_TRACT").is_some() {
        engines.push(("tract (cpu)".into(), Arc::new(Tract)));
    }
    println!("| engine | batch | ms per call | images/s | GPU ms per call | max abs diff vs ORT |");
    println!("|---|---:|---:|---:|---:|---:|");
    for batch in batches {
        let x = input(*batch);
        let mut reference: Option<Vec<f32>> = None;
        for (label, engine) in &engines {
            let model = engine.load(&onnx).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
            let name = model.inputs()[0].name.clone();
            let (took, out, gpu) = measure(&model, &name, &x, iters)?;
            let diff = reference
                .as_ref()
                .map(|r| r.iter().zip(&out).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max))
                .map_or("-".to_string(), |d| format!("{d:.1e}"));
            if reference.is_none() {
                reference = Some(out);
            }
            let ms = took.as_secs_f64() * 1e3;
            let gpu_ms = if gpu.is_zero() { "-".to_string() } else { format!("{:.2}", gpu.as_secs_f64() * 1e3) };
            println!(
                "| {label} | {batch} | {ms:.2} | {:.1} | {gpu_ms} | {diff} |",
                f64::from(*batch) / took.as_secs_f64()
            );
        }
    }
    Ok(())
}

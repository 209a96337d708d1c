//! Inference benchmarks (issue 3, P4 and P5), on the digits MLP:
//! - P5: each engine run natively (no WebAssembly at all), beside ONNX Runtime native.
//! - P4: the same model called from the digits guest through wasi:nn (fresh store, JSON
//!   parsing and scaling in the sandbox, tensor copies across the boundary), beside the same
//!   engine called natively: the difference is what the sandbox adds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use infercell::nn::onnxruntime::OnnxRuntime;
use infercell::nn::tract::Tract;
use infercell::nn::{ElemType, Engine, Graphs, HostTensor};
use infercell::runtime::nn::{BoxFuture, ModelSource, NnAccess};
use infercell::runtime::{GuestRequest, Limits, Runtime, RuntimeConfig};

use crate::repo_root;

/// Serves one model, `digits`, from memory.
struct OneModel(Vec<u8>);

impl ModelSource for OneModel {
    fn lookup<'a>(&'a self, _tenant: &'a str, name: &'a str) -> BoxFuture<'a, Option<(String, String)>> {
        Box::pin(async move { (name == "digits").then(|| ("sha256:bench-digits".to_string(), "auto".to_string())) })
    }
    fn read(&self, _digest: &str) -> anyhow::Result<Vec<u8>> {
        Ok(self.0.clone())
    }
}

fn time_native(engine: &dyn Engine, onnx: &[u8], pixels: &[f32], iters: u32) -> Result<Duration> {
    let model = engine.load(onnx).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bytes: Vec<u8> = pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
    let run = || {
        let input = HostTensor::new(vec![1, 64], ElemType::F32, bytes.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        model.run(vec![("input".into(), input)]).map_err(|e| anyhow::anyhow!("{e}"))
    };
    for _ in 0..200 {
        run()?;
    }
    let started = Instant::now();
    for _ in 0..iters {
        run()?;
    }
    Ok(started.elapsed() / iters)
}

async fn time_guest(engine: Arc<dyn Engine>, onnx: &[u8], pixels: &[u8], iters: u32) -> Result<Duration> {
    let tmp = tempfile::tempdir()?;
    let dir = cap_std::fs::Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority())?;
    let runtime = Runtime::new(RuntimeConfig::default(), dir)?;
    let wasm = std::fs::read(repo_root().join("samples/target/wasm32-wasip2/release/digits.wasm"))
        .context("digits.wasm missing: run scripts/build-samples.sh")?;
    let prepared = runtime.prepare_new("sha256:bench", &wasm).map_err(|e| anyhow::anyhow!("{e}"))?;
    let graphs = Arc::new(Graphs::new(vec![engine], 1 << 30, 1));
    let access = NnAccess {
        tenant: "bench".into(),
        models: vec!["digits".into()],
        gpu: false,
        max_model_bytes: 1 << 30,
        graphs,
        source: Arc::new(OneModel(onnx.to_vec())),
    };
    let limits = Limits { memory_bytes: 64 << 20, timeout: Duration::from_secs(10), fuel: None };
    let config = Arc::new(Vec::new());
    let call = || async {
        let req = GuestRequest { method: "POST".into(), path: "/".into(), body: pixels.to_vec(), ..Default::default() };
        let outcome = runtime.invoke(&prepared, &limits, config.clone(), Some(access.clone()), req).await;
        match outcome.result {
            Ok(r) if r.status == 200 => Ok(()),
            other => anyhow::bail!("digits failed: {other:?}"),
        }
    };
    for _ in 0..200 {
        call().await?;
    }
    let started = Instant::now();
    for _ in 0..iters {
        call().await?;
    }
    Ok(started.elapsed() / iters)
}

pub async fn run(iters: u32) -> Result<()> {
    let onnx = std::fs::read(repo_root().join("samples/digits/digits.onnx"))?;
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("samples/digits/expected.json"))?)?;
    let raw = &expected["cases"][0]["pixels"];
    let scaled: Vec<f32> =
        raw.as_array().context("pixels")?.iter().map(|p| p.as_f64().unwrap_or(0.0) as f32 / 16.0).collect();
    let body = serde_json::json!({ "pixels": raw }).to_string().into_bytes();

    let mut engines: Vec<Arc<dyn Engine>> = vec![Arc::new(Tract)];
    match std::env::var("ORT_DYLIB_PATH") {
        Ok(path) if !path.is_empty() => engines.push(Arc::new(OnnxRuntime::load(std::path::Path::new(&path))?)),
        _ => eprintln!("ORT_DYLIB_PATH unset: ONNX Runtime rows skipped (scripts/install-onnxruntime.sh)"),
    }
    println!("digits MLP (64 -> 32 -> 10), batch 1, {iters} calls each, one thread:");
    println!("  {:<14} {:>16} {:>22} {:>14}", "engine", "native us/call", "guest via wasi:nn us", "added us");
    let mut native_ort = None;
    for engine in &engines {
        let native = time_native(engine.as_ref(), &onnx, &scaled, iters)?;
        let guest = time_guest(engine.clone(), &onnx, &body, iters).await?;
        if engine.name() == "onnxruntime" {
            native_ort = Some(native);
        }
        println!(
            "  {:<14} {:>16.2} {:>22.2} {:>14.2}",
            engine.name(),
            native.as_secs_f64() * 1e6,
            guest.as_secs_f64() * 1e6,
            (guest.as_secs_f64() - native.as_secs_f64()) * 1e6
        );
    }
    if let Some(ort) = native_ort {
        let tract = time_native(engines[0].as_ref(), &onnx, &scaled, iters)?;
        println!("  P5: tract native / ONNX Runtime native = {:.2}", tract.as_secs_f64() / ort.as_secs_f64());
    }
    println!("  P4 goal: added latency <= 25 us for an MLP (fresh sandbox + JSON + wasi:nn per call)");
    Ok(())
}
